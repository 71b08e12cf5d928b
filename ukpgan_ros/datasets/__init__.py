"""Depth-frame sequences: 7-Scenes / 3DMatch-toolbox and TUM RGB-D folders and the built-in
synthetic camera, one module per source, all behind :class:`DepthSequence`."""

from __future__ import annotations

from pathlib import Path

from ukpgan_ros.datasets.base import DepthFrame, DepthSequence, IndexedSequence
from ukpgan_ros.datasets.seven_scenes import SEVEN_SCENES_K, SevenScenesSequence, seven_scenes_frame_dir
from ukpgan_ros.datasets.synthetic import SyntheticSequence
from ukpgan_ros.datasets.tum import TUM_INTRINSICS, TumSequence

__all__ = [
    "DepthFrame", "DepthSequence", "IndexedSequence", "SevenScenesSequence", "TumSequence", "SyntheticSequence",
    "open_sequence", "SEVEN_SCENES_K", "TUM_INTRINSICS",
]


def open_sequence(spec: str, **kwargs) -> DepthSequence:
    """``"synthetic"`` -> the built-in camera (kwargs go to SyntheticSequence); a folder -> TUM or 7-Scenes."""
    if spec == "synthetic":
        return SyntheticSequence(**kwargs)
    root = Path(spec).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"sequence {spec!r} is neither 'synthetic' nor an existing folder")
    if not root.is_dir():
        raise ValueError(f"{root}: a sequence is 'synthetic' or a folder (TUM RGB-D or 7-Scenes layout), not a file")
    if (root / "depth.txt").is_file():
        return TumSequence(root, **kwargs)
    if seven_scenes_frame_dir(root) is not None:
        return SevenScenesSequence(root, **kwargs)
    raise ValueError(
        f"{root}: unrecognised sequence layout; expected TUM RGB-D (depth.txt + depth/*.png) "
        "or 7-Scenes (frame-XXXXXX.depth.png, directly or under frames/)"
    )
