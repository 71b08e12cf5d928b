"""TUM RGB-D sequences: ``depth.txt``, 16-bit depth / 5000 m, ``groundtruth.txt``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ukpgan_ros.datasets.base import DepthFrame, IndexedSequence, sequence_folder
from ukpgan_ros.depth import depth_to_metres
from ukpgan_ros.io import read_depth_png

__all__ = ["TumSequence", "TUM_INTRINSICS"]

# fx, fy, cx, cy published with the TUM RGB-D benchmark; "default" is its ROS-default fallback.
TUM_INTRINSICS: dict[str, tuple[float, float, float, float]] = {
    "freiburg1": (517.3, 516.5, 318.6, 255.3),
    "freiburg2": (520.9, 521.0, 325.1, 249.7),
    "freiburg3": (535.4, 539.2, 320.1, 247.6),
    "default": (525.0, 525.0, 319.5, 239.5),
}



class TumSequence(IndexedSequence):
    """TUM RGB-D layout: ``depth.txt`` (``stamp depth/file.png``), 16-bit depth / 5000 m, ``groundtruth.txt``.

    Each depth stamp takes the ground-truth pose nearest in time when it is within ``max_dt``
    seconds (mocap runs at 100+ Hz, so 20 ms only rejects gaps), else ``pose=None``. Ground truth
    is ``t qx qy qz qw`` of the optical centre in the world, i.e. camera-to-world. Intrinsics
    follow the folder name (``freiburg1/2/3``), else TUM's default 525/319.5/239.5.
    """

    def __init__(self, folder: str | Path, K: np.ndarray | None = None, max_dt: float = 0.02, depth_scale: float = 5000.0):
        root = sequence_folder(folder)
        list_file = root / "depth.txt"
        if not list_file.is_file():
            raise ValueError(f"{root}: not a TUM RGB-D folder (no depth.txt)")
        self.folder, self.name = root, root.name
        self.depth_scale = float(depth_scale)
        stamps, files = [], []
        for n, line in enumerate(list_file.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split()
            try:
                stamps.append(float(parts[0]))
                files.append(root / parts[1])
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{list_file}:{n}: expected 'timestamp filename', got {line!r}") from exc
        if not stamps:
            raise ValueError(f"{list_file}: lists no depth images")
        self.stamps = np.asarray(stamps, dtype=np.float64)
        self._files = files
        dts = np.diff(self.stamps)
        self.rate_hz = float(1.0 / np.median(dts)) if len(dts) and np.median(dts) > 0 else 30.0
        if K is None:
            m = re.search(r"freiburg([123])", root.name)
            fx, fy, cx, cy = TUM_INTRINSICS[f"freiburg{m.group(1)}" if m else "default"]
            K = [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]
        self.K = np.array(K, dtype=np.float64).reshape(3, 3)
        self._poses = self._associate(root / "groundtruth.txt", max_dt)
        first = read_depth_png(self._files[0])
        self.height, self.width = (int(s) for s in first.shape)

    def _associate(self, gt_file: Path, max_dt: float) -> list[np.ndarray | None]:
        """Pose per depth stamp from the nearest ground-truth stamp within ``max_dt`` seconds."""
        if not gt_file.is_file():
            return [None] * len(self.stamps)
        try:
            gt = np.loadtxt(gt_file, dtype=np.float64, comments="#", ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{gt_file}: expected lines 'timestamp tx ty tz qx qy qz qw' ({exc})") from exc
        if gt.size == 0:
            return [None] * len(self.stamps)
        if gt.shape[1] != 8 or not np.isfinite(gt).all():
            raise ValueError(f"{gt_file}: expected 8 finite columns 'timestamp tx ty tz qx qy qz qw', got shape {gt.shape}")
        gt = gt[np.argsort(gt[:, 0], kind="stable")]
        norms = np.linalg.norm(gt[:, 4:8], axis=1)
        if (np.abs(norms - 1.0) > 1e-2).any():
            raise ValueError(f"{gt_file}: quaternion not unit length on a line (norm {norms[np.argmax(np.abs(norms - 1))]:.4f})")
        t = gt[:, 0]
        right = np.clip(np.searchsorted(t, self.stamps), 1, len(t) - 1) if len(t) > 1 else np.zeros(len(self.stamps), int)
        left = np.maximum(right - 1, 0)
        nearest = np.where(np.abs(t[left] - self.stamps) <= np.abs(t[right] - self.stamps), left, right)
        poses: list[np.ndarray | None] = []
        for s, k in zip(self.stamps, nearest):
            if abs(t[k] - s) > max_dt:
                poses.append(None)
                continue
            T = np.eye(4)
            T[:3, :3] = Rotation.from_quat(gt[k, 4:8]).as_matrix()  # scipy's order is x, y, z, w like TUM
            T[:3, 3] = gt[k, 1:4]
            poses.append(T)
        return poses

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i: int) -> DepthFrame:
        j = self._index(i)
        raw = read_depth_png(self._files[j])
        if raw.shape != (self.height, self.width):
            raise ValueError(f"{self._files[j]}: size {raw.shape[::-1]} differs from the sequence's {self.width}x{self.height}")
        pose = self._poses[j]
        return DepthFrame(
            index=j,
            stamp=float(self.stamps[j]),
            depth_m=depth_to_metres(raw, "16UC1", self.depth_scale),
            K=self.K,
            pose=None if pose is None else pose.copy(),
        )
