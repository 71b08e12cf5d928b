"""A built-in synthetic Kinect: a furnished room ray-cast along a known handheld trajectory.

It is the default demo source (no files needed) and a source of depth frames with exact ground
truth. The room (6 m x 5 m x 2.7 m, world z up) has walls, a kitchen counter with cabinets, bar
stools and a fridge, a sofa, a bookshelf, a desk with a chair, monitor and lamp, a wardrobe, a TV
stand, stacked boxes, plants, chairs, a coat stand, a bin, a ball and a cone, so FPFH + RANSAC
between frames is as well-conditioned as in a real kitchen or office (no view is just walls). ``seed`` moves the small clutter (shelf items, things on the counter and
desk) and drives the sensor noise; the furniture and the trajectory are fixed.

Depth is z along the optical axis (what a depth camera publishes), not ray length. With
``noise=True`` it follows a Kinect v1: Gaussian noise in disparity quantised to 1/8 pixel, giving
σ_z ≈ 1.425e-3·z² m (Khoshelham & Elberink 2012), millimetre quantisation, no return beyond
``max_depth`` or below ``min_depth``, dropout at grazing incidence and random dropout along depth
edges.
"""

from __future__ import annotations

import math

import numpy as np
import open3d as o3d

from ukpgan_ros.datasets.base import DepthFrame

__all__ = ["SyntheticSequence", "build_room", "camera_pose", "kinect_noise", "ROOM_SIZE", "KINECT_SIGMA_Z2"]

ROOM_SIZE = (6.0, 5.0, 2.7)  # x, y, z extent of the room [m]; the world origin is a floor corner
KINECT_SIGMA_Z2 = 1.425e-3  # σ_z = KINECT_SIGMA_Z2 · z² [m], Khoshelham & Elberink 2012
_BASELINE = 0.075  # Kinect v1 IR projector-camera baseline [m]
_SUBPIXEL = 8.0  # Kinect v1 disparity is reported in 1/8 pixel steps
_NATIVE_FX = 580.0  # focal length [px] of the Kinect v1 IR camera, in whose pixels disparity is matched

# Trajectory: the camera walks an ellipse around the room centre while it turns steadily (and
# independently) to look around, with the yaw, pitch, roll and height wobble of a handheld camera:
# about 1.2-1.5 cm and 0.4-0.8° per frame at 30 Hz. It starts on the south side facing the kitchen.
_PATH_CENTRE = (3.0, 2.5)
_PATH_AXES = (0.9, 0.7)
_PATH_OMEGA = 0.5  # rad/s around the ellipse
_PATH_PHASE = -0.5 * math.pi
_YAW_RATE = 0.3  # rad/s
_YAW_START = 0.5 * math.pi


# ----------------------------------------------------------------------------- the room


def _box(size: tuple[float, float, float], centre: tuple[float, float, float], yaw: float = 0.0) -> o3d.geometry.TriangleMesh:
    """Axis-aligned box of ``size`` centred at ``centre``, turned by ``yaw`` about world z."""
    m = o3d.geometry.TriangleMesh.create_box(*size)
    m.translate(-0.5 * np.asarray(size))
    if yaw:
        m.rotate(o3d.geometry.get_rotation_matrix_from_axis_angle([0.0, 0.0, yaw]), center=(0.0, 0.0, 0.0))
    return m.translate(centre)


