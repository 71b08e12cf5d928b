"""The procedural street block the synthetic LiDAR scans (:mod:`ukpgan_ros.datasets.synthetic_lidar`):
a grid of streets lined by buildings, cars, lamps, trees and street furniture, as primitives
(yawed boxes, vertical cylinders, spheres, the ground z = 0), and the analytic ray casts into
them (vectorised over rays, NumPy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["StreetScene", "STREETS_X", "STREETS_Y", "build_street", "ray_box", "ray_cylinder", "ray_sphere"]

# Street grid: centre lines of the streets along x (at these y) and along y (at these x) [m].
STREETS_Y = (0.0, 60.0)
STREETS_X = (0.0, 90.0)
_STREET_SPAN = (-130.0, 220.0)  # extent of every street (beyond the 100 m range from the loop)
_HALF_ROAD = 5.0
_FACADE = 8.0  # facade line, from the centre line [m]
_CURB_H = 0.15


# ----------------------------------------------------------------------------- the street


@dataclass
class StreetScene:
    """Primitives of the street: yawed boxes, vertical cylinders, spheres, and the ground z = 0."""

    box_centre: np.ndarray  # (B, 3)
    box_half: np.ndarray  # (B, 3)
    box_yaw: np.ndarray  # (B,)
    cyl: np.ndarray  # (C, 5): x, y, radius, z0, z1
    sph: np.ndarray  # (S, 4): x, y, z, radius

    def box_corners_xy(self) -> np.ndarray:
        """(B, 4, 2) footprint corners of the boxes."""
        c, s = np.cos(self.box_yaw), np.sin(self.box_yaw)
        hx, hy = self.box_half[:, 0], self.box_half[:, 1]
        local = np.stack([np.stack([sx * hx, sy * hy], axis=-1) for sx, sy in ((1, 1), (-1, 1), (-1, -1), (1, -1))], axis=1)
        rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], axis=1)  # (B, 2, 2)
        return np.einsum("bij,bkj->bki", rot, local) + self.box_centre[:, None, :2]


class _Builder:
    def __init__(self) -> None:
        self.boxes: list[tuple[float, ...]] = []
        self.cyls: list[tuple[float, ...]] = []
        self.sphs: list[tuple[float, ...]] = []

    def box(self, cx: float, cy: float, z0: float, z1: float, hx: float, hy: float, yaw: float = 0.0) -> None:
        self.boxes.append((cx, cy, 0.5 * (z0 + z1), hx, hy, 0.5 * (z1 - z0), yaw))

    def span(self, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> None:
        self.box(0.5 * (x0 + x1), 0.5 * (y0 + y1), z0, z1, 0.5 * abs(x1 - x0), 0.5 * abs(y1 - y0))

    def cylinder(self, x: float, y: float, r: float, z0: float, z1: float) -> None:
        self.cyls.append((x, y, r, z0, z1))

    def sphere(self, x: float, y: float, z: float, r: float) -> None:
        self.sphs.append((x, y, z, r))


def _near_crossing(u: float, crossings: tuple[float, ...], clear: float) -> bool:
    return any(abs(u - c) < clear for c in crossings)


def _side(b: _Builder, rng: np.random.Generator, axis: str, line: float, sign: float, crossings: tuple[float, ...]) -> None:
    """Buildings, sidewalk furniture and parked cars along one side of one street.

    ``axis`` is the street's direction, ``line`` its centre line, ``sign`` +1/-1 the side; local
    coordinates: u along the street, w across it (outward from the centre line, >= 0).
    """

    def put_span(u0: float, u1: float, w0: float, w1: float, z0: float, z1: float) -> None:
        a0, a1 = line + sign * w0, line + sign * w1
        if axis == "x":
            b.span(u0, u1, min(a0, a1), max(a0, a1), z0, z1)
        else:
            b.span(min(a0, a1), max(a0, a1), u0, u1, z0, z1)

    def xy(u: float, w: float) -> tuple[float, float]:
        return (u, line + sign * w) if axis == "x" else (line + sign * w, u)

    clear = _FACADE + 4.0
    lo, hi = _STREET_SPAN
    # Curb + sidewalk slab, interrupted at crossings.
    edges = [lo] + [v for c in sorted(crossings) for v in (c - _FACADE, c + _FACADE)] + [hi]
    for u0, u1 in zip(edges[0::2], edges[1::2]):
        put_span(u0, u1, _HALF_ROAD, _FACADE, 0.0, _CURB_H)
    # Buildings: facades at the facade line with piers and floor bands, alleys between.
    u = lo
    while u < hi:
        length = float(rng.uniform(14.0, 30.0))
        if _near_crossing(u, crossings, clear) or _near_crossing(u + length, crossings, clear) or any(
                u < c < u + length for c in crossings):
            u += 4.0
            continue
        floors = int(rng.integers(2, 7))
        floor_h = float(rng.uniform(2.9, 3.4))
        height = floors * floor_h + float(rng.uniform(0.3, 1.2))
        depth = float(rng.uniform(9.0, 16.0))
        recess = 0.25
        put_span(u, u + length, _FACADE + recess, _FACADE + depth, 0.0, height)  # the body
        bay = float(rng.uniform(2.6, 3.6))
        pier_w = float(rng.uniform(0.4, 0.8))
        n_bays = max(1, int(length // bay))
        step = length / n_bays
        for k in range(n_bays + 1):  # piers
            uc = u + k * step
            put_span(max(u, uc - pier_w / 2), min(u + length, uc + pier_w / 2), _FACADE, _FACADE + recess, 0.0, height)
        for f in range(floors + 1):  # floor bands (the first is the ground-floor plinth)
            z = f * floor_h
            put_span(u, u + length, _FACADE, _FACADE + recess, max(0.0, z - 0.35), min(height, z + (0.9 if f == 0 else 0.35)))
        if rng.random() < 0.5:  # a shop awning or entrance canopy
            uc = u + float(rng.uniform(0.2, 0.6)) * length
            put_span(uc - 2.0, uc + 2.0, _FACADE - 1.5, _FACADE, 2.6, 2.8)
        u += length + float(rng.uniform(1.5, 6.0))  # an alley
    # Sidewalk furniture: lamps, trees, bollards, benches, signs, hedges.
    u = lo + float(rng.uniform(0.0, 10.0))
    while u < hi:
        if not _near_crossing(u, crossings, _FACADE + 1.5):
            kind = rng.choice(["lamp", "tree", "tree", "bollards", "bench", "sign", "hedge", "none"])
            w = _HALF_ROAD + 0.6
            x, y = xy(u, w)
            if kind == "lamp":
                b.cylinder(x, y, 0.09, _CURB_H, 6.5)
                b.sphere(x, y, 6.6, 0.3)
            elif kind == "tree":
                r = float(rng.uniform(0.12, 0.25))
                h = float(rng.uniform(2.2, 3.5))
                b.cylinder(x, y, r, _CURB_H, h + 0.5)
                crown = float(rng.uniform(1.2, 2.2))
                b.sphere(x, y, h + crown * 0.8, crown)
                if rng.random() < 0.5:
                    x2, y2 = xy(u + float(rng.uniform(-0.8, 0.8)), w + 0.3)
                    b.sphere(x2, y2, h + crown * 1.6, crown * 0.7)
            elif kind == "bollards":
                for k in range(3):
                    x2, y2 = xy(u + 1.2 * k, _HALF_ROAD + 0.3)
                    b.cylinder(x2, y2, 0.1, _CURB_H, 1.0)
            elif kind == "bench":
                put_span(u - 0.9, u + 0.9, _FACADE - 1.4, _FACADE - 0.9, 0.4, 0.5)
                put_span(u - 0.9, u + 0.9, _FACADE - 0.95, _FACADE - 0.9, 0.5, 0.9)
            elif kind == "sign":
                b.cylinder(x, y, 0.04, _CURB_H, 2.6)
                put_span(u - 0.35, u + 0.35, w - 0.03, w + 0.03, 2.0, 2.7)
            elif kind == "hedge":
                put_span(u - 2.5, u + 2.5, _FACADE - 1.2, _FACADE - 0.3, 0.0, float(rng.uniform(0.8, 1.3)))
        u += float(rng.uniform(7.0, 14.0))
    # Parked cars along the curb, with gaps.
    u = lo + float(rng.uniform(0.0, 8.0))
    while u < hi:
        length = float(rng.uniform(3.8, 4.9))
        if not (_near_crossing(u, crossings, _FACADE + 4.0) or _near_crossing(u + length, crossings, _FACADE + 4.0)) \
                and rng.random() < 0.55:
            width = float(rng.uniform(1.7, 1.95))
            w = _HALF_ROAD - 0.3 - width / 2
            uc = u + length / 2
            x, y = xy(uc, w)
            yaw = (0.0 if axis == "x" else 0.5 * math.pi) + float(rng.normal(0.0, 0.02))
            hx, hy = (length / 2, width / 2)
            body = float(rng.uniform(0.95, 1.1))
            b.box(x, y, 0.25, body, hx, hy, yaw)
            cabin = float(rng.uniform(1.4, 1.6))
            b.box(x, y, body, cabin, hx * 0.55, hy * 0.9, yaw)
            for sx in (-0.7, 0.7):  # wheels as short vertical cylinders under the body
                for sy in (-1.0, 1.0):
                    ca, sa = math.cos(yaw), math.sin(yaw)
                    lx, ly = sx * hx, sy * (hy - 0.15)
                    b.cylinder(x + ca * lx - sa * ly, y + sa * lx + ca * ly, 0.32, 0.0, 0.25)
        u += length + float(rng.uniform(0.8, 6.0))


def build_street(seed: int = 0) -> StreetScene:
    """The street grid as primitives (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 3])
    b = _Builder()
    for line in STREETS_Y:
        for sign in (-1.0, 1.0):
            _side(b, rng, "x", line, sign, STREETS_X)
    for line in STREETS_X:
        for sign in (-1.0, 1.0):
            _side(b, rng, "y", line, sign, STREETS_Y)
    boxes = np.asarray(b.boxes, dtype=np.float64)  # boxes may overlap: a ray takes the nearest entry
    return StreetScene(boxes[:, :3].copy(), boxes[:, 3:6].copy(), boxes[:, 6].copy(),
                       np.asarray(b.cyls, dtype=np.float64).reshape(-1, 5), np.asarray(b.sphs, dtype=np.float64).reshape(-1, 4))


