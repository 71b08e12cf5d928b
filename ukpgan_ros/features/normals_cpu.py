"""PCA normals as a compiled CPU kernel (numba): 2-3x faster than Open3D with the same axes
(``test/test_shot_cpu.py``). The neighbours come from the grid search of
:mod:`~ukpgan_ros.features._grid`, the axes from the closed-form solver of
:mod:`~ukpgan_ros.features._eig3`; compiled on first use and run on threads by
:mod:`~ukpgan_ros.features._numba`. A pure function of NumPy arrays.
"""

from __future__ import annotations

import sys

import numpy as np

from ukpgan_ros.features import _eig3, _grid
from ukpgan_ros.features._eig3 import _add_outer, _principal_axes
from ukpgan_ros.features._grid import (_block_scratch, _keep_nearest, _runs, _within, as_cloud, bucket, check_extent,
                                       check_radius)
from ukpgan_ros.features._numba import check_threads, compile_module, run_blocks

__all__ = ["normals_cpu"]

_NORMAL_CELLS_PER_RADIUS = 1  # grid cell edge = radius (2: fewer candidates but more columns, slower)
_KERNEL_DEPS = (_grid, _eig3)
_INLINED: tuple[str, ...] = ()
_JITTED = ("_normals_block",)


def _normals_block(q_lo, q_hi, qsrc, pts, orig, start, keys, dense, origin, dims, inv_cell, slack,
                   radius, max_nn, vp, out):
    """PCA normals of the grid-sorted points ``qsrc[q_lo:q_hi]`` into rows ``orig[q]`` of
    ``out``: the smallest-eigenvalue axis of the covariance of the (at most ``max_nn``
    nearest) points within ``radius`` about their centroid, in double, facing ``vp``; NaN
    with fewer than 3 neighbours or all of them at one position."""
    px, py, pz = pts[0], pts[1], pts[2]
    j0s, j1s, size = _block_scratch(px, py, pz, qsrc, q_lo, q_hi, origin, inv_cell, slack, radius, dims,
                                    start, keys, dense)
    srow = np.empty(size, np.uint32)
    d2s = np.empty(size, np.float32)
    keep_src = np.empty(size, np.uint32)  # scratch of _keep_nearest
    keep_d2 = np.empty(size, np.float32)
    r2 = np.float32(radius * radius)
    for qk in range(q_lo, q_hi):
        qi = qsrc[qk]
        qx, qy, qz = px[qi], py[qi], pz[qi]
        m_runs = _runs(qx, qy, qz, origin, inv_cell, slack, radius, dims, start, keys, dense,
                       j0s, j1s)[0]
        cnt = _within(qx, qy, qz, px, py, pz, m_runs, j0s, j1s, r2, srow, d2s)
        row = orig[qi]
        if cnt > max_nn:
            cnt = _keep_nearest(srow, d2s, orig, cnt, max_nn, keep_src, keep_d2)
        out[row, 0] = np.nan
        out[row, 1] = np.nan
        out[row, 2] = np.nan
        if cnt < 3:
            continue
        # centroid, then the covariance about it (two passes, double)
        mx = 0.0
        my = 0.0
        mz = 0.0
        for k in range(cnt):
            j = srow[k]
            mx += np.float64(px[j])
            my += np.float64(py[j])
            mz += np.float64(pz[j])
        mx /= cnt
        my /= cnt
        mz /= cnt
        c_xx = c_xy = c_xz = c_yy = c_yz = c_zz = 0.0
        for k in range(cnt):
            j = srow[k]
            ex = np.float64(px[j]) - mx
            ey = np.float64(py[j]) - my
            ez = np.float64(pz[j]) - mz
            c_xx, c_xy, c_xz, c_yy, c_yz, c_zz = _add_outer(c_xx, c_xy, c_xz, c_yy, c_yz, c_zz,
                                                            ex, ey, ez, ex, ey, ez)
        v0, v1, v2, w0, w1, w2, ok = _principal_axes(c_xx, c_xy, c_xz, c_yy, c_yz, c_zz)
        if not ok:  # all the points at one position
            continue
        flip = (vp[0] - qx) * w0 + (vp[1] - qy) * w1 + (vp[2] - qz) * w2 < 0
        s = -1.0 if flip else 1.0
        out[row, 0] = np.float32(s * w0)
        out[row, 1] = np.float32(s * w1)
        out[row, 2] = np.float32(s * w2)


def normals_cpu(
    points: np.ndarray,
    radius: float,
    viewpoint=(0.0, 0.0, 0.0),
    *,
    max_nn: int | None = 30,
    threads: int | None = None,
) -> np.ndarray:
    """PCA normals ``(N, 3)`` float32: for every point the smallest-eigenvalue axis of the
    covariance (about the centroid, in double) of its neighbours within ``radius`` (the point
    included), at most the ``max_nn`` nearest of them (Open3D's hybrid search, the pipeline's
    ``estimate_normals`` with max_nn = 30; ``None``: all, like PCL's radius search), flipped to
    face ``viewpoint``. Points with fewer than 3 neighbours get NaN (SHOT skips them).
    """
    pts = as_cloud(points, "points")
    if pts.shape[0] == 0:
        raise ValueError("points is empty")
    if not np.isfinite(pts).all():
        raise ValueError("points contains NaN or inf")
    r = check_radius(radius)
    vp = np.asarray(viewpoint, np.float64)
    if vp.shape != (3,) or not np.isfinite(vp).all():
        raise ValueError(f"viewpoint must be 3 finite numbers, got {viewpoint!r}")
    if max_nn is None:
        cap = pts.shape[0]
    elif isinstance(max_nn, (bool, np.bool_)) or not isinstance(max_nn, (int, np.integer)) \
            or max_nn < 3:
        raise ValueError(f"max_nn must be an integer >= 3 or None, got {max_nn!r}")
    else:
        cap = int(max_nn)
    threads = check_threads(threads)
    check_extent(pts, r)
    compile_module(sys.modules[__name__])
    grid = bucket(pts, None, r, _NORMAL_CELLS_PER_RADIUS)
    out = np.empty(pts.shape, np.float32)
    run_blocks(_normals_block, (grid.queries, grid.points, *grid.search, r, cap, vp, out), pts.shape[0], threads)
    return out
