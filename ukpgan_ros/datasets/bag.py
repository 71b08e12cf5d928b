"""ROS 2 bags (MCAP or sqlite3) and ROS 1 bags as depth sequences, read with rosbags: no ROS install.

A bag becomes a :class:`BagSequence` over one input: a ``sensor_msgs/PointCloud2`` topic, or a
depth ``sensor_msgs/Image`` (16UC1/mono16 in 1/depth_scale m, 32FC1 in m) with its
``CameraInfo``. Topics are detected (see :func:`choose_topics`) or named. A
``geometry_msgs/PoseStamped`` topic ending in ``ground_truth/pose`` (what ``depth_player`` and
``ukpgan record`` write) gives each frame its ground-truth pose.

Opening scans the chosen topics once (headers, intrinsics and poses; the image and cloud
payloads are not kept); a frame is read from the bag when indexed. Messages are parsed by the
ROS-free readers of :mod:`ukpgan_ros.pointcloud2`, the code the node runs on live messages, so
a frame gives the node's points exactly.
"""

from __future__ import annotations

import bisect
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ukpgan_ros.datasets.base import DepthFrame, IndexedSequence
from ukpgan_ros.datasets.mcap import BagError, check_mcap
from ukpgan_ros.outputs import POINTCLOUD2, POSE_STAMPED, TOPICS
from ukpgan_ros.pointcloud2 import (
    DEPTH_ENCODINGS,
    CloudFormatError,
    camera_info_to_K,
    depth_image_to_metres,
    depth_msgs_to_points,
    pointcloud2_to_xyz,
)
from ukpgan_ros.transforms import pose_to_matrix, stamp_ns

__all__ = [
    "BagReader", "BagSequence", "BagTopics", "BagError", "open_bag", "choose_topics", "BAG_SUFFIXES",
    "POINTCLOUD2", "IMAGE", "CAMERA_INFO", "POSE_STAMPED",
]

BAG_SUFFIXES = (".mcap", ".db3", ".bag")
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
GROUND_TRUTH_SUFFIX = "ground_truth/pose"
_OUTPUT_CLOUD_SUFFIX = TOPICS["keypoints"].topic[1:]  # "/keypoints": the node's (and `ukpgan bag`'s) output, never an input



