"""SHOT (PCL 1.13 rules) and PCA normals as compiled CPU kernels (numba), several times faster
than the torch implementation on CPU with the same numbers.

``shot_cpu`` computes what torch ``compute_shot`` does (``ukpgan_ros.features.shot``, whose
module docstring lists PCL's rules and quirks; all of them are reproduced here), but as scalar
code, one query at a time: it gathers the neighbours from a uniform grid into a small scratch
buffer, builds the frame and fills the 352 bins in cache; no pair tensors, no Python per chunk.
Both functions are pure functions of NumPy arrays.

How:

* neighbours: the points are counting-sorted into cubic cells of edge ``radius`` (a dense
  per-cell offset table; a binary search in the sorted cell keys when the table would be too
  big). A query scans the (usually 3 x 3) columns of cells around it, each column's z range cut
  to the sphere's extent over it: one contiguous run of candidates per column, ~5 candidates
  per neighbour, compacted without branches. Measured end to end this beats finer cells (more
  columns) and scipy's ``cKDTree.query_ball_point`` (70-90 ms for the neighbour lists alone on
  a 4 k-point frame, where this whole kernel takes ~18 ms on one thread).
* frame: PCL's covariance about the query, weighted by ``R - d`` (float32 ``sqrt`` like PCL's
  ``std::sqrt(float)``), is summed in float64 from the float32 offsets, exactly as PCL does (the
  torch version sums in float32). Its principal axes come from torch's closed-form float64
  solver (trigonometric eigenvalues, eigenvectors as the largest cross product of two rows of
  ``A - lam I``, the same fallbacks where an eigenvalue repeats), then the sign votes, the
  5-around-the-median tie rule, ``y = z x x`` and all projections in float32 like torch.
* descriptor: the votes use torch ``_histograms``' float32 arithmetic (cosine bin in float64,
  wrap modulo 10, rounded-bin rule, PCL's sector for axis/diagonal offsets, elevation
  ``atan2(hypot(x, y), z)``), computed for all neighbours of a query in a branch-free loop that
  LLVM vectorises, with an inlined float64 ``atan2`` (glibc's ``atan2f`` costs ~40 ns a call
  here), then added into a float32 histogram and L2-normalised. Neighbours at the query's own
  position and neighbours with a non-finite normal do not vote (the latter still shape the
  frame). Fewer than 5 distinct neighbours, a degenerate covariance or an empty histogram give a
  zero descriptor, a zero frame and ``valid = False``.
* the tie rule ranks the distinct neighbours by distance, equal distances by input index
  (torch: by its grid order, PCL: by KD-tree order; all arbitrary); so does ``max_neighbors``.
* threads: queries run in grid order (neighbouring queries share their candidates in cache) in
  blocks of 64 handed out one at a time to a small pool of Python threads; the kernel releases
  the GIL. A thread slowed down by another process just takes fewer blocks. Not numba's
  ``parallel=True``/``prange``: its parfor lowering added 7-11 s to the first compile (the tests
  must stay under 20 s with it), and its threading layer is a process-wide choice (an old TBB
  next to torch, OpenMP runtimes, workqueue aborting on concurrent calls).

Agreement (``test/test_shot_cpu.py``): against PCL 1.13 (the 3DMatch fixture, 1000 points,
r = 0.3 m) frames within 4e-6 (median 3e-8; torch: 2.4e-5) and descriptors within 1.8e-7 per
bin, cosine > 1 - 1e-7 everywhere, sign-vote ties included. Against torch on every point of
real clouds (7-Scenes frames and 3DMatch ``cloud_bin_0``, 5 and 2.5 cm voxels): valid flags
equal, frames within 5e-5 at 5 cm (5e-4 at 2.5 cm, tiny eigen-gaps), descriptors at cosine
> 0.9999999 for >= 99.96 % of points; the 0-3 others per cloud (cosine >= 0.9992) have a
neighbour within ~1e-7 m of a sector boundary, where PCL's histogram jumps and the two
frames differ by float32 rounding.

Compilation: the module imports neither numba nor LLVM; the kernels are compiled on first use
(or by :func:`warmup`), ~5-8 s, and cached in ``__pycache__`` (``cache=True``), so later
processes load them in well under a second.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

__all__ = ["SHOT_DIM", "ShotResult", "shot_cpu", "normals_cpu", "warmup"]

SHOT_DIM = 352
_MIN_NEIGHBORS = 5
_CELLS_PER_RADIUS = 1  # grid cell edge = radius: 9 columns, ~5 candidates per neighbour
_NORMAL_CELLS_PER_RADIUS = 1  # (2: fewer candidates but more columns, slower)
_BLOCK = 64  # queries per scheduling unit
_DENSE_LIMIT = 1 << 22  # a dense per-cell offset table up to max(this, 16 N) cells, else
_DENSE_PER_POINT = 16  # binary search in the sorted cell keys


class ShotResult(NamedTuple):
    """descriptors ``(Q, 352)`` float32 (unit L2 norm, zero where invalid), lrf ``(Q, 3, 3)``
    float32 (rows are the x, y, z axes, zero where invalid), valid ``(Q,)`` bool."""

    descriptors: np.ndarray
    lrf: np.ndarray
    valid: np.ndarray


# ----------------------------------------------------------------------------------- kernels
# Plain Python functions, compiled by numba on first use (``_compiled``). Names of helpers are
# looked up as globals when a caller compiles, so the helpers are replaced by their compiled
# dispatchers before the entry points are compiled.


def _eigvec3(a, b, c, d, e, f, lam):
    """Unit eigenvector of [[a b c], [b d e], [c e f]] for ``lam`` as the largest cross product
    of two rows of ``A - lam I`` (torch ``_eigvec3``), and that product's squared norm."""
    r00, r01, r02 = a - lam, b, c
    r10, r11, r12 = b, d - lam, e
    r20, r21, r22 = c, e, f - lam
    # r0 x r1, r0 x r2, r1 x r2, the largest kept (first one on equal norms, like torch.max)
    c0 = r01 * r12 - r02 * r11
    c1 = r02 * r10 - r00 * r12
    c2 = r00 * r11 - r01 * r10
    best = c0 * c0 + c1 * c1 + c2 * c2
    v0, v1, v2 = c0, c1, c2
    c0 = r01 * r22 - r02 * r21
    c1 = r02 * r20 - r00 * r22
    c2 = r00 * r21 - r01 * r20
    n2 = c0 * c0 + c1 * c1 + c2 * c2
    if n2 > best:
        best, v0, v1, v2 = n2, c0, c1, c2
    c0 = r11 * r22 - r12 * r21
    c1 = r12 * r20 - r10 * r22
    c2 = r10 * r21 - r11 * r20
    n2 = c0 * c0 + c1 * c1 + c2 * c2
    if n2 > best:
        best, v0, v1, v2 = n2, c0, c1, c2
    s = math.sqrt(max(best, 1e-300))
    return v0 / s, v1 / s, v2 / s, best


