"""Input adapters: one class per input kind (``StreamConfig.input``), behind one interface.

An adapter owns its subscriptions and their QoS matching (``qos_reliability: auto`` follows the
publishers; a publisher whose QoS turns out incompatible makes it subscribe again, best effort,
from the node's timer), any pairing of messages into frames, and the parsing of a frame into
points with its header (over the ROS-free parsers of :mod:`ukpgan_ros.pointcloud2`). It counts
what it receives and hands frames to the worker's mailbox (:class:`ukpgan_ros.ros.worker.FrameWorker`).

A new input kind is one adapter class here and its name in :data:`INPUTS` (and the choice in
``StreamConfig.input``); the node does not change.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

try:  # Iron and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from ukpgan_ros.camera_sync import CameraSync, Paired
from ukpgan_ros.config import StreamConfig
from ukpgan_ros.pointcloud2 import depth_msgs_to_points, pointcloud2_point_times, pointcloud2_to_xyz
from ukpgan_ros.transforms import stamp_ns

__all__ = ["InputAdapter", "CloudInput", "DepthInput", "INPUTS", "make_input"]


def choose_reliability(node, topic: str, wanted: str) -> ReliabilityPolicy:
    """auto: best effort if any publisher on the topic is best effort (a reliable reader would
    silently receive nothing from it), reliable otherwise."""
    if wanted == "reliable":
        return ReliabilityPolicy.RELIABLE
    if wanted == "best_effort":
        return ReliabilityPolicy.BEST_EFFORT
    infos = node.get_publishers_info_by_topic(node.resolve_topic_name(topic))
    if any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos):
        return ReliabilityPolicy.BEST_EFFORT
    return ReliabilityPolicy.RELIABLE


class InputAdapter:
    """One input kind. Subclasses set :attr:`topic` and implement :meth:`_subscribe` and
    :meth:`points`; those that hold frames back (pairing) also :meth:`held`, :meth:`clear`,
    :meth:`next_deadline` and :meth:`poll`."""

    topic: ClassVar[str]  # the frames' topic: its publishers decide the reliability under auto

    def __init__(self, node, stream: StreamConfig, worker) -> None:
        self.node, self.stream, self.worker = node, stream, worker
        self.reliability: ReliabilityPolicy | None = None
        self._subs: list[Any] = []
        self._incompatible = False

    # ------------------------------------------------------------------ the interface
    def _subscribe(self, qos: QoSProfile, events: SubscriptionEventCallbacks) -> list[Any]:
        """Create this kind's subscriptions (frames' topic with ``qos`` and ``events``)."""
        raise NotImplementedError

    def points(self, payload: Any) -> tuple[np.ndarray, Any]:
        """A frame as (N, 3) float32 points and its std_msgs Header (worker thread); raises
        ValueError (CloudFormatError) on malformed input."""
        raise NotImplementedError

    def times(self, payload: Any) -> np.ndarray | None:
        """Per-point time [s after the header stamp] aligned with :meth:`points`, or None when
        the input kind has none (a depth image is taken at one instant)."""
        return None

    def held(self) -> int:
        """Frames received and held back, not yet in the mailbox (caller holds the worker's lock)."""
        return 0

    def clear(self) -> int:
        """Forget held frames (deactivation); returns how many (caller holds the worker's lock)."""
        return 0

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has work (monotonic seconds), or None."""
        return None

    def poll(self, now: float) -> None:
        """Hand on held frames that are due (caller holds the worker's lock)."""

    def diagnostics(self) -> dict[str, Any]:
        """Extra values for /diagnostics."""
        return {}

    # ------------------------------------------------------------------ shared
    def subscribe(self) -> None:
        self.reliability = choose_reliability(self.node, self.topic, self.stream.qos_reliability)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.stream.qos_depth, reliability=self.reliability)
        self._subs = self._subscribe(qos, SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos))
        self.node.get_logger().info(
            f"subscribed to {self.node.resolve_topic_name(self.topic)} "
            f"({self.reliability.name.lower()}, depth {self.stream.qos_depth})")

    def unsubscribe(self) -> int:
        """Destroy the subscriptions and discard held frames (counted as dropped); returns how many."""
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs = []
        with self.worker.cond:
            n = self.clear()
            self.worker.stats.dropped += n
        return n

    def maintain(self) -> None:
        """From the node's timer: subscribe again after an incompatible publisher appeared."""
        if self._incompatible:
            self._incompatible = False
            self.node.get_logger().warning("a best-effort publisher appeared: re-subscribing best effort")
            for sub in self._subs:
                self.node.destroy_subscription(sub)
            self.stream = StreamConfig(**{**self.stream.to_dict(), "qos_reliability": "best_effort"})
            self.subscribe()

    def _on_incompatible_qos(self, event) -> None:
        if self.stream.qos_reliability == "auto":
            self._incompatible = True  # re-subscribed from the timer, not inside this callback
        else:
            self.node.get_logger().warning(
                f"a publisher's QoS is incompatible with this subscription ({event.last_policy_kind}); "
                "set qos_reliability:=best_effort or auto")

    def _receive(self, payload: Any) -> None:
        """Count a frame and park it in the worker's mailbox."""
        with self.worker.cond:
            self.worker.stats.received += 1
            self.worker.post(self, payload, time.monotonic())


