"""The depth_player plays LiDAR sources as they are (``source:=synthetic_lidar``, a KITTI folder):
clouds equal to the sequence's points, ground truth relative to the first frame, and a clear
error for a depth output."""

from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402

from conftest import DATA, need, ros_domain  # noqa: E402
from test_player import _collect  # noqa: E402
from ukpgan_ros.datasets import open_sequence  # noqa: E402
from ukpgan_ros.pointcloud2 import pointcloud2_to_xyz  # noqa: E402
from ukpgan_ros.ros.player_node import DepthPlayerNode  # noqa: E402


@pytest.mark.parametrize("source", ["synthetic_lidar", "kitti"])
def test_plays_lidar_sources_as_clouds_with_ground_truth(source):
    spec = str(need(DATA / "kitti-00-velodyne")) if source == "kitti" else source
    player, got = _collect({"source": spec, "output": "cloud", "stride": 2, "max_frames": 2, "rate": 5.0}, 2)
    seq = open_sequence(spec)
    assert player.indices == [0, 2] and len(got["cloud"]) == 2 and len(got["gt"]) == 2
    for msg, i in zip(got["cloud"], player.indices):
        np.testing.assert_array_equal(pointcloud2_to_xyz(msg), seq[i].points())
    T = np.linalg.inv(seq.pose(0)) @ seq.pose(2)
    p = got["gt"][1].pose.position
    np.testing.assert_allclose([p.x, p.y, p.z], T[:3, 3], atol=1e-6)


def test_a_lidar_source_cannot_play_depth_images():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain(3))
    try:
        with pytest.raises(ValueError, match="output:=cloud"):
            DepthPlayerNode(context=ctx, parameter_overrides=[Parameter("source", value="synthetic_lidar"),
                                                              Parameter("output", value="depth")])
    finally:
        rclpy.try_shutdown(context=ctx)
