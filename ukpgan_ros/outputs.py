"""What a processed frame publishes, decided once for the node and for ``ukpgan bag``.

:func:`frame_outputs` turns a :class:`~ukpgan_ros.pipeline.FrameResult`, the input header's
stamp and sensor frame, and a few :class:`OutputSettings` into a list of :class:`Output`: what
goes on which topic, with which frame ids and stamp. Two thin back ends render that list: rclpy
messages (:mod:`ukpgan_ros.ros.render`, the node) and rosbags messages
(:mod:`ukpgan_ros.bags.messages`, the bag writer). Nothing here imports ROS.

The rules (REP 105), written once:

- every processed frame publishes ``~/keypoints`` (x, y, z, saliency) and ``~/markers``, in the
  sensor frame;
- a frame that was not placed (registration and relocalisation failed, mode ``none``) publishes
  nothing else;
- a placed frame publishes ``~/transform``: the motion since the last placed frame
  (``T_prev_from_curr``, header and child the sensor frame) in the odometry modes, or
  ``map_from_sensor`` (header ``odom_frame``) when the pose is a map pose (reference mode); the
  very first frame of an odometry has no motion and publishes none;
- ``~/pose`` (PoseStamped) and ``~/odometry`` (Odometry, child the sensor frame) in
  ``odom_frame``; the pose covariance symmetrised, the twist not estimated (zero, variance
  :data:`UNKNOWN_TWIST_VARIANCE` on the diagonal);
- ``/tf`` (``odom_frame -> sensor frame``) only when ``publish_tf`` is set and the sensor frame is
  neither empty nor ``odom_frame`` itself;
- with loop closure (the result carries ``map_from_odom``), a placed frame also publishes the
  correction ``map_frame -> odom_frame`` on ``/tf`` (when ``publish_tf``) and ``~/map_pose``
  (PoseWithCovarianceStamped: the sensor in ``map_frame``, ``map_from_odom @ pose``, its
  covariance moved with the correction): odometry stays continuous, the map frame may jump.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ukpgan_ros.transforms import moved_covariance

if TYPE_CHECKING:
    from ukpgan_ros.config import PipelineConfig
    from ukpgan_ros.detectors.base import Keypoints
    from ukpgan_ros.pipeline import FrameResult

__all__ = [
    "OutputTopic", "OUTPUT_TOPICS", "TOPICS", "Output", "OutputSettings", "frame_outputs", "resolve_topic",
    "UNKNOWN_TWIST_VARIANCE", "NODE_NAMESPACE",
    "POINTCLOUD2", "MARKER_ARRAY", "TRANSFORM_STAMPED", "POSE_STAMPED", "POSE_WITH_COVARIANCE_STAMPED", "ODOMETRY",
    "TF_MESSAGE",
]

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
TRANSFORM_STAMPED = "geometry_msgs/msg/TransformStamped"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
POSE_WITH_COVARIANCE_STAMPED = "geometry_msgs/msg/PoseWithCovarianceStamped"
ODOMETRY = "nav_msgs/msg/Odometry"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"

NODE_NAMESPACE = "/ukpgan_detector"  # the node's default name: where ``~/`` topics land, also in bags
UNKNOWN_TWIST_VARIANCE = 1e6  # the odometry's twist is not estimated: consumers should not fuse it


@dataclass(frozen=True)
class OutputTopic:
    """One output topic: its key, name (``~/`` is the node's private namespace), message type and
    publisher queue depth."""

    key: str
    topic: str
    msgtype: str
    depth: int

    @property
    def private(self) -> bool:
        """A topic of the node (``~/...``), not a shared one such as ``/tf``."""
        return self.topic.startswith("~/")


OUTPUT_TOPICS: tuple[OutputTopic, ...] = (
    OutputTopic("keypoints", "~/keypoints", POINTCLOUD2, 5),
    OutputTopic("markers", "~/markers", MARKER_ARRAY, 5),
    OutputTopic("transform", "~/transform", TRANSFORM_STAMPED, 10),
    OutputTopic("pose", "~/pose", POSE_STAMPED, 10),
    OutputTopic("odometry", "~/odometry", ODOMETRY, 10),
    OutputTopic("tf", "/tf", TF_MESSAGE, 100),  # as tf2_ros's TransformBroadcaster
    OutputTopic("map_pose", "~/map_pose", POSE_WITH_COVARIANCE_STAMPED, 10),
    OutputTopic("map_tf", "/tf", TF_MESSAGE, 100),  # map -> odom, on the same /tf
)
TOPICS: dict[str, OutputTopic] = {t.key: t for t in OUTPUT_TOPICS}


def resolve_topic(topic: str, namespace: str = NODE_NAMESPACE) -> str:
    """``~/name`` in the node's ``namespace`` (``/ukpgan_detector/name``); a global name unchanged."""
    return f"{namespace.rstrip('/')}/{topic[2:]}" if topic.startswith("~/") else topic


@dataclass(frozen=True)
class OutputSettings:
    """The few settings the outputs depend on (read from the configuration once, by the caller)."""

    odom_frame: str = "odom"
    publish_tf: bool = True
    marker_scale: float = 0.03  # sphere diameter of the keypoint markers [m]
    map_frame: str = "map"

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> OutputSettings:
        return cls(odom_frame=cfg.odom_frame, publish_tf=bool(cfg.publish_tf),
                   marker_scale=max(0.02, 0.6 * cfg.voxel_size), map_frame=cfg.map_frame)


@dataclass(frozen=True)
class Output:
    """One message to publish, in terms of the frame's results (rendered by a back end).

    ``matrix`` maps ``child_frame_id`` (or, for a pose, the sensor) into ``frame_id``;
    ``keypoints`` for ``keypoints`` and ``markers``; ``covariance``/``twist_covariance`` for
    ``odometry``; ``marker_scale`` for ``markers``.
    """

    key: str
    stamp_ns: int
    frame_id: str
    child_frame_id: str = ""
    matrix: np.ndarray | None = None
    keypoints: Keypoints | None = None
    covariance: np.ndarray | None = None
    twist_covariance: np.ndarray | None = None
    marker_scale: float = 0.0

    @property
    def topic(self) -> str:
        return TOPICS[self.key].topic

    @property
    def msgtype(self) -> str:
        return TOPICS[self.key].msgtype


def _symmetric_covariance(cov: np.ndarray | None) -> np.ndarray:
    c = np.asarray(cov, dtype=np.float64) if cov is not None else np.full((6, 6), np.nan)
    if c.shape != (6, 6) or not np.isfinite(c).all():
        raise ValueError(f"expected a finite 6x6 pose covariance, got shape {c.shape}")
    return 0.5 * (c + c.T)


def frame_outputs(result: FrameResult, stamp_ns: int, sensor_frame: str, settings: OutputSettings) -> list[Output]:
    """Everything one processed frame publishes, in publishing order (see the module's rules)."""
    stamp = int(stamp_ns)
    kps = result.keypoints
    outs = [Output("keypoints", stamp, sensor_frame, keypoints=kps),
            Output("markers", stamp, sensor_frame, keypoints=kps, marker_scale=float(settings.marker_scale))]
    step = result.tracking
    if step is None or not step.placed:
        return outs  # a frame without a pose publishes no transform, pose, odometry or TF
    odom = settings.odom_frame
    pose = np.asarray(result.pose, dtype=np.float64)
    T = result.frame_transform  # the map pose (parent odom_frame) or the motion (parent the sensor)
    if T is not None:
        parent = odom if result.is_map_pose else sensor_frame
        outs.append(Output("transform", stamp, parent, sensor_frame, matrix=np.asarray(T, np.float64)))
    cov = _symmetric_covariance(step.covariance)
    outs.append(Output("pose", stamp, odom, matrix=pose))
    outs.append(Output("odometry", stamp, odom, sensor_frame, matrix=pose, covariance=cov,
                       twist_covariance=np.eye(6) * UNKNOWN_TWIST_VARIANCE))
    if settings.publish_tf and sensor_frame and sensor_frame != odom:
        outs.append(Output("tf", stamp, odom, sensor_frame, matrix=pose))
    if result.map_from_odom is not None:  # REP 105: the localiser's correction, odometry untouched
        C = np.asarray(result.map_from_odom, np.float64)
        outs.append(Output("map_pose", stamp, settings.map_frame, sensor_frame, matrix=C @ pose,
                           covariance=_symmetric_covariance(moved_covariance(C, cov, "map pose covariance"))))
        if settings.publish_tf:
            outs.append(Output("map_tf", stamp, settings.map_frame, odom, matrix=C))
    return outs
