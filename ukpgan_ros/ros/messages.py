"""Keypoints and 4x4 transforms -> ROS messages (RViz markers, TransformStamped, PoseStamped,
Odometry) and back.

Imports ROS message packages but not rclpy, so it can build messages in tests and tools
without a running graph.
"""

from __future__ import annotations


import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, PoseStamped, PoseWithCovarianceStamped, TransformStamped
from nav_msgs.msg import Odometry
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ukpgan_ros.detectors.base import Keypoints
from ukpgan_ros.outputs import UNKNOWN_TWIST_VARIANCE
from ukpgan_ros.plots import saliency_colors
from ukpgan_ros.transforms import matrix_to_quaternion, pose_to_matrix, seconds_to_sec_nsec

__all__ = [
    "keypoint_markers",
    "saliency_colors",
    "matrix_to_transform_stamped",
    "matrix_to_pose_stamped",
    "matrix_to_pose_with_covariance_stamped",
    "transform_stamped_to_matrix",
    "pose_stamped_to_matrix",
    "odometry_msg",
    "pose_with_covariance_to_matrix",
    "UNKNOWN_TWIST_VARIANCE",
    "seconds_to_stamp",
]


def seconds_to_stamp(seconds: float) -> Time:
    """Float seconds as a builtin_interfaces Time; nanosec always in [0, 1e9), also for t < 0."""
    sec, nanosec = seconds_to_sec_nsec(seconds)
    return Time(sec=sec, nanosec=nanosec)


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


def matrix_to_transform_stamped(T: np.ndarray, header: Header, child_frame_id: str) -> TransformStamped:
    """A TransformStamped for ``T``, which maps ``child_frame_id`` coordinates into ``header.frame_id``."""
    t, q = matrix_to_quaternion(T)
    msg = TransformStamped(header=_copy_header(header), child_frame_id=child_frame_id)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = map(float, t)
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = map(float, q)
    return msg


def matrix_to_pose_stamped(T: np.ndarray, header: Header) -> PoseStamped:
    """A PoseStamped placing ``T``'s frame in ``header.frame_id``."""
    t, q = matrix_to_quaternion(T)
    msg = PoseStamped(header=_copy_header(header))
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = map(float, t)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = map(float, q)
    return msg


def matrix_to_pose_with_covariance_stamped(T: np.ndarray, covariance: np.ndarray, header: Header) -> PoseWithCovarianceStamped:
    """A PoseWithCovarianceStamped placing ``T``'s frame in ``header.frame_id`` with the 6x6
    ``covariance`` (x, y, z, rx, ry, rz), as given."""
    pose = matrix_to_pose_stamped(T, header)
    msg = PoseWithCovarianceStamped(header=pose.header)
    msg.pose.pose = pose.pose
    msg.pose.covariance = [float(v) for v in np.asarray(covariance, np.float64).reshape(36)]
    return msg


def transform_stamped_to_matrix(msg: TransformStamped) -> np.ndarray:
    """The 4x4 mapping ``msg.child_frame_id`` coordinates into ``msg.header.frame_id``."""
    return pose_to_matrix(msg.transform)


def pose_stamped_to_matrix(msg: PoseStamped) -> np.ndarray:
    """The 4x4 placing the pose's frame in ``msg.header.frame_id``."""
    return pose_to_matrix(msg.pose)


def odometry_msg(T: np.ndarray, covariance: np.ndarray, header: Header, frame_id: str, child_frame_id: str,
                 twist_covariance: np.ndarray | None = None) -> Odometry:
    """An Odometry placing ``child_frame_id`` at ``T`` in ``frame_id`` with the 6x6 pose
    ``covariance`` (x, y, z, rx, ry, rz in ``frame_id``) as given, and a zero twist with
    ``twist_covariance`` (default: unknown, UNKNOWN_TWIST_VARIANCE on the diagonal). Which
    covariance a frame publishes is decided in :mod:`ukpgan_ros.outputs`."""
    t, q = matrix_to_quaternion(T)
    cov = np.asarray(covariance, np.float64)
    if cov.shape != (6, 6) or not np.isfinite(cov).all():
        raise ValueError(f"expected a finite 6x6 covariance, got shape {cov.shape}")
    twist = np.eye(6) * UNKNOWN_TWIST_VARIANCE if twist_covariance is None else np.asarray(twist_covariance, np.float64)
    msg = Odometry(header=_copy_header(header), child_frame_id=child_frame_id)
    msg.header.frame_id = frame_id
    p = msg.pose.pose
    p.position.x, p.position.y, p.position.z = map(float, t)
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = map(float, q)
    msg.pose.covariance = [float(v) for v in cov.ravel()]
    msg.twist.covariance = [float(v) for v in twist.ravel()]
    return msg


def pose_with_covariance_to_matrix(msg: PoseWithCovarianceStamped) -> tuple[np.ndarray, np.ndarray]:
    """(4x4 pose in ``msg.header.frame_id``, 6x6 covariance) of a PoseWithCovarianceStamped
    (what RViz's "2D Pose Estimate" publishes on ``initialpose``); ValueError if it is not finite."""
    try:
        T = pose_to_matrix(msg.pose.pose)
    except ValueError:
        raise ValueError("the pose's orientation is not a usable quaternion") from None
    cov = np.asarray(msg.pose.covariance, np.float64).reshape(6, 6)
    if not (np.isfinite(T).all() and np.isfinite(cov).all()):
        raise ValueError("the pose or its covariance is not finite")
    return T, cov
