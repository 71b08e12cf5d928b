"""Surface normals: one module, two variants named for what they run on.

* :func:`estimate_normals` — NumPy in, Open3D's hybrid radius/k-NN PCA semantics (compiled),
  oriented towards the sensor: what the pipeline's working cloud uses.
* :func:`estimate_normals_torch` — torch tensors on any device, PCL ``NormalEstimation``
  semantics (radius or exact k nearest), batched over many small clouds: what training and
  SHOT without given normals use.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["estimate_normals", "estimate_normals_torch"]


def estimate_normals(
    points: np.ndarray,
    radius: float,
    max_nn: int = 30,
    viewpoint: np.ndarray | None = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Unit normals from a hybrid radius/k-NN PCA (Open3D's semantics: the ``max_nn`` nearest
    points within ``radius``), flipped to face ``viewpoint``; compiled
    (:func:`~ukpgan_ros.features.normals_cpu.normals_cpu`, 2-3x faster than Open3D, which the tests
    compare it with).

    Depth sensors see surfaces from their origin, so orienting towards it makes normals (and
    everything built on them: FPFH, SHOT's cosine bins) consistent between frames.
    ``viewpoint=None`` means the caller does not care about the sign (it is then the one facing
    the origin). Points with fewer than 3 neighbours get (0, 0, 1).
    """
    from ukpgan_ros.features.normals_cpu import normals_cpu

    pts = np.ascontiguousarray(points, dtype=np.float32)
    if len(pts) == 0:
        return np.zeros((0, 3), np.float32)
    normals = normals_cpu(pts, radius, (0.0, 0.0, 0.0) if viewpoint is None else viewpoint, max_nn=int(max_nn))
    bad = ~np.isfinite(normals).all(axis=1)
    if bad.any():
        normals[bad] = (0.0, 0.0, 1.0)
    return normals


def estimate_normals_torch(
    points: Tensor,
    radius: float,
    *,
    k: int | None = None,
    batch: Tensor | None = None,
    viewpoint: tuple[float, float, float] = (0.0, 0.0, 0.0),
    chunk_size: int | None = None,
    workers: int | None = None,
) -> Tensor:
    """PCA normals ``[N, 3]`` like PCL's ``NormalEstimation``: the smallest-eigenvalue direction
    of the neighbours' covariance about their centroid, flipped to face ``viewpoint``.

    Neighbours are all points within ``radius`` (the point included), or with ``k`` the ``k``
    nearest points (PCL's ``setKSearch(k)``, used by UKPGAN's reference code with k = 40):
    ``radius`` is then only the first search radius, doubled for the points that have fewer
    than ``k`` within it. Points with fewer than 3 neighbours get NaN, as in PCL.
    """
    import torch  # torch loads only where the torch variant is used

    from ukpgan_ros.features._ops import _as_points, _check_radius, _grid_order, _offsets, _principal_axes, _segment_sum
    from ukpgan_ros.features._pool import _run_blocks
    from ukpgan_ros.features.neighbors import _check_batch, _iter_chunks, build_grid, default_chunk_size

    radius = _check_radius(radius)
    points = _as_points(points)
    if k is not None and int(k) < 3:
        raise ValueError(f"k must be >= 3, got {k}")
    n_pts = points.shape[0]
    device = points.device
    _check_batch(batch, n_pts, "batch", device)
    grid = build_grid(points, radius, batch)
    order = _grid_order(grid, torch.arange(n_pts, device=device))
    queries = points.index_select(0, order)
    qbatch = None if batch is None else batch.long().index_select(0, order)
    cap = int(k) if k is not None else n_pts
    if k is not None:  # a point can have at most the points of its own cloud as neighbours
        sizes = torch.bincount(batch.long()) if batch is not None else torch.tensor([n_pts])
        wanted = sizes.to(device).clamp(max=cap)
        wanted = wanted.index_select(0, qbatch) if qbatch is not None else wanted.expand(n_pts)
    chunk_size = chunk_size or default_chunk_size(device)
    out = torch.full((n_pts, 3), float("nan"), dtype=torch.float32, device=device)
    vp = torch.tensor(viewpoint, dtype=torch.float32, device=device)
    extent = float((points.max(0).values - points.min(0).values).norm())

    def solve(todo: Tensor, r: float, last: bool) -> Tensor:
        """Normals of the (grid-ordered) queries ``todo`` with search radius ``r``; returns
        those that found fewer than ``k`` neighbours (unless ``last``)."""
        short: list[Tensor] = []
        lock = threading.Lock()
        grid_r = grid if r == radius else build_grid(points, r, batch)  # cells sized for r

        def block(q0: int, q1: int) -> None:
            sel = todo[q0:q1]
            qb = None if qbatch is None else qbatch.index_select(0, sel)
            for ch in _iter_chunks(grid_r, queries.index_select(0, sel), qb, r, cap, chunk_size,
                                   1024 * chunk_size):
                rows = sel[ch.q0:ch.q0 + ch.nq]
                kept = ch.counts.clamp(max=cap)
                done = torch.ones_like(kept, dtype=torch.bool)
                if k is not None and not last:
                    done = kept >= wanted.index_select(0, rows)
                    with lock:
                        short.append(rows[~done])
                d = ch.delta
                terms = torch.stack([d[0], d[1], d[2], d[0] * d[0], d[0] * d[1], d[0] * d[2],
                                     d[1] * d[1], d[1] * d[2], d[2] * d[2]])
                sums = _segment_sum(terms, _offsets(kept)).to(torch.float64)
                cnt = kept.to(torch.float64)
                m = sums[:3] / cnt
                e = sums[3:] / cnt
                cov6 = torch.stack([e[0] - m[0] * m[0], e[1] - m[0] * m[1], e[2] - m[0] * m[2],
                                    e[3] - m[1] * m[1], e[4] - m[1] * m[2], e[5] - m[2] * m[2]])
                normal = _principal_axes(torch.nan_to_num(cov6))[1].to(torch.float32)
                p = queries.index_select(0, rows)
                flip = ((vp - p) * normal).sum(1) < 0
                normal = torch.where(flip[:, None], -normal, normal)
                normal = torch.where((done & (kept >= 3))[:, None], normal, float("nan"))
                out.index_copy_(0, order.index_select(0, rows), normal)

        _run_blocks(todo.shape[0], chunk_size, device, block, workers)
        return torch.cat(short) if short else todo[:0]

    todo = torch.arange(n_pts, device=device)
    r = radius
    while todo.numel():
        last = k is None or r > extent
        todo = solve(todo, r, last)
        r *= 2
    return out
