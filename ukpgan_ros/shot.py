"""SHOT local reference frames and descriptors in torch, equal to PCL 1.13, on any device.

SHOT (Signature of Histograms of OrienTations; Salti, Tombari, Di Stefano, CVIU 2014) describes
the sphere of radius R around a point in a repeatable local reference frame (LRF):

* LRF (PCL ``SHOTLocalReferenceFrameEstimation``): the covariance of the neighbours' offsets from
  the query point (not from their centroid), each weighted by ``R - d``; x is the eigenvector of
  the largest eigenvalue, z of the smallest, each pointed towards the majority of the offsets
  (ties go to the five neighbours around the median distance); y = z x x.
* Descriptor (PCL ``SHOTEstimation``): 32 volumes (8 azimuth x 2 elevation x 2 radial shells split
  at R/2) each hold an 11-bin histogram of ``cos(normal of the neighbour, LRF z)``. Every
  neighbour votes into its own bin with weight ``4 - sum of four distances`` and into the
  adjacent cosine bin, radial shell, elevation half and azimuth sector with those distances
  (PCL's additive "quadrilinear" interpolation); the 352 values are L2-normalised.

Everything is computed on flat (query, neighbour) pairs from :mod:`ukpgan_ros.neighbors`, query
chunk by query chunk, with gathers, segment sums and one ``scatter_add_`` per chunk: no Python
loop over points, no padding, no ``N x N`` tensor. PCL's rules are reproduced exactly, including
its quirks:

* the covariance is centred on the query point; neighbours at the query's exact position are
  skipped, and a frame needs 5 distinct neighbours;
* the cosine bin step is computed in double like PCL and the adjacent cosine bin wraps modulo 10
  (not 11): a cosine just below 0.9 interpolates into bin 0;
* every other vote (radial, elevation, azimuth) goes to the *rounded* cosine bin, so PCL's
  histogram jumps at cosine-bin edges; offsets on the x/y axes and diagonals take PCL's sector;
* neighbours with a NaN normal are skipped in the histogram but still shape the frame;
* on the z axis (x = y = 0) a neighbour has no azimuth vote and sits in sector 0.

Against PCL 1.13 (``../shared/fixtures/shot_pcl_3dmatch_r030.npz``, 1000 points, r = 0.3 m) frames
agree to 1.8e-7 (median) / 2.4e-5 (max) and descriptors to 9e-8 / 2e-6 per bin (cosine
similarity > 0.9999999 for all). A slow double-precision transcription of PCL (in the tests)
matches PCL's frames bit for bit, so the residual is this module's float32 covariance sums:
the error grows as 1/eigen-gap (2.4e-5 at a relative gap of 3e-3). Deliberate deviations:

* per-pair arithmetic is float32; only the 3x3 eigen-problems run in float64, in closed form
  (agrees with LAPACK to 1e-9 where the axes are defined; where an eigenvalue repeats any
  solver's axis is arbitrary, PCL's included);
* the elevation angle is ``atan2(hypot(x, y), z)``, not ``acos(z / d)``: equal in exact
  arithmetic, but float32 ``acos`` loses ~1e-4 rad next to the z axis;
* the sign-vote tie rule ranks neighbours at equal distance by grid order (PCL: KD-tree order);
* invalid points (fewer than 5 distinct neighbours, degenerate frame) get zero descriptors and
  frames with ``valid = False`` where PCL writes NaN;
* ``max_neighbors`` (default: none) keeps only the nearest neighbours; PCL has no such cap.

Speed (``benchmarks/bench_shot.py``, 3DMatch ``cloud_bin_0``, every point described, normals
given; this 2-core VM was shared with other jobs, load average 2-5.5, so ranges are given):
19 k points at 2.5 cm, r = 0.15 m: 0.28-0.4 s with 2 workers when the cores are free, 0.50-0.57 s
on one thread, 0.8 s with 2 workers at load 5.5; PCL's ``SHOTEstimationOMP`` (2 threads): 1.13 s.
5.2 k points at 5 cm, r = 0.3 m: 0.12 s (2 OpenMP threads, load 2), 0.15 s (1 thread, load 5.5),
0.20 s (2 workers, load 5.5); PCL: 0.21-0.37 s. CPU chunks run on single-threaded worker threads
(``_cpu_pool``, ``workers`` argument): torch's own OpenMP threads end each of the hundreds of
small ops per chunk in a barrier, which made 2 threads 10-50x slower (5-30 s) whenever another
process held a core; workers degrade gracefully, and on a saturated machine ``workers=1`` is
fastest. On CUDA the same code runs in large chunks and synchronises the device only to size a
few tensors per chunk (never via ``linalg.eigh``). A ``batch`` vector describes many small
clouds (UKPGAN training shapes) in one call.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ukpgan_ros.neighbors import (
    RadiusGrid,
    _check_batch,
    _check_cloud,
    _iter_chunks,
    build_grid,
    default_chunk_size,
)

__all__ = [
    "SHOT_DIM",
    "ShotResult",
    "shot_lrf",
    "shot_descriptors",
    "estimate_normals",
    "compute_shot",
]

SHOT_DIM = 352
_N_BINS = 10  # PCL's nr_shape_bins_: 11 bins per volume, interpolation wraps modulo 10
_MIN_NEIGHBORS = 5
_PI = math.pi


class ShotResult(NamedTuple):
    """descriptors ``[Q, 352]`` (unit L2 norm, zero where invalid), lrf ``[Q, 3, 3]`` (rows are
    the x, y, z axes, zero where invalid), valid ``[Q]`` bool."""

    descriptors: Tensor
    lrf: Tensor
    valid: Tensor


class _Frames(NamedTuple):
    lrf: Tensor  # [nq, 3, 3] float32 rows x, y, z
    valid: Tensor  # [nq] bool
    xyz: tuple[Tensor, Tensor, Tensor]  # [P] x, y, z of the neighbour offsets in the frame
    use: Tensor  # [P] 1.0 where the pair is not at the query's own position, else 0.0
    dist: Tensor  # [P] |offset|
    z_axis: Tensor  # [3, P] unsigned z axis of the pair's query
    z_sign: Tensor  # [P] sign that turns ``z_axis`` into the frame's z


class _Clock:
    """Adds wall time per stage to ``timings`` (no-op when it is None)."""

    def __init__(self, timings: dict[str, float] | None, device: torch.device):
        self.timings, self.cuda, self.t = timings, device.type == "cuda", 0.0
        self.device = device

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        if self.timings is not None:
            self.t = self._now()

    def stop(self, key: str) -> None:
        if self.timings is not None:
            t = self._now()
            self.timings[key] = self.timings.get(key, 0.0) + t - self.t
            self.t = t


def _check_radius(radius: float, name: str = "radius") -> float:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(radius).__name__}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"{name} must be positive and finite, got {radius}")
    return float(radius)


def _offsets(kept: Tensor) -> Tensor:
    """CSR offsets [nq + 1] of query-grouped pairs from the number of pairs per query."""
    off = torch.zeros(kept.shape[0] + 1, dtype=torch.long, device=kept.device)
    torch.cumsum(kept, 0, out=off[1:])
    return off


def _segment_sum(values: Tensor, offsets: Tensor) -> Tensor:
    """Per-query sums of the rows of ``values`` ([k, P], pairs grouped by query) -> [k, nq].

    ``segment_reduce`` on CSR offsets: 2-3x faster than ``index_add_`` on CPU and exact
    (sequential sums, no atomics); ``index_add_`` where a backend lacks it.
    """
    k = values.shape[0]
    try:
        off = offsets.expand(k, -1).contiguous()
        return torch.segment_reduce(values, "sum", offsets=off, axis=1, unsafe=True)
    except (RuntimeError, NotImplementedError):
        kept = offsets[1:] - offsets[:-1]
        qid = torch.repeat_interleave(kept, output_size=values.shape[1])
        out = torch.zeros(k, kept.shape[0], dtype=values.dtype, device=values.device)
        return out.index_add_(1, qid, values)


def _eigvec3(a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor, lam: Tensor
             ) -> tuple[Tensor, Tensor]:
    """Unit eigenvector of [[a b c], [b d e], [c e f]] for eigenvalue ``lam`` (batched), as the
    largest cross product of two rows of ``A - lam I``; also that cross product's squared norm
    (tiny when ``lam`` is a repeated eigenvalue and the direction is not defined)."""
    r0 = torch.stack([a - lam, b, c], -1)
    r1 = torch.stack([b, d - lam, e], -1)
    r2 = torch.stack([c, e, f - lam], -1)
    cands = torch.stack([torch.linalg.cross(r0, r1, dim=-1), torch.linalg.cross(r0, r2, dim=-1),
                         torch.linalg.cross(r1, r2, dim=-1)], 1)  # [nq, 3, 3]
    n2 = (cands * cands).sum(-1)
    best, k = n2.max(1)
    v = torch.gather(cands, 1, k[:, None, None].expand(-1, 1, 3)).squeeze(1)
    return v / best.clamp(min=1e-300).sqrt()[:, None], best


def _principal_axes(cov6: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenvectors of the largest and smallest eigenvalue of symmetric 3x3 matrices in float64,
    given as rows ``xx, xy, xz, yy, yz, zz`` of ``cov6`` [6, nq]; and a validity flag.

    Closed form (trigonometric eigenvalues, eigenvectors from cross products): one vectorised
    pass, several times faster than LAPACK's per-matrix calls on CPU, and unlike
    ``torch.linalg.eigh`` it never synchronises a CUDA device. Where an eigenvalue is repeated
    the direction is arbitrary (as in any solver) and a vector orthogonal to the other axis is
    returned; PCL's result is arbitrary there too.
    """
    a, b, c, d, e, f = cov6
    m = (a + d + f) / 3
    a_, d_, f_ = a - m, d - m, f - m
    p2 = (a_ * a_ + d_ * d_ + f_ * f_ + 2 * (b * b + c * c + e * e)) / 6
    q = (a_ * (d_ * f_ - e * e) - b * (b * f_ - e * c) + c * (b * e - d_ * c)) / 2
    p = p2.sqrt()
    r = (q / (p2 * p).clamp(min=1e-300)).clamp(-1.0, 1.0)
    phi = torch.acos(r) / 3
    lam_max = m + 2 * p * torch.cos(phi)
    lam_min = m + 2 * p * torch.cos(phi + 2 * _PI / 3)
    v_max, n_max = _eigvec3(a, b, c, d, e, f, lam_max)
    v_min, n_min = _eigvec3(a, b, c, d, e, f, lam_min)
    scale = (p2 * 6) ** 2  # ~ squared norm of the rows' cross products when eigenvalues differ
    ok_max = n_max > 1e-24 * scale
    ok_min = n_min > 1e-24 * scale
    # repeated eigenvalue: take a unit vector orthogonal to the well-defined axis
    def orth(v: Tensor) -> Tensor:
        axis = torch.zeros_like(v).scatter_(1, v.abs().argmin(1, keepdim=True), 1.0)
        w = torch.linalg.cross(v, axis, dim=1)
        return w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
    ex = torch.zeros_like(v_max)
    ex[:, 0] = 1
    ez = torch.zeros_like(v_max)
    ez[:, 2] = 1
    v_max_fb = torch.where(ok_min[:, None], orth(v_min), ex)
    v_min_fb = torch.where(ok_max[:, None], orth(v_max), ez)
    v_max = torch.where(ok_max[:, None], v_max, v_max_fb)
    v_min = torch.where(ok_min[:, None], v_min, v_min_fb)
    ok = torch.isfinite(cov6).all(0) & (a + d + f > 0)
    return v_max, v_min, ok


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
    nq = kept.shape[0]
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
    ok &= n >= _MIN_NEIGHBORS
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