class CloudInput(InputAdapter):
    """sensor_msgs/PointCloud2 on ``cloud_in`` (float x, y, z fields; non-finite points skipped)."""

    topic = "cloud_in"

    def _subscribe(self, qos, events):
        return [self.node.create_subscription(PointCloud2, self.topic, self._receive, qos, event_callbacks=events)]

    def points(self, msg):
        return pointcloud2_to_xyz(msg), msg.header

    def times(self, msg):
        return pointcloud2_point_times(msg)  # None without a t / time / timestamp field


class DepthInput(InputAdapter):
    """A depth Image on ``depth/image_raw`` paired with the CameraInfo of its stamp on
    ``depth/camera_info`` (:class:`ukpgan_ros.camera_sync.CameraSync`), back-projected with
    ``depth_stride`` and ``depth_scale``. CameraInfo QoS follows its own publishers: best effort
    as ``qos_reliability`` says for the images, and transient local when every publisher is (a
    latched CameraInfo, published once before this node subscribed, then still arrives)."""

    topic = "depth/image_raw"
    info_topic = "depth/camera_info"

    def __init__(self, node, stream: StreamConfig, worker) -> None:
        super().__init__(node, stream, worker)
        self.sync = CameraSync(stream.depth_info_tolerance, stream.depth_info_timeout)
        self._arrival: dict[int, float] = {}  # id(image) -> arrival time, while it waits for its CameraInfo
        self._info_sub = None
        self._incompatible_info = False

    def _subscribe(self, qos, events):
        return [self.node.create_subscription(Image, self.topic, self._on_depth, qos, event_callbacks=events),
                self._subscribe_info()]

    def _subscribe_info(self):
        infos = self.node.get_publishers_info_by_topic(self.node.resolve_topic_name(self.info_topic))
        latched = bool(infos) and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(5, self.stream.qos_depth),
                         reliability=choose_reliability(self.node, self.info_topic, self.stream.qos_reliability),
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_info_qos)
        self._info_sub = self.node.create_subscription(CameraInfo, self.info_topic, self._on_camera_info, qos,
                                                       event_callbacks=events)
        return self._info_sub

    def _on_incompatible_info_qos(self, event) -> None:
        self._incompatible_info = True  # re-subscribed from the timer, not inside this callback

    def maintain(self) -> None:
        if self._incompatible_info and self._info_sub in self._subs:
            self._incompatible_info = False
            self.node.get_logger().warning("a camera_info publisher with other QoS appeared: re-subscribing")
            self._subs.remove(self._info_sub)
            self.node.destroy_subscription(self._info_sub)
            self._subs.append(self._subscribe_info())
        super().maintain()  # the CameraSync (and the images it holds) stays

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self.worker.cond:
            self._deliver(self.sync.add_info(stamp_ns(msg.header.stamp), msg, time.monotonic()))

    def _on_depth(self, msg: Image) -> None:
        now = time.monotonic()
        with self.worker.cond:
            self.worker.stats.received += 1  # every image counts, also one whose CameraInfo never comes
            self._arrival[id(msg)] = now
            self._deliver(self.sync.add_image(stamp_ns(msg.header.stamp), msg, now))

    def _deliver(self, events: list) -> None:
        """Pairs go to the mailbox, images without CameraInfo are counted drops (caller holds the lock)."""
        stats = self.worker.stats
        for ev in events:
            received = self._arrival.pop(id(ev.image), time.monotonic())
            if isinstance(ev, Paired):
                stats.info_latest += ev.how == "latest"
                self.worker.post(self, (ev.image, ev.info), received)
            else:
                stats.unpaired += 1
                stats.last_message = f"dropped frame: {ev.reason}"
                self.node.get_logger().warning(stats.last_message, throttle_duration_sec=2.0)

    def held(self) -> int:
        return self.sync.waiting

    def clear(self) -> int:
        self._arrival.clear()
        return self.sync.clear()

    def next_deadline(self) -> float | None:
        return self.sync.next_deadline()

    def poll(self, now: float) -> None:
        self._deliver(self.sync.poll(now))

    def points(self, payload):
        image, info = payload
        pts = depth_msgs_to_points(image, info, stride=self.stream.depth_stride, depth_scale=self.stream.depth_scale)
        return pts, image.header

    def diagnostics(self) -> dict[str, Any]:
        return {"camera_info_pairing": ("latest CameraInfo (fixed intrinsics: stamps do not match the images)"
                                        if self.sync.fixed else "by stamp")}


INPUTS: dict[str, type[InputAdapter]] = {"cloud": CloudInput, "depth": DepthInput}


def make_input(node, stream: StreamConfig, worker) -> InputAdapter:
    """The adapter of ``stream.input``."""
    return INPUTS[stream.input](node, stream, worker)