def _span(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> o3d.geometry.TriangleMesh:
    """Axis-aligned box given by its extents (how furniture is measured)."""
    return _box((x1 - x0, y1 - y0, z1 - z0), ((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2))


def _cylinder(radius: float, height: float, base: tuple[float, float, float], axis: str = "z") -> o3d.geometry.TriangleMesh:
    """Upright cylinder standing on ``base`` (or lying along x/y, centred on ``base``)."""
    m = o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution=32)
    if axis == "z":
        return m.translate((base[0], base[1], base[2] + height / 2))
    rot = [0.0, math.pi / 2, 0.0] if axis == "x" else [math.pi / 2, 0.0, 0.0]
    m.rotate(o3d.geometry.get_rotation_matrix_from_axis_angle(rot), center=(0.0, 0.0, 0.0))
    return m.translate(base)


def _sphere(radius: float, centre: tuple[float, float, float]) -> o3d.geometry.TriangleMesh:
    return o3d.geometry.TriangleMesh.create_sphere(radius, resolution=24).translate(centre)


def _cone(radius: float, height: float, base: tuple[float, float, float]) -> o3d.geometry.TriangleMesh:
    return o3d.geometry.TriangleMesh.create_cone(radius, height, resolution=32).translate(base)


def _furniture() -> list[o3d.geometry.TriangleMesh]:
    """The fixed furniture, all outside the camera's path (x 2.1-3.9, y 1.8-3.2)."""
    X, Y, Z = ROOM_SIZE
    parts = [_span(0, X, 0, Y, 0, Z)]  # walls, floor, ceiling (ray casting hits the inside faces)
    # West wall: bookshelf and sofa with a picture above it.
    parts += [_span(0.0, 0.35, 0.40, 0.42, 0, 2.0), _span(0.0, 0.35, 1.58, 1.60, 0, 2.0)]
    parts += [_span(0.0, 0.35, 0.42, 1.58, z, z + 0.025) for z in (0.05, 0.5, 1.0, 1.5, 1.975)]
    parts += [
        _span(0.0, 0.9, 2.2, 4.2, 0, 0.45), _span(0.0, 0.22, 2.2, 4.2, 0.45, 0.9),
        _span(0.0, 0.9, 2.0, 2.2, 0, 0.65), _span(0.0, 0.9, 4.2, 4.4, 0, 0.65),
        _box((0.15, 0.45, 0.4), (0.32, 2.55, 0.62), yaw=0.35),
        _span(0.0, 0.03, 2.8, 3.6, 1.35, 1.95),
    ]
    # North wall: kitchen counter, upper cabinets, fridge, a door with a handle.
    parts += [
        _span(0.9, 2.0, 4.42, Y, 0, 0.88), _span(2.0, 2.6, 4.8, Y, 0, 0.88), _span(2.6, 3.6, 4.42, Y, 0, 0.88),
        _span(0.88, 3.62, 4.36, Y, 0.88, 0.92), _cylinder(0.012, 0.8, (3.1, 4.38, 0.75), axis="x"),
        _span(0.9, 1.9, 4.65, Y, 1.45, 2.15), _span(1.95, 2.45, 4.7, Y, 1.65, 2.15), _span(2.5, 3.0, 4.65, Y, 1.45, 2.15),
        _span(3.9, 4.6, 4.3, Y, 0, 1.85),
        _cylinder(0.012, 0.5, (4.0, 4.26, 1.2), axis="z"),
        _span(5.0, 5.9, 4.96, Y, 0, 2.05), _cylinder(0.015, 0.14, (5.15, 4.9, 1.0), axis="x"),
    ]
    # East wall: desk with monitor and lamp, a chair, radiator and window frame.
    parts += [_span(5.2, 6.0, 1.4, 3.0, 0.72, 0.75)]
    parts += [_span(x, x + 0.05, y, y + 0.05, 0, 0.72) for x in (5.22, 5.93) for y in (1.42, 2.93)]
    parts += [
        _span(5.78, 5.81, 1.9, 2.5, 0.92, 1.28), _cylinder(0.02, 0.17, (5.84, 2.2, 0.75)),
        _cylinder(0.09, 0.01, (5.84, 2.2, 0.75)),
        _cylinder(0.01, 0.35, (5.75, 1.55, 0.75)), _cone(0.11, 0.16, (5.75, 1.55, 1.0)),
    ]
    parts += [_span(4.72, 5.17, 2.0, 2.45, 0.44, 0.48), _span(4.72, 4.76, 2.0, 2.45, 0.48, 0.95)]
    parts += [_span(x, x + 0.04, y, y + 0.04, 0, 0.44) for x in (4.73, 5.12) for y in (2.01, 2.4)]
    parts += [_span(5.9, 6.0, y, y + 0.04, 0.2, 0.8) for y in np.arange(3.5, 4.5, 0.08)]
    parts += [
        _span(5.95, 6.0, 3.4, 4.6, 1.1, 1.16), _span(5.95, 6.0, 3.4, 4.6, 2.04, 2.1),
        _span(5.95, 6.0, 3.4, 3.46, 1.1, 2.1), _span(5.95, 6.0, 4.54, 4.6, 1.1, 2.1),
        _span(5.95, 6.0, 3.97, 4.03, 1.1, 2.1),
    ]
    # South wall: stacked moving boxes, plant, bin, cone, TV on a low cabinet, a ball.
    parts += [
        _box((0.6, 0.5, 0.45), (0.9, 0.35, 0.225), yaw=0.1), _box((0.5, 0.45, 0.4), (0.95, 0.38, 0.65), yaw=-0.25),
        _box((0.35, 0.3, 0.3), (0.9, 0.36, 1.0), yaw=0.6), _box((0.45, 0.45, 0.55), (1.45, 0.55, 0.275), yaw=0.45),
        _cylinder(0.18, 0.35, (2.3, 0.4, 0.0)), _sphere(0.3, (2.3, 0.4, 0.68)),
        _cone(0.17, 0.45, (1.85, 0.9, 0.0)), _cylinder(0.15, 0.9, (3.2, 0.3, 0.0)),
        _span(3.8, 5.4, 0.0, 0.45, 0, 0.55), _span(4.0, 5.2, 0.15, 0.2, 0.62, 1.3), _span(4.5, 4.7, 0.1, 0.3, 0.55, 0.62),
        _sphere(0.12, (5.6, 0.8, 0.12)),
    ]
    # More of a lived-in room: floor lamp, corner side table, wardrobe, a second plant, wall
    # shelves, a clock and pictures, a stool, a rug, a coat stand, a shoe bench, a wall cabinet.
    parts += [
        _cylinder(0.15, 0.03, (0.35, 1.85, 0.0)), _cylinder(0.015, 1.45, (0.35, 1.85, 0.03)),
        _cone(0.2, 0.25, (0.35, 1.85, 1.4)),
        _span(0.05, 0.65, 4.45, 4.95, 0.5, 0.53), _cylinder(0.03, 0.5, (0.35, 4.7, 0.0)),
        _span(5.4, 6.0, 0.3, 1.25, 0, 2.05), _span(5.38, 5.4, 0.3, 0.77, 0.05, 2.0),
        _cylinder(0.012, 0.3, (5.36, 0.82, 1.0)),
        _cylinder(0.2, 0.4, (5.65, 3.25, 0.0)), _sphere(0.22, (5.65, 3.25, 0.58)),
        _sphere(0.15, (5.55, 3.15, 0.85)),
        _span(5.75, 6.0, 1.5, 2.9, 1.6, 1.63), _box((0.18, 0.14, 0.22), (5.88, 1.8, 1.74), yaw=0.2),
        _cylinder(0.05, 0.25, (5.85, 2.6, 1.63)),
        _cylinder(0.16, 0.04, (2.8, 0.02, 1.85), axis="y"), _span(0.55, 1.65, 0.0, 0.03, 1.45, 2.0),
        _span(3.9, 4.3, 4.97, 5.0, 2.0, 2.3),
        _cylinder(0.17, 0.02, (1.55, 3.2, 0.43)), _cylinder(0.025, 0.43, (1.55, 3.2, 0.0)),
        _span(2.0, 4.0, 1.3, 3.7, 0.0, 0.012),
        _cylinder(0.02, 1.75, (4.8, 4.75, 0.0)), _cylinder(0.2, 0.02, (4.8, 4.75, 0.0)),
        _sphere(0.05, (4.8, 4.63, 1.6)), _sphere(0.05, (4.9, 4.8, 1.6)), _box((0.12, 0.35, 0.7), (4.72, 4.82, 1.2), yaw=0.3),
        _span(5.6, 6.0, 4.55, 4.95, 0, 0.45), _box((0.3, 0.12, 0.1), (5.75, 4.7, 0.5), yaw=0.15),
        _span(2.0, 3.4, 0.0, 0.25, 1.58, 1.61), _box((0.3, 0.2, 0.25), (2.3, 0.12, 1.735), yaw=-0.1),
        _cylinder(0.07, 0.3, (2.9, 0.13, 1.61)), _span(3.9, 5.3, 0.0, 0.3, 1.6, 2.1),
    ]
    parts += _chair(2.75, 0.8, -2.2)
    for x in (1.4, 2.3, 3.2):  # bar stools at the counter
        parts += [_cylinder(0.2, 0.02, (x, 4.0, 0.0)), _cylinder(0.025, 0.65, (x, 4.0, 0.02)), _cylinder(0.17, 0.05, (x, 4.0, 0.67))]
    parts += [
        _span(3.05, 3.35, 3.82, 3.85, 0.72, 1.0),
        _cylinder(0.25, 0.1, (3.0, 2.5, 2.35)), _cylinder(0.008, 0.25, (3.0, 2.5, 2.45)),
    ]
    return parts


def _chair(x: float, y: float, yaw: float) -> list[o3d.geometry.TriangleMesh]:
    """A dining chair (seat, backrest, four legs) standing at (x, y), its back towards -x turned by ``yaw``."""
    local = [((0.45, 0.45, 0.04), (0.0, 0.0, 0.46)), ((0.04, 0.45, 0.5), (-0.205, 0.0, 0.73))]
    local += [((0.04, 0.04, 0.44), (sx * 0.2, sy * 0.2, 0.22)) for sx in (-1, 1) for sy in (-1, 1)]
    c, s = math.cos(yaw), math.sin(yaw)
    return [_box(size, (x + c * px - s * py, y + s * px + c * py, pz), yaw=yaw) for size, (px, py, pz) in local]


def _clutter(rng: np.random.Generator) -> list[o3d.geometry.TriangleMesh]:
    """Seed-dependent small objects standing on the shelves, the counter and the desk."""
    surfaces = [  # x0, x1, y0, y1, top z, max object height, count
        (0.03, 0.33, 0.45, 1.55, 0.075, 0.38, 4), (0.03, 0.33, 0.45, 1.55, 0.525, 0.4, 4),
        (0.03, 0.33, 0.45, 1.55, 1.025, 0.4, 3), (0.03, 0.33, 0.45, 1.55, 1.525, 0.4, 3),
        (1.0, 3.5, 4.45, 4.9, 0.92, 0.35, 5), (5.25, 5.7, 1.45, 2.95, 0.75, 0.3, 3),
    ]
    parts = []
    for x0, x1, y0, y1, z, hmax, count in surfaces:
        for _ in range(count):
            h = rng.uniform(0.08, hmax)
            if rng.random() < 0.6:
                sx, sy = rng.uniform(0.04, 0.25, size=2)
                sx, sy = min(sx, (x1 - x0) * 0.8), min(sy, (y1 - y0) * 0.8)
                c = (rng.uniform(x0 + sx / 2, x1 - sx / 2), rng.uniform(y0 + sy / 2, y1 - sy / 2), z + h / 2)
                parts.append(_box((sx, sy, h), c, yaw=rng.uniform(-0.6, 0.6)))
            else:
                r = rng.uniform(0.03, min(0.1, (x1 - x0) / 2.5))
                parts.append(_cylinder(r, h, (rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r), z)))
    return parts


