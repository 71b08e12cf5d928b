"""Bags without ROS: ``ukpgan record`` turns a depth sequence into a bag, ``ukpgan bag`` runs the
pipeline over a bag and writes its results next to the input topics.

Messages are built and serialised with rosbags' type system (ROS 2 Kilted definitions; the
types used here hash the same from Humble to Kilted), so nothing here imports ROS. Output is a
ROS 2 bag in MCAP storage: a single ``.mcap`` file when the name ends in ``.mcap``, else a rosbag2
folder (``metadata.yaml`` + the MCAP file). Both play with ``ros2 bag play`` and read back with
rosbags or :class:`ukpgan_ros.datasets.bag.BagSequence`.

Topics, as the player and the node use them (so a recorded bag plays straight into the node,
and a processed bag looks like a recording of the node):

- ``record``: ``/depth/image_raw`` (16UC1, mm) + ``/depth/camera_info`` and/or ``/cloud_in``
  (PointCloud2 x, y, z), and ``/ground_truth/pose`` (PoseStamped, ``first_from_current`` in
  ``odom``), all stamped with the sequence's own stamps.
- ``bag``: every input topic, plus ``/ukpgan_detector/keypoints`` (x, y, z, saliency),
  ``/ukpgan_detector/markers``, ``/ukpgan_detector/transform``, ``/ukpgan_detector/pose`` and
  ``/tf`` (``odom_frame -> sensor``), stamped with the input's header stamp and recorded at the
  input's log time. REP 105 as in the node: keypoints in the input frame, poses in
  ``odom_frame``; a frame that is not placed (failed registration and relocalisation) writes no
  transform or pose.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.datasets.bag import CAMERA_INFO, IMAGE, POINTCLOUD2, POSE_STAMPED
from ukpgan_ros.transforms import matrix_to_quaternion

__all__ = [
    "BagWriter", "MessageBuilder", "record_sequence", "process_bag", "add_record_arguments", "run_record",
    "add_bag_arguments", "run_bag", "RECORD_TOPICS", "OUTPUT_NAMESPACE",
]

RECORD_TOPICS = {"cloud": "/cloud_in", "depth": "/depth/image_raw", "info": "/depth/camera_info",
                 "ground_truth": "/ground_truth/pose"}
OUTPUT_NAMESPACE = "/ukpgan_detector"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
TRANSFORM_STAMPED = "geometry_msgs/msg/TransformStamped"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
DEFAULT_FRAME_ID = "camera_depth_optical_frame"  # the player's default


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


# ----------------------------------------------------------------------------- messages


class MessageBuilder:
    """sensor_msgs / geometry_msgs / visualization_msgs messages as rosbags dataclasses.

    The same layouts as :mod:`ukpgan_ros.ros.cloud_msgs` and :mod:`ukpgan_ros.ros.messages` build
    for rclpy: unorganized little-endian float32 clouds, 16UC1 depth in 1/depth_scale m with
    invalid pixels 0, plumb_bob CameraInfo with P = [K | 0], canonical quaternions (w >= 0).
    """

    def __init__(self, typestore=None) -> None:
        self.ts = typestore or _typestore()
        self.T = self.ts.types

    def default(self, msgtype: str, **values) -> Any:
        """A message of ``msgtype`` with zero/empty fields, ``values`` overriding."""
        from rosbags.interfaces import Nodetype

        out = {}
        for name, (kind, desc) in self.ts.fielddefs[msgtype][1]:
            if name in values:
                out[name] = values[name]
            elif kind == Nodetype.BASE:
                out[name] = "" if desc[0] == "string" else (False if desc[0] == "bool" else 0)
            elif kind == Nodetype.NAME:
                out[name] = self.default(desc)
            else:
                sub, size = desc[0], (0 if kind == Nodetype.SEQUENCE else desc[1])
                if sub[0] == Nodetype.BASE:
                    out[name] = [""] * size if sub[1][0] == "string" else np.zeros(
                        size, dtype=np.dtype("uint8" if sub[1][0] == "char" else sub[1][0]))
                else:
                    out[name] = [self.default(sub[1]) for _ in range(size)]
        return self.T[msgtype](**out)

    def time(self, ns: int) -> Any:
        return self.T["builtin_interfaces/msg/Time"](sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        return self.T["std_msgs/msg/Header"](stamp=self.time(stamp_ns), frame_id=frame_id)

    def pointcloud2(self, points: np.ndarray, header: Any, extra: dict[str, np.ndarray] | None = None) -> Any:
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        names = ["x", "y", "z"] + list(extra or {})
        table = np.empty((len(pts), len(names)), dtype="<f4")
        table[:, :3] = pts
        for i, v in enumerate((extra or {}).values()):
            table[:, 3 + i] = np.asarray(v, dtype=np.float32).reshape(-1)
        field = self.T["sensor_msgs/msg/PointField"]
        return self.T[POINTCLOUD2](
            header=header, height=1, width=len(pts),
            fields=[field(name=n, offset=4 * i, datatype=field.FLOAT32, count=1) for i, n in enumerate(names)],
            is_bigendian=False, point_step=4 * len(names), row_step=4 * len(names) * len(pts),
            data=np.ascontiguousarray(table).view(np.uint8).reshape(-1), is_dense=bool(np.isfinite(pts).all()))

    def depth_image(self, depth_m: np.ndarray, header: Any, depth_scale: float = 1000.0) -> Any:
        d = np.asarray(depth_m, dtype=np.float64)
        valid = np.isfinite(d) & (d > 0)
        raw = np.rint(np.where(valid, d, 0.0) * depth_scale)
        raw[~valid | (raw >= 65535) | (raw < 1)] = 0
        h, w = d.shape
        return self.T[IMAGE](header=header, height=h, width=w, encoding="16UC1", is_bigendian=0, step=2 * w,
                             data=raw.astype("<u2").view(np.uint8).reshape(-1))

    def camera_info(self, K: np.ndarray, width: int, height: int, header: Any) -> Any:
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        P = np.zeros((3, 4))
        P[:, :3] = K
        return self.default(CAMERA_INFO, header=header, width=int(width), height=int(height),
                            distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1).copy(),
                            r=np.eye(3).reshape(-1), p=P.reshape(-1))

    def pose_stamped(self, T: np.ndarray, header: Any) -> Any:
        t, q = matrix_to_quaternion(T)
        T_ = self.T
        pose = T_["geometry_msgs/msg/Pose"](position=T_["geometry_msgs/msg/Point"](x=t[0], y=t[1], z=t[2]),
                                            orientation=T_["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))
        return T_[POSE_STAMPED](header=header, pose=pose)

    def transform_stamped(self, T: np.ndarray, header: Any, child_frame_id: str) -> Any:
        t, q = matrix_to_quaternion(T)
        T_ = self.T
        tf = T_["geometry_msgs/msg/Transform"](translation=T_["geometry_msgs/msg/Vector3"](x=t[0], y=t[1], z=t[2]),
                                               rotation=T_["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))
        return T_[TRANSFORM_STAMPED](header=header, child_frame_id=child_frame_id, transform=tf)

    def tf_message(self, transforms: list) -> Any:
        return self.T[TF_MESSAGE](transforms=transforms)

    def keypoint_markers(self, xyz: np.ndarray, scores: np.ndarray, header: Any, scale: float,
                         lifetime_s: float = 0.5, ns: str = "ukpgan") -> Any:
        """A DELETEALL, then one SPHERE_LIST coloured by saliency (as the node's ``~/markers``)."""
        from ukpgan_ros.plots import saliency_colors

        M, T_ = self.T["visualization_msgs/msg/Marker"], self.T
        markers = [self.default("visualization_msgs/msg/Marker", header=header, ns=ns, id=0, action=M.DELETEALL)]
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        if len(xyz):
            Point, Color = T_["geometry_msgs/msg/Point"], T_["std_msgs/msg/ColorRGBA"]
            life = int(round(lifetime_s * 1e9))
            sphere = self.default(
                "visualization_msgs/msg/Marker", header=header, ns=ns, id=0, type=M.SPHERE_LIST, action=M.ADD,
                lifetime=T_["builtin_interfaces/msg/Duration"](sec=life // 1_000_000_000, nanosec=life % 1_000_000_000),
                scale=T_["geometry_msgs/msg/Vector3"](x=scale, y=scale, z=scale),
                color=Color(r=1.0, g=1.0, b=1.0, a=1.0),
                points=[Point(x=x, y=y, z=z) for x, y, z in xyz.tolist()],
                colors=[Color(r=r, g=g, b=b, a=1.0) for r, g, b in saliency_colors(scores).tolist()])
            sphere.pose.orientation.w = 1.0
            markers.append(sphere)
        return self.T[MARKER_ARRAY](markers=markers)


# ----------------------------------------------------------------------------- writing


class BagWriter:
    """A ROS 2 bag in MCAP storage, zstd-compressed chunks unless ``compress`` is False.

    ``out`` ending in ``.mcap`` gives that single file (rosbags writes a folder; the file is moved
    out of a temporary one when the bag is closed); any other name gives a rosbag2 folder. An
    existing ``out`` is refused unless ``overwrite``. On an exception inside ``with`` nothing is
    left behind.
    """

    def __init__(self, out: str | Path, *, compress: bool = True, overwrite: bool = False,
                 typestore=None) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

        self.out = Path(out).expanduser()
        if self.out.exists() or self.out.is_symlink():
            if not overwrite:
                raise ValueError(f"{self.out} exists; choose another --out or pass --overwrite")
            if self.out.is_dir():
                shutil.rmtree(self.out)
            else:
                self.out.unlink()
        if not self.out.parent.is_dir():
            raise FileNotFoundError(f"{self.out}: the folder {self.out.parent} does not exist")
        self.single = self.out.suffix.lower() == ".mcap"
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent)) if self.single else None
        # rosbags names the MCAP file after its folder: a folder named like the file's stem.
        folder = self._tmp / self.out.stem if self.single else self.out
        self.builder = MessageBuilder(typestore)
        self.ts = self.builder.ts
        self._writer = Writer(folder, version=8, storage_plugin=StoragePlugin.MCAP)
        if compress:
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._folder = folder
        self._conns: dict[tuple[str, str], Any] = {}
        self.counts: dict[str, int] = {}
        self._writer.open()

    @property
    def writer(self):
        """The underlying rosbags Writer (for connections copied from another bag)."""
        return self._writer

    def connection(self, topic: str, msgtype: str) -> Any:
        key = (topic, msgtype)
        if key not in self._conns:
            existing = next((c for c in self._writer.connections if c.topic == topic and c.msgtype == msgtype), None)
            self._conns[key] = existing or self._writer.add_connection(topic, msgtype, typestore=self.ts)
        return self._conns[key]

    def write(self, topic: str, msg: Any, log_time_ns: int) -> None:
        """Serialise ``msg`` (a rosbags message) on ``topic`` at ``log_time_ns``."""
        conn = self.connection(topic, msg.__msgtype__)
        self.write_raw(conn, log_time_ns, self.ts.serialize_cdr(msg, msg.__msgtype__))

    def write_raw(self, conn: Any, log_time_ns: int, data: bytes | memoryview) -> None:
        if log_time_ns < 0:
            raise ValueError(f"{conn.topic}: negative log time {log_time_ns} ns cannot be recorded")
        self._writer.write(conn, int(log_time_ns), data)
        self.counts[conn.topic] = self.counts.get(conn.topic, 0) + 1

    def close(self) -> Path:
        self._writer.close()
        if self.single:
            os.replace(self._folder / f"{self.out.stem}.mcap", self.out)
            shutil.rmtree(self._tmp, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        shutil.rmtree(self._tmp if self.single else self._folder, ignore_errors=True)

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _copy_connections(reader, writer: BagWriter, skip: set[str]) -> tuple[dict, dict]:
    """Output connections for the input's topics (``skip`` aside) and a converter per message type.

    ROS 2 input is copied byte for byte with its own message definitions; ROS 1 input is
    converted to ROS 2 types by rosbags (as ``rosbags-convert`` does).
    """
    conns = [c for c in reader.connections if c.topic not in skip]
    if not reader.is2:
        from rosbags.convert.converter import create_connections_converters

        with contextlib.redirect_stdout(io.StringIO()):  # it announces every migrated type
            connmap, convmap = create_connections_converters(conns, _typestore(), reader, writer.writer)
        return {c.id: connmap[(c.id, c.owner)] for c in conns}, convmap
    from rosbags.interfaces import MessageDefinitionFormat

    out, convmap = {}, {}
    for c in conns:
        existing = next((o for o in writer.writer.connections if o.topic == c.topic and o.msgtype == c.msgtype), None)
        if existing is None:
            if c.msgdef.format != MessageDefinitionFormat.NONE and c.msgdef.data:
                digest = c.digest or reader.typestore.hash_rihs01(c.msgtype)
                existing = writer.writer.add_connection(
                    c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=digest,
                    serialization_format=c.ext.serialization_format, offered_qos_profiles=c.ext.offered_qos_profiles)
            else:
                existing = writer.writer.add_connection(c.topic, c.msgtype, typestore=reader.typestore,
                                                        serialization_format=c.ext.serialization_format)
        out[c.id] = existing
        convmap[c.msgtype] = bytes
    return out, convmap


# ----------------------------------------------------------------------------- record


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


def run_record(args: argparse.Namespace) -> int:
    from ukpgan_ros.datasets import open_sequence

    seq = open_sequence(args.sequence)
    t0 = time.perf_counter()
    counts = record_sequence(seq, args.out, frames=args.frames, stride=args.stride, output=args.output,
                             frame_id=args.frame_id, odom_frame=args.odom_frame, compress=args.compress,
                             overwrite=args.overwrite)
    out = Path(args.out)
    size = out.stat().st_size if out.is_file() else sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"record: {getattr(seq, 'name', args.sequence)} -> {out} ({size / 2**20:.1f} MiB, "
          f"{time.perf_counter() - t0:.1f} s)")
    for topic, n in sorted(counts.items()):
        print(f"  {topic}: {n} messages")
    return 0