_LUTS: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _luts(device: torch.device) -> tuple[Tensor, Tensor]:
    """The two small lookup tables of :func:`_histograms`, built once per device."""
    if device not in _LUTS:
        _LUTS[device] = (_cos_neighbor_lut().to(device), _sector_lut().to(device))
    return _LUTS[device]


def _cos_neighbor_lut() -> Tensor:
    """Adjacent cosine bin, indexed by ``2 * step + (residual > 0)``: PCL's ``(step -+ 1) % 10``."""
    step = torch.arange(_N_BINS + 1).repeat_interleave(2)
    up = torch.arange(2).repeat(_N_BINS + 1)
    return torch.remainder(step + 2 * up - 1, _N_BINS).to(torch.float32)


def _sector_lut() -> Tensor:
    """PCL's azimuth sector (0..7) and whether the azimuth is defined, indexed by
    ``9 * (sign(x) + 1) + 3 * (sign(y) + 1) + sign(|x| - |y|) + 1``; shape [2, 27].

    PCL decides the quadrant with ``y > 0 || (y == 0 && x < 0)`` and
    ``x > 0 || (x == 0 && y > 0)`` and the half-quadrant by comparing |x| and |y|, so an offset
    on an axis or a diagonal belongs to the sector before it (counter-clockwise from -pi);
    offsets on the z axis (x = y = 0) fall in sector 0 without azimuth interpolation.
    """
    table = torch.zeros(2, 27)
    for sx in (-1, 0, 1):
        for sy in (-1, 0, 1):
            for sd in (-1, 0, 1):
                upper = sy > 0 or (sy == 0 and sx < 0)
                right = sx > 0 or (sx == 0 and sy > 0)
                odd = upper != right  # quadrants where the second sector has |x| > |y|
                half = sd > 0 if odd else sd < 0
                k = 9 * (sx + 1) + 3 * (sy + 1) + sd + 1
                table[0, k] = 4 * upper + 2 * odd + half
                table[1, k] = 0.0 if sx == 0 and sy == 0 else 1.0
    return table


