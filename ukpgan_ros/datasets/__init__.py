"""Depth-frame sequences: 7-Scenes / 3DMatch-toolbox and TUM RGB-D folders, KITTI Velodyne
folders, folders of PCD/PLY scans, ROS 1/2 bags, the built-in synthetic camera and the built-in
synthetic spinning LiDAR, one module per source, all behind :class:`DepthSequence`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ukpgan_ros.datasets.base import DepthFrame, DepthSequence, IndexedSequence, has_depth
from ukpgan_ros.datasets.kitti import KittiSequence, kitti_scan_dir
from ukpgan_ros.datasets.lidar import CloudSequence
from ukpgan_ros.datasets.scans import ScanFolderSequence, scan_folder_dir
from ukpgan_ros.datasets.seven_scenes import SEVEN_SCENES_K, SevenScenesSequence, seven_scenes_frame_dir
from ukpgan_ros.datasets.synthetic import SyntheticSequence
from ukpgan_ros.datasets.synthetic_lidar import SyntheticLidarSequence
from ukpgan_ros.datasets.there_and_back import ThereAndBackSequence, there_and_back
from ukpgan_ros.datasets.tum import TUM_INTRINSICS, TumSequence

__all__ = [
    "DepthFrame", "DepthSequence", "IndexedSequence", "CloudSequence", "SevenScenesSequence", "TumSequence",
    "SyntheticSequence", "SyntheticLidarSequence", "KittiSequence", "ScanFolderSequence",
    "ThereAndBackSequence", "there_and_back", "open_sequence", "has_depth", "is_bag", "is_synthetic", "SYNTHETIC_SOURCES", "SEVEN_SCENES_K", "TUM_INTRINSICS",
]

# The built-in sources, by the name open_sequence takes for each.
# The *_loop ones drive one closed lap over the sequence (a loop to close).
SYNTHETIC_SOURCES = {"synthetic": SyntheticSequence, "synthetic_lidar": SyntheticLidarSequence,
                     "synthetic_loop": partial(SyntheticSequence, loop=True),
                     "synthetic_lidar_loop": partial(SyntheticLidarSequence, loop=True)}


def is_synthetic(spec: str | Path) -> bool:
    """Whether ``spec`` names a built-in source (no files needed): see SYNTHETIC_SOURCES."""
    return isinstance(spec, str) and spec in SYNTHETIC_SOURCES


def is_bag(spec: str | Path) -> bool:
    """A bag file (.mcap, .db3, .bag) or a rosbag2 folder; see :mod:`ukpgan_ros.datasets.bag`."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return (p / "metadata.yaml").is_file()
    return p.suffix.lower() in (".mcap", ".db3", ".bag")


def open_sequence(spec: str, **kwargs) -> DepthSequence:
    """``"synthetic"`` -> the built-in depth camera, ``"synthetic_lidar"`` -> the built-in spinning
    LiDAR (kwargs go to their classes); a folder -> TUM RGB-D, 7-Scenes, KITTI Velodyne
    (``velodyne/*.bin``) or a folder of PCD/PLY scans; a bag (.mcap, .db3 or .bag file, or a rosbag2
    folder) -> BagSequence (kwargs go to it: topics, input kind), which needs the ``rosbags``
    package but no ROS."""
    if is_synthetic(spec):
        return SYNTHETIC_SOURCES[spec](**kwargs)
    root = Path(spec).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"sequence {spec!r} is neither {' nor '.join(map(repr, SYNTHETIC_SOURCES))} "
                                "nor an existing folder or bag")
    if is_bag(root):
        from ukpgan_ros.datasets.bag import BagSequence

        return BagSequence(root, **kwargs)
    if not root.is_dir():
        raise ValueError(f"{root}: a sequence is {' or '.join(map(repr, SYNTHETIC_SOURCES))}, a folder (TUM RGB-D, "
                         "7-Scenes, KITTI velodyne/*.bin, PCD/PLY scans) or a bag (.mcap, .db3, .bag, rosbag2 folder), "
                         "not a file of another kind")
    if (root / "depth.txt").is_file():
        return TumSequence(root, **kwargs)
    if seven_scenes_frame_dir(root) is not None:
        return SevenScenesSequence(root, **kwargs)
    if kitti_scan_dir(root) is not None:
        return KittiSequence(root, **kwargs)
    if scan_folder_dir(root) is not None:
        return ScanFolderSequence(root, **kwargs)
    raise ValueError(
        f"{root}: unrecognised sequence layout; expected TUM RGB-D (depth.txt + depth/*.png), "
        "7-Scenes (frame-XXXXXX.depth.png, directly or under frames/), KITTI Velodyne (velodyne/*.bin or *.bin), "
        "PCD/PLY scans (*.pcd/*.ply, directly or under scans/), or a rosbag2 folder (metadata.yaml)"
    )
