"""Depth-frame sequences: 7-Scenes / 3DMatch-toolbox and TUM RGB-D folders, ROS 1/2 bags and the
built-in synthetic camera, one module per source, all behind :class:`DepthSequence`."""

from __future__ import annotations

from pathlib import Path

from ukpgan_ros.datasets.base import DepthFrame, DepthSequence, IndexedSequence, has_depth
from ukpgan_ros.datasets.seven_scenes import SEVEN_SCENES_K, SevenScenesSequence, seven_scenes_frame_dir
from ukpgan_ros.datasets.synthetic import SyntheticSequence
from ukpgan_ros.datasets.tum import TUM_INTRINSICS, TumSequence

__all__ = [
    "DepthFrame", "DepthSequence", "IndexedSequence", "SevenScenesSequence", "TumSequence", "SyntheticSequence",
    "open_sequence", "has_depth", "is_bag", "SEVEN_SCENES_K", "TUM_INTRINSICS",
]


def is_bag(spec: str | Path) -> bool:
    """A bag file (.mcap, .db3, .bag) or a rosbag2 folder; see :mod:`ukpgan_ros.datasets.bag`."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return (p / "metadata.yaml").is_file()
    return p.suffix.lower() in (".mcap", ".db3", ".bag")


def open_sequence(spec: str, **kwargs) -> DepthSequence:
    """``"synthetic"`` -> the built-in camera (kwargs go to SyntheticSequence); a folder -> TUM or
    7-Scenes; a bag (.mcap, .db3 or .bag file, or a rosbag2 folder) -> BagSequence (kwargs go to it:
    topics, input kind), which needs the ``rosbags`` package but no ROS."""
    if spec == "synthetic":
        return SyntheticSequence(**kwargs)
    root = Path(spec).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"sequence {spec!r} is neither 'synthetic' nor an existing folder or bag")
    if is_bag(root):
        from ukpgan_ros.datasets.bag import BagSequence

        return BagSequence(root, **kwargs)
    if not root.is_dir():
        raise ValueError(f"{root}: a sequence is 'synthetic', a folder (TUM RGB-D or 7-Scenes layout) or a bag "
                         "(.mcap, .db3, .bag, rosbag2 folder), not a file of another kind")
    if (root / "depth.txt").is_file():
        return TumSequence(root, **kwargs)
    if seven_scenes_frame_dir(root) is not None:
        return SevenScenesSequence(root, **kwargs)
    raise ValueError(
        f"{root}: unrecognised sequence layout; expected TUM RGB-D (depth.txt + depth/*.png), "
        "7-Scenes (frame-XXXXXX.depth.png, directly or under frames/) or a rosbag2 folder (metadata.yaml)"
    )
