"""The depth_player node publishes what the detector and users consume, with ground truth."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from conftest import DATA, need, ros_domain  # noqa: E402
from ukpgan_ros.pointcloud2 import camera_info_to_K, depth_image_to_metres, pointcloud2_to_xyz  # noqa: E402
from ukpgan_ros.ros.player_node import DepthPlayerNode  # noqa: E402


def _collect(params, n_clouds, timeout=30.0):
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain(3))
    try:
        player = DepthPlayerNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        probe = rclpy.create_node("probe", context=ctx)
        got = {"cloud": [], "depth": [], "info": [], "gt": []}
        probe.create_subscription(PointCloud2, "cloud_in", got["cloud"].append, 10)
        probe.create_subscription(Image, "depth/image_raw", got["depth"].append, 10)
        probe.create_subscription(CameraInfo, "depth/camera_info", got["info"].append, 10)
        probe.create_subscription(PoseStamped, "ground_truth/pose", got["gt"].append, 10)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(player)
        ex.add_node(probe)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not player.finished:
            ex.spin_once(timeout_sec=0.05)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        ex.shutdown()
        return player, got
    finally:
        rclpy.try_shutdown(context=ctx)


def test_plays_a_7scenes_folder_as_clouds_depth_and_ground_truth():
    folder = need(DATA / "7scenes-redkitchen")
    player, got = _collect({"source": str(folder), "output": "both", "stride": 10, "max_frames": 3, "rate": 5.0}, 3)
    assert player.indices == [0, 10, 20]
    assert len(got["cloud"]) == 3 and len(got["depth"]) == 3 and len(got["gt"]) == 3
    K = camera_info_to_K(got["info"][0])
    assert K[0, 0] == 585 and K[1, 2] == 240
    pts = pointcloud2_to_xyz(got["cloud"][0])
    from ukpgan_ros.datasets import SevenScenesSequence

    seq = SevenScenesSequence(folder)
    np.testing.assert_allclose(pts, seq[0].points(), atol=1e-6)
    np.testing.assert_allclose(depth_image_to_metres(got["depth"][1]), seq[10].depth_m, atol=1e-6)
    first = got["gt"][0].pose.position
    np.testing.assert_allclose([first.x, first.y, first.z], 0.0, atol=1e-9)
    T = np.linalg.inv(seq[0].pose) @ seq[20].pose
    p = got["gt"][2].pose.position
    np.testing.assert_allclose([p.x, p.y, p.z], T[:3, 3], atol=1e-6)
    assert got["cloud"][0].header.frame_id == "camera_depth_optical_frame"


def test_bad_source_is_a_clear_error():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain(3))
    try:
        with pytest.raises((ValueError, FileNotFoundError), match="nowhere"):
            DepthPlayerNode(context=ctx, parameter_overrides=[Parameter("source", value="/nowhere/at/all")])
        with pytest.raises(ValueError, match="output"):
            DepthPlayerNode(context=ctx, parameter_overrides=[Parameter("output", value="video")])
    finally:
        rclpy.try_shutdown(context=ctx)