def build_room(seed: int = 0) -> o3d.geometry.TriangleMesh:
    """The room as one legacy triangle mesh (world frame, z up, metres)."""
    mesh = o3d.geometry.TriangleMesh()
    for part in _furniture() + _clutter(np.random.default_rng([seed, 0, 0])):
        mesh += part
    return mesh


# ----------------------------------------------------------------------------- the trajectory


def camera_pose(t: float, loop_period: float | None = None) -> np.ndarray:
    """Camera-to-world 4x4 at time ``t`` [s], optical convention (x right, y down, z forward).

    With ``loop_period`` [s] the camera goes once round the ellipse in that time while turning
    once round, and its wobble repeats too, so at ``t = loop_period`` it is back at its start:
    a loop to close."""
    if loop_period is None:
        theta = _PATH_OMEGA * t + _PATH_PHASE
        yaw = _YAW_START + _YAW_RATE * t + 0.12 * math.sin(0.7 * t)
        z, pitch_w, roll_w = math.sin(1.3 * t), math.sin(0.9 * t), math.sin(1.1 * t)
    else:
        phi = 2.0 * math.pi * t / loop_period
        theta = phi + _PATH_PHASE
        yaw = _YAW_START + phi + 0.12 * math.sin(2.0 * phi)
        z, pitch_w, roll_w = math.sin(3.0 * phi), math.sin(4.0 * phi), math.sin(5.0 * phi)
    pos = np.array([
        _PATH_CENTRE[0] + _PATH_AXES[0] * math.cos(theta),
        _PATH_CENTRE[1] + _PATH_AXES[1] * math.sin(theta),
        1.45 + 0.05 * z,
    ])
    pitch = -math.radians(17.0 + 4.0 * pitch_w)
    roll = math.radians(2.0 * roll_w)
    forward = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    cr, sr = math.cos(roll), math.sin(roll)
    T = np.eye(4)
    T[:3, 0] = cr * right + sr * down  # roll about the optical axis
    T[:3, 1] = -sr * right + cr * down
    T[:3, 2] = forward
    T[:3, 3] = pos
    return T