# ----------------------------------------------------------------------------- bag


def add_bag_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", help="input bag: a rosbag2 folder, a .mcap/.db3 file, or a ROS 1 .bag")
    p.add_argument("--out", required=True, help="output bag: NAME.mcap (one file) or a folder name (rosbag2)")
    p.add_argument("--input", choices=("auto", "cloud", "depth"), default="auto",
                   help="input kind; auto takes the only PointCloud2 topic, else the only depth Image topic")
    p.add_argument("--cloud-topic", help="PointCloud2 input topic")
    p.add_argument("--depth-topic", help="depth Image input topic (16UC1/mono16/32FC1)")
    p.add_argument("--info-topic", help="CameraInfo topic of the depth images (default: camera_info beside them)")
    p.add_argument("--gt-topic", help="ground-truth PoseStamped topic (default: the one ending in ground_truth/pose)")
    p.add_argument("--frames", type=int, default=0, help="frames of the bag to cover (0: all)")
    p.add_argument("--stride", type=int, default=1, help="process every k-th frame (all messages are copied)")
    p.add_argument("--depth-stride", type=int, default=1, help="use every k-th depth pixel row/column (depth input)")
    p.add_argument("--depth-scale", type=float, default=1000.0, help="16UC1 depth units per metre")
    p.add_argument("--report", help="folder for frames.csv and trajectory.png")
    p.add_argument("--no-compress", dest="compress", action="store_false", help="write uncompressed MCAP chunks")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no per-frame lines and no progress bar")


