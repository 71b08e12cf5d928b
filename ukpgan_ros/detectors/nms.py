"""Radius non-maximum suppression of per-point saliency: many close candidates -> one keypoint.

Greedy NMS (take the best point, drop its neighbours within ``radius``, repeat) is sequential
by nature, and so is ``radius_nms``: a compiled loop over the candidates, best first, that keeps a
candidate unless a kept point lies within ``radius`` (looked up in a hash grid of the kept points,
cells of edge ``radius``), and stops once ``max_keypoints`` are kept. It is the greedy loop itself,
so it equals the slow reference in the tests exactly, and with a budget it visits only the
candidates the budget needs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

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


@njit(cache=True, nogil=True)
def _greedy(pts, cand, radius, limit):  # pragma: no cover - compiled
    """Indices (into ``cand``'s order) the greedy loop keeps, at most ``limit``."""
    n = cand.shape[0]
    r2 = radius * radius
    mn = np.full(3, np.inf)
    for k in range(n):
        for a in range(3):
            v = pts[cand[k], a]
            if v < mn[a]:
                mn[a] = v
    size, bits = 1, 0
    while size < 4 * min(n, limit) + 16:
        size *= 2
        bits += 1
    shift = np.uint64(64 - bits)
    golden = np.uint64(11400714819323198485)
    slot_key = np.empty(size, np.int64)
    slot_head = np.full(size, -1, np.int64)  # last kept point of the cell, -1: empty slot
    nxt = np.empty(min(n, limit), np.int64)  # previous kept point of the same cell
    kept = np.empty(min(n, limit), np.int64)
    m = 0
    for k in range(n):
        if m >= limit:
            break
        i = cand[k]
        c0 = np.int64(np.floor((pts[i, 0] - mn[0]) / radius))
        c1 = np.int64(np.floor((pts[i, 1] - mn[1]) / radius))
        c2 = np.int64(np.floor((pts[i, 2] - mn[2]) / radius))
        free = True
        for d0 in range(-1, 2):
            for d1 in range(-1, 2):
                for d2 in range(-1, 2):
                    if not free:
                        break
                    key = ((c0 + d0 + 1) << 42) | ((c1 + d1 + 1) << 21) | (c2 + d2 + 1)
                    h = np.int64((np.uint64(key) * golden) >> shift)
                    while slot_head[h] >= 0 and slot_key[h] != key:
                        h = (h + 1) & (size - 1)
                    j = slot_head[h]
                    while j >= 0:
                        q = cand[kept[j]]
                        dd = 0.0
                        for a in range(3):
                            t = pts[i, a] - pts[q, a]
                            dd += t * t
                        if dd <= r2:
                            free = False
                            break
                        j = nxt[j]
        if not free:
            continue
        key = ((c0 + 1) << 42) | ((c1 + 1) << 21) | (c2 + 1)
        h = np.int64((np.uint64(key) * golden) >> shift)
        while slot_head[h] >= 0 and slot_key[h] != key:
            h = (h + 1) & (size - 1)
        slot_key[h] = key
        nxt[m] = slot_head[h]
        slot_head[h] = m
        kept[m] = k
        m += 1
    return kept[:m]


def radius_nms(
    points: np.ndarray,
    scores: np.ndarray,
    radius: float,
    max_keypoints: int | None = None,
    min_score: float | None = None,
) -> np.ndarray:
    """Greedy radius NMS; returns kept row indices (int64) by descending score.

    Only points with ``score >= min_score`` compete (all when None). At most ``max_keypoints``
    are returned: greedy stopped after that many. Ties in score are broken towards the lower
    index. The grid spans at most 2^21 cells of ``radius`` per axis.
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
    limit = n if max_keypoints is None else int(max_keypoints)
    keep_ranks = _greedy(np.ascontiguousarray(pts, np.float64), cand.astype(np.int64), float(radius), limit)
    return cand[keep_ranks].astype(np.int64)