# ----------------------------------------------------------------------------- the sensor


def kinect_noise(
    z: np.ndarray,
    cos_incidence: np.ndarray,
    rng: np.random.Generator,
    min_depth: float = 0.4,
    max_depth: float = 6.0,
) -> np.ndarray:
    """Turn exact z-depth (0 = no hit) into a Kinect v1-like float32 depth image in metres, 0 invalid.

    The Gaussian part in disparity is sized so that, together with the 1/8-pixel disparity
    quantisation, the depth error is σ_z ≈ KINECT_SIGMA_Z2·z² as Khoshelham & Elberink measured.
    Disparity lives in the native sensor's pixels, so the noise does not depend on the output
    resolution. ``cos_incidence`` is |cos| of the angle between viewing ray and surface normal.
    """
    fb = _NATIVE_FX * _BASELINE
    quant_coeff = 1.0 / (fb * _SUBPIXEL) / math.sqrt(12.0)  # σ of the quantisation error / z²
    gauss_coeff = math.sqrt(max(KINECT_SIGMA_Z2**2 - quant_coeff**2, 0.0))
    hit = (z > 0) & np.isfinite(z)
    zs = np.where(hit, z, 1.0).astype(np.float32)
    disparity = fb / zs + rng.standard_normal(z.shape, dtype=np.float32) * np.float32(gauss_coeff * fb)
    disparity = np.round(disparity * _SUBPIXEL) / _SUBPIXEL
    out = fb / np.maximum(disparity, np.float32(1e-3))
    out = np.round(out * 1000.0) / 1000.0  # the driver publishes millimetres
    valid = hit & (disparity > 0) & (out >= min_depth) & (out <= max_depth)
    u_graze, u_edge = rng.random((2, *z.shape), dtype=np.float32)
    # Grazing incidence: no return beyond 80°, dropout increasingly likely from 60° (cos 0.5).
    cos_inc = np.clip(cos_incidence, 0.0, 1.0)
    oblique = cos_inc < 0.5
    p_graze = np.clip((np.degrees(np.arccos(cos_inc[oblique])) - 60.0) / 20.0, 0.0, 1.0) ** 2
    valid[oblique] &= u_graze[oblique] >= p_graze
    # Depth edges: the projector's shadow and mixed pixels lose returns on both sides of a jump.
    zt = np.where(hit, z, 0.0).astype(np.float32)
    jump_x = np.abs(np.diff(zt, axis=1)) > np.maximum(0.04, 0.03 * zt[:, 1:])
    jump_y = np.abs(np.diff(zt, axis=0)) > np.maximum(0.04, 0.03 * zt[1:, :])
    edge = np.zeros(z.shape, dtype=bool)
    edge[:, 1:] |= jump_x
    edge[:, :-1] |= jump_x
    edge[1:, :] |= jump_y
    edge[:-1, :] |= jump_y
    edge[:, 1:] |= edge[:, :-1].copy()  # widen by one pixel to the right
    valid &= ~(edge & (u_edge < 0.6))
    return np.where(valid, out, 0.0).astype(np.float32)