def process_bag(args: argparse.Namespace, cfg: PipelineConfig) -> dict[str, Any]:
    """Run the pipeline over every selected frame of ``args.bag`` in order (no drops) and write
    ``args.out``; returns the per-frame rows and counters the summary is made of."""
    from tqdm import tqdm

    from ukpgan_ros.datasets.bag import BagSequence, open_bag
    from ukpgan_ros.transforms import rotation_error_deg, translation_error
    from ukpgan_ros.pipeline import KeypointPipeline

    seq = BagSequence(args.bag, input=args.input, cloud_topic=args.cloud_topic, depth_topic=args.depth_topic,
                      info_topic=args.info_topic, gt_topic=args.gt_topic, depth_scale=args.depth_scale)
    topics = {k: f"{OUTPUT_NAMESPACE}/{k}" for k in ("keypoints", "markers", "transform", "pose")}
    copier = None
    try:
        copier = open_bag(args.bag)  # a second handle: the full pass must not share file offsets with seq
        n_total = len(seq) if args.frames <= 0 else min(args.frames, len(seq))
        todo = list(range(0, n_total, max(1, args.stride)))
        pipe = KeypointPipeline(cfg)
        quiet = getattr(args, "quiet", False)
        say = (lambda s: None) if quiet else tqdm.write
        t = seq.topics
        every = "every frame" if args.stride <= 1 else f"every {args.stride}th"
        say(f"bag: {seq.name} — {len(todo)} of {len(seq)} frames ({every}) from "
            f"{t.cloud if t.input == 'cloud' else f'{t.depth} + {t.info}'}"
            f"{', ground truth ' + t.ground_truth if t.ground_truth else ', no ground truth'}; detector {cfg.detector}, "
            f"descriptor {cfg.descriptor}, voxel {cfg.voxel_size} m")
        say(f"{'frame':>6} {'kps':>5} {'time':>9} {'RE[deg]':>8} {'TE[cm]':>7} {'GT motion':>14}")
        rows: list[dict] = []
        state = {"malformed": 0, "failed": 0, "prev_gt": None, "first_gt": None,
                 "last_gt": None, "pose": None, "gt_positions": [], "est_positions": []}
        bar = tqdm(total=len(todo), desc="bag", unit="frame", disable=quiet or not sys.stderr.isatty(), file=sys.stderr)
        with BagWriter(args.out, compress=args.compress, overwrite=args.overwrite) as w:
            connmap, convmap = _copy_connections(copier, w, skip=set(topics.values()))
            b = w.builder

            def run(i: int) -> None:
                stamp, frame_id = seq.header(i)
                log_time = seq.ready_time(i)
                frame_gt = seq.pose(i)
                t0 = time.perf_counter()
                try:
                    res = pipe.process(seq.points(i, stride=args.depth_stride if seq.input == "depth" else 1))
                except ValueError as e:  # what the node counts as malformed input
                    state["malformed"] += 1
                    say(f"{i:>6} dropped: {e}")
                    return
                dt = time.perf_counter() - t0
                header = b.header(stamp, frame_id)
                kps = res.keypoints
                w.write(topics["keypoints"], b.pointcloud2(kps.xyz, header, {"saliency": kps.scores}), log_time)
                w.write(topics["markers"], b.keypoint_markers(kps.xyz, kps.scores, header,
                                                              max(0.02, 0.6 * cfg.voxel_size)), log_time)
                step = res.tracking
                # as the node publishes: a placed frame has a pose; ~/transform is the motion since
                # the last placed frame (map_from_sensor in reference mode)
                ok = step is not None and step.placed
                motion = res.pose if cfg.registration == "reference" else (step.motion if ok else None)
                if step is not None and not ok:
                    state["failed"] += 1
                if ok:
                    if motion is not None:
                        tf = b.transform_stamped(motion, header, frame_id)
                        if cfg.registration == "reference":
                            tf.header = b.header(stamp, cfg.odom_frame)
                        w.write(topics["transform"], tf, log_time)
                    w.write(topics["pose"], b.pose_stamped(res.pose, b.header(stamp, cfg.odom_frame)), log_time)
                    if cfg.publish_tf and frame_id and frame_id != cfg.odom_frame:
                        odom = b.transform_stamped(res.pose, b.header(stamp, cfg.odom_frame), frame_id)
                        w.write("/tf", b.tf_message([odom]), log_time)
                    state["pose"] = res.pose
                row = {"frame": i, "stamp": stamp * 1e-9, "keypoints": len(kps), "time_ms": 1e3 * dt}
                line = f"{i:>6} {len(kps):>5} {1e3 * dt:>7.0f}ms"
                prev_gt = state["prev_gt"]  # of the last placed frame: the motion is measured from it
                if frame_gt is not None and prev_gt is not None:
                    T_gt = np.linalg.inv(prev_gt) @ frame_gt
                    row.update(gt_rot_deg=rotation_error_deg(np.eye(4), T_gt), gt_trans_m=float(np.linalg.norm(T_gt[:3, 3])))
                    if ok and motion is not None and cfg.registration != "reference":
                        row.update(re_deg=rotation_error_deg(motion, T_gt), te_m=translation_error(motion, T_gt))
                        line += f" {row['re_deg']:>8.3f} {100 * row['te_m']:>7.2f}"
                    else:
                        line += f" {'' if ok else 'failed':>8} {'':>7}"
                    line += f" {row['gt_rot_deg']:>5.2f}deg {100 * row['gt_trans_m']:>4.1f}cm"
                say(line)
                if frame_gt is not None:
                    state["first_gt"] = frame_gt if state["first_gt"] is None else state["first_gt"]
                    state["gt_positions"].append((np.linalg.inv(state["first_gt"]) @ frame_gt)[:3, 3])
                    state["last_gt"] = frame_gt
                state["est_positions"].append(res.pose[:3, 3].copy())
                if ok or step is None:
                    state["prev_gt"] = frame_gt
                rows.append(row)

            queue = todo  # in order: each frame registers against the one before it
            k = 0
            for conn, log_time, raw in copier.messages():
                # A frame is processed once everything it needs has been copied, so outputs land
                # in log-time order right after their input.
                while k < len(queue) and seq.ready_time(queue[k]) < log_time:
                    run(queue[k])
                    bar.update(1)
                    k += 1
                if conn.id in connmap:
                    w.write_raw(connmap[conn.id], log_time, convmap[conn.msgtype](raw))
            while k < len(queue):
                run(queue[k])
                bar.update(1)
                k += 1
            bar.close()
            counts = dict(w.counts)
        pipe.release()
    finally:
        if copier is not None:
            copier.close()
        seq.close()
    return {"rows": rows, "counts": counts, "frames": len(seq), "selected": len(todo), "topics": topics, **state}


