"""Cloud preprocessing: finite/range crop, voxel downsampling, the working cloud (points + normals).

Every function takes and returns NumPy float32 arrays so the rest of the core never deals with
Open3D geometry objects; conversions to Open3D happen here and in ``registration``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from ukpgan_ros._voxel_kernel import crop_voxel_mean
from ukpgan_ros.features.normals import estimate_normals

__all__ = [
    "as_points",
    "crop_range",
    "voxel_downsample",
    "to_legacy",
    "WorkingCloud",
    "make_working_cloud",
    "voxel_for_budget",
]


def as_points(points: np.ndarray, *, name: str = "points") -> np.ndarray:
    """Validate an (N, 3) array and return it as contiguous float32 with non-finite rows dropped."""
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    return arr if finite.all() else arr[finite]


def crop_range(points: np.ndarray, min_range: float, max_range: float) -> np.ndarray:
    """Keep points whose distance from the sensor origin lies in [min_range, max_range]."""
    d2 = np.einsum("ij,ij->i", points, points)
    return points[(d2 >= min_range * min_range) & (d2 <= max_range * max_range)]


def voxel_downsample(points: np.ndarray, voxel: float) -> np.ndarray:
    """Average the finite points of each occupied voxel; voxel <= 0 keeps them as they are.

    The grid is Open3D's (anchored at min_bound - voxel/2, means in double) and so are the
    results (the tests compare); the compiled kernel takes one pass without sorting and returns
    voxels in order of first appearance, so the output order is deterministic, unlike Open3D's.
    """
    if len(points) == 0:
        return np.zeros((0, 3), np.float32)
    return crop_voxel_mean(points, 0.0, float("inf"), voxel)[0]


def to_legacy(points: np.ndarray, normals: np.ndarray | None = None) -> o3d.geometry.PointCloud:
    """NumPy -> legacy Open3D cloud, for the pipelines that only exist there (RANSAC, ISS)."""
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    if normals is not None:
        pcd.normals = o3d.utility.Vector3dVector(normals.astype(np.float64))
    return pcd


@dataclass(frozen=True)
class WorkingCloud:
    """The voxelised cloud that detection and registration run on, with its normals."""

    points: np.ndarray  # (M, 3) float32
    normals: np.ndarray  # (M, 3) float32
    raw_count: int  # finite points in the input

    def __len__(self) -> int:
        return int(self.points.shape[0])


def make_working_cloud(
    points: np.ndarray,
    voxel_size: float,
    min_range: float = 0.0,
    max_range: float = float("inf"),
    *,
    normal_radius: float,
    viewpoint: np.ndarray | None = (0.0, 0.0, 0.0),
) -> WorkingCloud:
    """Validate, drop non-finite points, range-crop, voxelise (one compiled pass) and add
    normals (PCA over ``normal_radius``, facing ``viewpoint``): the one preprocessing path of the
    pipeline."""
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"points must be numeric, got dtype {arr.dtype}")
    pts, raw = crop_voxel_mean(arr, min_range, max_range, voxel_size)
    normals = estimate_normals(pts, normal_radius, viewpoint=viewpoint)
    return WorkingCloud(pts, normals, raw)


def voxel_for_budget(points: np.ndarray, budget: int, start: float, lo: float, hi: float,
                     tolerance: float = 0.15, max_rounds: int = 6) -> float:
    """A voxel size in [lo, hi] that leaves about ``budget`` points of ``points`` (within
    ``tolerance``), searched from ``start``.

    Depth clouds are surfaces, so the count falls about as 1 / voxel^2: each round rescales the
    voxel by sqrt(count / budget), then bisects in log space once the answer is bracketed.
    The result is rounded to 0.1 mm so that equal scenes give equal voxels.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < lo <= hi, got {lo}, {hi}")
    v = float(min(max(start, lo), hi))
    below: float | None = None  # largest voxel seen to leave too many points
    above: float | None = None  # smallest voxel seen to leave too few
    for _ in range(max_rounds):
        n = len(voxel_downsample(points, v))
        if abs(n - budget) <= tolerance * budget:
            break
        if n > budget:
            below = v if below is None else max(below, v)
        else:
            above = v if above is None else min(above, v)
        nxt = min(max(v * float(np.sqrt(max(n, 1) / budget)), lo), hi)
        if below is not None and above is not None and not below < nxt < above:
            nxt = float(np.sqrt(below * above))  # bracketed: bisect in log space
        if abs(nxt - v) <= 1e-4 * v:
            break
        v = nxt
    return min(max(round(v, 4), lo), hi)
