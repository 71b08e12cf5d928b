"""SHOT local reference frames (PCL ``SHOTLocalReferenceFrameEstimation``) in torch.

The covariance of the neighbours' offsets from the query point, weighted by ``R - d``; x is the
eigenvector of the largest eigenvalue, z of the smallest, each pointed towards the majority of
the offsets (ties go to the five neighbours around the median distance); y = z x x. See
:mod:`ukpgan_ros.features.shot` for the agreement with PCL and the deliberate deviations.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ukpgan_ros.features._ops import _as_points, _check_radius, _offsets, _principal_axes, _segment_sum
from ukpgan_ros.features._pool import _run_blocks
from ukpgan_ros.features.neighbors import _check_cloud, _iter_chunks, build_grid, default_chunk_size

__all__ = ["shot_lrf", "MIN_NEIGHBORS"]

MIN_NEIGHBORS = 5  # PCL: a frame needs 5 distinct neighbours


class _Frames(NamedTuple):
    lrf: Tensor  # [nq, 3, 3] float32 rows x, y, z
    valid: Tensor  # [nq] bool
    xyz: tuple[Tensor, Tensor, Tensor]  # [P] x, y, z of the neighbour offsets in the frame
    use: Tensor  # [P] 1.0 where the pair is not at the query's own position, else 0.0
    dist: Tensor  # [P] |offset|
    z_axis: Tensor  # [3, P] unsigned z axis of the pair's query
    z_sign: Tensor  # [P] sign that turns ``z_axis`` into the frame's z



def _tie_votes(
    ties: Tensor, s: Tensor, d2: Tensor, kept: Tensor, n: Tensor
) -> Tensor:
    """PCL's fallback when an axis has as many offsets on each side (``2 * #(s >= 0) == n``).

    For the queries flagged in ``ties`` ([nq] bool) and each row of ``s`` ([k, P] projections),
    counts ``s > 0`` among the five distinct neighbours around the median distance (ranks
    n//2 - 2 .. n//2 + 2 in increasing distance, ties in distance broken by grid order) and
    returns the counts [k, nq] (the axis is kept when at least 3 of 5 agree). Only the pairs of
    tied queries are touched: they are contiguous runs of the query-grouped pairs.
    """
    votes = torch.zeros(s.shape[0], ties.shape[0], dtype=s.dtype, device=s.device)
    tq = torch.nonzero(ties).squeeze(1)
    length = kept.index_select(0, tq)
    start = (torch.cumsum(kept, 0) - kept).index_select(0, tq)
    total = int(length.sum())
    seg = torch.repeat_interleave(length, output_size=total)  # position in ``tq``
    shift = start - (torch.cumsum(length, 0) - length)
    sel = torch.arange(total, device=s.device) + shift.index_select(0, seg)
    distinct = torch.nonzero(d2.index_select(0, sel) > 0).squeeze(1)
    sel, seg = sel.index_select(0, distinct), seg.index_select(0, distinct)
    perm = torch.argsort(d2.index_select(0, sel), stable=True)
    perm = perm.index_select(0, torch.argsort(seg.index_select(0, perm), stable=True))
    sel, seg = sel.index_select(0, perm), seg.index_select(0, perm)
    n_t = n.index_select(0, tq)
    first = torch.cumsum(n_t, 0) - n_t
    rank = torch.arange(sel.numel(), device=s.device) - first.index_select(0, seg)
    mid = torch.div(n_t, 2, rounding_mode="floor").index_select(0, seg)
    pick = ((rank >= mid - 2) & (rank <= mid + 2)).to(s.dtype)
    pos = (s.index_select(1, sel) > 0).to(s.dtype) * pick
    return votes.index_add_(1, tq.index_select(0, seg), pos)


def _frames(
    qid: Tensor, delta: Tensor, d2: Tensor, kept: Tensor, radius: float
) -> _Frames:
    """SHOT LRF for a chunk of pairs: ``delta`` [3, P] = neighbour - query, ``d2`` = |delta|^2,
    ``kept`` [nq] = pairs per query. Also returns each pair's offset in its frame.

    The covariance is not divided by the weight sum: eigenvectors do not depend on its scale,
    and "weight sum > 0" (PCL's NaN check) is "trace > 0".
    """
    dx, dy, dz = delta[0], delta[1], delta[2]
    p = d2.shape[0]
    dist = torch.sqrt(d2)
    wd = delta * torch.sub(radius, dist)  # coincident points have delta = 0 and add nothing
    terms = torch.empty(6, p, dtype=delta.dtype, device=delta.device)
    torch.mul(wd[0], dx, out=terms[0])
    torch.mul(wd[0], dy, out=terms[1])
    torch.mul(wd[0], dz, out=terms[2])
    torch.mul(wd[1], dy, out=terms[3])
    torch.mul(wd[1], dz, out=terms[4])
    torch.mul(wd[2], dz, out=terms[5])
    off = _offsets(kept)
    c = _segment_sum(terms, off).to(torch.float64)
    v1, v3, ok = _principal_axes(c)
    v1 = v1.to(delta.dtype)  # largest eigenvalue: x axis up to sign
    v3 = v3.to(delta.dtype)  # smallest eigenvalue: z axis up to sign
    y0 = torch.linalg.cross(v3, v1, dim=1)  # y axis up to sign
    g = torch.cat([v1, v3, y0], dim=1).t().contiguous().index_select(1, qid)  # [9, P]
    s = torch.empty(3, p, dtype=delta.dtype, device=delta.device)
    for k in range(3):
        torch.mul(dx, g[3 * k], out=s[k])
        s[k].addcmul_(dy, g[3 * k + 1]).addcmul_(dz, g[3 * k + 2])
    # PCL counts offsets with s >= 0 among distinct neighbours; coincident ones have s == 0.
    # 0/1 flags from sign() and clamp: several times cheaper than comparisons on CPU.
    use = torch.sign(d2)  # 0 for a neighbour at the query's own position, else 1
    flags = torch.empty(3, p, dtype=delta.dtype, device=delta.device)
    torch.sign(s[:2], out=flags[:2])
    flags[:2].clamp_(max=0).add_(1)  # s >= 0
    torch.sub(1, use, out=flags[2])  # coincident
    cnt = _segment_sum(flags, off).round_().long()
    n = kept - cnt[2]
    ok &= n >= MIN_NEIGHBORS
    t = 2 * (cnt[:2] - cnt[2]) - n  # [2, nq]: majority margin of x and z
    sign = torch.where(t < 0, -1.0, 1.0).to(delta.dtype)
    ties = ((t == 0) & ok).any(0)
    if bool(ties.any()):
        votes = _tie_votes(ties, s[:2], d2, kept, n)
        sign = torch.where(t == 0, torch.where(votes >= 3, 1.0, -1.0).to(delta.dtype), sign)
    x_axis = v1 * sign[0, :, None]
    z_axis = v3 * sign[1, :, None]
    y_axis = torch.linalg.cross(z_axis, x_axis, dim=1)
    lrf = torch.stack([x_axis, y_axis, z_axis], dim=1)
    lrf = torch.where(ok[:, None, None], lrf, 0.0)
    sg = sign.index_select(1, qid)  # [2, P]
    s[0].mul_(sg[0])
    s[2].mul_(sg[0]).mul_(sg[1])
    s[1].mul_(sg[1])
    return _Frames(lrf, ok, (s[0], s[2], s[1]), use, dist, g[3:6], sg[1])



def shot_lrf(
    points: Tensor,
    queries: Tensor,
    radius: float,
    neighbors=None,
    *,
    max_neighbors: int | None = None,
    chunk_size: int | None = None,
    workers: int | None = None,
) -> Tensor:
    """SHOT local reference frames ``[Q, 3, 3]`` (rows x, y, z) of ``queries`` over ``points``.

    ``neighbors`` (a padded :class:`~ukpgan_ros.neighbors.Neighbors` of ``queries`` within
    ``radius``) skips the search. Rows of queries with fewer than 5 distinct neighbours are zero.
    """
    radius = _check_radius(radius)
    points = _as_points(points)
    _check_cloud(queries, "queries", allow_empty=True)
    queries = queries.to(device=points.device, dtype=torch.float32)
    nq = queries.shape[0]
    out = torch.zeros(nq, 3, 3, dtype=torch.float32, device=points.device)
    if nq == 0:
        return out
    if neighbors is not None:
        idx = neighbors.idx
        if idx.dim() != 2 or idx.shape[0] != nq:
            raise ValueError("neighbors must have one row per query")
        qid, col = torch.nonzero(idx >= 0, as_tuple=True)
        pid = idx[qid, col]
        delta = (points.index_select(0, pid) - queries.index_select(0, qid)).t()
        d2 = delta[0] * delta[0] + delta[1] * delta[1] + delta[2] * delta[2]
        fr = _frames(qid, delta, d2, torch.bincount(qid, minlength=nq), radius)
        return fr.lrf
    grid = build_grid(points, radius)
    cap = max_neighbors or points.shape[0]
    chunk_size = chunk_size or default_chunk_size(points.device)

    def block(q0: int, q1: int) -> None:
        for ch in _iter_chunks(grid, queries[q0:q1], None, radius, cap, chunk_size,
                               1024 * chunk_size):
            fr = _frames(ch.qid, ch.delta, ch.dist2, ch.counts.clamp(max=cap), radius)
            out[q0 + ch.q0:q0 + ch.q0 + ch.nq] = fr.lrf

    _run_blocks(nq, chunk_size, points.device, block, workers)
    return out
