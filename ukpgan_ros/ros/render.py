"""rclpy back end of :mod:`ukpgan_ros.outputs`: each :class:`~ukpgan_ros.outputs.Output` as the
ROS message the node publishes (builders of :mod:`ukpgan_ros.ros.messages` and
:mod:`ukpgan_ros.ros.cloud_msgs`). The rosbags back end is :mod:`ukpgan_ros.bags.messages`."""

from __future__ import annotations

import importlib
from typing import Any

from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from ukpgan_ros.outputs import Output
from ukpgan_ros.ros.cloud_msgs import xyz_to_pointcloud2
from ukpgan_ros.ros.messages import (keypoint_markers, matrix_to_pose_stamped, matrix_to_pose_with_covariance_stamped,
                                     matrix_to_transform_stamped, odometry_msg)
from ukpgan_ros.transforms import ns_to_sec_nsec

__all__ = ["message_class", "render"]


def message_class(msgtype: str) -> type:
    """The rclpy class of a message type name (``pkg/msg/Name``); ImportError if its package is absent."""
    pkg, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def _header(stamp_ns: int, frame_id: str) -> Header:
    sec, nanosec = ns_to_sec_nsec(stamp_ns)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def render(out: Output) -> Any:
    """The rclpy message of one output."""
    header = _header(out.stamp_ns, out.frame_id)
    kind = out.key
    if kind == "keypoints":
        return xyz_to_pointcloud2(out.keypoints.xyz, header, {"saliency": out.keypoints.scores})
    if kind == "markers":
        return keypoint_markers(out.keypoints, header, scale=out.marker_scale)
    if kind == "pose":
        return matrix_to_pose_stamped(out.matrix, header)
    if kind == "map_pose":
        return matrix_to_pose_with_covariance_stamped(out.matrix, out.covariance, header)
    if kind == "odometry":
        return odometry_msg(out.matrix, out.covariance, header, out.frame_id, out.child_frame_id, out.twist_covariance)
    transform = matrix_to_transform_stamped(out.matrix, header, out.child_frame_id)
    if kind == "transform":
        return transform
    if kind in ("tf", "map_tf"):
        return message_class(out.msgtype)(transforms=[transform])
    raise ValueError(f"no message for output {kind!r}")
