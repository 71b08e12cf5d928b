"""What every point-cloud (LiDAR) sequence shares: the frame interface for scans, dropping
non-returns, and the pose and time files LiDAR data sets ship (KITTI 3x4 lines, KITTI calib
``Tr``, TUM ``t x y z qx qy qz qw`` lines, ``times.txt``), each read with errors naming the file
and line.

Poses follow :class:`~ukpgan_ros.datasets.base.DepthFrame`: sensor-to-world (world <- sensor),
so ``T_i_from_j = inv(pose_i) @ pose_j``. The LiDAR frame is x forward, y left, z up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ukpgan_ros.datasets.base import DepthFrame, IndexedSequence
from ukpgan_ros.io import regular_file, returns_only
from ukpgan_ros.transforms import check_rigid, matrix_from_translation_quaternion

__all__ = [
    "CloudSequence", "read_kitti_poses", "read_kitti_calib", "read_times", "read_tum_poses",
    "read_pose_lines", "LIDAR_RATE_HZ",
]

LIDAR_RATE_HZ = 10.0  # the spin rate of most automotive LiDARs (KITTI's HDL-64E, Ouster, Velodyne defaults)


def _numeric_lines(path: Path, what: str) -> list[tuple[int, list[float]]]:
    """(line number, numbers) of every non-empty, non-comment line; ValueError naming file and line."""
    p = regular_file(path, what)
    out = []
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{p}: not a text file ({what})") from None
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            out.append((n, [float(v) for v in s.split()]))
        except ValueError:
            raise ValueError(f"{p}:{n}: expected numbers in the {what}, got {s[:80]!r}") from None
    return out


def _rigid(values: list[float], where: str) -> np.ndarray:
    T = np.eye(4)
    T[:3, :4] = np.asarray(values, dtype=np.float64).reshape(3, 4)
    if not np.isfinite(T).all():
        raise ValueError(f"{where}: the pose holds NaN or inf")
    try:
        return check_rigid(T, where)
    except ValueError as exc:
        raise ValueError(f"{exc} (row-major 3x4 [R | t] expected)") from None


def read_kitti_poses(path: str | Path, count: int | None = None) -> list[np.ndarray]:
    """KITTI pose lines: 12 numbers each, the row-major 3x4 [R | t] of a 4x4 pose; with ``count``
    the file must hold exactly that many (one per scan)."""
    p = Path(path)
    rows = _numeric_lines(p, "KITTI pose file")
    poses = []
    for n, vals in rows:
        if len(vals) != 12:
            raise ValueError(f"{p}:{n}: expected 12 numbers (a row-major 3x4 pose), got {len(vals)}")
        poses.append(_rigid(vals, f"{p}:{n}"))
    if count is not None and len(poses) != count:
        raise ValueError(f"{p}: holds {len(poses)} poses for {count} scans (one line per scan expected)")
    return poses


def read_tum_poses(path: str | Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """TUM trajectory lines ``t x y z qx qy qz qw`` -> (stamps [s], 4x4 poses), in file order."""
    p = Path(path)
    stamps, poses = [], []
    for n, vals in _numeric_lines(p, "TUM trajectory"):
        if len(vals) != 8:
            raise ValueError(f"{p}:{n}: expected 8 numbers 't x y z qx qy qz qw', got {len(vals)}")
        if not np.isfinite(vals).all():
            raise ValueError(f"{p}:{n}: the pose holds NaN or inf")
        q = np.asarray(vals[4:8])
        if abs(np.linalg.norm(q) - 1.0) > 1e-2:
            raise ValueError(f"{p}:{n}: quaternion (qx qy qz qw) not unit length (norm {np.linalg.norm(q):.4f})")
        stamps.append(vals[0])
        poses.append(matrix_from_translation_quaternion(vals[1:4], q / np.linalg.norm(q)))
    return np.asarray(stamps, dtype=np.float64), poses


def read_pose_lines(path: str | Path) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """A pose file in either layout, told apart by its first line: 12 numbers (KITTI, no stamps)
    or 8 (TUM, with stamps) -> (stamps or None, poses)."""
    p = Path(path)
    rows = _numeric_lines(p, "pose file")
    if not rows:
        raise ValueError(f"{p}: holds no poses")
    width = len(rows[0][1])
    if width == 12:
        return None, read_kitti_poses(p)
    if width == 8:
        return read_tum_poses(p)
    raise ValueError(f"{p}:{rows[0][0]}: expected 12 numbers (KITTI 3x4 pose) or 8 (TUM 't x y z qx qy qz qw'), "
                     f"got {width}")


def read_kitti_calib(path: str | Path) -> np.ndarray:
    """``Tr`` of a KITTI odometry calib.txt: the 4x4 velodyne -> camera-0 transform (p_cam0 = Tr @ p_velo)."""
    p = regular_file(path, "KITTI calib file")
    for n, line in enumerate(p.read_text().splitlines(), 1):
        key, _, rest = line.partition(":")
        if key.strip() != "Tr":
            continue
        try:
            vals = [float(v) for v in rest.split()]
        except ValueError:
            raise ValueError(f"{p}:{n}: Tr must be 12 numbers, got {rest.strip()[:80]!r}") from None
        if len(vals) != 12:
            raise ValueError(f"{p}:{n}: Tr must be 12 numbers (row-major 3x4), got {len(vals)}")
        return _rigid(vals, f"{p}:{n}")
    raise ValueError(f"{p}: no 'Tr:' line (the velodyne -> camera-0 transform)")


def read_times(path: str | Path, count: int) -> np.ndarray:
    """KITTI ``times.txt``: one time [s] per scan, ``count`` of them, finite and not decreasing."""
    p = Path(path)
    rows = _numeric_lines(p, "times file")
    for n, vals in rows:
        if len(vals) != 1 or not np.isfinite(vals[0]):
            raise ValueError(f"{p}:{n}: expected one finite time in seconds, got {vals}")
    if len(rows) != count:
        raise ValueError(f"{p}: holds {len(rows)} times for {count} scans (one line per scan expected)")
    t = np.array([v[0] for _, v in rows], dtype=np.float64)
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        raise ValueError(f"{p}:{rows[back[0] + 1][0]}: time {t[back[0] + 1]} goes back from {t[back[0]]}")
    return t


class CloudSequence(IndexedSequence):
    """A sequence of point-cloud scans (no depth images): ``has_depth`` False, ``K`` NaN, frames
    made with :meth:`DepthFrame.from_cloud`. Subclasses set ``name``, ``stamps``, ``_poses`` (one
    4x4 or None per scan), ``frame_id`` and implement ``_read(j)`` -> (N, 3) points."""

    has_depth = False
    rate_hz: float = LIDAR_RATE_HZ
    frame_id: str = "lidar"
    K = np.full((3, 3), np.nan)
    width = 0  # not an image: the scans are unorganized point lists
    height = 0
    stamps: np.ndarray
    _poses: list[np.ndarray | None]

    def _read(self, j: int) -> np.ndarray:
        raise NotImplementedError

    def _rate_from_stamps(self) -> float:
        dts = np.diff(self.stamps)
        return float(1.0 / np.median(dts)) if len(dts) and np.median(dts) > 0 else LIDAR_RATE_HZ

    def pose(self, i: int) -> np.ndarray | None:
        """Scan ``i``'s pose (sensor-to-world) without reading its points."""
        pose = self._poses[self._index(i)]
        return None if pose is None else pose.copy()

    def points(self, i: int, stride: int = 1) -> np.ndarray:
        """Scan ``i``'s returns, (N, 3) float32 in the sensor frame."""
        return self[i].points(stride=stride)

    def __getitem__(self, i: int) -> DepthFrame:
        j = self._index(i)
        return DepthFrame.from_cloud(j, float(self.stamps[j]), returns_only(self._read(j)), self.pose(j))