def _orth(v0, v1, v2):
    """Unit vector orthogonal to v: v x e_k with k the smallest |component| (first on ties)."""
    a0, a1, a2 = abs(v0), abs(v1), abs(v2)
    if a0 <= a1 and a0 <= a2:  # v x e0
        w0, w1, w2 = 0.0, v2, -v1
    elif a1 <= a2:  # v x e1
        w0, w1, w2 = -v2, 0.0, v0
    else:  # v x e2
        w0, w1, w2 = v1, -v0, 0.0
    n = math.sqrt(w0 * w0 + w1 * w1 + w2 * w2)
    return w0 / n, w1 / n, w2 / n


def _principal_axes(a, b, c, d, e, f):
    """Eigenvectors of the largest and smallest eigenvalue of a symmetric 3x3 matrix (float64,
    closed form; torch ``_principal_axes`` for one matrix) and whether the frame is defined."""
    m = (a + d + f) / 3
    a_, d_, f_ = a - m, d - m, f - m
    p2 = (a_ * a_ + d_ * d_ + f_ * f_ + 2 * (b * b + c * c + e * e)) / 6
    q = (a_ * (d_ * f_ - e * e) - b * (b * f_ - e * c) + c * (b * e - d_ * c)) / 2
    p = math.sqrt(p2)
    r = q / max(p2 * p, 1e-300)
    r = min(max(r, -1.0), 1.0)
    phi = math.acos(r) / 3
    lam_max = m + 2 * p * math.cos(phi)
    lam_min = m + 2 * p * math.cos(phi + 2 * math.pi / 3)
    x0, x1, x2, n_max = _eigvec3(a, b, c, d, e, f, lam_max)
    z0, z1, z2, n_min = _eigvec3(a, b, c, d, e, f, lam_min)
    scale = (p2 * 6) ** 2
    ok_max = n_max > 1e-24 * scale
    ok_min = n_min > 1e-24 * scale
    if not ok_max:  # repeated largest eigenvalue: orthogonal to the smallest axis, else e_x
        if ok_min:
            x0, x1, x2 = _orth(z0, z1, z2)
        else:
            x0, x1, x2 = 1.0, 0.0, 0.0
    if not ok_min:
        if ok_max:
            z0, z1, z2 = _orth(x0, x1, x2)
        else:
            z0, z1, z2 = 0.0, 0.0, 1.0
    ok = (math.isfinite(a) and math.isfinite(b) and math.isfinite(c) and math.isfinite(d)
          and math.isfinite(e) and math.isfinite(f) and (a + d + f > 0))
    return x0, x1, x2, z0, z1, z2, ok


def _atan2(y, x):
    """IEEE ``atan2`` of float64 arguments (signed zeros included), branch-free so that the
    vote loop vectorises: Cephes' rational ``atan`` of ``min / max`` of |x|, |y| (~1e-16), the
    octant fixed with selects. glibc's ``atan2f`` costs ~40 ns a call here and is needed twice
    per neighbour; this one ~2.5 ns vectorised, and rounded to float32 it equals the correctly
    rounded float32 ``atan2`` (so it is within an ulp of glibc's and of torch's)."""
    ax = abs(x)
    ay = abs(y)
    t = min(ax, ay) / max(max(ax, ay), 1e-300)
    big = t > 0.66
    u = (t - 1.0) / (t + 1.0) if big else t
    z = u * u
    p = ((((-8.750608600031904122785e-1 * z - 1.615753718733365076637e1) * z
           - 7.500855792314704667340e1) * z - 1.228866684490136173410e2) * z
         - 6.485021904942025371773e1)
    q = (((((z + 2.485846490142306297962e1) * z + 1.650270098316988542046e2) * z
           + 4.328810604912902668951e2) * z + 4.853903996359136964868e2) * z
         + 1.945506571482613964425e2)
    r = u * (z * p / q) + u
    a = 0.7853981633974483 + (r + 3.061616997868382943065e-17) if big else r
    a = 1.5707963267948966 - a if ay > ax else a
    a = 3.141592653589793 - a if math.copysign(1.0, x) < 0 else a
    return math.copysign(a, y)


