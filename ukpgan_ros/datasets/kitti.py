"""KITTI odometry Velodyne sequences: ``velodyne/*.bin`` scans with poses, as KITTI users keep them.

A scan file is KITTI's raw format: float32 x, y, z, reflectance per point, little-endian, in the
LiDAR frame (x forward, y left, z up). Poses, first found of:

- ``poses_velodyne.txt`` in the folder: one 3x4 ``T_scan0_from_scanK`` per line (LiDAR poses);
- ``poses.txt`` in the folder (SemanticKITTI) or ``<root>/poses/<seq>.txt`` for the official
  ``<root>/sequences/<seq>/`` layout: KITTI's camera-0 poses, turned into LiDAR poses with
  ``Tr`` of ``calib.txt`` (p_cam0 = Tr @ p_velo): ``pose_velo = inv(Tr) @ P_cam @ Tr``;
- none: ``pose`` is None.

Stamps come from ``times.txt`` (one second count per scan) when present, else 0.1 s apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ukpgan_ros.datasets.base import sequence_folder
from ukpgan_ros.datasets.lidar import (
    LIDAR_RATE_HZ,
    CloudSequence,
    read_kitti_calib,
    read_kitti_poses,
    read_times,
)
from ukpgan_ros.io import read_kitti_bin

__all__ = ["KittiSequence", "kitti_scan_dir"]


def kitti_scan_dir(folder: Path) -> Path | None:
    """The folder holding the ``*.bin`` scans: ``folder/velodyne`` or ``folder`` itself."""
    for cand in (folder / "velodyne", folder):
        if cand.is_dir() and any(cand.glob("*.bin")):
            return cand
    return None


class KittiSequence(CloudSequence):
    """A KITTI odometry sequence folder (``velodyne/*.bin``, optional poses, ``calib.txt``,
    ``times.txt``) or a bare folder of ``.bin`` scans. ``poses`` names a pose file of either
    kind explicitly (``camera_poses`` says which: LiDAR poses by default)."""

    frame_id = "velodyne"

    def __init__(self, folder: str | Path, poses: str | Path | None = None, camera_poses: bool = False,
                 rate_hz: float = LIDAR_RATE_HZ):
        root = sequence_folder(folder)
        scan_dir = kitti_scan_dir(root)
        if scan_dir is None:
            raise ValueError(f"{root}: no KITTI scans (*.bin) in it or in {root / 'velodyne'}")
        if not (rate_hz > 0 and np.isfinite(rate_hz)):
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.folder, self.scan_dir = root, scan_dir
        seq_dir = scan_dir.parent if scan_dir.name == "velodyne" else scan_dir
        self.name = seq_dir.name
        self._files = sorted(scan_dir.glob("*.bin"))
        n = len(self._files)
        times = seq_dir / "times.txt"
        self.stamps = read_times(times, n) if times.is_file() else np.arange(n, dtype=np.float64) / float(rate_hz)
        self.rate_hz = self._rate_from_stamps() if times.is_file() else float(rate_hz)
        self.pose_source = None
        self._poses = self._read_poses(seq_dir, n, poses, camera_poses)

    def _read_poses(self, seq_dir: Path, n: int, poses: str | Path | None, camera: bool) -> list:
        lidar_file, camera_file = None, None
        if poses is not None:
            lidar_file, camera_file = (None, Path(poses)) if camera else (Path(poses), None)
        elif (seq_dir / "poses_velodyne.txt").is_file():
            lidar_file = seq_dir / "poses_velodyne.txt"
        elif (seq_dir / "poses.txt").is_file():
            camera_file = seq_dir / "poses.txt"
        elif seq_dir.parent.name == "sequences" and (seq_dir.parent.parent / "poses" / f"{seq_dir.name}.txt").is_file():
            camera_file = seq_dir.parent.parent / "poses" / f"{seq_dir.name}.txt"
        if lidar_file is not None:
            self.pose_source = lidar_file
            return read_kitti_poses(lidar_file, n)
        if camera_file is None:
            return [None] * n
        calib = seq_dir / "calib.txt"
        if not calib.is_file():
            raise ValueError(f"{camera_file}: camera-0 poses need {calib} (its Tr: velodyne -> camera 0) to "
                             "become LiDAR poses")
        Tr = read_kitti_calib(calib)
        Tr_inv = np.linalg.inv(Tr)
        self.pose_source = camera_file
        return [Tr_inv @ P @ Tr for P in read_kitti_poses(camera_file, n)]

    def __len__(self) -> int:
        return len(self._files)

    def _read(self, j: int) -> np.ndarray:
        return read_kitti_bin(self._files[j])

    def reflectance(self, i: int) -> np.ndarray:
        """Reflectance of scan ``i``'s returns, aligned with ``self[i].points()``."""
        scan = read_kitti_bin(self._files[self._index(i)], with_reflectance=True)
        xyz = scan[:, :3]
        return scan[:, 3][(xyz != 0).any(axis=1)]

    def scan_file(self, i: int) -> Path:
        return self._files[self._index(i)]

