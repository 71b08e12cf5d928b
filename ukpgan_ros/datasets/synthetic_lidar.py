"""A built-in spinning LiDAR: a procedural street block scanned along a known trajectory.

The sensor is a Velodyne-like rotating LiDAR (64 beams at HDL-64E elevation angles by default,
10 Hz, 1800 azimuth steps per turn, clockwise seen from above, the sweep starting behind the
sensor) that moves *during* each sweep: column ``c`` fires ``c / columns`` of a period after the
frame's stamp, from the sensor pose at that instant, so scans carry the motion distortion a real
one has (``distort=False`` fires every column from the stamp's pose: the ideal scan). Every
return is the analytic hit of the ray with the scene (NumPy, vectorised per primitive over the
rays that can reach it), plus Gaussian range noise (``range_noise``, 1.5 cm); no hit, or one
beyond ``max_range`` (100 m) or nearer than ``min_range``, gives no point.

The scene (world z up, metres, deterministic in ``seed``): a grid of streets (centre lines at
x = 0 and 90, y = 0 and 60, 10 m wide with 3 m sidewalks behind 15 cm curbs) lined by buildings
of 2 to 6 storeys whose facades have piers and floor bands around recessed windows, with
alleys between them, parked cars (body + cabin), street lamps, trees (trunk + one or two
crowns), bollards, benches, signs and hedges; the street runs on out of range, so it is a scene
much larger than the synthetic camera's room. The sensor travels a rounded rectangle around the
central block (:data:`MOTIONS`): ``walk`` on the sidewalk at 1.4 m/s with gait sway, ``drive``
in the lane at 10 m/s with 12 m corner radii, ``fast_turn`` at 8 m/s through 6 m corners
(76 deg/s) starting just before one.

Frame poses are exact (sensor-to-world at the stamp; LiDAR frame x forward, y left, z up) and
:meth:`SyntheticLidarSequence.pose_at` gives the pose at any time, so deskewing can be checked
point by point. ``python -m ukpgan_ros.datasets`` prints scan sizes, timings
and what deskewing does on each motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from ukpgan_ros.datasets.base import DepthFrame, IndexedSequence
from ukpgan_ros.datasets.street_scene import (STREETS_X, STREETS_Y, build_street, ray_box,
                                              ray_cylinder, ray_sphere)

__all__ = [
    "SyntheticLidarSequence", "LidarScan", "beam_elevations_deg", "Motion",
    "MOTIONS", "LIDAR_PERIOD_COLUMNS",
]

LIDAR_PERIOD_COLUMNS = 1800  # azimuth steps per turn (0.2 deg, an HDL-64E at 10 Hz)


@dataclass(frozen=True)
class Motion:
    """How the sensor travels the loop around the central block."""

    speed: float  # m/s along the path
    corner_radius: float  # m
    offset: float  # m outward from the street centre lines (lane or sidewalk)
    height: float  # sensor height above the ground [m]
    start_before_corner: float  # m of straight before the first corner at t = 0
    sway_deg: tuple[float, float, float]  # yaw, pitch, roll amplitudes [deg]
    sway_hz: tuple[float, float, float]  # their frequencies [Hz]
    bob: tuple[float, float]  # height bob amplitude [m] and frequency [Hz]


MOTIONS: dict[str, Motion] = {
    "walk": Motion(1.4, 2.0, 6.5, 1.9, 8.0, (3.0, 1.5, 1.5), (0.9, 1.8, 0.9), (0.02, 1.8)),
    "drive": Motion(10.0, 12.0, 2.5, 1.73, 40.0, (0.3, 0.3, 0.3), (0.4, 0.7, 0.5), (0.005, 1.3)),
    "fast_turn": Motion(8.0, 6.0, 2.5, 1.73, 4.0, (0.5, 0.5, 1.0), (0.4, 0.7, 0.5), (0.005, 1.3)),
}


def beam_elevations_deg(beams: int) -> np.ndarray:
    """Beam elevation angles [deg], top to bottom: HDL-64E (64: +2 to -8.33 in 1/3 deg steps, then
    to -24.33 in 1/2 deg steps), HDL-32E (32), VLP-16 (16), OS-128 (128), else the HDL-64E span
    evenly."""
    if beams == 64:
        return np.concatenate([np.linspace(2.0, -8.0 - 1.0 / 3.0, 32), np.linspace(-8.0 - 5.0 / 6.0, -24.0 - 1.0 / 3.0, 32)])
    table = {32: (10.67, -30.67), 16: (15.0, -15.0), 128: (22.5, -22.5)}
    hi, lo = table.get(beams, (2.0, -24.0 - 1.0 / 3.0))
    return np.linspace(hi, lo, beams)


# ----------------------------------------------------------------------------- the trajectory


def _path(s: np.ndarray, m: Motion) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position (x, y) and heading of the rounded-rectangle loop (counter-clockwise) at arc length ``s``."""
    x0, x1 = STREETS_X[0] - m.offset, STREETS_X[1] + m.offset
    y0, y1 = STREETS_Y[0] - m.offset, STREETS_Y[1] + m.offset
    r = m.corner_radius
    lx, ly, arc = (x1 - x0) - 2 * r, (y1 - y0) - 2 * r, 0.5 * math.pi * r
    per = 2 * lx + 2 * ly + 4 * arc
    s = np.mod(s, per)
    # segments: straight, corner, straight, corner ... starting at (x0 + r, y0) heading +x
    starts = np.cumsum([0.0, lx, arc, ly, arc, lx, arc, ly])
    seg = np.clip(np.searchsorted(starts, s, side="right") - 1, 0, 7)
    d = s - starts[seg]
    x, y, h = np.empty_like(s), np.empty_like(s), np.empty_like(s)
    lines = [((x0 + r, y0), 0.0), ((x1, y0 + r), 0.5 * math.pi), ((x1 - r, y1), math.pi), ((x0, y1 - r), 1.5 * math.pi)]
    centres = [(x1 - r, y0 + r), (x1 - r, y1 - r), (x0 + r, y1 - r), (x0 + r, y0 + r)]
    for k in range(4):
        (px, py), head = lines[k]
        sel = seg == 2 * k
        x[sel], y[sel], h[sel] = px + math.cos(head) * d[sel], py + math.sin(head) * d[sel], head
        sel = seg == 2 * k + 1
        a = head - 0.5 * math.pi + d[sel] / r  # angle on the corner circle
        x[sel], y[sel] = centres[k][0] + r * np.cos(a), centres[k][1] + r * np.sin(a)
        h[sel] = head + d[sel] / r
    return x, y, h


