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
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ukpgan_ros.device import resolve_device
from ukpgan_ros.features._ops import _as_points, _check_radius, _Clock, _grid_order
from ukpgan_ros.features._pool import _run_blocks
from ukpgan_ros.features.lrf import _frames
from ukpgan_ros.features.neighbors import _check_batch, _iter_chunks, build_grid, default_chunk_size
from ukpgan_ros.features.normals import estimate_normals_torch

__all__ = ["SHOT_DIM", "ShotResult", "shot_descriptors", "compute_shot"]

SHOT_DIM = 352
_N_BINS = 10  # PCL's nr_shape_bins_: 11 bins per volume, interpolation wraps modulo 10
_PI = math.pi


class ShotResult(NamedTuple):
    """descriptors ``[Q, 352]`` (unit L2 norm, zero where invalid), lrf ``[Q, 3, 3]`` (rows are
    the x, y, z axes, zero where invalid), valid ``[Q]`` bool."""

    descriptors: Tensor
    lrf: Tensor
    valid: Tensor



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
        with :func:`~ukpgan_ros.features.normals.estimate_normals_torch` over ``normal_radius`` (default ``radius / 2``) or the
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
        normals = estimate_normals_torch(points, nr, k=normal_k, batch=batch, chunk_size=chunk_size,
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
    dev = resolve_device(device)
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