def _rank_by_distance(d2, src, orig, cnt, distinct_only):
    """Buffer positions ordered by (distance, input index); with ``distinct_only`` the
    neighbours at the query's own position are left out. Sorts int64 keys made of the float32
    distance's bits (monotone for d2 >= 0) and the input index: exact and unique. Only tied or
    capped queries get here; a hand-written Shell sort, as numba's ``argsort`` takes seconds to
    compile."""
    keys = np.empty(cnt, np.int64)
    pos = np.empty(cnt, np.int64)
    bits = d2.view(np.int32)
    m = 0
    for k in range(cnt):
        if distinct_only and d2[k] == 0:
            continue
        keys[m] = (np.int64(bits[k]) << 32) | orig[src[k]]
        pos[m] = k
        m += 1
    gap = 1
    while gap < m // 3:
        gap = 3 * gap + 1  # Knuth's gaps 1, 4, 13, 40, ...
    while gap > 0:
        for i in range(gap, m):
            kk = keys[i]
            pp = pos[i]
            j = i
            while j >= gap and keys[j - gap] > kk:
                keys[j] = keys[j - gap]
                pos[j] = pos[j - gap]
                j -= gap
            keys[j] = kk
            pos[j] = pp
        gap //= 3
    return pos[:m]


def _lower_bound(keys, key):
    """Number of entries of the sorted ``keys`` smaller than ``key``."""
    lo = 0
    hi = keys.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _votes(m, sx_, sy_, sz_, cz_, dist_, wt_, sg_x, sg_y, sg_z, half_r, two_over_r,
           two_over_pi, four_over_pi, bins, vals):
    """Bins and weights of the five votes (own bin, adjacent cosine bin, radial, elevation and
    azimuth neighbours) of the first ``m`` neighbours: torch ``_histograms`` with the same
    float32 arithmetic, written without branches so that LLVM vectorises the loop (indices
    from ``range(m)`` are known to be >= 0, which spares numba's negative-index fix-ups: they
    would make every access a gather)."""
    f32 = np.float32
    for k in range(m):
        x = sx_[k] * sg_x
        y = sy_[k] * sg_y
        z = sz_[k] * sg_z
        w = wt_[k]
        dist = dist_[k]
        cosine = cz_[k] * sg_z
        # cosine bin in double like PCL; the adjacent bin wraps modulo 10 (not 11)
        bb = (min(max(np.float64(cosine), -1.0), 1.0) + 1.0) * 5.0
        step64 = np.floor(bb + 0.5)
        res = bb - step64
        step = np.int64(step64)
        cos_nbr = step + 1 if res > 0 else step + 9
        cos_nbr = cos_nbr - 10 if cos_nbr >= 10 else cos_nbr
        v_cos = f32(abs(res))
        # PCL's sector: quadrant from ``y > 0 || (y == 0 && x < 0)`` and
        # ``x > 0 || (x == 0 && y > 0)``, half-quadrant from |x| vs |y|, so that offsets on
        # an axis or a diagonal take the sector before them (torch ``_sector_lut``)
        upper = (y > 0) | ((y == 0) & (x < 0))
        right = (x > 0) | ((x == 0) & (y > 0))
        odd = upper != right
        half = (abs(x) > abs(y)) if odd else (abs(x) < abs(y))
        sector = 4 * np.int64(upper) + 2 * np.int64(odd) + np.int64(half)
        has_az = (x != 0) | (y != 0)
        up = z > 0
        outer = dist - half_r > 0
        own = (sector * 4 + 2 * np.int64(outer) + np.int64(up)) * 11
        # radial distance from the shell's centre (R/4 or 3R/4) in units of R/2
        rd = dist * two_over_r - f32(outer) - f32(0.5)
        v_rad = max(rd * f32(1 - 2 * np.int64(outer)), f32(0.0))
        # elevation atan2(hypot(x, y), z) from the half's centre in units of 90 degrees
        xd = np.float64(x)
        yd = np.float64(y)
        inc = f32(_atan2(np.sqrt(xd * xd + yd * yd), np.float64(z)))
        inc_d = inc * two_over_pi - f32(1.5) + f32(up)
        v_inc = max(inc_d * f32(2 * np.int64(up) - 1), f32(0.0))
        # azimuth from the sector's centre in units of 45 degrees; none on the z axis
        az_d = f32(_atan2(yd, xd)) * four_over_pi + f32(3.5) - f32(sector)
        az_d = min(max(az_d, f32(-0.5)), f32(0.5))
        v_az = abs(az_d) if has_az else f32(0.0)
        v_own = -(v_cos + abs(rd) + abs(inc_d) + v_az - f32(has_az) - f32(3.0))
        b0 = own + step
        b4 = b0 + 44 if az_d > 0 else b0 - 44
        b4 = b4 + SHOT_DIM if b4 < 0 else b4
        b4 = b4 - SHOT_DIM if b4 >= SHOT_DIM else b4
        bins[0, k] = np.uint32(b0)
        bins[1, k] = np.uint32(own + cos_nbr)
        bins[2, k] = np.uint32(b0 - 22 if outer else b0 + 22)
        bins[3, k] = np.uint32(b0 - 11 if up else b0 + 11)
        bins[4, k] = np.uint32(b4)
        vals[0, k] = v_own * w
        vals[1, k] = v_cos * w
        vals[2, k] = v_rad * w
        vals[3, k] = v_inc * w
        vals[4, k] = v_az * w


