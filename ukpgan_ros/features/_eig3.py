"""Symmetric 3x3 matrices for the compiled CPU kernels (SHOT's local frames in
:mod:`~ukpgan_ros.features.shot_cpu`, PCA normals in :mod:`~ukpgan_ros.features.normals_cpu`):
scatter-matrix sums and the closed-form eigen-solver, float64, trigonometric eigenvalues,
eigenvectors as the largest cross product of two rows of ``A - lam I``, with torch
``_principal_axes``' fallbacks where an eigenvalue repeats. Plain Python functions, compiled by
numba on first use (:func:`~ukpgan_ros.features._numba.compile_module`).
"""

from __future__ import annotations

import math

__all__: list[str] = []

_INLINED = ("_cross", "_add_outer")
_JITTED = ("_eigvec3", "_orth", "_principal_axes")


def _add_outer(c_xx, c_xy, c_xz, c_yy, c_yz, c_zz, a0, a1, a2, b0, b1, b2):
    """The upper triangle (xx, xy, xz, yy, yz, zz) of ``C + a b^T`` (for a scatter matrix, ``a``
    is ``b`` or ``b`` weighted): scalars in, scalars out, so it inlines into the hot loops."""
    return (c_xx + a0 * b0, c_xy + a0 * b1, c_xz + a0 * b2,
            c_yy + a1 * b1, c_yz + a1 * b2, c_zz + a2 * b2)


def _cross(a0, a1, a2, b0, b1, b2):
    """a x b and its squared norm."""
    c0 = a1 * b2 - a2 * b1
    c1 = a2 * b0 - a0 * b2
    c2 = a0 * b1 - a1 * b0
    return c0, c1, c2, c0 * c0 + c1 * c1 + c2 * c2


def _eigvec3(a, b, c, d, e, f, lam):
    """Unit eigenvector of [[a b c], [b d e], [c e f]] for ``lam`` as the largest cross product
    of two rows of ``A - lam I`` (torch ``_eigvec3``), and that product's squared norm."""
    r00, r01, r02 = a - lam, b, c
    r10, r11, r12 = b, d - lam, e
    r20, r21, r22 = c, e, f - lam
    # r0 x r1, r0 x r2, r1 x r2, the largest kept (first one on equal norms, like torch.max)
    v0, v1, v2, best = _cross(r00, r01, r02, r10, r11, r12)
    c0, c1, c2, n2 = _cross(r00, r01, r02, r20, r21, r22)
    if n2 > best:
        best, v0, v1, v2 = n2, c0, c1, c2
    c0, c1, c2, n2 = _cross(r10, r11, r12, r20, r21, r22)
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
