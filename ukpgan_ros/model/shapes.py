"""Procedural CAD-like shapes for self-supervised training: furniture and household objects
composed of boxes, cylinders, frusta and ellipsoids, sampled uniformly by area with normals.

UKPGAN learns from aligned shape collections (ShapeNet in the paper). We cannot ship ShapeNet,
so we generate shapes with the same traits that matter: mirror symmetry across x = 0, z up,
parts meeting at corners and edges, flat faces next to curved ones. Every shape is a list of
parts; each part knows its area and samples its surface, so sampling density is uniform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Part", "Shape", "SHAPE_KINDS", "random_shape", "sample_surface", "random_rotation"]


@dataclass(frozen=True)
class Part:
    """One primitive: ``kind`` in box|cylinder|frustum|ellipsoid, centre, size, z-rotation."""

    kind: str
    center: tuple[float, float, float]
    size: tuple[float, ...]  # box: half extents; cylinder: (radius, half height);
    # frustum: (bottom radius, top radius, half height); ellipsoid: semi-axes
    yaw: float = 0.0
    axis: int = 2  # cylinder/frustum axis (0=x, 1=y, 2=z)

    def area(self) -> float:
        if self.kind == "box":
            a, b, c = self.size
            return 8.0 * (a * b + b * c + a * c)
        if self.kind == "cylinder":
            r, h = self.size
            return 2 * np.pi * r * 2 * h + 2 * np.pi * r * r
        if self.kind == "frustum":
            r0, r1, h = self.size
            slant = np.hypot(r0 - r1, 2 * h)
            return np.pi * (r0 + r1) * slant + np.pi * (r0 * r0 + r1 * r1)
        if self.kind == "ellipsoid":  # Knud Thomsen's approximation
            p = 1.6075
            a, b, c = self.size
            return 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
        raise ValueError(f"unknown part kind {self.kind!r}")

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points uniformly on the surface and their outward unit normals."""
        pts, nrm = _SAMPLERS[self.kind](self.size, n, rng)
        if self.kind in ("cylinder", "frustum") and self.axis != 2:
            perm = [2, 0, 1] if self.axis == 0 else [0, 2, 1]
            pts, nrm = pts[:, perm], nrm[:, perm]
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return pts @ rot.T + np.asarray(self.center), nrm @ rot.T


def _box(size, n, rng):
    a, b, c = size
    faces = np.array([b * c, b * c, a * c, a * c, a * b, a * b])
    f = rng.choice(6, size=n, p=faces / faces.sum())
    uv = rng.uniform(-1, 1, (n, 2))
    axis, sign = f // 2, np.where(f % 2 == 0, 1.0, -1.0)
    pts = np.empty((n, 3))
    nrm = np.zeros((n, 3))
    half = np.array([a, b, c])
    for ax in range(3):
        m = axis == ax
        others = [i for i in range(3) if i != ax]
        pts[m, ax] = sign[m] * half[ax]
        pts[m, others[0]] = uv[m, 0] * half[others[0]]
        pts[m, others[1]] = uv[m, 1] * half[others[1]]
        nrm[m, ax] = sign[m]
    return pts, nrm


def _frustum(size, n, rng):
    r0, r1, h = size
    slant = np.hypot(r0 - r1, 2 * h)
    areas = np.array([np.pi * (r0 + r1) * slant, np.pi * r0 * r0, np.pi * r1 * r1])
    f = rng.choice(3, size=n, p=areas / areas.sum())
    theta = rng.uniform(0, 2 * np.pi, n)
    pts = np.empty((n, 3))
    nrm = np.empty((n, 3))
    side = f == 0
    # lateral: radius varies linearly in t, area density ∝ radius -> invert the CDF
    u = rng.uniform(0, 1, side.sum())
    if abs(r1 - r0) < 1e-12:
        t = u
    else:
        t = (np.sqrt(r0 * r0 + u * (r1 * r1 - r0 * r0)) - r0) / (r1 - r0)
    r = r0 + t * (r1 - r0)
    th = theta[side]
    pts[side] = np.stack([r * np.cos(th), r * np.sin(th), -h + 2 * h * t], 1)
    nz = (r0 - r1) / slant
    nr = 2 * h / slant
    nrm[side] = np.stack([nr * np.cos(th), nr * np.sin(th), np.full_like(th, nz)], 1)
    for face, radius, z in ((1, r0, -h), (2, r1, h)):
        m = f == face
        rr = radius * np.sqrt(rng.uniform(0, 1, m.sum()))
        pts[m] = np.stack([rr * np.cos(theta[m]), rr * np.sin(theta[m]), np.full(m.sum(), z)], 1)
        nrm[m] = (0.0, 0.0, np.sign(z))
    return pts, nrm