def _runs(qx, qy, qz, origin, inv_cell, slack, radius, dims, start, keys, dense, j0s, j1s):
    """The runs of grid-sorted points that may hold neighbours of the point (qx, qy, qz):
    one per column of cells (x, y) crossing the sphere, cut to the sphere's z extent over the
    column (all bounds widened by ``slack`` against float rounding). Fills ``j0s``/``j1s``;
    returns the number of runs and of candidates."""
    cell = 1.0 / inv_cell
    reach = radius + slack
    reach2 = reach * reach
    rx = np.float64(qx) - origin[0]
    ry = np.float64(qy) - origin[1]
    rz = np.float64(qz) - origin[2]
    ix0 = max(int(math.floor((rx - reach) * inv_cell)), 0)
    ix1 = min(int(math.floor((rx + reach) * inv_cell)), dims[0] - 1)
    iy0 = max(int(math.floor((ry - reach) * inv_cell)), 0)
    iy1 = min(int(math.floor((ry + reach) * inv_cell)), dims[1] - 1)
    m = 0
    total = 0
    for cx in range(ix0, ix1 + 1):
        x0 = cx * cell - slack  # distance in x from the query to the column
        hx = max(x0 - rx, rx - (x0 + cell + 2 * slack), 0.0)
        for cy in range(iy0, iy1 + 1):
            y0 = cy * cell - slack
            hy = max(y0 - ry, ry - (y0 + cell + 2 * slack), 0.0)
            h2 = hx * hx + hy * hy
            if h2 > reach2:
                continue
            zext = math.sqrt(reach2 - h2)  # the sphere's half-height over the column
            iz0 = max(int(math.floor((rz - zext) * inv_cell)), 0)
            iz1 = min(int(math.floor((rz + zext) * inv_cell)), dims[2] - 1)
            if iz0 > iz1:
                continue
            base = (cx * dims[1] + cy) * dims[2]
            if dense:
                j0 = start[base + iz0]
                j1 = start[base + iz1 + 1]
            else:
                j0 = _lower_bound(keys, base + iz0)
                j1 = _lower_bound(keys, base + iz1 + 1)
            if j1 > j0:
                j0s[m] = j0
                j1s[m] = j1
                m += 1
                total += j1 - j0
    return m, total


def _within(qx, qy, qz, px, py, pz, m_runs, j0s, j1s, r2, srow, d2s):
    """Compact the points of the runs within sqrt(r2) of (qx, qy, qz) into ``srow`` (indices)
    and ``d2s`` (squared distances); returns their number. Branch-free (about 1 candidate in 5
    is kept: a branch would mispredict); unsigned positions need no negative-index fix-ups."""
    c = np.uint64(0)
    for t in range(m_runs):
        for j in range(j0s[t], j1s[t]):
            ddx = px[j] - qx
            ddy = py[j] - qy
            ddz = pz[j] - qz
            d2 = ddx * ddx + ddy * ddy + ddz * ddz
            srow[c] = np.uint32(j)
            d2s[c] = d2
            c += np.uint64(d2 <= r2)
    return np.int64(c)