def _histograms(
    qid: Tensor,
    xyz: tuple[Tensor, Tensor, Tensor],
    dist: Tensor,
    cosine: Tensor,
    weight: Tensor,
    nq: int,
    radius: float,
) -> Tensor:
    """Un-normalised SHOT histograms [nq, 352] from pairs in LRF coordinates.

    ``cosine`` = neighbour normal . LRF z per pair; ``weight`` (0/1) drops pairs. Coordinates
    are used as they are: PCL also zeroes |v| < 1e-30, which float32 offsets of metric clouds
    never produce except as exact zeros. Written for speed on CPU, where comparisons, bool
    conversions and ``where`` cost 3-30x a multiply: flags are 0/1 floats made with ``sign`` and
    ``clamp``, the sector comes from a 27-entry table, bin indices become int32 once.
    """
    x, y, z = xyz
    dt = x.dtype
    dev = x.device

    values = torch.empty(5, x.shape[0], dtype=dt, device=dev)  # votes: own, cos, rad, inc, az

    # cosine bin ``step`` (0..10) and the adjacent one; PCL wraps the adjacent bin modulo 10.
    # In double like PCL: every bin edge moves the other votes to another bin, and float32
    # rounds e.g. cos = 0.9f onto the edge 9.5 where PCL's double stays below it.
    b = cosine.to(torch.float64).clamp_(-1.0, 1.0).add_(1.0).mul_(_N_BINS / 2)
    step64 = torch.floor(b + 0.5)
    res64 = b.sub_(step64)  # in [-0.5, 0.5)
    step = step64.to(dt)
    key = torch.sign(res64).clamp_(min=0).to(dt).add_(step, alpha=2)
    cos_lut, lut = _luts(dev)
    cos_nbr = cos_lut.index_select(0, key.to(torch.int32))
    values[1].copy_(res64.abs_())  # |residual|: the vote for the adjacent cosine bin

    # azimuth sector and its defined-ness from the signs of x, y and |x| - |y|
    ax, ay = x.abs(), y.abs()
    code = torch.sign(x).mul_(9).add_(torch.sign(y), alpha=3).add_(torch.sign(ax.sub_(ay))).add_(13)
    code = code.to(torch.int32)
    sector = lut[0].index_select(0, code)
    has_az = lut[1].index_select(0, code)
    up = torch.sign(z).clamp_(min=0)  # z > 0
    outer = torch.sub(dist, radius / 2).sign_().clamp_(min=0)  # dist > R/2
    desc = sector * 4 + outer * 2 + up

    # radial distance from the shell's centre (R/4 or 3R/4) in units of R/2; the other shell
    # gets |rd| only when moving towards it
    rd = torch.mul(dist, 2 / radius).sub_(outer).sub_(0.5)
    torch.mul(rd, 1 - 2 * outer, out=values[2]).clamp_(min=0)

    # elevation distance from the half's centre (45 or 135 degrees) in units of 90 degrees
    inc_d = torch.atan2(torch.hypot(x, y), z).mul_(2 / _PI).sub_(1.5).add_(up)
    torch.mul(inc_d, 2 * up - 1, out=values[3]).clamp_(min=0)

    # azimuth distance from the sector's centre in units of 45 degrees; none on the z axis
    az_d = torch.atan2(y, x).mul_(4 / _PI).add_(3.5).sub_(sector).clamp_(-0.5, 0.5)
    az_pos = torch.sign(az_d).clamp_(min=0)  # the adjacent sector is the next one
    torch.mul(az_d.abs_(), has_az, out=values[4])

    torch.add(values[1], rd.abs_(), out=values[0])
    values[0].add_(inc_d.abs_()).add_(values[4]).sub_(has_az).sub_(3).neg_()  # own: 4 - distances
    values.mul_(weight)

    # bins: exact small integers in float32, made int64 once; the query offset added in int64
    bins = torch.empty(5, x.shape[0], dtype=dt, device=dev)
    own = desc.mul_(11)  # first bin of the pair's own volume
    torch.add(own, step, out=bins[0])
    torch.add(own, cos_nbr, out=bins[1])
    torch.add(bins[0], outer.mul_(-44).add_(22), out=bins[2])  # other shell: -+2 volumes
    torch.add(bins[0], up.mul_(-22).add_(11), out=bins[3])  # other half: -+1 volume
    # adjacent sector: +-4 volumes, wrapping around the 32 volumes (352 bins)
    nbr = bins[0].add(az_pos.mul_(88).sub_(44))
    wrap = torch.sign(nbr).clamp_(max=0).neg_()  # below 0: add 352
    wrap.sub_(torch.sub(nbr, SHOT_DIM - 0.5).sign_().clamp_(min=0))  # at/above 352: subtract
    torch.add(nbr, wrap, alpha=SHOT_DIM, out=bins[4])
    index = bins.to(torch.int64).add_(qid * SHOT_DIM)
    hist = torch.zeros(nq * SHOT_DIM, dtype=dt, device=dev)
    hist.scatter_add_(0, index.view(-1), values.view(-1))  # 2x faster than index_add_ on CPU
    return hist.view(nq, SHOT_DIM)


