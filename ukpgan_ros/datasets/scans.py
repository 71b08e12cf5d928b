"""Folders of PCD/PLY scans (a LiDAR recording exported scan by scan), sorted by name, with an
optional poses file.

Scans are ``*.pcd`` / ``*.ply`` files directly in the folder (or in its ``scans/``, ``pcd/``,
``ply/`` or ``clouds/`` subfolder), read with :func:`ukpgan_ros.io.read_cloud` (which checks
headers against the data) and stripped of non-returns (NaN holes, points at the origin). Poses
(``poses=`` or the first of POSE_FILES in the folder) are KITTI lines (12 numbers: a 3x4
sensor-to-world pose per scan, in scan order) or TUM lines (``t x y z qx qy qz qw``: in scan
order when there is one per scan and the file names carry no stamps, else each scan takes the
pose nearest its file-name stamp within ``max_dt``). Stamps: ``times.txt`` (one per scan), else
file names that are times (``1317357625.557.pcd`` in seconds, 19-digit nanoseconds), else TUM
stamps taken in order, else ``index / rate_hz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ukpgan_ros.datasets.base import sequence_folder
from ukpgan_ros.datasets.lidar import LIDAR_RATE_HZ, CloudSequence, read_pose_lines, read_times
from ukpgan_ros.io import read_cloud

__all__ = ["ScanFolderSequence", "scan_folder_dir", "SCAN_SUFFIXES", "POSE_FILES"]

SCAN_SUFFIXES = (".pcd", ".ply")
POSE_FILES = ("poses.txt", "poses_velodyne.txt", "groundtruth.txt", "trajectory.txt")
_SUBFOLDERS = ("scans", "pcd", "ply", "clouds")


def _scan_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in SCAN_SUFFIXES and f.is_file())


def scan_folder_dir(folder: Path) -> Path | None:
    """The folder holding the scans: ``folder`` itself or one of its scans/pcd/ply/clouds subfolders."""
    for cand in (folder, *(folder / s for s in _SUBFOLDERS)):
        if cand.is_dir() and _scan_files(cand):
            return cand
    return None


def _name_stamp(stem: str) -> float | None:
    """A file name that is a time: seconds with a fraction (``1317357625.557``), whole seconds
    after 1973, or 19-digit nanoseconds; None for a counter (``000042``) or anything else."""
    try:
        v = float(stem)
    except ValueError:
        return None
    if not np.isfinite(v):
        return None
    if stem.isdigit():
        if v > 1e15:
            return v * 1e-9
        return v if 1e8 < v < 1e11 else None
    return v if "." in stem and v > 1e8 else None


class ScanFolderSequence(CloudSequence):
    """Scans of a folder in name order, with poses and stamps as the module docstring says."""

    def __init__(self, folder: str | Path, poses: str | Path | None = None, rate_hz: float = LIDAR_RATE_HZ,
                 max_dt: float = 0.05, frame_id: str = "lidar"):
        root = sequence_folder(folder, "scan folder")
        scan_dir = scan_folder_dir(root)
        if scan_dir is None:
            raise ValueError(f"{root}: no {'/'.join(SCAN_SUFFIXES)} scans in it or in its "
                             f"{', '.join(_SUBFOLDERS)} subfolders")
        if not (rate_hz > 0 and np.isfinite(rate_hz)):
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.folder, self.scan_dir, self.name, self.frame_id = root, scan_dir, root.name, frame_id
        self._files = _scan_files(scan_dir)
        n = len(self._files)
        named = [_name_stamp(f.stem) for f in self._files]
        name_stamps = np.array(named, dtype=np.float64) if all(s is not None for s in named) else None
        pose_file = Path(poses) if poses is not None else next(
            (root / f for f in POSE_FILES if (root / f).is_file()), None)
        self.pose_source = pose_file
        tum_stamps, pose_list = read_pose_lines(pose_file) if pose_file is not None else (None, None)
        timed = (root / "times.txt").is_file() or name_stamps is not None  # scans with their own stamps
        if (root / "times.txt").is_file():
            stamps = read_times(root / "times.txt", n)
        elif name_stamps is not None:
            stamps = name_stamps
            if np.any(np.diff(stamps) < 0):
                raise ValueError(f"{scan_dir}: scan names are times but not in order")
        elif tum_stamps is not None and len(tum_stamps) == n:
            stamps = tum_stamps
        else:
            stamps = np.arange(n, dtype=np.float64) / float(rate_hz)
        self.stamps = stamps
        self.rate_hz = self._rate_from_stamps()
        if pose_list is None:
            self._poses = [None] * n
        elif tum_stamps is not None and timed:
            self._poses = self._associate(pose_file, tum_stamps, pose_list, max_dt)
        elif len(pose_list) == n:
            self._poses = pose_list
        else:
            raise ValueError(f"{pose_file}: holds {len(pose_list)} poses for {n} scans in {scan_dir} (one line per "
                             "scan expected, or stamped scans: times.txt or file names that are times)")

    def _associate(self, pose_file: Path, t: np.ndarray, poses: list[np.ndarray], max_dt: float) -> list:
        """Each scan's pose: the TUM pose nearest its stamp, within ``max_dt`` seconds, else None."""
        order = np.argsort(t, kind="stable")
        t = t[order]
        poses = [poses[k] for k in order]
        right = np.clip(np.searchsorted(t, self.stamps), 1, len(t) - 1) if len(t) > 1 else np.zeros(len(self.stamps), int)
        left = np.maximum(right - 1, 0)
        nearest = np.where(np.abs(t[left] - self.stamps) <= np.abs(t[right] - self.stamps), left, right)
        out = [poses[k] if abs(t[k] - s) <= max_dt else None for s, k in zip(self.stamps, nearest)]
        if all(p is None for p in out):
            raise ValueError(f"{pose_file}: no pose within {max_dt} s of any scan stamp "
                             f"(scans {self.stamps[0]:.3f}-{self.stamps[-1]:.3f} s, poses {t[0]:.3f}-{t[-1]:.3f} s)")
        return out

    def __len__(self) -> int:
        return len(self._files)

    def _read(self, j: int) -> np.ndarray:
        return read_cloud(self._files[j])

    def scan_file(self, i: int) -> Path:
        return self._files[self._index(i)]
