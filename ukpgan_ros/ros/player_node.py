"""The ``depth_player`` node: replays a depth sequence (7-Scenes/3DMatch layout, TUM RGB-D, a bag, or
the built-in synthetic camera) as PointCloud2 and/or depth Image + CameraInfo, with ground truth.

Messages are stamped with the node clock at publication, so downstream latency figures are real.
Ground-truth poses go out as ``ground_truth/pose`` (``first_from_current`` in ``odom_frame``),
the same convention as the detector's ``~/pose``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from ukpgan_ros.ros.cloud_msgs import camera_info_msg, depth_to_image_msg, xyz_to_pointcloud2
from ukpgan_ros.ros.messages import matrix_to_pose_stamped

__all__ = ["DepthPlayerNode", "main"]


class DepthPlayerNode(Node):
    """Publishes frame ``start + k * stride`` at ``rate`` Hz (0: the sequence's own rate)."""

    def __init__(self, node_name: str = "depth_player", sequence: Any = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        p = self.declare_parameter
        p("source", "synthetic", ParameterDescriptor(description="'synthetic', 'synthetic_loop', 'synthetic_lidar' or "
                                                             "'synthetic_lidar_loop' (built in), a 7-Scenes/TUM, "
                                                             "KITTI or PCD/PLY scan folder, or a bag"))
        p("output", "cloud", ParameterDescriptor(description="cloud, depth or both"))
        p("rate", 0.0, ParameterDescriptor(description="frames per second; 0 uses the sequence's rate / stride"))
        p("stride", 1, ParameterDescriptor(description="publish every k-th frame"))
        p("start", 0, ParameterDescriptor(description="first frame index"))
        p("max_frames", 0, ParameterDescriptor(description="stop after this many frames (0: all)"))
        p("loop", False, ParameterDescriptor(description="start over at the end"))
        p("there_and_back", False, ParameterDescriptor(description="play the selected frames forward on the even "
                                                               "ones and back on the odd ones (a loop to close)"))
        p("frame_id", "", ParameterDescriptor(description="sensor frame of the output; empty: the sequence's own "
                                                   "(a bag's, 'velodyne' for KITTI) or camera_depth_optical_frame"))
        p("odom_frame", "odom", ParameterDescriptor(description="frame of ground_truth/pose"))
        p("pixel_stride", 1, ParameterDescriptor(description="cloud output: every k-th pixel row/column"))
        p("autostart", True, ParameterDescriptor(description="start publishing on a timer at once"))
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        self.output = g("output")
        if self.output not in ("cloud", "depth", "both"):
            raise ValueError(f"output must be cloud, depth or both, got {self.output!r}")
        self.stride, self.start = max(1, int(g("stride"))), max(0, int(g("start")))
        self.odom_frame = g("odom_frame")
        self.pixel_stride, self.loop = max(1, int(g("pixel_stride"))), bool(g("loop"))
        if sequence is None:
            from ukpgan_ros.datasets import open_sequence

            sequence = open_sequence(g("source"))
        self.frame_id = g("frame_id") or getattr(sequence, "frame_id", "") or "camera_depth_optical_frame"
        if self.output != "cloud" and not getattr(sequence, "has_depth", True):
            raise ValueError(f"{getattr(sequence, 'name', 'the source')} holds point clouds, not depth images: "
                             "play it with output:=cloud")
        self.sequence = sequence
        indices = list(range(self.start, len(sequence), self.stride))
        if g("max_frames") > 0:
            indices = indices[: int(g("max_frames"))]
        if not indices:
            raise ValueError(f"no frames to play: start {self.start} of {len(sequence)} frames")
        if g("there_and_back"):
            from ukpgan_ros.datasets import there_and_back

            indices = there_and_back(indices)
        self.indices = indices
        self._cursor = 0
        self._first_pose: np.ndarray | None = None
        # Depth 5: with default Fast DDS transports a depth-1 writer of 5 MB clouds loses ~2/3 of them.
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self._pub_cloud = self.create_publisher(PointCloud2, "cloud_in", qos) if self.output in ("cloud", "both") else None
        if self.output in ("depth", "both"):
            self._pub_depth = self.create_publisher(Image, "depth/image_raw", qos)
            self._pub_info = self.create_publisher(CameraInfo, "depth/camera_info", qos)
        self._pub_gt = self.create_publisher(PoseStamped, "ground_truth/pose", 10)
        rate = float(g("rate")) or float(getattr(sequence, "rate_hz", 30.0)) / self.stride
        self.finished = False
        self._timer = self.create_timer(1.0 / rate, self._tick) if g("autostart") else None
        self.get_logger().info(
            f"playing {getattr(sequence, 'name', 'sequence')}: {len(indices)} frames at {rate:.2f} Hz as {self.output}")

    def wait_for_subscribers(self, timeout: float) -> bool:
        """Wait until every stream publisher (cloud, depth, camera_info) has a matched subscriber,
        so a first frame published in lock step is not lost to discovery."""
        pubs = [p for p in (self._pub_cloud, getattr(self, "_pub_depth", None), getattr(self, "_pub_info", None))
                if p is not None]
        deadline = time.monotonic() + timeout
        while any(p.get_subscription_count() == 0 for p in pubs):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _tick(self) -> None:
        if self.finished:
            return
        if self._cursor >= len(self.indices):
            if not self.loop:
                self.finished = True
                self.get_logger().info("sequence finished")
                return
            self._cursor, self._first_pose = 0, None
        self.publish_frame(self.indices[self._cursor])
        self._cursor += 1

    def publish_frame(self, index: int) -> Header:
        """Publish frame ``index`` now; returns the header it was stamped with."""
        frame = self.sequence[index]
        header = Header(frame_id=self.frame_id, stamp=self.get_clock().now().to_msg())
        if self._pub_cloud is not None:
            self._pub_cloud.publish(xyz_to_pointcloud2(frame.points(stride=self.pixel_stride), header))
        if self.output in ("depth", "both"):
            h, w = frame.depth_m.shape
            self._pub_info.publish(camera_info_msg(frame.K, w, h, header))
            self._pub_depth.publish(depth_to_image_msg(frame.depth_m, header))
        if frame.pose is not None:
            if self._first_pose is None:
                self._first_pose = frame.pose
            gt = matrix_to_pose_stamped(np.linalg.inv(self._first_pose) @ frame.pose, header)
            gt.header.frame_id = self.odom_frame
            self._pub_gt.publish(gt)
        return header


def main(args: list[str] | None = None) -> int:
    from ukpgan_ros.ros.runtime import run_node

    return run_node(DepthPlayerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