# ----------------------------------------------------------------------------- reading any bag


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class BagReader:
    """One bag opened with rosbags: ROS 2 folders (MCAP or sqlite3), single MCAP files, ROS 1 .bag.

    ``connections``, ``messages(connections, start, stop)`` (raw CDR or ROS 1 bytes in log-time
    order), ``deserialize(raw, msgtype)``, ``is2`` and ``typestore`` mirror rosbags' AnyReader,
    whose rosbag2 reader needs a metadata.yaml that a single ``.mcap`` file lacks. Use it as a
    context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"bag not found: {p}")
        self.path = p
        self._any = None
        self._mcap = None
        try:
            if p.is_dir() or p.suffix.lower() in (".bag", ".db3"):
                target = p.parent if p.suffix.lower() == ".db3" and p.is_file() else p
                if target.is_dir() and not (target / "metadata.yaml").is_file():
                    raise ValueError(f"{target}: a rosbag2 folder needs its metadata.yaml")
                for f in sorted(target.glob("*.mcap")) if target.is_dir() else ():
                    check_mcap(f)  # every chunk, before anything is trusted
                self._any = AnyReader([target], default_typestore=get_typestore(Stores.ROS2_KILTED))
                self._any.open()
                self.is2, self.typestore, self.connections = self._any.is2, self._any.typestore, self._any.connections
            elif p.suffix.lower() == ".mcap":
                check_mcap(p)
                self._open_mcap(p)
            else:
                raise ValueError(f"{p}: not a bag (expected a rosbag2 folder or a {', '.join(BAG_SUFFIXES)} file)")
        except Exception as exc:  # noqa: BLE001 - any reader failure is a corrupt or foreign file
            self.close()
            if isinstance(exc, BagError) or (isinstance(exc, ValueError) and str(exc).startswith(str(p))):
                raise
            raise BagError(f"{p}: not a readable bag ({type(exc).__name__}: {_one_line(exc)})") from None

    def _open_mcap(self, p: Path) -> None:
        """A single MCAP file (ros2 profile), with the message definitions it embeds."""
        from rosbags.interfaces import MessageDefinitionFormat
        from rosbags.rosbag2.storage_mcap import McapReader
        from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

        reader = McapReader(p)
        reader.open()
        self._mcap = reader
        self.is2 = True
        types: dict = {}
        for conn in reader.connections:
            fmt, text = conn.msgdef.format, conn.msgdef.data
            if fmt == MessageDefinitionFormat.MSG:
                types.update(get_types_from_msg(text, conn.msgtype))
            elif fmt == MessageDefinitionFormat.IDL:
                sep = "=" * 80 + "\n"
                for part in text.split(sep)[1:] if text.startswith(sep + "IDL: ") else [None]:
                    types.update(get_types_from_idl(part.split("\n", 1)[1] if part is not None else text))
        typestore = get_typestore(Stores.ROS2_KILTED)  # types a file does not define (schemaless)
        typestore.register(types)
        self.typestore = typestore
        self.connections = list(reader.connections)

    def messages(self, connections=(), start: int | None = None, stop: int | None = None) -> Iterator[tuple]:
        """(connection, log time [ns], raw bytes) in log-time order; all connections when none given.
        A read error on the way (corrupt data the open-time check could not see) is a BagError."""
        try:
            if self._any is not None:
                yield from self._any.messages(connections=list(connections), start=start, stop=stop)
                return
            if self._mcap is None:
                raise BagError(f"{self.path}: the bag is closed")
            yield from self._mcap.messages(list(connections) or self.connections, start, stop)
        except BagError:
            raise
        except Exception as e:  # noqa: BLE001 - rosbags, sqlite, zstd and lz4 raise their own types
            raise BagError(f"{self.path}: unreadable message data ({type(e).__name__}: {_one_line(e)})") from None

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        try:
            return self._deserialize(raw, msgtype)
        except Exception as e:  # noqa: BLE001 - a message that does not parse as its type
            raise BagError(f"{self.path}: a {msgtype} message does not deserialize "
                           f"({type(e).__name__}: {_one_line(e)})") from None

    def _deserialize(self, raw: bytes, msgtype: str) -> Any:
        if self._any is not None:
            return self._any.deserialize(raw, msgtype)
        return self.typestore.deserialize_cdr(raw, msgtype)

    def topics(self) -> dict[str, str]:
        """Topic name -> message type."""
        return {c.topic: c.msgtype for c in self.connections}

    def connections_of(self, topic: str) -> list:
        return [c for c in self.connections if c.topic == topic]

    def close(self) -> None:
        for r in (self._any, self._mcap):
            if r is not None:
                with contextlib.suppress(Exception):
                    r.close()
        self._any = self._mcap = None

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_bag(path: str | Path) -> BagReader:
    """Open a bag for reading (see :class:`BagReader`)."""
    return BagReader(path)


# ----------------------------------------------------------------------------- choosing topics


@dataclass(frozen=True)
class BagTopics:
    """The input topics of a bag: ``input`` is ``cloud`` (``cloud``) or ``depth`` (``depth`` + ``info``)."""

    input: str
    cloud: str | None = None
    depth: str | None = None
    info: str | None = None
    ground_truth: str | None = None


def _first_message(reader: BagReader, topic: str) -> Any | None:
    for conn, _, raw in reader.messages(reader.connections_of(topic)):
        return reader.deserialize(raw, conn.msgtype)
    return None


def choose_topics(reader: BagReader, input: str = "auto", cloud_topic: str | None = None,
                  depth_topic: str | None = None, info_topic: str | None = None,
                  gt_topic: str | None = None) -> BagTopics:
    """The input (and ground-truth) topics: the named ones, checked, or detected.

    Detection: with ``input`` auto, a single PointCloud2 topic (``*/keypoints`` outputs aside)
    is the input; else a single depth Image topic (16UC1, mono16 or 32FC1, read from its first
    message). Its CameraInfo is the ``camera_info`` beside it or else the only one in the bag.
    Ground truth is a PoseStamped topic ending in ``ground_truth/pose``. Ambiguity is an error
    that lists the candidates and the flag to choose with.
    """
    if input not in ("auto", "cloud", "depth"):
        raise ValueError(f"input must be auto, cloud or depth, got {input!r}")
    topics = reader.topics()
    where = str(reader.path)

    def check(topic: str, msgtype: str, flag: str) -> str:
        if topic not in topics:
            raise ValueError(f"{where}: no topic {topic!r} ({flag}); topics: {', '.join(sorted(topics)) or 'none'}")
        if topics[topic] != msgtype:
            raise ValueError(f"{where}: {topic} is {topics[topic]}, {flag} needs {msgtype}")
        return topic

    if cloud_topic and (depth_topic or input == "depth"):
        raise ValueError("name either a cloud topic or a depth topic, not both")
    if gt_topic:
        gt = check(gt_topic, POSE_STAMPED, "--gt-topic")
    else:
        cands = sorted(t for t, m in topics.items() if m == POSE_STAMPED and t.endswith(GROUND_TRUTH_SUFFIX))
        gt = cands[0] if len(cands) == 1 else None
    if cloud_topic:
        return BagTopics("cloud", cloud=check(cloud_topic, POINTCLOUD2, "--cloud-topic"), ground_truth=gt)
    clouds = sorted(t for t, m in topics.items() if m == POINTCLOUD2 and not t.endswith(_OUTPUT_CLOUD_SUFFIX))
    if not depth_topic and input in ("auto", "cloud"):
        if len(clouds) == 1:
            return BagTopics("cloud", cloud=clouds[0], ground_truth=gt)
        if len(clouds) > 1:
            raise ValueError(f"{where}: several PointCloud2 topics ({', '.join(clouds)}); choose one with --cloud-topic")
        if input == "cloud":
            raise ValueError(f"{where}: no PointCloud2 topic; topics: {', '.join(sorted(topics)) or 'none'}")
    if depth_topic:
        depth = check(depth_topic, IMAGE, "--depth-topic")
    else:
        depths = []
        for t in sorted(t for t, m in topics.items() if m == IMAGE):
            first = _first_message(reader, t)
            if first is not None and getattr(first, "encoding", None) in DEPTH_ENCODINGS:
                depths.append(t)
        if not depths:
            raise ValueError(f"{where}: no PointCloud2 and no depth Image topic (16UC1, mono16 or 32FC1); "
                             f"topics: {', '.join(f'{t} [{m}]' for t, m in sorted(topics.items())) or 'none'}")
        if len(depths) > 1:
            raise ValueError(f"{where}: several depth Image topics ({', '.join(depths)}); choose one with --depth-topic")
        depth = depths[0]
    if info_topic:
        info = check(info_topic, CAMERA_INFO, "--info-topic")
    else:
        infos = sorted(t for t, m in topics.items() if m == CAMERA_INFO)
        sibling = depth.rsplit("/", 1)[0] + "/camera_info"
        if sibling in infos:
            info = sibling
        elif len(infos) == 1:
            info = infos[0]
        else:
            raise ValueError(f"{where}: {'no' if not infos else 'several'} CameraInfo topics for {depth}"
                             f"{' (' + ', '.join(infos) + ')' if infos else ''}; name one with --info-topic")
    return BagTopics("depth", depth=depth, info=info, ground_truth=gt)


# ----------------------------------------------------------------------------- the sequence


@dataclass(frozen=True)
class _Entry:
    """Where one frame's payload lies in the bag, and what its header said."""

    conn: Any
    log_time: int  # ns
    nth: int  # among the connection's messages at this log time
    stamp: int  # header stamp, ns
    frame_id: str
    info: Any = None  # the CameraInfo that goes with a depth image
    ready: int = 0  # log time [ns] by which every message the frame needs has been recorded


