"""Cloud preprocessing: finite/range crop, voxel downsampling, the working cloud (points + normals),
and the choice of a stream's voxel from its first cloud (a point budget or cap).

Every function takes and returns NumPy float32 arrays so the rest of the core never deals with
Open3D geometry objects; conversions to Open3D happen here and in ``registration``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from ukpgan_ros._voxel_kernel import crop_voxel_mean, occupied_counts, octave_counts
from ukpgan_ros.features.normals import estimate_normals

__all__ = [
    "as_points",
    "crop_range",
    "voxel_downsample",
    "to_legacy",
    "WorkingCloud",
    "make_working_cloud",
    "voxel_for_budget",
    "voxel_ladder",
    "choose_voxel",
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


VOXEL_STEPS_PER_OCTAVE = 16  # candidate voxels lo * 2^(j / 16): 4.4 % apart


def voxel_ladder(lo: float, hi: float) -> np.ndarray:
    """The candidate voxel sizes in [lo, hi]: ``lo * 2^(j / 16)`` (rounded to 1 um), then ``hi``."""
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < lo <= hi, got {lo}, {hi}")
    n = int(np.floor(VOXEL_STEPS_PER_OCTAVE * np.log2(hi / lo) + 1e-9))
    ladder = np.round(lo * 2.0 ** (np.arange(n + 1) / VOXEL_STEPS_PER_OCTAVE), 6)
    ladder[0] = lo
    return ladder if ladder[-1] >= hi else np.append(ladder, hi)


def voxel_for_budget(points: np.ndarray, budget: int, lo: float, hi: float) -> float:
    """The smallest voxel of :func:`voxel_ladder` (lo, hi) whose grid leaves at most ``budget``
    of the finite (N, 3) ``points`` (``hi`` when none does): the working cloud holds at most
    ``budget`` points and, the ladder being 4.4 % steps, about that many.

    Without voxelising the cloud again and again: one Morton sort gives the occupied cells at
    every octave of voxel size (:func:`~ukpgan_ros._voxel_kernel.octave_counts`), a log-log
    interpolation between octaves picks the candidate, and one hashing pass counts the candidate
    and its two ladder neighbours exactly on the grid the working cloud uses (a second pass only
    where the estimate was off by more than a step). ~5 ms on a 124 k-point LiDAR scan.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    ladder = voxel_ladder(lo, hi)
    pts = np.ascontiguousarray(points, np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if len(pts) <= budget:
        return float(ladder[0])
    base, levels = octave_counts(pts, lo)  # raises on non-finite points
    levels = levels.astype(np.float64)
    pos = np.clip(np.log2(ladder / base), 0.0, len(levels) - 1.0)
    below = np.minimum(np.floor(pos).astype(np.int64), len(levels) - 2)
    frac = pos - below
    est = np.exp((1 - frac) * np.log(levels[below]) + frac * np.log(levels[below + 1]))
    fits = np.nonzero(est <= budget)[0]
    j = int(fits[0]) if len(fits) else len(ladder) - 1
    exact: dict[int, int] = {}
    last = len(ladder) - 1
    for _ in range(len(ladder)):
        todo = [i for i in (j - 1, j, j + 1) if 0 <= i <= last and i not in exact]
        if todo:
            counts = occupied_counts(pts, ladder[todo], expected=int(1.25 * est[todo].max()) + 16)
            exact.update(zip(todo, (int(c) for c in counts)))
        if exact[j] <= budget:
            if j == 0 or exact[j - 1] > budget:
                break
            j -= 1
        elif j == last:
            break
        elif exact[j + 1] <= budget:
            j += 1
            break
        else:
            j += 2 if j + 2 <= last else 1
    return float(ladder[j])


def choose_voxel(points: np.ndarray, voxel: float, working_points: int, max_working_points: int,
                 lo: float, hi: float) -> float:
    """The voxel a stream works at, from its first cloud (finite, range-cropped points).

    ``working_points`` > 0: the ladder voxel in [lo, hi] that leaves at most about that many
    points (close-range and room-sized scenes cost the same). Otherwise ``voxel``, unless
    ``max_working_points`` > 0 and the cloud at ``voxel`` would hold more points than that
    (a LiDAR scan, a large scene): then the smallest coarser ladder voxel (up to ``hi``) that fits.
    """
    if working_points > 0:
        return voxel_for_budget(points, working_points, lo, hi)
    if max_working_points > 0 and voxel < hi:
        return voxel_for_budget(points, max_working_points, voxel, hi)
    return voxel
