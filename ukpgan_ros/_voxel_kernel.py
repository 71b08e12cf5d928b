"""Compiled (numba) cloud preprocessing: finite + range crop and voxel-mean downsampling in two
passes over the raw points, no sort, output in order of first appearance (deterministic).

Semantics equal Open3D's ``voxel_down_sample`` (grid anchored at ``min_bound - voxel / 2`` of the
kept points, the mean of each occupied voxel computed in double), which the tests check.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["crop_voxel_mean"]


@njit(cache=True, nogil=True)
def _crop_voxel_mean(points, min_range, max_range, voxel):  # pragma: no cover - compiled
    n = points.shape[0]
    keep = np.empty(n, np.bool_)
    lo2 = np.float32(min_range) * np.float32(min_range)
    hi2 = np.float32(max_range) * np.float32(max_range)
    mn = np.full(3, np.inf)
    kept = 0
    finite = 0
    for i in range(n):
        x, y, z = points[i, 0], points[i, 1], points[i, 2]
        ok = np.isfinite(x) and np.isfinite(y) and np.isfinite(z)
        if ok:
            finite += 1
            d2 = x * x + y * y + z * z
            ok = d2 >= lo2 and d2 <= hi2
        keep[i] = ok
        if ok:
            kept += 1
            if x < mn[0]:
                mn[0] = x
            if y < mn[1]:
                mn[1] = y
            if z < mn[2]:
                mn[2] = z
    if kept == 0:
        return np.zeros((0, 3), np.float32), finite
    if voxel <= 0.0:
        out = np.empty((kept, 3), np.float32)
        j = 0
        for i in range(n):
            if keep[i]:
                out[j, 0], out[j, 1], out[j, 2] = points[i, 0], points[i, 1], points[i, 2]
                j += 1
        return out, finite
    ox, oy, oz = mn[0] - 0.5 * voxel, mn[1] - 0.5 * voxel, mn[2] - 0.5 * voxel
    size, bits = 1, 0
    while size < 2 * kept:
        size *= 2
        bits += 1
    mask = size - 1
    shift = np.uint64(64 - max(bits, 1))
    golden = np.uint64(11400714819323198485)  # 2^64 / phi: Fibonacci hashing keeps the high bits
    table = np.full(size, -1, np.int64)  # slot -> voxel id
    keys = np.empty(kept, np.int64)  # voxel id -> key
    sums = np.zeros((kept, 3), np.float64)
    counts = np.zeros(kept, np.int64)
    nvox = 0
    for i in range(n):
        if not keep[i]:
            continue
        px, py, pz = np.float64(points[i, 0]), np.float64(points[i, 1]), np.float64(points[i, 2])
        ix = np.int64(np.floor((px - ox) / voxel))
        iy = np.int64(np.floor((py - oy) / voxel))
        iz = np.int64(np.floor((pz - oz) / voxel))
        key = (ix << 42) | (iy << 21) | iz
        h = np.int64((np.uint64(key) * golden) >> shift)
        while True:
            v = table[h]
            if v < 0:
                table[h] = nvox
                keys[nvox] = key
                v = nvox
                nvox += 1
                break
            if keys[v] == key:
                break
            h = (h + 1) & mask
        sums[v, 0] += px
        sums[v, 1] += py
        sums[v, 2] += pz
        counts[v] += 1
    out = np.empty((nvox, 3), np.float32)
    for v in range(nvox):
        c = np.float64(counts[v])
        out[v, 0] = sums[v, 0] / c
        out[v, 1] = sums[v, 1] / c
        out[v, 2] = sums[v, 2] / c
    return out, finite


def crop_voxel_mean(points: np.ndarray, min_range: float, max_range: float, voxel: float) -> tuple[np.ndarray, int]:
    """(voxel means (M, 3) float32, number of finite input points) of the finite points of
    ``points`` (N, 3) whose distance from the origin lies in [min_range, max_range]; voxel <= 0
    keeps the cropped points as they are. The grid spans at most 2^21 voxels per axis."""
    pts = np.ascontiguousarray(points, np.float32)
    return _crop_voxel_mean(pts, float(min_range), float(max_range), float(voxel))