def loop_length(m: Motion) -> float:
    """Length of one lap of ``m``'s rounded-rectangle path [m]."""
    x0, x1 = STREETS_X[0] - m.offset, STREETS_X[1] + m.offset
    y0, y1 = STREETS_Y[0] - m.offset, STREETS_Y[1] + m.offset
    r = m.corner_radius
    return 2 * ((x1 - x0) - 2 * r) + 2 * ((y1 - y0) - 2 * r) + 2 * math.pi * r


def _motion_poses(t: np.ndarray, m: Motion) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (N, 3, 3) and positions (N, 3) of the sensor at times ``t`` [s]."""
    t = np.asarray(t, dtype=np.float64)
    x0 = STREETS_X[0] - m.offset
    lx = (STREETS_X[1] + m.offset - x0) - 2 * m.corner_radius
    s = (lx - m.start_before_corner) + m.speed * t
    x, y, heading = _path(s, m)
    ay, ap, ar = (math.radians(a) for a in m.sway_deg)
    fy, fp, fr = m.sway_hz
    yaw = heading + ay * np.sin(2 * math.pi * fy * t)
    pitch = ap * np.sin(2 * math.pi * fp * t + 0.7)
    roll = ar * np.sin(2 * math.pi * fr * t + 1.9)
    z = m.height + m.bob[0] * np.sin(2 * math.pi * m.bob[1] * t)
    R = Rotation.from_euler("ZYX", np.stack([yaw, pitch, roll], axis=-1)).as_matrix()
    return R, np.stack([x, y, z], axis=-1)


# ----------------------------------------------------------------------------- ray casting


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + math.pi) % (2 * math.pi) - math.pi


@dataclass(frozen=True)
class LidarScan:
    """One sweep: returns in the sensor frame at their own firing time, with their time after
    the stamp [s], ring (beam index, 0 = top) and column (azimuth step)."""

    index: int
    stamp: float
    pose: np.ndarray  # sensor-to-world at the stamp
    points: np.ndarray  # (N, 3) float32
    times: np.ndarray  # (N,) float64 seconds after the stamp
    rings: np.ndarray  # (N,) uint16
    columns: np.ndarray  # (N,) int32
    ranges: np.ndarray  # (beams, columns) float32 organized ranges, 0 = no return


class SyntheticLidarSequence(IndexedSequence):
    """The built-in spinning LiDAR: ``num_frames`` sweeps of the street at ``rate_hz``, cast on access.

    Implements DepthSequence for point clouds (``has_depth`` False, ``K`` NaN; ``width`` x
    ``height`` = columns x beams of the organized scan). ``motion`` is a :data:`MOTIONS` name or
    a :class:`Motion`; ``speed`` overrides its speed [m/s]. Frames are deterministic in
    (seed, index) whatever the access order. ``loop=True`` sets the speed so that the sequence
    drives the block exactly once (frame ``num_frames`` would be back at frame 0's place): a
    loop to close, named ``synthetic_lidar_loop``.
    """

    has_depth = False

    def __init__(
        self,
        num_frames: int = 100,
        beams: int = 64,
        columns: int = LIDAR_PERIOD_COLUMNS,
        rate_hz: float = 10.0,
        motion: str | Motion = "drive",
        speed: float | None = None,
        seed: int = 0,
        noise: bool = True,
        range_noise: float = 0.015,
        min_range: float = 1.0,
        max_range: float = 100.0,
        distort: bool = True,
        elevations_deg: np.ndarray | None = None,
        loop: bool = False,
    ):
        if int(num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if int(beams) < 1 or int(columns) < 8:
            raise ValueError(f"need beams >= 1 and columns >= 8, got {beams}, {columns}")
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be positive and finite, got {rate_hz}")
        if not 0.0 <= min_range < max_range or not math.isfinite(max_range):
            raise ValueError(f"need 0 <= min_range < max_range < inf, got {min_range}, {max_range}")
        if not (math.isfinite(range_noise) and range_noise >= 0):
            raise ValueError(f"range_noise must be >= 0, got {range_noise}")
        if isinstance(motion, str):
            if motion not in MOTIONS:
                raise ValueError(f"motion must be one of {sorted(MOTIONS)} or a Motion, got {motion!r}")
            self.motion_name, motion = motion, MOTIONS[motion]
        else:
            self.motion_name = "custom"
        if speed is not None:
            if not (math.isfinite(speed) and speed >= 0):
                raise ValueError(f"speed must be >= 0 m/s, got {speed}")
            motion = Motion(**{**motion.__dict__, "speed": float(speed)})
        if loop:
            if speed is not None:
                raise ValueError("loop=True chooses the speed (one lap over the sequence); give no speed")
            motion = Motion(**{**motion.__dict__, "speed": loop_length(motion) * float(rate_hz) / int(num_frames)})
        self.motion = motion
        self.name = "synthetic_lidar_loop" if loop else "synthetic_lidar"
        self.frame_id = "lidar"
        self.num_frames, self.beams, self.columns = int(num_frames), int(beams), int(columns)
        self.width, self.height = self.columns, self.beams
        self.rate_hz, self.period = float(rate_hz), 1.0 / float(rate_hz)
        self.seed, self.noise, self.range_noise = int(seed), bool(noise), float(range_noise)
        self.min_range, self.max_range, self.distort = float(min_range), float(max_range), bool(distort)
        self.K = np.full((3, 3), np.nan)
        self.stamps = np.arange(self.num_frames, dtype=np.float64) / self.rate_hz
        elev = beam_elevations_deg(self.beams) if elevations_deg is None else np.asarray(elevations_deg, np.float64)
        if elev.shape != (self.beams,) or not np.isfinite(elev).all() or np.abs(elev).max() >= 90:
            raise ValueError(f"elevations_deg must be {self.beams} finite angles in (-90, 90) deg")
        self.elevations_deg = elev
        # Clockwise sweep starting behind the sensor: azimuth pi -> -pi over one period.
        self.azimuths = math.pi - 2 * math.pi * (np.arange(self.columns) + 0.5) / self.columns
        self.column_times = np.arange(self.columns) / self.columns * self.period
        el = np.radians(elev)[:, None]
        az = self.azimuths[None, :]
        self._dirs = np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), axis=-1)
        self.scene = build_street(self.seed)
        s = self.scene
        self._box_corners = s.box_corners_xy()
        self._box_z = np.stack([s.box_centre[:, 2] - s.box_half[:, 2], s.box_centre[:, 2] + s.box_half[:, 2]], axis=1)

    def __len__(self) -> int:
        return self.num_frames

    def pose_at(self, t: float | np.ndarray) -> np.ndarray:
        """Sensor-to-world pose(s) at time(s) ``t`` [s]: (4, 4), or (N, 4, 4) for an array."""
        tt = np.atleast_1d(np.asarray(t, dtype=np.float64))
        R, p = _motion_poses(tt, self.motion)
        T = np.zeros((len(tt), 4, 4))
        T[:, :3, :3], T[:, :3, 3], T[:, 3, 3] = R, p, 1.0
        return T[0] if np.ndim(t) == 0 else T

    def pose(self, i: int) -> np.ndarray:
        """Ground-truth pose of frame ``i`` (at its stamp, the start of its sweep) without casting it."""
        return self.pose_at(self._index(i) / self.rate_hz)

    # ------------------------------------------------------------------ casting

    def cast(self, stamp: float, rng: np.random.Generator | None = None) -> np.ndarray:
        """Organized ranges (beams, columns) float32 of the sweep starting at ``stamp``; 0 = no return."""
        times = stamp + (self.column_times if self.distort else np.zeros(self.columns))
        R, origin = _motion_poses(times, self.motion)  # per column
        D = np.einsum("cij,bcj->bci", R, self._dirs)  # world directions (beams, columns, 3)
        H, W = self.beams, self.columns
        best = np.full((H, W), np.inf)
        # the ground z = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            tg = -origin[None, :, 2] / D[..., 2]
        best = np.where((D[..., 2] < 0) & (tg > 0), tg, best)
        # culling: world azimuth of each column's horizontal ray, and a margin for tilt
        hdir = np.einsum("cij,cj->ci", R, np.stack([np.cos(self.azimuths), np.sin(self.azimuths), np.zeros(W)], -1))
        col_az = np.arctan2(hdir[:, 1], hdir[:, 0])
        tilt = float(np.arccos(np.clip(R[:, 2, 2], -1.0, 1.0)).max())
        el = np.radians(self.elevations_deg)
        margin = tilt * math.tan(min(float(np.abs(el).max()), 1.4)) + 4 * math.pi / W + math.radians(0.5)
        travel = float(np.linalg.norm(origin[-1] - origin[0]))
        o_mid = origin[W // 2]
        oz_lo, oz_hi = float(origin[:, 2].min()), float(origin[:, 2].max())
        el_lo, el_hi = el.min() - tilt - 1e-3, el.max() + tilt + 1e-3

        def beams_for(hmin: float, hmax: float, z0: float, z1: float) -> np.ndarray:
            hmin = max(hmin - travel, 1e-3)
            hmax = hmax + travel
            lo = math.atan2(z0 - oz_hi, hmin if z0 - oz_hi < 0 else hmax)
            hi = math.atan2(z1 - oz_lo, hmin if z1 - oz_lo > 0 else hmax)
            if hi < el_lo or lo > el_hi:
                return np.zeros(0, dtype=np.intp)
            return np.flatnonzero((el >= lo - tilt - 1e-3) & (el <= hi + tilt + 1e-3))

        def columns_for(bearing_lo: np.ndarray, bearing_hi: np.ndarray) -> np.ndarray:
            mid = 0.5 * (bearing_lo + bearing_hi)
            half = 0.5 * (bearing_hi - bearing_lo)
            return np.flatnonzero(np.abs(_wrap(col_az - mid)) <= half + margin)

        def update(rows: np.ndarray, cols: np.ndarray, fn) -> None:
            if rows.size == 0 or cols.size == 0:
                return
            o = np.broadcast_to(origin[cols][None], (rows.size, cols.size, 3)).reshape(-1, 3)
            d = D[np.ix_(rows, cols)].reshape(-1, 3)
            t = fn(o, d).reshape(rows.size, cols.size)
            sub = best[np.ix_(rows, cols)]
            best[np.ix_(rows, cols)] = np.minimum(sub, t)

        s = self.scene
        reach = self.max_range + travel
        shift = 0.5 * travel + 0.05  # how far a column's origin is from the mid-sweep one [m]

        def shift_margin(hmin: np.ndarray) -> np.ndarray:
            """Bearing error of using the mid-sweep origin for a thing at least ``hmin`` away."""
            return np.where(hmin > shift, np.arcsin(np.clip(shift / np.maximum(hmin, 1e-9), 0.0, 1.0)), np.inf)

        # boxes: bearing interval of their footprint corners from the mid-sweep origin
        rel = self._box_corners - o_mid[None, None, :2]  # (B, 4, 2)
        centre_b = np.arctan2(s.box_centre[:, 1] - o_mid[1], s.box_centre[:, 0] - o_mid[0])
        offs = _wrap(np.arctan2(rel[..., 1], rel[..., 0]) - centre_b[:, None])
        lo_b, hi_b = centre_b + offs.min(axis=1), centre_b + offs.max(axis=1)
        c_b, s_b = np.cos(s.box_yaw), np.sin(s.box_yaw)
        dx, dy = o_mid[0] - s.box_centre[:, 0], o_mid[1] - s.box_centre[:, 1]
        qx = np.maximum(np.abs(c_b * dx + s_b * dy) - s.box_half[:, 0], 0.0)
        qy = np.maximum(np.abs(-s_b * dx + c_b * dy) - s.box_half[:, 1], 0.0)
        hmin_b = np.hypot(qx, qy)
        hmax_b = np.linalg.norm(rel, axis=2).max(axis=1)
        extra_b = shift_margin(hmin_b)
        for k in np.flatnonzero(hmin_b <= reach):
            if np.isfinite(extra_b[k]):
                cols = columns_for(lo_b[k] - extra_b[k], hi_b[k] + extra_b[k])
            else:
                cols = np.arange(W)
            rows = beams_for(float(hmin_b[k]), float(hmax_b[k]), *self._box_z[k])
            centre3, half, c, sn = s.box_centre[k], s.box_half[k], float(c_b[k]), float(s_b[k])

            def fn(o, d, centre3=centre3, half=half, c=c, sn=sn):
                oo = o - centre3
                ol = np.stack([c * oo[:, 0] + sn * oo[:, 1], -sn * oo[:, 0] + c * oo[:, 1], oo[:, 2]], axis=1)
                dl = np.stack([c * d[:, 0] + sn * d[:, 1], -sn * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
                return ray_box(ol, dl, half)

            update(rows, cols, fn)
        # cylinders and spheres: bearing interval of their bounding circle
        round_xyrz = np.concatenate([
            np.column_stack([s.cyl[:, 0], s.cyl[:, 1], s.cyl[:, 2], s.cyl[:, 3], s.cyl[:, 4]]),
            np.column_stack([s.sph[:, 0], s.sph[:, 1], s.sph[:, 3], s.sph[:, 2] - s.sph[:, 3], s.sph[:, 2] + s.sph[:, 3]]),
        ])
        n_cyl = len(s.cyl)
        h_r = np.hypot(round_xyrz[:, 0] - o_mid[0], round_xyrz[:, 1] - o_mid[1])
        bear_r = np.arctan2(round_xyrz[:, 1] - o_mid[1], round_xyrz[:, 0] - o_mid[0])
        hmin_r = np.maximum(h_r - round_xyrz[:, 2], 0.0)
        half_r = np.arcsin(np.clip(round_xyrz[:, 2] / np.maximum(h_r, 1e-9), 0.0, 1.0))
        extra_r = shift_margin(hmin_r)
        for k in np.flatnonzero(hmin_r <= reach):
            cx, cy, r, z0, z1 = (float(v) for v in round_xyrz[k])
            if np.isfinite(extra_r[k]) and h_r[k] > r:
                cols = columns_for(bear_r[k] - half_r[k] - extra_r[k], bear_r[k] + half_r[k] + extra_r[k])
            else:
                cols = np.arange(W)
            rows = beams_for(float(hmin_r[k]), float(h_r[k]) + r, z0, z1)
            if k < n_cyl:
                update(rows, cols, lambda o, d, a=(cx, cy, r, z0, z1): ray_cylinder(o, d, *a))
            else:
                centre = np.array([cx, cy, 0.5 * (z0 + z1)])
                update(rows, cols, lambda o, d, centre=centre, r=r: ray_sphere(o, d, centre, r))
        rng_m = best
        if rng is not None and self.range_noise > 0:
            rng_m = best + rng.standard_normal(best.shape) * self.range_noise
        valid = np.isfinite(best) & (rng_m >= self.min_range) & (rng_m <= self.max_range)
        return np.where(valid, rng_m, 0.0).astype(np.float32)

    def scan(self, i: int) -> LidarScan:
        """Sweep ``i`` with per-point times, rings and columns (what a driver's PointCloud2 carries)."""
        j = self._index(i)
        stamp = j / self.rate_hz
        rng = np.random.default_rng([self.seed, 2, j]) if self.noise else None
        ranges = self.cast(stamp, rng)
        rows, cols = np.nonzero(ranges)
        r = ranges[rows, cols].astype(np.float64)
        pts = (self._dirs[rows, cols] * r[:, None]).astype(np.float32)
        times = self.column_times[cols] if self.distort else np.zeros(len(cols))
        return LidarScan(index=j, stamp=stamp, pose=self.pose_at(stamp), points=pts, times=np.asarray(times, np.float64),
                         rings=rows.astype(np.uint16), columns=cols.astype(np.int32), ranges=ranges)

    def __getitem__(self, i: int) -> DepthFrame:
        sc = self.scan(i)
        return DepthFrame.from_cloud(sc.index, sc.stamp, sc.points, sc.pose)


# ----------------------------------------------------------------------------- figures


def lidar_figures(argv: list[str] | None = None) -> int:
    """Print scan size and time per motion, and the mean point error before/after deskewing."""
    import argparse
    import time

    from ukpgan_ros.deskew import deskew

    ap = argparse.ArgumentParser(prog="python -m ukpgan_ros.datasets", description=lidar_figures.__doc__)
    ap.add_argument("--frames", type=int, nargs="+", default=[3, 8, 15], help="frames to measure")
    ap.add_argument("--motions", nargs="+", default=list(MOTIONS), choices=list(MOTIONS))
    args = ap.parse_args(argv)
    print(f"{'motion':<10} {'frame':>5} {'points':>7} {'cast[s]':>7} {'speed':>6} {'yaw rate':>9}   mean point error "
          "[cm]: raw / deskewed (true motion) / deskewed (constant velocity from the last two poses)")
    for name in args.motions:
        seq = SyntheticLidarSequence(num_frames=max(args.frames) + 2, motion=name)
        for k in args.frames:
            t0 = time.perf_counter()
            sc = seq.scan(k)
            dt_cast = time.perf_counter() - t0
            world = np.einsum("nij,nj->ni", seq.pose_at(sc.stamp + sc.times)[:, :3, :3], sc.points.astype(np.float64))
            world += seq.pose_at(sc.stamp + sc.times)[:, :3, 3]
            P = sc.pose
            err = lambda p: float(np.linalg.norm(p.astype(np.float64) @ P[:3, :3].T + P[:3, 3] - world, axis=1).mean())  # noqa: E731
            true = np.linalg.inv(sc.pose) @ seq.pose_at(sc.stamp + seq.period)
            cv = np.linalg.inv(seq.pose(k - 1)) @ sc.pose
            d_true = deskew(sc.points, sc.times, true, dt=seq.period)
            d_cv = deskew(sc.points, sc.times, cv, dt=seq.period)
            yaw_rate = math.degrees(Rotation.from_matrix(true[:3, :3]).magnitude()) / seq.period
            print(f"{name:<10} {k:>5} {len(sc.points):>7} {dt_cast:>7.2f} {np.linalg.norm(true[:3, 3]) / seq.period:>6.1f} "
                  f"{yaw_rate:>7.1f}/s   {100 * err(sc.points):6.2f} / {100 * err(d_true):5.2f} / {100 * err(d_cv):5.2f}")
    return 0