def _as_points(points: Tensor) -> Tensor:
    _check_cloud(points, "points")
    return points.to(torch.float32)


_POOL_LOCK = threading.Lock()
_POOL: tuple[int, ThreadPoolExecutor | None] | None = None
_IN_WORKER = threading.local()


def _worker_init(barrier: threading.Barrier) -> None:
    _IN_WORKER.flag = True
    torch.get_num_threads()  # initialise this thread's OpenMP state before changing it
    torch.set_num_threads(1)  # per-thread with OpenMP: ops in this worker run single-threaded
    barrier.wait()


def _worker_check() -> bool:
    return torch.get_num_threads() == 1


def _cpu_pool(workers: int | None = None) -> ThreadPoolExecutor | None:
    """Worker threads whose torch ops run single-threaded, one per intra-op thread of the caller.

    Why: SHOT is hundreds of small tensor ops per chunk. With intra-op (OpenMP) threads each op
    ends in a barrier, and on a shared machine where another process holds a core the barriers
    turn 2 threads into a 5-10x slowdown. Independent query chunks on single-threaded workers
    scale on an idle machine and degrade gracefully on a busy one. ``torch.set_num_threads(1)``
    only changes the calling thread's OpenMP setting; the global default for new threads is
    restored right after. Returns None (run in the caller) when the caller uses one thread or
    the backend does not keep the setting per thread.
    """
    global _POOL
    caller = torch.get_num_threads()
    workers = caller if workers is None else int(workers)
    if workers <= 1 or getattr(_IN_WORKER, "flag", False):
        return None
    with _POOL_LOCK:
        if _POOL is not None and _POOL[0] == workers:
            return _POOL[1]
        if _POOL is not None and _POOL[1] is not None:
            _POOL[1].shutdown(wait=False)
        barrier = threading.Barrier(workers)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="shot", initializer=_worker_init,
                                  initargs=(barrier,))
        started = [pool.submit(_worker_check) for _ in range(workers)]
        [f.result() for f in started]
        torch.set_num_threads(caller)  # restore the process default the workers overwrote
        ok = all(f.result() for f in [pool.submit(_worker_check) for _ in range(4 * workers)])
        if not ok:
            pool.shutdown(wait=False)
            pool = None
        _POOL = (workers, pool)
        return pool