def _shot_block(q_lo, q_hi, qsrc, rows, pts, nrm, nrm_ok, orig, start, keys, dense, origin,
                dims, inv_cell, slack, radius, cap, desc, lrf, valid):
    """SHOT of the queries ``qsrc[q_lo:q_hi]`` (indices into the grid-sorted points) into the
    rows ``rows[q_lo:q_hi]`` of ``desc``/``lrf``/``valid``. ``pts`` and ``nrm`` are ``(3, N)``
    (one contiguous row per axis); neighbour indices are unsigned, which spares numba's
    negative-index fix-ups in the inner loops."""
    f32 = np.float32
    px, py, pz = pts[0], pts[1], pts[2]
    nx, ny, nz = nrm[0], nrm[1], nrm[2]
    n_cols = (2 * _CELLS_PER_RADIUS + 3) ** 2
    j0s = np.empty(n_cols, np.uint64)
    j1s = np.empty(n_cols, np.uint64)
    # scratch sized once for the block: the most candidates of any of its queries
    size = 1
    for qk in range(q_lo, q_hi):
        qi = qsrc[qk]
        size = max(size, _runs(px[qi], py[qi], pz[qi], origin, inv_cell, slack, radius, dims,
                               start, keys, dense, j0s, j1s)[1])
    srow = np.empty(size, np.uint32)  # neighbour (grid-sorted index)
    # per neighbour: 0-2 offset from the query, 3 squared distance, 4-6 projections on the
    # unsigned x, y, z axes, 7 normal . unsigned z, 8 weight in the histogram (0 or 1),
    # 9 distance
    buf = np.empty((10, size), np.float32)
    bins = np.empty((5, size), np.uint32)  # the five votes of each neighbour
    vals = np.empty((5, size), np.float32)
    hist = np.empty(SHOT_DIM, np.float32)
    r2 = f32(radius * radius)
    half_r = f32(radius / 2)
    two_over_r = f32(2 / radius)
    two_over_pi = f32(2 / math.pi)
    four_over_pi = f32(4 / math.pi)
    d2s = buf[3]
    for qk in range(q_lo, q_hi):
        qi = qsrc[qk]
        row = rows[qk]
        qx, qy, qz = px[qi], py[qi], pz[qi]
        # ---------------------------------------------------------------- neighbours
        m_runs = _runs(qx, qy, qz, origin, inv_cell, slack, radius, dims, start, keys, dense,
                       j0s, j1s)[0]
        cnt = _within(qx, qy, qz, px, py, pz, m_runs, j0s, j1s, r2, srow, d2s)
        if cnt > cap:  # keep the ``cap`` nearest (equal distances: input order)
            perm = _rank_by_distance(d2s, srow, orig, cnt, False)
            keep_src = np.empty(cap, np.uint32)
            keep_d2 = np.empty(cap, np.float32)
            for k in range(cap):
                keep_src[k] = srow[perm[k]]
                keep_d2[k] = d2s[perm[k]]
            for k in range(cap):
                srow[k] = keep_src[k]
                d2s[k] = keep_d2[k]
            cnt = cap
        # ---------------------------------------------------------------- frame
        # PCL: covariance of the offsets from the query weighted by R - d, in double. The
        # offsets (the same float32 values as in the search) first, in a loop that vectorises
        bx, by, bz, dist_ = buf[0], buf[1], buf[2], buf[9]
        n_same = 0
        for k in range(cnt):
            j = srow[k]
            bx[k] = px[j] - qx
            by[k] = py[j] - qy
            bz[k] = pz[j] - qz
            dist_[k] = np.sqrt(d2s[k])  # float32 sqrt, like PCL's std::sqrt(float)
            n_same += np.int64(d2s[k] == 0)  # at the query's own position: skipped, like PCL
        c_xx = 0.0
        c_xy = 0.0
        c_xz = 0.0
        c_yy = 0.0
        c_yz = 0.0
        c_zz = 0.0
        for k in range(cnt):  # a coincident neighbour has a zero offset and adds exactly 0
            ex = np.float64(bx[k])
            ey = np.float64(by[k])
            ez = np.float64(bz[k])
            w = radius - np.float64(dist_[k])
            wx = w * ex
            wy = w * ey
            wz = w * ez
            c_xx += wx * ex
            c_xy += wx * ey
            c_xz += wx * ez
            c_yy += wy * ey
            c_yz += wy * ez
            c_zz += wz * ez
        n = cnt - n_same
        v0, v1, v2, w0, w1, w2, ok = _principal_axes(c_xx, c_xy, c_xz, c_yy, c_yz, c_zz)
        if not (ok and n >= _MIN_NEIGHBORS):
            valid[row] = False
            continue
        ax0, ax1, ax2 = f32(v0), f32(v1), f32(v2)  # x axis up to sign
        az0, az1, az2 = f32(w0), f32(w1), f32(w2)  # z axis up to sign
        ay0 = az1 * ax2 - az2 * ax1  # y = z x x, up to sign
        ay1 = az2 * ax0 - az0 * ax2
        ay2 = az0 * ax1 - az1 * ax0
        sx_, sy_, sz_, cz_, wt_ = buf[4], buf[5], buf[6], buf[7], buf[8]
        plus_x = 0
        plus_z = 0
        for k in range(cnt):
            ex = bx[k]
            ey = by[k]
            ez = bz[k]
            sx = ex * ax0 + ey * ax1 + ez * ax2
            sz = ex * az0 + ey * az1 + ez * az2
            sx_[k] = sx
            sy_[k] = ex * ay0 + ey * ay1 + ez * ay2
            sz_[k] = sz
            plus_x += np.int64(sx >= 0)
            plus_z += np.int64(sz >= 0)
            j = srow[k]
            cz_[k] = nx[j] * az0 + ny[j] * az1 + nz[j] * az2
            # votes in the histogram: distinct and with a finite normal (0/1 weight, like torch)
            wt_[k] = f32(d2s[k] != 0) * f32(nrm_ok[j])
        # PCL's majority of s >= 0 among distinct neighbours (coincident ones project to 0)
        t_x = 2 * (plus_x - n_same) - n
        t_z = 2 * (plus_z - n_same) - n
        sg_x = f32(-1.0) if t_x < 0 else f32(1.0)
        sg_z = f32(-1.0) if t_z < 0 else f32(1.0)
        if t_x == 0 or t_z == 0:  # a tie: the five distinct neighbours around the median decide
            perm = _rank_by_distance(d2s, srow, orig, cnt, True)
            mid = n // 2
            vx = 0
            vz = 0
            for i in range(mid - 2, mid + 3):
                k = perm[i]
                vx += np.int64(sx_[k] > 0)
                vz += np.int64(sz_[k] > 0)
            if t_x == 0:
                sg_x = f32(1.0) if vx >= 3 else f32(-1.0)
            if t_z == 0:
                sg_z = f32(1.0) if vz >= 3 else f32(-1.0)
        # ---------------------------------------------------------------- histogram
        for i in range(SHOT_DIM):
            hist[i] = 0
        sg_y = sg_x * sg_z
        _votes(cnt, sx_, sy_, sz_, cz_, dist_, wt_, sg_x, sg_y, sg_z, half_r, two_over_r,
               two_over_pi, four_over_pi, bins, vals)
        # a neighbour's five bins differ while consecutive neighbours often share theirs:
        # adding neighbour by neighbour keeps the read-modify-writes of one bin apart
        for i in range(cnt):
            for v in range(5):
                hist[bins[v, i]] += vals[v, i]
        # squared norm in four interleaved partial sums: one chain of 352 dependent adds (no
        # reassociation without fastmath) cost ~10 % of the time
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for i in range(0, SHOT_DIM, 4):
            s0 += np.float64(hist[i]) * np.float64(hist[i])
            s1 += np.float64(hist[i + 1]) * np.float64(hist[i + 1])
            s2 += np.float64(hist[i + 2]) * np.float64(hist[i + 2])
            s3 += np.float64(hist[i + 3]) * np.float64(hist[i + 3])
        ss = (s0 + s1) + (s2 + s3)
        if not ss > 0:  # no neighbour with a finite normal
            valid[row] = False
            continue
        inv = f32(1.0 / math.sqrt(ss))
        for i in range(SHOT_DIM):
            desc[row, i] = hist[i] * inv
        fx0, fx1, fx2 = ax0 * sg_x, ax1 * sg_x, ax2 * sg_x
        fz0, fz1, fz2 = az0 * sg_z, az1 * sg_z, az2 * sg_z
        lrf[row, 0, 0] = fx0
        lrf[row, 0, 1] = fx1
        lrf[row, 0, 2] = fx2
        lrf[row, 1, 0] = fz1 * fx2 - fz2 * fx1
        lrf[row, 1, 1] = fz2 * fx0 - fz0 * fx2
        lrf[row, 1, 2] = fz0 * fx1 - fz1 * fx0
        lrf[row, 2, 0] = fz0
        lrf[row, 2, 1] = fz1
        lrf[row, 2, 2] = fz2
        valid[row] = True


