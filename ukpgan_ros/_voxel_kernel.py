"""Compiled (numba) cloud preprocessing: finite + range crop and voxel-mean downsampling in two
passes over the raw points, no sort, output in order of first appearance (deterministic).

Semantics equal Open3D's ``voxel_down_sample`` (grid anchored at ``min_bound - voxel / 2`` of the
kept points, the mean of each occupied voxel computed in double), which the tests check.

Counting, for the choice of the voxel (:func:`ukpgan_ros.cloud.voxel_for_budget`): ``octave_counts``
gives the occupied cells at 21 octaves of cell size from one sort of Morton codes, and
``occupied_counts`` the exact occupied voxels of a few sizes on the grid above, in one pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["crop_voxel_mean", "occupied_counts", "octave_counts"]


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


@njit(cache=True, nogil=True)
def _spread_bits(v):  # pragma: no cover - compiled
    """The low 21 bits of ``v`` spread to every third bit (Morton interleaving)."""
    v &= np.uint64(0x1FFFFF)
    v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
    return v


@njit(cache=True, nogil=True)
def _morton_codes(points, lo):  # pragma: no cover - compiled
    """(base, Morton codes of the points' cells of edge ``base``): base = lo, or larger where the
    extent needs more than 2^21 cells per axis (grid anchored at min - base / 2); base < 0 when a
    coordinate is not finite."""
    n = points.shape[0]
    mn = np.full(3, np.inf)
    mx = np.full(3, -np.inf)
    for i in range(n):
        for a in range(3):
            v = points[i, a]
            if not np.isfinite(v):
                return -1.0, np.empty(0, np.uint64)
            if v < mn[a]:
                mn[a] = v
            if v > mx[a]:
                mx[a] = v
    extent = max(mx[0] - mn[0], max(mx[1] - mn[1], mx[2] - mn[2]))
    base = max(lo, extent / (2**21 - 2))
    codes = np.empty(n, np.uint64)
    for i in range(n):
        c = np.uint64(0)
        for a in range(3):
            q = np.int64(np.floor((np.float64(points[i, a]) - mn[a]) / base + 0.5))
            c |= _spread_bits(np.uint64(min(max(q, 0), 0x1FFFFF))) << np.uint64(a)
        codes[i] = c
    return base, codes


@njit(cache=True, nogil=True)
def _level_counts(codes):  # pragma: no cover - compiled
    """Occupied cells per level of sorted Morton codes: in Morton order each cell of each level is
    one run, so level l counts one plus the neighbours whose codes differ above bit 3 l."""
    changes = np.zeros(23, np.int64)  # by the first level at which two neighbours share a cell
    for i in range(1, codes.shape[0]):
        x = codes[i] ^ codes[i - 1]
        if x == 0:
            continue
        bits = 0  # bit length of x, by halving
        for s in (32, 16, 8, 4, 2, 1):
            if x >> np.uint64(s):
                x >>= np.uint64(s)
                bits += s
        bits += 1
        changes[(bits + 2) // 3] += 1
    out = np.empty(21, np.int64)
    c = 1
    for b in range(22, 0, -1):  # level l: pairs that differ above bit 3 l, i.e. changes[l + 1:]
        c += changes[b]
        if b - 1 < 21:
            out[b - 1] = c
    return out


@njit(cache=True, nogil=True)
def _occupied_counts(points, voxels, size):  # pragma: no cover - compiled
    """Occupied voxels of each size in ``voxels`` (Open3D's grid: anchored at min - voxel / 2),
    all counted in one pass over the points, one open-addressing hash set of ``size`` (a power of
    two) slots per voxel size; -1 for a size whose set filled past half (count it again larger)."""
    n, k = points.shape[0], voxels.shape[0]
    mn = np.full(3, np.inf)
    for i in range(n):
        for a in range(3):
            if points[i, a] < mn[a]:
                mn[a] = points[i, a]
    bits = 0
    while (1 << bits) < size:
        bits += 1
    mask = size - 1
    shift = np.uint64(64 - max(bits, 1))
    golden = np.uint64(11400714819323198485)
    tables = np.full((k, size), -1, np.int64)  # slot -> key (keys are >= 0)
    counts = np.zeros(k, np.int64)
    origin = np.empty((k, 3))
    for j in range(k):
        for a in range(3):
            origin[j, a] = mn[a] - 0.5 * voxels[j]
    for i in range(n):
        px, py, pz = np.float64(points[i, 0]), np.float64(points[i, 1]), np.float64(points[i, 2])
        for j in range(k):
            if counts[j] < 0:
                continue
            v = voxels[j]
            ix = np.int64(np.floor((px - origin[j, 0]) / v))
            iy = np.int64(np.floor((py - origin[j, 1]) / v))
            iz = np.int64(np.floor((pz - origin[j, 2]) / v))
            key = (ix << 42) | (iy << 21) | iz
            h = np.int64((np.uint64(key) * golden) >> shift)
            while True:
                t = tables[j, h]
                if t < 0:
                    tables[j, h] = key
                    counts[j] += 1
                    if 2 * counts[j] > size:
                        counts[j] = -1
                    break
                if t == key:
                    break
                h = (h + 1) & mask
    return counts


def octave_counts(points: np.ndarray, lo: float) -> tuple[float, np.ndarray]:
    """(base, (21,) occupied cells of edge ``base * 2^l`` for l = 0..20) of the (N, 3) ``points``
    (grid anchored at their minimum - base / 2); base is ``lo``, or larger where the extent needs
    more than 2^21 cells of ``lo`` per axis. ValueError on non-finite points."""
    pts = np.ascontiguousarray(points, np.float32)
    if len(pts) == 0:
        return float(lo), np.zeros(21, np.int64)
    base, codes = _morton_codes(pts, float(lo))
    if base < 0:
        raise ValueError("points must be finite")
    return float(base), _level_counts(np.sort(codes))


def occupied_counts(points: np.ndarray, voxels: np.ndarray, expected: int = 0) -> np.ndarray:
    """Occupied voxels of the finite (N, 3) ``points`` for each size in ``voxels``, on the grid
    :func:`crop_voxel_mean` uses (``len(crop_voxel_mean(points, 0, inf, v)[0])`` for each v), in
    one pass. ``expected``: about the largest count, to size the hash sets (small sets stay in
    cache); a count above it costs a second pass, never a wrong result."""
    pts = np.ascontiguousarray(points, np.float32)
    vox = np.ascontiguousarray(voxels, np.float64)
    if len(pts) == 0:
        return np.zeros(len(vox), np.int64)
    cap = len(pts) if expected <= 0 else min(len(pts), int(expected))
    size = 1 << max(4, int(2 * cap - 1).bit_length())  # >= 2 cap slots
    counts = _occupied_counts(pts, vox, size)
    if (counts < 0).any():  # a set filled up: count those sizes again with room for every point
        redo = counts < 0
        counts[redo] = _occupied_counts(pts, vox[redo], 1 << int(2 * len(pts)).bit_length())[:]
    return counts