def run_bag(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    """``ukpgan bag``: process, then print a summary like ``ukpgan demo``'s."""
    from ukpgan_ros.transforms import rotation_error_deg, translation_error

    t0 = time.perf_counter()
    r = process_bag(args, cfg)
    rows = r["rows"]
    scored = [x for x in rows if "re_deg" in x]
    pairs = [x for x in rows if "gt_rot_deg" in x]
    print("\nsummary")
    print(f"  frames in the bag {r['frames']}, selected {r['selected']}, processed {len(rows)}, "
          f"malformed {r['malformed']}, registrations failed {r['failed']}")
    if rows:
        t = [x["time_ms"] for x in rows]
        print(f"  processing time per frame: median {np.median(t):.0f} ms, max {np.max(t):.0f} ms "
              f"(total {time.perf_counter() - t0:.0f} s)")
    if pairs:
        print(f"  pairs with ground truth {len(pairs)}, registered {len(scored)} "
              f"({100 * len(scored) / len(pairs):.0f} %)")
        print(f"  ground-truth motion between processed frames: median {np.median([x['gt_rot_deg'] for x in pairs]):.2f} deg, "
              f"{100 * np.median([x['gt_trans_m'] for x in pairs]):.1f} cm")
    if scored:
        print(f"  registration error: median rotation {np.median([x['re_deg'] for x in scored]):.3f} deg, "
              f"median translation {100 * np.median([x['te_m'] for x in scored]):.2f} cm "
              f"(max {np.max([x['re_deg'] for x in scored]):.2f} deg, {100 * np.max([x['te_m'] for x in scored]):.2f} cm)")
    gt = np.array(r["gt_positions"])
    if r["pose"] is not None and r["first_gt"] is not None and r["last_gt"] is not None:
        gt_final = np.linalg.inv(r["first_gt"]) @ r["last_gt"]
        path = float(np.sum(np.linalg.norm(np.diff(gt, axis=0), axis=1))) if len(gt) > 1 else 0.0
        drift = translation_error(r["pose"], gt_final)
        print(f"  final drift of the accumulated pose: {100 * drift:.1f} cm over {path:.2f} m travelled "
              f"({100 * drift / max(path, 1e-9):.1f} %), rotation {rotation_error_deg(r['pose'], gt_final):.2f} deg")
    counts = r["counts"]
    made = ", ".join(f"{topic} {counts.get(topic, 0)}" for topic in list(r["topics"].values()) + ["/tf"])
    print(f"  wrote {args.out}: {sum(counts.values())} messages; {made}")
    if args.report:
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "frames.csv", "w", newline="") as fh:
            keys = sorted({k for x in rows for k in x})
            wr = csv.DictWriter(fh, fieldnames=keys)
            wr.writeheader()
            wr.writerows(rows)
        if r["est_positions"]:
            from ukpgan_ros.plots import plot_trajectory

            plot_trajectory(np.array(r["est_positions"]), gt if len(gt) else None, out / "trajectory.png",
                            title=f"{cfg.detector} + {cfg.descriptor}, voxel {cfg.voxel_size} m")
        print(f"  per-frame table: {out / 'frames.csv'}"
              + (f", trajectory plot: {out / 'trajectory.png'}" if r["est_positions"] else ""))
    return 0 if rows else 1
