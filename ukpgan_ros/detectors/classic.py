"""Classic keypoint baselines: ISS (Open3D), uniform random and farthest-point sampling.

They run the node before a learned model is available and stay as comparison baselines in
evaluation. All return indices into the cloud they were given.
"""

from __future__ import annotations

import numpy as np
import open3d as o3d

from ukpgan_ros.cloud import to_legacy
from ukpgan_ros.detectors.base import Keypoints

__all__ = ["IssDetector", "RandomDetector", "FpsDetector", "farthest_point_sampling", "iss_saliency"]


def _empty() -> Keypoints:
    return Keypoints(np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def iss_saliency(points: np.ndarray, query_idx: np.ndarray, radius: float) -> np.ndarray:
    """ISS saliency (smallest eigenvalue of the neighbourhood scatter) at ``query_idx``.

    Open3D's ISS returns keypoints without scores; this recomputes Zhong's criterion for them so
    the strongest can be kept under a keypoint budget.
    """
    if len(query_idx) == 0:
        return np.zeros(0, np.float32)
    tree = o3d.geometry.KDTreeFlann(to_legacy(points))
    out = np.zeros(len(query_idx), np.float32)
    for j, i in enumerate(query_idx):
        k, nn, _ = tree.search_radius_vector_3d(points[i].astype(np.float64), radius)
        if k < 3:
            continue
        nb = points[np.asarray(nn)] - points[i]
        out[j] = np.linalg.eigvalsh(nb.T.astype(np.float64) @ nb / k)[0]
    return out


class IssDetector:
    """Intrinsic Shape Signatures (Zhong 2009) via Open3D, ranked by the smallest eigenvalue.

    Radii derive from the voxel size: salient radius ``salient_factor`` x voxel, non-maximum
    suppression at ``nms_radius``.
    """

    name = "iss"

    def __init__(self, voxel_size: float, nms_radius: float, salient_factor: float = 3.0,
                 gamma_21: float = 0.975, gamma_32: float = 0.975, min_neighbors: int = 5) -> None:
        self.salient_radius = salient_factor * voxel_size
        self.nms_radius = nms_radius
        self.gamma_21, self.gamma_32, self.min_neighbors = gamma_21, gamma_32, min_neighbors

    def detect(self, points: np.ndarray, normals: np.ndarray | None, max_keypoints: int) -> Keypoints:
        if len(points) == 0:
            return _empty()
        pcd = to_legacy(points)
        kp = o3d.geometry.keypoint.compute_iss_keypoints(
            pcd, salient_radius=self.salient_radius, non_max_radius=self.nms_radius,
            gamma_21=self.gamma_21, gamma_32=self.gamma_32, min_neighbors=self.min_neighbors,
        )
        kp_xyz = np.asarray(kp.points)
        if len(kp_xyz) == 0:
            return _empty()
        # ISS returns copies of input points: recover their indices exactly.
        tree = o3d.geometry.KDTreeFlann(pcd)
        idx = np.array([tree.search_knn_vector_3d(p, 1)[1][0] for p in kp_xyz], dtype=np.int64)
        idx = np.unique(idx)
        scores = iss_saliency(points, idx, self.salient_radius)
        k = Keypoints.from_indices(points, idx, scores)
        return _head(k, max_keypoints)

    def release(self) -> None:
        pass


class RandomDetector:
    """Uniform random sampling; seeded, and a new draw per call (as a random baseline should)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def detect(self, points: np.ndarray, normals: np.ndarray | None, max_keypoints: int) -> Keypoints:
        n = len(points)
        idx = self._rng.choice(n, size=min(n, max_keypoints), replace=False) if n else np.zeros(0, np.int64)
        return Keypoints.from_indices(points, idx, np.ones(len(idx), np.float32))

    def release(self) -> None:
        pass


def farthest_point_sampling(points: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Indices of ``k`` farthest-point samples starting at ``start`` (O(N k), vectorised per step)."""
    n = len(points)
    k = min(k, n)
    if k == 0:
        return np.zeros(0, np.int64)
    pts = points.astype(np.float64)  # float32 distances tie and reorder the samples
    idx = np.empty(k, np.int64)
    idx[0] = start
    d2 = np.full(n, np.inf)
    for j in range(1, k):
        diff = pts - pts[idx[j - 1]]
        np.minimum(d2, np.einsum("ij,ij->i", diff, diff), out=d2)
        idx[j] = int(np.argmax(d2))
    return idx


class FpsDetector:
    """Farthest-point sampling: even coverage, no saliency (scores fall with sampling order)."""

    name = "fps"

    def detect(self, points: np.ndarray, normals: np.ndarray | None, max_keypoints: int) -> Keypoints:
        idx = farthest_point_sampling(points, max_keypoints)
        scores = np.linspace(1.0, 0.0, len(idx), endpoint=False, dtype=np.float32) if len(idx) else np.zeros(0, np.float32)
        return Keypoints.from_indices(points, idx, scores)

    def release(self) -> None:
        pass


def _head(k: Keypoints, n: int) -> Keypoints:
    return k if len(k) <= n else Keypoints(k.xyz[:n], k.scores[:n], k.indices[:n])