class SyntheticSequence:
    """The built-in depth camera: ``num_frames`` frames of the room at ``rate_hz``, rendered on access.

    Implements DepthSequence. ``K`` has fx = fy and the principal point at the image centre.
    Frames are deterministic in (seed, index) whatever the access order. ``noise=False`` gives the
    exact z-depth within [min_depth, max_depth]. ``loop=True`` takes the looping trajectory
    (:func:`camera_pose` with a period of ``num_frames`` frames: frame ``num_frames`` would be
    frame 0 again), named ``synthetic_loop``.
    """

    def __init__(
        self,
        num_frames: int = 120,
        width: int = 640,
        height: int = 480,
        fx: float = 525.0,
        rate_hz: float = 30.0,
        seed: int = 0,
        noise: bool = True,
        min_depth: float = 0.4,
        max_depth: float = 6.0,
        loop: bool = False,
    ):
        if int(num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if int(width) < 2 or int(height) < 2:
            raise ValueError(f"image size must be at least 2x2, got {width}x{height}")
        if not (fx > 0 and rate_hz > 0 and math.isfinite(fx) and math.isfinite(rate_hz)):
            raise ValueError(f"fx and rate_hz must be positive and finite, got fx={fx}, rate_hz={rate_hz}")
        if not 0.0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.name = "synthetic_loop" if loop else "synthetic"
        self.loop_period = int(num_frames) / float(rate_hz) if loop else None
        self.num_frames, self.width, self.height = int(num_frames), int(width), int(height)
        self.rate_hz, self.seed, self.noise = float(rate_hz), int(seed), bool(noise)
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.K = np.array([[fx, 0.0, (self.width - 1) / 2], [0.0, fx, (self.height - 1) / 2], [0.0, 0.0, 1.0]])
        self._mesh = build_room(self.seed)
        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(self._mesh))
        # Camera-frame ray through each pixel centre with unit z, so the hit distance *is* z-depth.
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float32), np.arange(self.height, dtype=np.float32))
        self._dirs = np.stack([(u - self.K[0, 2]) / fx, (v - self.K[1, 2]) / fx, np.ones_like(u)], axis=-1).astype(np.float32)
        self._dir_norm = np.linalg.norm(self._dirs, axis=-1)

    def __len__(self) -> int:
        return self.num_frames

    def pose(self, i: int) -> np.ndarray:
        """Ground-truth camera-to-world pose of frame ``i`` without rendering it."""
        return camera_pose(self._index(i) / self.rate_hz, self.loop_period)

    def mesh(self) -> o3d.geometry.TriangleMesh:
        """A copy of the room mesh the frames are rendered from (world frame)."""
        return o3d.geometry.TriangleMesh(self._mesh)

    def _index(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"frame index must be an int, got {type(i).__name__}")
        j = int(i) + self.num_frames if i < 0 else int(i)
        if not 0 <= j < self.num_frames:
            raise IndexError(f"frame index {i} out of range for {self.num_frames} frames")
        return j

    def render(self, pose: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Depth image (H, W) float32 metres seen from camera-to-world ``pose``; noisy when ``rng`` is given."""
        R = np.asarray(pose[:3, :3], dtype=np.float32)
        rays = np.empty((self.height, self.width, 6), dtype=np.float32)
        rays[..., :3] = np.asarray(pose[:3, 3], dtype=np.float32)
        rays[..., 3:] = self._dirs @ R.T
        hit = self._scene.cast_rays(o3d.core.Tensor(rays))
        z = hit["t_hit"].numpy()
        z = np.where(np.isfinite(z), z, 0.0).astype(np.float32)
        if rng is None:
            return np.where((z >= self.min_depth) & (z <= self.max_depth), z, 0.0).astype(np.float32)
        normals = hit["primitive_normals"].numpy()
        cos_inc = np.abs(np.einsum("hwc,hwc->hw", normals, rays[..., 3:])) / self._dir_norm
        return kinect_noise(z, cos_inc, rng, self.min_depth, self.max_depth)

    def __getitem__(self, i: int) -> DepthFrame:
        j = self._index(i)
        pose = camera_pose(j / self.rate_hz, self.loop_period)
        rng = np.random.default_rng([self.seed, 1, j]) if self.noise else None
        return DepthFrame(index=j, stamp=j / self.rate_hz, depth_m=self.render(pose, rng), K=self.K.copy(), pose=pose)

    def __iter__(self):
        for i in range(self.num_frames):
            yield self[i]
