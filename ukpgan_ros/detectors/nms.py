"""Radius non-maximum suppression of per-point saliency: many close candidates -> one keypoint.

Greedy NMS (take the best point, drop its neighbours within ``radius``, repeat) is sequential
by nature. ``radius_nms`` computes exactly the same set in a few vectorised rounds: a point
that scores higher than every still-undecided neighbour is kept by greedy too, and removing
it with its neighbours leaves a smaller problem whose greedy answer is unchanged.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["radius_nms", "check_nms_input", "nms_candidates"]


def check_nms_input(points: np.ndarray, scores: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points)
    sc = np.asarray(scores)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if sc.shape != (pts.shape[0],):
        raise ValueError(f"scores must have shape ({pts.shape[0]},), got {sc.shape}")
    if not np.isfinite(pts).all() or not np.isfinite(sc).all():
        raise ValueError("points and scores must be finite")
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return pts.astype(np.float64, copy=False), sc.astype(np.float64, copy=False)


def nms_candidates(scores: np.ndarray, min_score: float | None) -> np.ndarray:
    """Indices allowed to become keypoints, best first (ties: lower index first)."""
    order = np.argsort(-scores, kind="stable")
    if min_score is not None:
        order = order[scores[order] >= min_score]
    return order


def radius_nms(
    points: np.ndarray,
    scores: np.ndarray,
    radius: float,
    max_keypoints: int | None = None,
    min_score: float | None = None,
) -> np.ndarray:
    """Greedy radius NMS; returns kept row indices (int64) by descending score.

    Only points with ``score >= min_score`` compete (all when None). At most ``max_keypoints``
    are returned: the best of the greedy set, which equals stopping greedy after that many.
    Ties in score are broken towards the lower index, as the sequential reference does.
    """
    pts, sc = check_nms_input(points, scores, radius)
    if max_keypoints is not None and max_keypoints < 0:
        raise ValueError(f"max_keypoints must be >= 0, got {max_keypoints}")
    cand = nms_candidates(sc, min_score)
    n = len(cand)
    if n == 0 or max_keypoints == 0:
        return np.zeros(0, np.int64)
    if radius == 0:
        return cand[:max_keypoints].astype(np.int64)

    # rank 0 is the best candidate; strict total order removes any tie ambiguity
    pairs = cKDTree(pts[cand]).query_pairs(radius, output_type="ndarray")
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    undecided = np.ones(n, bool)
    kept = np.zeros(n, bool)
    while undecided.any():
        live = undecided[src] & undecided[dst]
        best_neighbour = np.full(n, n, np.int64)
        np.minimum.at(best_neighbour, src[live], dst[live])
        new = undecided & (np.arange(n) < best_neighbour)
        kept |= new
        undecided &= ~new
        suppressed = dst[new[src]]
        undecided[suppressed] = False
    keep_ranks = np.nonzero(kept)[0]  # ascending rank == descending score
    if max_keypoints is not None:
        keep_ranks = keep_ranks[:max_keypoints]
    return cand[keep_ranks].astype(np.int64)
