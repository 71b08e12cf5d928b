"""Keypoints and 4x4 transforms -> ROS messages (RViz markers, TransformStamped, PoseStamped,
Odometry) and back.

Imports ROS message packages but not rclpy, so it can build messages in tests and tools
without a running graph.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, PoseStamped, PoseWithCovarianceStamped, TransformStamped
from nav_msgs.msg import Odometry
from scipy.spatial.transform import Rotation
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ukpgan_ros.detectors.base import Keypoints
from ukpgan_ros.plots import saliency_colors

__all__ = [
    "keypoint_markers",
    "saliency_colors",
    "matrix_to_transform_stamped",
    "matrix_to_pose_stamped",
    "transform_stamped_to_matrix",
    "pose_stamped_to_matrix",
    "odometry_msg",
    "pose_with_covariance_to_matrix",
    "UNKNOWN_TWIST_VARIANCE",
    "stamp_to_seconds",
    "seconds_to_stamp",
]


def stamp_to_seconds(stamp: Any) -> float:
    """A builtin_interfaces Time/Duration (``sec``, ``nanosec``) as float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_stamp(seconds: float) -> Time:
    """Float seconds as a builtin_interfaces Time; nanosec always in [0, 1e9), also for t < 0."""
    if not math.isfinite(seconds):
        raise ValueError(f"cannot convert {seconds!r} seconds to a stamp")
    sec = math.floor(seconds)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=int(sec), nanosec=nanosec)


def _copy_header(header: Header) -> Header:
    return Header(frame_id=header.frame_id, stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec))


def keypoint_markers(
    keypoints: Keypoints,
    header: Header,
    ns: str = "ukpgan",
    scale: float = 0.03,
    lifetime_s: float = 0.5,
    score_range: tuple[float, float] | None = None,
) -> MarkerArray:
    """RViz markers for one frame's keypoints: a DELETEALL, then one SPHERE_LIST coloured by saliency.

    The DELETEALL first makes markers of a previous frame vanish even when this frame has fewer
    (or no) keypoints; the short ``lifetime_s`` clears them if the node stops publishing.
    An empty ``keypoints`` gives only the DELETEALL.
    """
    clear = Marker(header=_copy_header(header), ns=ns, id=0, action=Marker.DELETEALL)
    markers = MarkerArray(markers=[clear])
    xyz = np.asarray(keypoints.xyz, dtype=np.float64).reshape(-1, 3)
    if xyz.shape[0] == 0:
        return markers
    if not lifetime_s >= 0:
        raise ValueError(f"lifetime_s must be >= 0, got {lifetime_s!r}")
    life = seconds_to_stamp(lifetime_s)
    spheres = Marker(
        header=_copy_header(header),
        ns=ns,
        id=0,
        type=Marker.SPHERE_LIST,
        action=Marker.ADD,
        lifetime=Duration(sec=life.sec, nanosec=life.nanosec),
        frame_locked=False,
    )
    spheres.pose.orientation.w = 1.0
    spheres.scale.x = spheres.scale.y = spheres.scale.z = float(scale)
    spheres.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
    rgb = saliency_colors(keypoints.scores, score_range)
    spheres.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in xyz.tolist()]
    spheres.colors = [ColorRGBA(r=float(r), g=float(g), b=float(b), a=1.0) for r, g, b in rgb.tolist()]
    markers.markers.append(spheres)
    return markers


def _split_matrix(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation and unit quaternion (x, y, z, w) of a rigid 4x4 transform."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"expected a finite 4x4 transform, got shape {T.shape}")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"last row of a rigid transform must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    if abs(np.linalg.det(R) - 1.0) > 1e-3 or not np.allclose(R.T @ R, np.eye(3), atol=1e-3):
        raise ValueError("upper-left 3x3 is not a rotation matrix")
    q = Rotation.from_matrix(R).as_quat()  # scalar-last (x, y, z, w)
    q /= np.linalg.norm(q)
    if q[3] < 0:  # one canonical sign so consecutive transforms do not flip
        q = -q
    return T[:3, 3].copy(), q


def matrix_to_transform_stamped(T: np.ndarray, header: Header, child_frame_id: str) -> TransformStamped:
    """A TransformStamped for ``T``, which maps ``child_frame_id`` coordinates into ``header.frame_id``."""
    t, q = _split_matrix(T)
    msg = TransformStamped(header=_copy_header(header), child_frame_id=child_frame_id)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = map(float, t)
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = map(float, q)
    return msg


def matrix_to_pose_stamped(T: np.ndarray, header: Header) -> PoseStamped:
    """A PoseStamped placing ``T``'s frame in ``header.frame_id``."""
    t, q = _split_matrix(T)
    msg = PoseStamped(header=_copy_header(header))
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = map(float, t)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = map(float, q)
    return msg


def _matrix(t, q) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    T[:3, 3] = (t.x, t.y, t.z)
    return T


def transform_stamped_to_matrix(msg: TransformStamped) -> np.ndarray:
    """The 4x4 mapping ``msg.child_frame_id`` coordinates into ``msg.header.frame_id``."""
    return _matrix(msg.transform.translation, msg.transform.rotation)


def pose_stamped_to_matrix(msg: PoseStamped) -> np.ndarray:
    """The 4x4 placing the pose's frame in ``msg.header.frame_id``."""
    return _matrix(msg.pose.position, msg.pose.orientation)


UNKNOWN_TWIST_VARIANCE = 1e6  # the odometry's twist is not estimated: consumers should not fuse it


def odometry_msg(T: np.ndarray, covariance: np.ndarray, header: Header, frame_id: str, child_frame_id: str) -> Odometry:
    """An Odometry placing ``child_frame_id`` at ``T`` in ``frame_id`` with the 6x6 pose
    ``covariance`` (x, y, z, rx, ry, rz in ``frame_id``). The twist is not estimated: zero, with
    variance UNKNOWN_TWIST_VARIANCE on the diagonal."""
    t, q = _split_matrix(T)
    cov = np.asarray(covariance, np.float64)
    if cov.shape != (6, 6) or not np.isfinite(cov).all():
        raise ValueError(f"expected a finite 6x6 covariance, got shape {cov.shape}")
    msg = Odometry(header=_copy_header(header), child_frame_id=child_frame_id)
    msg.header.frame_id = frame_id
    p = msg.pose.pose
    p.position.x, p.position.y, p.position.z = map(float, t)
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = map(float, q)
    msg.pose.covariance = [float(v) for v in (0.5 * (cov + cov.T)).ravel()]
    msg.twist.covariance = [float(v) for v in (np.eye(6) * UNKNOWN_TWIST_VARIANCE).ravel()]
    return msg


def pose_with_covariance_to_matrix(msg: PoseWithCovarianceStamped) -> tuple[np.ndarray, np.ndarray]:
    """(4x4 pose in ``msg.header.frame_id``, 6x6 covariance) of a PoseWithCovarianceStamped
    (what RViz's "2D Pose Estimate" publishes on ``initialpose``); ValueError if it is not finite."""
    p = msg.pose.pose
    q = np.array([p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w], np.float64)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(q).all() or norm < 1e-6:
        raise ValueError("the pose's orientation is not a usable quaternion")
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q / norm).as_matrix()
    T[:3, 3] = (p.position.x, p.position.y, p.position.z)
    cov = np.asarray(msg.pose.covariance, np.float64).reshape(6, 6)
    if not (np.isfinite(T).all() and np.isfinite(cov).all()):
        raise ValueError("the pose or its covariance is not finite")
    return T, cov
