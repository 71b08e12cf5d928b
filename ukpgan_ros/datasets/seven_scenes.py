"""7-Scenes / 3DMatch-toolbox sequences: ``camera-intrinsics.txt`` and ``frame-XXXXXX.{depth.png,pose.txt}``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ukpgan_ros.datasets.base import DepthFrame, IndexedSequence, sequence_folder
from ukpgan_ros.depth import depth_to_metres
from ukpgan_ros.io import read_depth_png, read_intrinsics, read_pose_or_none

__all__ = ["SevenScenesSequence", "SEVEN_SCENES_K", "seven_scenes_frame_dir"]

# Kinect v1 depth intrinsics of 7-Scenes; its original download ships no camera-intrinsics.txt.
SEVEN_SCENES_K = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])

_FRAME_RE = re.compile(r"^frame-(\d+)\.depth\.png$")


def seven_scenes_frame_dir(folder: Path) -> Path | None:
    """The folder holding ``frame-XXXXXX.depth.png``: ``folder/frames`` or ``folder`` itself."""
    for cand in (folder / "frames", folder):
        if cand.is_dir() and any(_FRAME_RE.match(f.name) for f in cand.glob("frame-*.depth.png")):
            return cand
    return None


class SevenScenesSequence(IndexedSequence):
    """7-Scenes / 3DMatch-toolbox layout: ``camera-intrinsics.txt`` and ``frame-XXXXXX.{depth.png,pose.txt}``.

    Depth is Kinect millimetres (0 and 65535 invalid) at 30 Hz; a frame's stamp is index / rate.
    Without ``camera-intrinsics.txt`` (the original 7-Scenes download) ``K`` defaults to
    SEVEN_SCENES_K. A missing pose file, or one of non-finite numbers (tracking lost), gives
    ``pose=None``.
    """

    def __init__(self, folder: str | Path, K: np.ndarray | None = None, rate_hz: float = 30.0, depth_scale: float = 1000.0):
        root = sequence_folder(folder)
        frame_dir = seven_scenes_frame_dir(root)
        if frame_dir is None:
            raise ValueError(f"{root}: no frame-XXXXXX.depth.png in it or in {root / 'frames'}")
        self.folder, self.frame_dir = root, frame_dir
        self.name = root.name
        self.rate_hz = float(rate_hz)
        self.depth_scale = float(depth_scale)
        if K is None:
            kfile = next((d / "camera-intrinsics.txt" for d in (root, frame_dir) if (d / "camera-intrinsics.txt").is_file()), None)
            K = read_intrinsics(kfile) if kfile is not None else SEVEN_SCENES_K
        self.K = np.array(K, dtype=np.float64).reshape(3, 3)
        found = sorted((int(m.group(1)), f) for f in frame_dir.glob("frame-*.depth.png") if (m := _FRAME_RE.match(f.name)))
        self._ids = [n for n, _ in found]
        self._depth_files = [f for _, f in found]
        first = read_depth_png(self._depth_files[0])
        self.height, self.width = (int(s) for s in first.shape)

    def __len__(self) -> int:
        return len(self._depth_files)

    def __getitem__(self, i: int) -> DepthFrame:
        j = self._index(i)
        dfile = self._depth_files[j]
        raw = read_depth_png(dfile)
        if raw.shape != (self.height, self.width):
            raise ValueError(f"{dfile}: size {raw.shape[::-1]} differs from the sequence's {self.width}x{self.height}")
        pose_file = dfile.with_name(dfile.name.replace(".depth.png", ".pose.txt"))
        return DepthFrame(
            index=j,
            stamp=self._ids[j] / self.rate_hz,
            depth_m=depth_to_metres(raw, "16UC1", self.depth_scale),
            K=self.K,
            pose=read_pose_or_none(pose_file),
        )