def _normals_block(q_lo, q_hi, pts, orig, start, keys, dense, origin, dims, inv_cell, slack,
                   radius, max_nn, vp, out):
    """PCA normals of the grid-sorted points ``q_lo .. q_hi`` into rows ``orig[q]`` of
    ``out``: the smallest-eigenvalue axis of the covariance of the (at most ``max_nn``
    nearest) points within ``radius`` about their centroid, in double, facing ``vp``."""
    px, py, pz = pts[0], pts[1], pts[2]
    n_cols = (2 * _NORMAL_CELLS_PER_RADIUS + 3) ** 2
    j0s = np.empty(n_cols, np.uint64)
    j1s = np.empty(n_cols, np.uint64)
    size = 1
    for qi in range(q_lo, q_hi):
        size = max(size, _runs(px[qi], py[qi], pz[qi], origin, inv_cell, slack, radius, dims,
                               start, keys, dense, j0s, j1s)[1])
    srow = np.empty(size, np.uint32)
    d2s = np.empty(size, np.float32)
    nearest = np.empty(size, np.uint32)
    r2 = np.float32(radius * radius)
    for qi in range(q_lo, q_hi):
        qx, qy, qz = px[qi], py[qi], pz[qi]
        m_runs = _runs(qx, qy, qz, origin, inv_cell, slack, radius, dims, start, keys, dense,
                       j0s, j1s)[0]
        cnt = _within(qx, qy, qz, px, py, pz, m_runs, j0s, j1s, r2, srow, d2s)
        row = orig[qi]
        if cnt > max_nn:  # the nearest (equal distances: input order)
            perm = _rank_by_distance(d2s, srow, orig, cnt, False)
            for k in range(max_nn):
                nearest[k] = srow[perm[k]]
            for k in range(max_nn):
                srow[k] = nearest[k]
            cnt = max_nn
        if cnt < 3:
            out[row, 0] = np.nan
            out[row, 1] = np.nan
            out[row, 2] = np.nan
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
        c_xx = 0.0
        c_xy = 0.0
        c_xz = 0.0
        c_yy = 0.0
        c_yz = 0.0
        c_zz = 0.0
        for k in range(cnt):
            j = srow[k]
            ex = np.float64(px[j]) - mx
            ey = np.float64(py[j]) - my
            ez = np.float64(pz[j]) - mz
            c_xx += ex * ex
            c_xy += ex * ey
            c_xz += ex * ez
            c_yy += ey * ey
            c_yz += ey * ez
            c_zz += ez * ez
        v0, v1, v2, w0, w1, w2, ok = _principal_axes(c_xx, c_xy, c_xz, c_yy, c_yz, c_zz)
        if not ok:  # all the points at one position
            out[row, 0] = np.nan
            out[row, 1] = np.nan
            out[row, 2] = np.nan
            continue
        flip = (vp[0] - qx) * w0 + (vp[1] - qy) * w1 + (vp[2] - qz) * w2 < 0
        s = -1.0 if flip else 1.0
        out[row, 0] = np.float32(s * w0)
        out[row, 1] = np.float32(s * w1)
        out[row, 2] = np.float32(s * w2)