def _cylinder(size, n, rng):
    r, h = size
    return _frustum((r, r, h), n, rng)


def _ellipsoid(size, n, rng):
    axes = np.asarray(size)
    # rejection sampling of the sphere map by the local area stretch gives uniform density
    out_p, out_n, got = [], [], 0
    stretch_max = np.max(axes) * np.max(axes)
    while got < n:
        d = rng.normal(size=(2 * n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        nrm = d / axes
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        stretch = np.prod(axes) * np.linalg.norm(d / axes, axis=1)
        keep = rng.uniform(0, stretch_max, len(d)) < stretch
        out_p.append(d[keep] * axes)
        out_n.append(nrm[keep])
        got += int(keep.sum())
    return np.concatenate(out_p)[:n], np.concatenate(out_n)[:n]


_SAMPLERS: dict[str, Callable] = {"box": _box, "cylinder": _cylinder, "frustum": _frustum, "ellipsoid": _ellipsoid}


@dataclass(frozen=True)
class Shape:
    kind: str
    parts: tuple[Part, ...]

    def area(self) -> float:
        return float(sum(p.area() for p in self.parts))


def _mirror_pair(make: Callable[[float], Part], x: float) -> list[Part]:
    return [make(x), make(-x)]


def _legs(rng, hx, hy, height, style: str) -> list[Part]:
    thick = rng.uniform(0.025, 0.06)
    inset = rng.uniform(0.0, 0.3)
    x, y = hx * (1 - inset) - thick, hy * (1 - inset) - thick
    parts = []
    for sy in (y, -y):
        for sx in (x, -x):
            if style == "round":
                parts.append(Part("cylinder", (sx, sy, height / 2), (thick, height / 2)))
            else:
                parts.append(Part("box", (sx, sy, height / 2), (thick, thick, height / 2)))
    return parts


def _table(rng) -> list[Part]:
    hx, hy = rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.7)
    height, top = rng.uniform(0.5, 0.9), rng.uniform(0.02, 0.06)
    if rng.uniform() < 0.25:  # round pedestal table
        r = rng.uniform(0.35, 0.7)
        return [Part("cylinder", (0, 0, height), (r, top)), Part("cylinder", (0, 0, height / 2), (0.05, height / 2)),
                Part("frustum", (0, 0, 0.03), (r * 0.6, 0.08, 0.03))]
    parts = [Part("box", (0, 0, height), (hx, hy, top))]
    parts += _legs(rng, hx, hy, height - top, rng.choice(["round", "square"]))
    if rng.uniform() < 0.5:  # apron or lower shelf
        z = rng.uniform(0.1, height * 0.5)
        parts.append(Part("box", (0, 0, z), (hx * 0.85, hy * 0.85, 0.015)))
    return parts


def _chair(rng) -> list[Part]:
    hx, hy = rng.uniform(0.2, 0.3), rng.uniform(0.2, 0.3)
    seat_h, back_h = rng.uniform(0.4, 0.5), rng.uniform(0.3, 0.6)
    parts = [Part("box", (0, 0, seat_h), (hx, hy, 0.03))]
    parts += _legs(rng, hx, hy, seat_h - 0.03, rng.choice(["round", "square"]))
    tilt_y = -hy + 0.02
    if rng.uniform() < 0.5:
        parts.append(Part("box", (0, tilt_y, seat_h + back_h / 2), (hx, 0.02, back_h / 2)))
    else:  # slatted back
        for x in np.linspace(-hx * 0.8, hx * 0.8, int(rng.integers(2, 5))):
            parts.append(Part("box", (x, tilt_y, seat_h + back_h / 2), (0.02, 0.02, back_h / 2)))
        parts.append(Part("box", (0, tilt_y, seat_h + back_h), (hx, 0.025, 0.04)))
    if rng.uniform() < 0.4:  # arm rests
        arm_z = seat_h + rng.uniform(0.15, 0.25)
        parts += _mirror_pair(lambda x: Part("box", (x, 0, arm_z), (0.03, hy, 0.025)), hx)
        parts += _mirror_pair(lambda x: Part("cylinder", (x, hy * 0.7, (seat_h + arm_z) / 2),
                                             (0.02, (arm_z - seat_h) / 2)), hx)
    return parts


def _shelf(rng) -> list[Part]:
    hx, hy, h = rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.35), rng.uniform(0.6, 1.8)
    t = rng.uniform(0.015, 0.03)
    parts = _mirror_pair(lambda x: Part("box", (x, 0, h / 2), (t, hy, h / 2)), hx - t)
    for z in np.linspace(t, h - t, int(rng.integers(3, 6))):
        parts.append(Part("box", (0, 0, z), (hx - 2 * t, hy, t)))
    if rng.uniform() < 0.6:
        parts.append(Part("box", (0, -hy + t / 2, h / 2), (hx, t / 2, h / 2)))
    return parts