# ----------------------------------------------------------------------------- ray casts


def ray_box(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Entry distance of rays (origins ``o``, directions ``d``, (N, 3), box frame) into the box
    [-half, half]; inf where they miss (or start inside)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-half - o) * inv
        t2 = (half - o) * inv
    tmin = np.nanmax(np.minimum(t1, t2), axis=1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = (tmax >= tmin) & (tmin > 0.0)
    return np.where(hit, tmin, np.inf)


def ray_cylinder(o: np.ndarray, d: np.ndarray, cx: float, cy: float, r: float, z0: float, z1: float) -> np.ndarray:
    """First hit of rays with a vertical cylinder's side or top cap; inf where they miss."""
    ox, oy = o[:, 0] - cx, o[:, 1] - cy
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = ox * d[:, 0] + oy * d[:, 1]
    c = ox**2 + oy**2 - r * r
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        zs = o[:, 2] + ts * d[:, 2]
        side = np.where((disc >= 0) & (a > 1e-12) & (ts > 0) & (zs >= z0) & (zs <= z1), ts, np.inf)
        tc = (z1 - o[:, 2]) / d[:, 2]
        px, py = ox + tc * d[:, 0], oy + tc * d[:, 1]
        cap = np.where((tc > 0) & (px * px + py * py <= r * r), tc, np.inf)
    return np.minimum(side, cap)


def ray_sphere(o: np.ndarray, d: np.ndarray, centre: np.ndarray, r: float) -> np.ndarray:
    """First hit of rays (unit directions) with a sphere; inf where they miss."""
    oc = o - centre
    b = np.einsum("ij,ij->i", oc, d)
    c = np.einsum("ij,ij->i", oc, oc) - r * r
    disc = b * b - c  # |d| = 1
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc >= 0) & (t > 0), t, np.inf)