def _cell_keys(pts, origin, inv_cell, dims):
    """Cell key ``(ix * dy + iy) * dz + iz`` of every point."""
    n = pts.shape[0]
    key = np.empty(n, np.int64)
    for i in range(n):
        ix = np.int64(math.floor((np.float64(pts[i, 0]) - origin[0]) * inv_cell))
        iy = np.int64(math.floor((np.float64(pts[i, 1]) - origin[1]) * inv_cell))
        iz = np.int64(math.floor((np.float64(pts[i, 2]) - origin[2]) * inv_cell))
        key[i] = (ix * dims[1] + iy) * dims[2] + iz
    return key


def _counting_sort(key, n_cells):
    """Stable order of the keys (all in ``[0, n_cells)``) and the table ``start`` of "keys
    smaller than c" for c = 0 .. n_cells."""
    start = np.zeros(n_cells + 1, np.int64)
    for k in key:
        start[k + 1] += 1
    for c in range(n_cells):
        start[c + 1] += start[c]
    fill = np.empty(n_cells, np.int64)
    for c in range(n_cells):
        fill[c] = start[c]
    order = np.empty(key.shape[0], np.int64)
    for i in range(key.shape[0]):
        order[fill[key[i]]] = i
        fill[key[i]] += 1
    return order, start


def _gather_sorted(pts, nrm, order):
    """Grid-sorted ``(3, N)`` points and normals (non-finite normals zeroed, like torch: their
    cosines stay finite, and these neighbours do not vote) and the finite-normal flags."""
    n = order.shape[0]
    p = np.empty((3, n), np.float32)
    q = np.empty((3, n), np.float32)
    ok = np.empty(n, np.bool_)
    for i in range(n):
        o = order[i]
        good = math.isfinite(nrm[o, 0]) and math.isfinite(nrm[o, 1]) and math.isfinite(nrm[o, 2])
        ok[i] = good
        for a in range(3):
            p[a, i] = pts[o, a]
            q[a, i] = nrm[o, a] if good else np.float32(0.0)
    return p, q, ok


def _grid(pts, nrm, query_idx, radius, cells_per_radius=_CELLS_PER_RADIUS):
    """Bucket the points into cubic cells (a counting sort of the cell keys, or NumPy's sort
    when the cells are too many for a table) and return the kernel's arguments: the queries in
    grid order (neighbouring queries share their candidates in cache), the grid-sorted points
    and normals, the grid and the float-rounding slack of the cell bounds."""
    n = pts.shape[0]
    inv_cell = cells_per_radius / radius
    lo = pts.min(0).astype(np.float64)
    hi = pts.max(0).astype(np.float64)
    origin = lo
    dims = np.floor((hi - lo) * inv_cell).astype(np.int64) + 1
    key = _cell_keys(pts, origin, inv_cell, dims)
    n_cells = int(dims[0]) * int(dims[1]) * int(dims[2])
    dense = n_cells <= max(_DENSE_LIMIT, _DENSE_PER_POINT * n)
    if dense:  # "points with a smaller key" for every cell
        order, start = _counting_sort(key, n_cells)
        keys = np.zeros(0, np.int64)
    else:  # too many cells for a table: binary search in the sorted keys
        order = np.argsort(key, kind="stable")
        start = np.zeros(0, np.int64)
        keys = key[order]
    if query_idx is None:
        qs, visit = np.arange(n), order
    else:
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        qsrc = rank[query_idx]
        visit = np.argsort(qsrc, kind="stable")
        qs = qsrc[visit]
    p, q, ok = _gather_sorted(pts, nrm, order)
    # float rounding of cell coordinates: a point the exact test accepts is never this far out
    slack = 1e-4 / inv_cell + 8 * 1.2e-7 * (max(np.abs(lo).max(), np.abs(hi).max()) + radius)
    return (qs, visit, p, q, ok, order, start, keys, dense, origin, dims, inv_cell, slack)


_LOCK = threading.Lock()
_KERNEL = None
_POOL: tuple[int, ThreadPoolExecutor] | None = None
_INLINED = ("_atan2", "_within")  # inlined in numba IR: the hot loops must not call functions
_JITTED = ("_eigvec3", "_orth", "_principal_axes", "_rank_by_distance", "_lower_bound",
           "_votes", "_runs", "_shot_block", "_normals_block", "_cell_keys", "_counting_sort",
           "_gather_sorted")