def _cabinet(rng) -> list[Part]:
    hx, hy, h = rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.4), rng.uniform(0.4, 1.2)
    parts = [Part("box", (0, 0, h / 2 + 0.05), (hx, hy, h / 2))]
    n = int(rng.integers(1, 4))
    for z in np.linspace(0.05 + h / (2 * n), 0.05 + h - h / (2 * n), n):
        if rng.uniform() < 0.5:
            parts.append(Part("cylinder", (0, hy + 0.02, z), (0.012, hx * 0.3), axis=0))
        else:
            parts += _mirror_pair(lambda x: Part("ellipsoid", (x, hy + 0.015, z), (0.02, 0.02, 0.02)), hx * 0.5)
    parts += _legs(rng, hx, hy, 0.05, "square")
    return parts


def _lamp(rng) -> list[Part]:
    h = rng.uniform(0.4, 1.6)
    base = rng.uniform(0.1, 0.2)
    shade_r0, shade_r1 = rng.uniform(0.12, 0.3), rng.uniform(0.06, 0.15)
    return [Part("frustum", (0, 0, 0.02), (base, base * 0.8, 0.02)),
            Part("cylinder", (0, 0, h / 2), (0.015, h / 2)),
            Part("frustum", (0, 0, h), (shade_r0, shade_r1, rng.uniform(0.08, 0.15)))]


def _sofa(rng) -> list[Part]:
    hx, hy = rng.uniform(0.6, 1.1), rng.uniform(0.35, 0.5)
    seat = rng.uniform(0.35, 0.45)
    arm_w = rng.uniform(0.08, 0.15)
    parts = [Part("box", (0, 0, seat / 2), (hx, hy, seat / 2)),
             Part("box", (0, -hy + 0.08, seat + 0.2), (hx, 0.08, 0.2))]
    parts += _mirror_pair(lambda x: Part("box", (x, 0, seat / 2 + 0.1), (arm_w, hy, seat / 2 + 0.1)), hx + arm_w)
    for x in np.linspace(-hx * 0.5, hx * 0.5, int(rng.integers(1, 4))):
        parts.append(Part("ellipsoid", (x, 0.05, seat + 0.04), (hx / 3, hy * 0.8, 0.06)))
    return parts


def _vessel(rng) -> list[Part]:
    r, h = rng.uniform(0.05, 0.15), rng.uniform(0.1, 0.4)
    parts = [Part("cylinder", (0, 0, h / 2), (r, h / 2))]
    if rng.uniform() < 0.5:  # bottle neck
        parts += [Part("frustum", (0, 0, h + 0.04), (r, r * 0.35, 0.04)),
                  Part("cylinder", (0, 0, h + 0.12), (r * 0.35, 0.04))]
    else:  # mug handle
        parts.append(Part("box", (0, r + 0.03, h / 2), (0.012, 0.03, h * 0.3)))
    return parts


