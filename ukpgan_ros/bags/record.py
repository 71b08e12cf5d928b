"""``ukpgan record``: a depth sequence (7-Scenes/TUM folder, synthetic, another bag) as a bag.

Topics, as the player and the node use them (so a recorded bag plays straight into the node):
``/depth/image_raw`` (16UC1, mm) + ``/depth/camera_info`` and/or ``/cloud_in`` (PointCloud2 x, y,
z), and ``/ground_truth/pose`` (PoseStamped, ``first_from_current`` in ``odom``), all stamped
with the sequence's own stamps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ukpgan_ros.bags.writer import BagWriter

__all__ = ["record_sequence", "add_record_arguments", "run_record", "RECORD_TOPICS", "DEFAULT_FRAME_ID"]

RECORD_TOPICS = {"cloud": "/cloud_in", "depth": "/depth/image_raw", "info": "/depth/camera_info",
                 "ground_truth": "/ground_truth/pose"}
DEFAULT_FRAME_ID = "camera_depth_optical_frame"  # the player's default


def record_sequence(seq, out: str | Path, *, frames: int = 0, stride: int = 1, output: str = "depth",
                    frame_id: str = DEFAULT_FRAME_ID, odom_frame: str = "odom", depth_scale: float = 1000.0,
                    compress: bool = True, overwrite: bool = False, progress: bool = True) -> dict[str, int]:
    """Write frames ``0, stride, ...`` (of the first ``frames``; 0: all) of a DepthSequence to a bag.

    Returns the message count per topic. Each frame is stamped (and recorded) at its own stamp.
    """
    from tqdm import tqdm

    if output not in ("depth", "cloud", "both"):
        raise ValueError(f"output must be depth, cloud or both, got {output!r}")
    if output != "cloud" and not getattr(seq, "has_depth", True):
        raise ValueError(f"{getattr(seq, 'name', 'the sequence')} holds point clouds, not depth images: "
                         "record it with --output cloud")
    n = len(seq) if frames <= 0 else min(frames, len(seq))
    indices = range(0, n, max(1, stride))
    first_pose = None
    with BagWriter(out, compress=compress, overwrite=overwrite) as w:
        b = w.builder
        for i in tqdm(indices, desc="record", unit="frame", disable=not progress or not sys.stderr.isatty(), file=sys.stderr):
            frame = seq[i]
            t = int(round(frame.stamp * 1e9))
            header = b.header(t, frame_id)
            if output in ("depth", "both"):
                w.write(RECORD_TOPICS["info"], b.camera_info(frame.K, frame.width, frame.height, header), t)
                w.write(RECORD_TOPICS["depth"], b.depth_image(frame.depth_m, header, depth_scale), t)
            if output in ("cloud", "both"):
                w.write(RECORD_TOPICS["cloud"], b.pointcloud2(frame.points(), header), t)
            if frame.pose is not None:
                first_pose = frame.pose if first_pose is None else first_pose
                gt = b.pose_stamped(np.linalg.inv(first_pose) @ frame.pose, b.header(t, odom_frame))
                w.write(RECORD_TOPICS["ground_truth"], gt, t)
        counts = dict(w.counts)
    return counts


def add_record_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sequence", help="'synthetic', a 7-Scenes/TUM folder, or a bag")
    p.add_argument("--out", required=True, help="bag to write: NAME.mcap (one file) or a folder name (rosbag2)")
    p.add_argument("--frames", type=int, default=0, help="frames of the sequence to cover (0: all)")
    p.add_argument("--stride", type=int, default=1, help="record every k-th frame")
    p.add_argument("--output", choices=("depth", "cloud", "both"), default="depth",
                   help="depth Image + CameraInfo (compact, what a camera driver records), PointCloud2, or both")
    p.add_argument("--frame-id", default=DEFAULT_FRAME_ID, help="sensor frame of the recorded messages")
    p.add_argument("--odom-frame", default="odom", help="frame of /ground_truth/pose")
    p.add_argument("--no-compress", dest="compress", action="store_false", help="write uncompressed MCAP chunks")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--there-and-back", action="store_true",
                   help="record the covered frames forward on the even ones and back on the odd ones (a loop to close)")


def run_record(args: argparse.Namespace) -> int:
    from ukpgan_ros.datasets import open_sequence

    seq = open_sequence(args.sequence)
    frames, stride = args.frames, args.stride
    if getattr(args, "there_and_back", False):
        from ukpgan_ros.datasets import ThereAndBackSequence

        n = len(seq) if frames <= 0 else min(frames, len(seq))
        seq, frames, stride = ThereAndBackSequence(seq, range(0, n, max(1, stride))), 0, 1
    t0 = time.perf_counter()
    counts = record_sequence(seq, args.out, frames=frames, stride=stride, output=args.output,
                             frame_id=args.frame_id, odom_frame=args.odom_frame, compress=args.compress,
                             overwrite=args.overwrite)
    out = Path(args.out)
    size = out.stat().st_size if out.is_file() else sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"record: {getattr(seq, 'name', args.sequence)} -> {out} ({size / 2**20:.1f} MiB, "
          f"{time.perf_counter() - t0:.1f} s)")
    for topic, n in sorted(counts.items()):
        print(f"  {topic}: {n} messages")
    return 0