def _compiled():
    """The compiled block kernel (compiled, or loaded from the on-disk cache, on first use;
    numba is imported here, not at module import)."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    with _LOCK:
        if _KERNEL is None:
            import numba

            g = globals()
            opts = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
            for name in _INLINED:
                g[name] = numba.njit(inline="always", **opts)(g[name])
            for name in _JITTED:  # helpers first: their callers look them up when compiling
                g[name] = numba.njit(**opts)(g[name])
            _KERNEL = g["_shot_block"]
    return _KERNEL


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pool(threads: int) -> ThreadPoolExecutor:
    """A persistent pool of at least ``threads`` workers."""
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL[0] < threads:
            if _POOL is not None:
                _POOL[1].shutdown(wait=False)
            _POOL = (threads, ThreadPoolExecutor(threads, thread_name_prefix="shot_cpu"))
        return _POOL[1]


def _run(kernel, args, nq: int, threads: int) -> None:
    """``kernel`` over all queries: blocks of ``_BLOCK`` queries handed out one at a time to
    ``threads`` threads (the kernel releases the GIL), so a thread slowed down by another
    process just takes fewer blocks."""
    n_blocks = (nq + _BLOCK - 1) // _BLOCK
    threads = min(threads, n_blocks)
    if threads <= 1:
        kernel(0, nq, *args)
        return
    counter = itertools.count()  # next() is atomic under the GIL

    def work() -> None:
        while True:
            b = next(counter)
            if b >= n_blocks:
                return
            kernel(b * _BLOCK, min(nq, (b + 1) * _BLOCK), *args)

    for f in [_pool(threads).submit(work) for _ in range(threads)]:
        f.result()


# --------------------------------------------------------------------------------- front end


def _check_radius(radius) -> float:
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, (int, float, np.integer,
                                                                        np.floating)):
        raise ValueError(f"radius must be a number, got {type(radius).__name__}")
    r = float(radius)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"radius must be positive and finite, got {radius}")
    return r


def _as_cloud(x, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_threads(threads) -> int:
    if threads is None:
        return _default_threads()
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) \
            or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


def _check_extent(pts: np.ndarray, radius: float) -> None:
    extent = pts.max(0).astype(np.float64) - pts.min(0)
    cells = np.floor(extent * (_CELLS_PER_RADIUS / radius)) + 1
    if float(np.prod(cells)) >= 2.0**62:
        raise ValueError(f"radius {radius} is too small for the extent of the cloud")


def shot_cpu(
    points: np.ndarray,
    normals: np.ndarray,
    radius: float,
    query_idx: np.ndarray | None = None,
    *,
    max_neighbors: int | None = None,
    threads: int | None = None,
) -> ShotResult:
    """SHOT-352 descriptors and frames of ``points[query_idx]`` (default: every point), with all
    points as the surface, by PCL 1.13's rules (see the module docstring).

    points: ``(N, 3)`` finite, computed in float32. normals: ``(N, 3)`` unit normals; rows with
    NaN/inf are skipped in the histograms (as in PCL) but the points still shape the frames.
    radius: the support radius. query_idx: 1-D integer indices into ``points`` (repeats
    allowed). max_neighbors: keep only the nearest neighbours of crowded points (default: all,
    like PCL).
    Returns :class:`ShotResult`; invalid points (fewer than 5 distinct neighbours, degenerate
    frame) have zero rows and ``valid = False``. Raises ValueError on malformed input.
    """
    pts = _as_cloud(points, "points")
    if pts.shape[0] == 0:
        raise ValueError("points is empty")
    if pts.shape[0] >= 2**32:
        raise ValueError(f"at most 2**32 - 1 points, got {pts.shape[0]}")
    if not np.isfinite(pts).all():
        raise ValueError("points contains NaN or inf")
    nrm = _as_cloud(normals, "normals", pts.shape)
    r = _check_radius(radius)
    n = pts.shape[0]
    if query_idx is None:
        qi = np.arange(n, dtype=np.int64)
    else:
        qi = np.asarray(query_idx)
        if qi.size == 0 and qi.ndim <= 1:
            qi = np.zeros(0, np.int64)
        if qi.ndim != 1 or not np.issubdtype(qi.dtype, np.integer):
            raise ValueError(f"query_idx must be a 1-D integer array, got {qi.dtype} {qi.shape}")
        qi = qi.astype(np.int64)
        if qi.size and (qi.min() < 0 or qi.max() >= n):
            raise ValueError(f"query_idx out of range [0, {n})")
    if max_neighbors is None:
        cap = n
    else:
        if isinstance(max_neighbors, (bool, np.bool_)) or not isinstance(
                max_neighbors, (int, np.integer)):
            raise ValueError(f"max_neighbors must be an integer, got {max_neighbors!r}")
        if max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1, got {max_neighbors}")
        cap = int(max_neighbors)
    nq = qi.shape[0]
    if nq == 0:
        return ShotResult(np.zeros((0, SHOT_DIM), np.float32), np.zeros((0, 3, 3), np.float32),
                          np.zeros(0, bool))
    _check_extent(pts, r)
    threads = _check_threads(threads)
    kernel = _compiled()
    grid = _grid(pts, nrm, None if query_idx is None else qi, r)
    desc = np.zeros((nq, SHOT_DIM), np.float32)
    lrf = np.zeros((nq, 3, 3), np.float32)
    valid = np.zeros(nq, bool)
    _run(kernel, (*grid, r, cap, desc, lrf, valid), nq, threads)
    return ShotResult(desc, lrf, valid)


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
    pts = _as_cloud(points, "points")
    if pts.shape[0] == 0:
        raise ValueError("points is empty")
    if not np.isfinite(pts).all():
        raise ValueError("points contains NaN or inf")
    r = _check_radius(radius)
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
    threads = _check_threads(threads)
    _check_extent(pts, r)
    _compiled()
    g = _grid(pts, pts, None, r, _NORMAL_CELLS_PER_RADIUS)
    out = np.empty(pts.shape, np.float32)
    args = (g[2], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], r, cap, vp, out)
    _run(_normals_block, args, pts.shape[0], threads)
    return out


def warmup(normals: bool = True) -> None:
    """Compile (or load from the on-disk cache) the kernels on a tiny cloud: SHOT, and with
    ``normals`` the normals kernel too."""
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(64, 3)).astype(np.float32) * 0.1
    nrm = np.tile(np.float32([0, 0, 1]), (64, 1))
    shot_cpu(pts, nrm, 0.2)
    if normals:
        normals_cpu(pts, 0.2)