def _monitor(rng) -> list[Part]:
    w, hgt = rng.uniform(0.25, 0.45), rng.uniform(0.15, 0.3)
    stand = rng.uniform(0.1, 0.2)
    return [Part("box", (0, 0, stand + hgt), (w, 0.02, hgt)),
            Part("box", (0, 0.03, stand / 2 + 0.01), (0.03, 0.015, stand / 2 + 0.01)),
            Part("box", (0, 0.03, 0.01), (0.12, 0.09, 0.01))]


def _blocks(rng) -> list[Part]:
    """Loose mirror-symmetric compositions of primitives: geometry without a furniture prior."""
    parts = []
    for _ in range(int(rng.integers(2, 6))):
        kind = rng.choice(["box", "cylinder", "frustum", "ellipsoid"])
        c = (rng.uniform(0.05, 0.5), rng.uniform(-0.4, 0.4), rng.uniform(0, 0.8))
        if kind == "box":
            size: tuple[float, ...] = tuple(rng.uniform(0.03, 0.35, 3))
        elif kind == "cylinder":
            size = (rng.uniform(0.03, 0.25), rng.uniform(0.03, 0.35))
        elif kind == "frustum":
            size = (rng.uniform(0.05, 0.3), rng.uniform(0.0, 0.2), rng.uniform(0.05, 0.3))
        else:
            size = tuple(rng.uniform(0.05, 0.3, 3))
        axis = int(rng.integers(0, 3))
        if rng.uniform() < 0.3:  # on the mirror plane
            parts.append(Part(kind, (0.0, c[1], c[2]), size, axis=axis if axis != 0 else 2))
        else:
            parts += _mirror_pair(lambda x: Part(kind, (x, c[1], c[2]), size, axis=axis), c[0])
    return parts


SHAPE_KINDS: dict[str, Callable[[np.random.Generator], list[Part]]] = {
    "table": _table, "chair": _chair, "shelf": _shelf, "cabinet": _cabinet, "lamp": _lamp,
    "sofa": _sofa, "vessel": _vessel, "monitor": _monitor, "blocks": _blocks,
}


def random_shape(rng: np.random.Generator, kinds: tuple[str, ...] | None = None) -> Shape:
    """A random shape of one of ``kinds`` (all when None), mirror-symmetric across x = 0."""
    kinds = tuple(kinds or SHAPE_KINDS)
    unknown = [k for k in kinds if k not in SHAPE_KINDS]
    if unknown:
        raise ValueError(f"unknown shape kind(s) {unknown}; known: {sorted(SHAPE_KINDS)}")
    kind = str(kinds[int(rng.integers(len(kinds)))])
    return Shape(kind, tuple(SHAPE_KINDS[kind](rng)))


def sample_surface(shape: Shape, n: int, rng: np.random.Generator,
                   normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) float32 points uniformly by area over all parts, with outward normals.

    With ``normalize`` the shape is centred on its bounding box and scaled so the farthest
    point lies at 0.9 (inside the decoder's tanh range), keeping the x = 0 mirror plane.
    Internal faces where parts touch are kept, as ShapeNet's sampled meshes do.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    areas = np.array([p.area() for p in shape.parts])
    counts = rng.multinomial(n, areas / areas.sum())
    chunks = [p.sample(int(k), rng) for p, k in zip(shape.parts, counts) if k > 0]
    pts = np.concatenate([c[0] for c in chunks])
    nrm = np.concatenate([c[1] for c in chunks])
    if normalize:
        center = (pts.max(0) + pts.min(0)) / 2
        center[0] = 0.0
        pts = pts - center
        pts *= 0.9 / np.linalg.norm(pts, axis=1).max()
    return pts.astype(np.float32), nrm.astype(np.float32)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix with sign fix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
