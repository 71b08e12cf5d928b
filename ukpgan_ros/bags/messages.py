"""Messages as rosbags dataclasses, built without ROS: what ``ukpgan record`` writes (depth
images, CameraInfo, clouds, ground-truth poses) and the rosbags back end of
:mod:`ukpgan_ros.outputs` (:func:`render`, what ``ukpgan bag`` writes; the rclpy back end the node
publishes with is :mod:`ukpgan_ros.ros.render`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ukpgan_ros.datasets.bag import CAMERA_INFO, IMAGE
from ukpgan_ros.outputs import MARKER_ARRAY, ODOMETRY, POINTCLOUD2, POSE_STAMPED, TF_MESSAGE, TRANSFORM_STAMPED, Output
from ukpgan_ros.transforms import matrix_to_quaternion, ns_to_sec_nsec, seconds_to_sec_nsec

__all__ = ["MessageBuilder", "render", "kilted_typestore"]


def kilted_typestore():
    """rosbags' ROS 2 Kilted type store."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


class MessageBuilder:
    """sensor_msgs / geometry_msgs / visualization_msgs messages as rosbags dataclasses.

    The same layouts as :mod:`ukpgan_ros.ros.cloud_msgs` and :mod:`ukpgan_ros.ros.messages` build
    for rclpy: unorganized little-endian float32 clouds, 16UC1 depth in 1/depth_scale m with
    invalid pixels 0, plumb_bob CameraInfo with P = [K | 0], canonical quaternions (w >= 0).
    """

    def __init__(self, typestore=None) -> None:
        self.ts = typestore or kilted_typestore()
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
        sec, nanosec = ns_to_sec_nsec(ns)
        return self.T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)

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

    def pose(self, T: np.ndarray) -> Any:
        t, q = matrix_to_quaternion(T)
        T_ = self.T
        return T_["geometry_msgs/msg/Pose"](position=T_["geometry_msgs/msg/Point"](x=t[0], y=t[1], z=t[2]),
                                            orientation=T_["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))

    def pose_stamped(self, T: np.ndarray, header: Any) -> Any:
        return self.T[POSE_STAMPED](header=header, pose=self.pose(T))

    def odometry(self, T: np.ndarray, covariance: np.ndarray, twist_covariance: np.ndarray, header: Any,
                 child_frame_id: str) -> Any:
        """An Odometry placing ``child_frame_id`` at ``T`` in ``header.frame_id``, covariances as given."""
        T_ = self.T
        pose = T_["geometry_msgs/msg/PoseWithCovariance"](
            pose=self.pose(T), covariance=np.asarray(covariance, np.float64).reshape(36).copy())
        twist = self.default("geometry_msgs/msg/TwistWithCovariance",
                             covariance=np.asarray(twist_covariance, np.float64).reshape(36).copy())
        return T_[ODOMETRY](header=header, child_frame_id=child_frame_id, pose=pose, twist=twist)

    def pose_with_covariance_stamped(self, T: np.ndarray, covariance: np.ndarray, header: Any) -> Any:
        """A PoseWithCovarianceStamped placing ``T``'s frame in ``header.frame_id``, covariance as given."""
        T_ = self.T
        pose = T_["geometry_msgs/msg/PoseWithCovariance"](
            pose=self.pose(T), covariance=np.asarray(covariance, np.float64).reshape(36).copy())
        return T_["geometry_msgs/msg/PoseWithCovarianceStamped"](header=header, pose=pose)

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
            life_sec, life_ns = seconds_to_sec_nsec(lifetime_s)
            sphere = self.default(
                "visualization_msgs/msg/Marker", header=header, ns=ns, id=0, type=M.SPHERE_LIST, action=M.ADD,
                lifetime=T_["builtin_interfaces/msg/Duration"](sec=life_sec, nanosec=life_ns),
                scale=T_["geometry_msgs/msg/Vector3"](x=scale, y=scale, z=scale),
                color=Color(r=1.0, g=1.0, b=1.0, a=1.0),
                points=[Point(x=x, y=y, z=z) for x, y, z in xyz.tolist()],
                colors=[Color(r=r, g=g, b=b, a=1.0) for r, g, b in saliency_colors(scores).tolist()])
            sphere.pose.orientation.w = 1.0
            markers.append(sphere)
        return self.T[MARKER_ARRAY](markers=markers)


def render(b: MessageBuilder, out: Output) -> Any:
    """The rosbags message of one output of :func:`ukpgan_ros.outputs.frame_outputs`."""
    header = b.header(out.stamp_ns, out.frame_id)
    kps, T = out.keypoints, out.matrix
    build = {
        "keypoints": lambda: b.pointcloud2(kps.xyz, header, {"saliency": kps.scores}),
        "markers": lambda: b.keypoint_markers(kps.xyz, kps.scores, header, out.marker_scale),
        "transform": lambda: b.transform_stamped(T, header, out.child_frame_id),
        "pose": lambda: b.pose_stamped(T, header),
        "odometry": lambda: b.odometry(T, out.covariance, out.twist_covariance, header, out.child_frame_id),
        "tf": lambda: b.tf_message([b.transform_stamped(T, header, out.child_frame_id)]),
        "map_tf": lambda: b.tf_message([b.transform_stamped(T, header, out.child_frame_id)]),
        "map_pose": lambda: b.pose_with_covariance_stamped(T, out.covariance, header),
    }
    if out.key not in build:
        raise ValueError(f"no message for output {out.key!r}")
    return build[out.key]()