def _run_blocks(n: int, block: int, device: torch.device, fn: Callable[[int, int], None],
                workers: int | None = None) -> None:
    """``fn(start, stop)`` for consecutive blocks of ``range(n)``; on CPU the blocks are spread
    over ``workers`` :func:`_cpu_pool` threads, on CUDA they run in order in the calling thread."""
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    ranges = [(a, min(a + block, n)) for a in range(0, n, block)]
    pool = _cpu_pool(workers) if device.type == "cpu" and len(ranges) > 1 else None
    if pool is None:
        for a, b in ranges:
            fn(a, b)
        return
    for f in [pool.submit(fn, a, b) for a, b in ranges]:
        f.result()


def _grid_order(grid: RadiusGrid, idx: Tensor) -> Tensor:
    """Permutation visiting points ``idx`` in grid order: neighbouring queries share neighbours,
    which keeps every chunk's gathers local."""
    rank = torch.empty_like(grid.order)
    rank[grid.order] = torch.arange(grid.order.shape[0], device=grid.order.device)
    return torch.argsort(rank.index_select(0, idx))


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


def estimate_normals(
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


def shot_descriptors(
    points: Tensor,
    radius: float,
    normals: Tensor | None = None,
    query_idx: Tensor | None = None,
    max_neighbors: int | None = None,
    *,
    batch: Tensor | None = None,
    normal_radius: float | None = None,
    normal_k: int | None = None,
    chunk_size: int | None = None,
    workers: int | None = None,
    timings: dict[str, float] | None = None,
) -> ShotResult:
    """SHOT-352 of ``points[query_idx]`` (default: all points), using all points as the surface.

    points: ``[N, 3]`` float; computation runs in float32 on ``points.device``.
    normals: ``[N, 3]`` unit normals (rows of NaN are skipped as in PCL); ``None`` estimates them
        with :func:`estimate_normals` over ``normal_radius`` (default ``radius / 2``) or the
        ``normal_k`` nearest points (UKPGAN's reference code uses PCL with k = 40).
    batch: ``[N]`` int cloud ids; neighbourhoods never cross clouds, so a whole training batch of
        small shapes runs in one call.
    max_neighbors: keep only the nearest neighbours of crowded points (default: all, like PCL).
    chunk_size: queries per step (default 1024 on CPU, 65536 on CUDA); memory is bounded by it.
    workers: CPU threads running chunks in parallel (default ``torch.get_num_threads()``). On a
        machine whose cores are busy with other processes 1 is fastest (GIL hand-overs then
        wait for the scheduler); see the module docstring for measurements.
    timings: if a dict, seconds spent in "neighbors", "lrf" and "shot" are added to it, summed
        over worker threads (on CUDA this synchronises after every stage: profiling only).
    """
    radius = _check_radius(radius)
    points = _as_points(points)
    n_pts = points.shape[0]
    device = points.device
    _check_batch(batch, n_pts, "batch", device)
    if normals is None:
        nr = radius / 2 if normal_radius is None else _check_radius(normal_radius, "normal_radius")
        normals = estimate_normals(points, nr, k=normal_k, batch=batch, chunk_size=chunk_size,
                                   workers=workers)
    else:
        if not isinstance(normals, Tensor) or normals.shape != points.shape:
            raise ValueError(f"normals must be a tensor of shape {tuple(points.shape)}")
        if normals.device != device:
            raise ValueError(f"normals are on {normals.device}, points on {device}")
        normals = normals.to(torch.float32)
    if query_idx is None:
        query_idx = torch.arange(n_pts, device=device)
    else:
        if not isinstance(query_idx, Tensor) or query_idx.dim() != 1:
            raise ValueError("query_idx must be a 1-D integer tensor")
        if query_idx.dtype.is_floating_point or query_idx.dtype == torch.bool:
            raise ValueError(f"query_idx must be integer, got {query_idx.dtype}")
        query_idx = query_idx.to(device=device, dtype=torch.long)
        if query_idx.numel() and (int(query_idx.min()) < 0 or int(query_idx.max()) >= n_pts):
            raise ValueError(f"query_idx out of range [0, {n_pts})")
    nq = query_idx.shape[0]
    desc = torch.zeros(nq, SHOT_DIM, dtype=torch.float32, device=device)
    lrf = torch.zeros(nq, 3, 3, dtype=torch.float32, device=device)
    valid = torch.zeros(nq, dtype=torch.bool, device=device)
    if nq == 0:
        return ShotResult(desc, lrf, valid)

    grid = build_grid(points, radius, batch)
    order = _grid_order(grid, query_idx)
    qsorted = query_idx.index_select(0, order)
    queries = points.index_select(0, qsorted)
    qbatch = None if batch is None else batch.long().index_select(0, qsorted)
    nrm = normals.index_select(0, grid.order)
    nrm_ok = torch.isfinite(nrm).all(1)
    has_nan = not bool(nrm_ok.all())
    nrm_t = torch.where(nrm_ok[:, None], nrm, 0.0).t().contiguous()
    nrm_ok = nrm_ok.to(torch.float32)
    cap = max_neighbors or n_pts
    chunk_size = chunk_size or default_chunk_size(device)
    lock = threading.Lock()

    def block(q0: int, q1: int) -> None:
        qb = None if qbatch is None else qbatch[q0:q1]
        chunks = _iter_chunks(grid, queries[q0:q1], qb, radius, cap, chunk_size, 1024 * chunk_size)
        clock = _Clock(None if timings is None else {}, device)
        while True:
            clock.start()
            ch = next(chunks, None)
            clock.stop("neighbors")
            if ch is None:
                break
            fr = _frames(ch.qid, ch.delta, ch.dist2, ch.counts.clamp(max=cap), radius)
            clock.stop("lrf")
            nn = nrm_t.index_select(1, ch.src)
            zq = fr.z_axis
            cosine = (nn[0] * zq[0]).addcmul_(nn[1], zq[1]).addcmul_(nn[2], zq[2]).mul_(fr.z_sign)
            use = fr.use * nrm_ok.index_select(0, ch.src) if has_nan else fr.use
            hist = _histograms(ch.qid, fr.xyz, fr.dist, cosine, use, ch.nq, radius)
            norm = torch.linalg.vector_norm(hist, dim=1)
            ok = fr.valid & (norm > 0)
            hist.mul_((ok / norm.clamp(min=1e-30))[:, None])  # unit L2 norm, zero where invalid
            rows = order[q0 + ch.q0:q0 + ch.q0 + ch.nq]
            desc.index_copy_(0, rows, hist)
            lrf.index_copy_(0, rows, fr.lrf * ok[:, None, None])
            valid.index_copy_(0, rows, ok)
            clock.stop("shot")
        if timings is not None:
            with lock:
                for key, sec in clock.timings.items():
                    timings[key] = timings.get(key, 0.0) + sec

    _run_blocks(nq, chunk_size, device, block, workers)
    return ShotResult(desc, lrf, valid)


def compute_shot(
    points: np.ndarray,
    radius: float,
    normals: np.ndarray | None = None,
    query_idx: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    **kwargs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy front end of :func:`shot_descriptors` (``device`` may be "auto": CUDA if present).

    Returns ``(descriptors (Q, 352) float32, lrf (Q, 3, 3) float32, valid (Q,) bool)``; extra
    keyword arguments (``normal_radius``, ``normal_k``, ``max_neighbors``, ``batch``,
    ``workers``...) pass through.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1:] != (3,):
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}") from exc
    p = torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32)).to(dev)
    n = None
    if normals is not None:
        nrm = np.asarray(normals)
        if nrm.shape != pts.shape:
            raise ValueError(f"normals must have shape {pts.shape}, got {nrm.shape}")
        n = torch.from_numpy(np.ascontiguousarray(nrm, dtype=np.float32)).to(dev)
    q = None
    if query_idx is not None:
        qi = np.asarray(query_idx)
        if qi.size == 0:
            qi = np.zeros(0, np.int64)
        if qi.ndim != 1 or not np.issubdtype(qi.dtype, np.integer):
            raise ValueError("query_idx must be a 1-D integer array")
        q = torch.from_numpy(qi.astype(np.int64)).to(dev)
    if "batch" in kwargs and kwargs["batch"] is not None and not isinstance(kwargs["batch"], Tensor):
        kwargs["batch"] = torch.from_numpy(np.asarray(kwargs["batch"]).astype(np.int64)).to(dev)
    res = shot_descriptors(p, radius, n, q, **kwargs)
    return (
        res.descriptors.cpu().numpy(),
        res.lrf.cpu().numpy(),
        res.valid.cpu().numpy(),
    )
