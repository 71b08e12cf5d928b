"""Compiled (numba) RANSAC over putative correspondences: 3-point samples, Open3D's edge-length
and distance pre-checks, closed-form Kabsch fits, adaptive stopping, a final least-squares fit on
the inliers of the best hypothesis. Seeded and sequential, so the same input gives the same
transform in every process (Open3D's parallel RANSAC does not)."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["ransac_rigid"]


@njit(cache=True, nogil=True)
def _kabsch(src, tgt, idx, n):  # pragma: no cover - compiled
    """Least-squares rigid T (4x4) mapping src[idx[:n]] onto tgt[idx[:n]] (rows of (C, 3))."""
    cs = np.zeros(3)
    ct = np.zeros(3)
    for k in range(n):
        i = idx[k]
        for a in range(3):
            cs[a] += src[i, a]
            ct[a] += tgt[i, a]
    cs /= n
    ct /= n
    H = np.zeros((3, 3))
    for k in range(n):
        i = idx[k]
        for a in range(3):
            for b in range(3):
                H[a, b] += (src[i, a] - cs[a]) * (tgt[i, b] - ct[b])
    U, S, Vt = np.linalg.svd(H)
    D = np.eye(3)
    if np.linalg.det(Vt.T @ U.T) < 0:
        D[2, 2] = -1.0
    R = Vt.T @ D @ U.T
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = ct - R @ cs
    return T


@njit(cache=True, nogil=True)
def _residual2(T, s, t):  # pragma: no cover - compiled
    d = 0.0
    for a in range(3):
        v = T[a, 0] * s[0] + T[a, 1] * s[1] + T[a, 2] * s[2] + T[a, 3] - t[a]
        d += v * v
    return d


@njit(cache=True, nogil=True)
def _ransac(src, tgt, distance, max_iterations, confidence, seed, edge_similarity):  # pragma: no cover
    c = src.shape[0]
    np.random.seed(seed)
    d2max = distance * distance
    best_count, best_rmse = 0, np.inf
    best_T = np.eye(4)
    sample = np.empty(3, np.int64)
    limit = max_iterations
    it = 0
    while it < limit:
        it += 1
        sample[0] = np.random.randint(c)
        sample[1] = np.random.randint(c)
        sample[2] = np.random.randint(c)
        if sample[0] == sample[1] or sample[0] == sample[2] or sample[1] == sample[2]:
            continue
        ok = True
        for a in range(3):  # edge lengths agree within the similarity (Open3D's checker)
            for b in range(a + 1, 3):
                ds = np.sqrt(((src[sample[a]] - src[sample[b]]) ** 2).sum())
                dt = np.sqrt(((tgt[sample[a]] - tgt[sample[b]]) ** 2).sum())
                if ds < dt * edge_similarity or dt < ds * edge_similarity:
                    ok = False
        if not ok:
            continue
        T = _kabsch(src, tgt, sample, 3)
        for a in range(3):  # every sampled pair lands within the distance
            if _residual2(T, src[sample[a]], tgt[sample[a]]) > d2max:
                ok = False
        if not ok:
            continue
        count = 0
        err = 0.0
        for i in range(c):
            r = _residual2(T, src[i], tgt[i])
            if r <= d2max:
                count += 1
                err += r
        if count == 0:
            continue
        rmse = np.sqrt(err / count)
        if count > best_count or (count == best_count and rmse < best_rmse):
            best_count, best_rmse, best_T = count, rmse, T
            w = count / c
            if w >= 1.0:
                break
            k = np.log(1.0 - confidence) / np.log(1.0 - w * w * w)
            if k < limit:
                limit = max(int(np.ceil(k)), 1)
    if best_count >= 3:  # least squares on the inliers of the best hypothesis
        idx = np.empty(best_count, np.int64)
        n = 0
        for i in range(c):
            if _residual2(best_T, src[i], tgt[i]) <= d2max:
                idx[n] = i
                n += 1
        if n >= 3:
            refit = _kabsch(src, tgt, idx, n)
            m = 0
            for i in range(c):
                if _residual2(refit, src[i], tgt[i]) <= d2max:
                    m += 1
            if m >= best_count:
                best_T = refit
    return best_T, it


def ransac_rigid(src: np.ndarray, tgt: np.ndarray, distance: float, max_iterations: int, confidence: float,
                 seed: int, edge_similarity: float = 0.9) -> tuple[np.ndarray, int]:
    """(T with tgt ~ T @ src, iterations run) from row-aligned putative pairs ``src[i] <-> tgt[i]``
    ((C, 3) each, C >= 3)."""
    s = np.ascontiguousarray(src, np.float64)
    t = np.ascontiguousarray(tgt, np.float64)
    return _ransac(s, t, float(distance), int(max_iterations), float(confidence), int(seed) % (2**32),
                   float(edge_similarity))