class BagSequence(IndexedSequence):
    """The input of a bag as a DepthSequence: one frame per cloud, or per depth image with CameraInfo.

    Frames are in log-time order. ``stamp`` is the message's header stamp in seconds. A depth
    image takes the CameraInfo with the same stamp, else the latest one recorded before it
    (else the first). A frame's ``pose`` is the ground-truth pose with the same stamp, else the
    nearest within ``max_dt`` seconds, else None. Cloud frames carry their points
    (``DepthFrame.cloud``, ``has_depth`` False; ``K`` is NaN). ``header(i)`` gives a frame's
    header stamp [ns] and frame_id, ``log_time(i)``/``ready_time(i)`` where it lies in the bag.
    """

    def __init__(self, path: str | Path, input: str = "auto", cloud_topic: str | None = None,
                 depth_topic: str | None = None, info_topic: str | None = None, gt_topic: str | None = None,
                 depth_scale: float = 1000.0, max_dt: float = 0.02) -> None:
        self.reader = open_bag(path)
        try:
            self.topics = choose_topics(self.reader, input, cloud_topic, depth_topic, info_topic, gt_topic)
            self.depth_scale = float(depth_scale)
            self._entries = self._scan()
            if not self._entries:
                raise ValueError(f"{self.reader.path}: no messages on {self.topics.cloud or self.topics.depth}")
            self._poses = self._ground_truth(max_dt)
        except BaseException:
            self.reader.close()
            raise
        p = self.reader.path
        self.path = p
        self.name = p.stem if p.is_file() else p.name
        self.input = self.topics.input
        stamps = np.array([e.stamp for e in self._entries], dtype=np.float64) * 1e-9
        self.stamps = stamps
        dts = np.diff(stamps)
        self.rate_hz = float(1.0 / np.median(dts)) if len(dts) and np.median(dts) > 0 else 30.0
        first = self._entries[0]
        self.frame_id = first.frame_id
        if self.input == "depth":
            self.K = camera_info_to_K(first.info)
            self.width, self.height = int(first.info.width), int(first.info.height)
        else:
            msg = self._message(0)
            self.K = np.full((3, 3), np.nan)
            self.width, self.height = int(msg.width), int(msg.height)

    @property
    def has_depth(self) -> bool:
        """Whether frames are depth images (a depth player can publish them as such)."""
        return self.input == "depth"

    # ------------------------------------------------------------------ index
    def _scan(self) -> list[_Entry]:
        r, t = self.reader, self.topics
        main = r.connections_of(t.cloud if t.input == "cloud" else t.depth)
        infos = r.connections_of(t.info) if t.info else []
        entries: list[_Entry] = []
        info_by_stamp: dict[int, Any] = {}
        info_times: list[tuple[int, Any]] = []
        pending: list[tuple[Any, int, int, int, str]] = []
        seen: dict[tuple[int, int], int] = {}
        for conn, log_time, raw in r.messages(main + infos):
            msg = r.deserialize(raw, conn.msgtype)
            header = msg.header
            if conn.msgtype == CAMERA_INFO:
                info_by_stamp.setdefault(stamp_ns(header.stamp), (msg, log_time))
                info_times.append((log_time, msg))
                continue
            key = (id(conn), log_time)
            nth = seen.get(key, 0)
            seen[key] = nth + 1
            pending.append((conn, log_time, nth, stamp_ns(header.stamp), str(header.frame_id)))
        if t.input == "depth" and pending and not info_times:
            raise ValueError(f"{r.path}: no CameraInfo messages on {t.info}, so {t.depth} cannot be back-projected")
        info_log_times = [lt for lt, _ in info_times]  # log-time order, as read
        for conn, log_time, nth, stamp, frame_id in pending:
            info, ready = None, log_time
            if t.input == "depth":
                same = info_by_stamp.get(stamp)
                if same is not None:
                    info, ready = same[0], max(log_time, same[1])
                else:
                    k = bisect.bisect_right(info_log_times, log_time)  # infos recorded up to the image
                    info = info_times[k - 1][1] if k else info_times[0][1]
                    if not k:
                        ready = max(log_time, info_times[0][0])
            entries.append(_Entry(conn, log_time, nth, stamp, frame_id, info, ready))
        return entries

    def _ground_truth(self, max_dt: float) -> list[np.ndarray | None]:
        gt = self.topics.ground_truth
        if gt is None:
            return [None] * len(self._entries)
        stamps, poses = [], []
        for conn, _, raw in self.reader.messages(self.reader.connections_of(gt)):
            msg = self.reader.deserialize(raw, conn.msgtype)
            stamps.append(stamp_ns(msg.header.stamp))
            poses.append(pose_to_matrix(msg.pose))
        if not stamps:
            return [None] * len(self._entries)
        order = np.argsort(np.asarray(stamps, dtype=np.int64), kind="stable")
        t = np.asarray(stamps, dtype=np.int64)[order]
        out: list[np.ndarray | None] = []
        for e in self._entries:
            k = int(np.searchsorted(t, e.stamp))
            best = min((j for j in (k - 1, k) if 0 <= j < len(t)), key=lambda j: abs(int(t[j]) - e.stamp))
            out.append(poses[order[best]].copy() if abs(int(t[best]) - e.stamp) <= max_dt * 1e9 else None)
        return out

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._entries)

    def header(self, i: int) -> tuple[int, str]:
        """Header stamp [ns] and frame_id of frame ``i``'s message."""
        e = self._entries[self._index(i)]
        return e.stamp, e.frame_id

    def log_time(self, i: int) -> int:
        return self._entries[self._index(i)].log_time

    def ready_time(self, i: int) -> int:
        """Log time by which everything frame ``i`` needs (image and CameraInfo) is in the bag."""
        return self._entries[self._index(i)].ready

    def pose(self, i: int) -> np.ndarray | None:
        """Ground-truth pose of frame ``i`` without reading its payload."""
        p = self._poses[self._index(i)]
        return None if p is None else p.copy()

    def _message(self, j: int) -> Any:
        e = self._entries[j]
        for n, (conn, _, raw) in enumerate(self.reader.messages([e.conn], start=e.log_time, stop=e.log_time + 1)):
            if n == e.nth:
                return self.reader.deserialize(raw, conn.msgtype)
        raise ValueError(f"{self.reader.path}: message {j} of {e.conn.topic} at {e.log_time} ns is gone")

    def message(self, i: int) -> Any:
        """The deserialized input message of frame ``i`` (PointCloud2 or Image)."""
        return self._message(self._index(i))

    def points(self, i: int, stride: int = 1) -> np.ndarray:
        """Frame ``i`` as (N, 3) float32 in its sensor frame, exactly as the node converts the message
        (PointCloud2 without non-finite points; depth via depth_msgs_to_points with ``stride``).
        Raises CloudFormatError (a ValueError) for a malformed message."""
        j = self._index(i)
        msg = self._message(j)
        if self.input == "cloud":
            pts = pointcloud2_to_xyz(msg)
            return pts[::stride] if stride > 1 else pts
        return depth_msgs_to_points(msg, self._entries[j].info, stride=stride, depth_scale=self.depth_scale)

    def __getitem__(self, i: int) -> DepthFrame:
        j = self._index(i)
        e = self._entries[j]
        msg = self._message(j)
        pose = self._poses[j]
        pose = None if pose is None else pose.copy()
        if self.input == "cloud":
            return DepthFrame.from_cloud(j, e.stamp * 1e-9, pointcloud2_to_xyz(msg), pose)
        depth = depth_image_to_metres(msg, self.depth_scale)
        K = camera_info_to_K(e.info)
        iw, ih = int(getattr(e.info, "width", 0)), int(getattr(e.info, "height", 0))
        if iw and ih and (iw, ih) != (depth.shape[1], depth.shape[0]):
            raise CloudFormatError(f"frame {j}: CameraInfo is {iw}x{ih} but the depth image is "
                                   f"{depth.shape[1]}x{depth.shape[0]}")
        return DepthFrame(index=j, stamp=e.stamp * 1e-9, depth_m=depth, K=K, pose=pose)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "BagSequence":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
