"""Keypoint markers, transforms and stamps as ROS messages."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from scipy.spatial.transform import Rotation
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from ukpgan_ros.detectors.base import Keypoints
from ukpgan_ros.ros.messages import (
    keypoint_markers,
    matrix_to_pose_stamped,
    matrix_to_transform_stamped,
    saliency_colors,
    seconds_to_stamp,
)
from ukpgan_ros.transforms import stamp_seconds

HEADER = Header(frame_id="camera_depth_optical_frame", stamp=Time(sec=100, nanosec=5))


def random_transform(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    T[:3, 3] = rng.normal(size=3)
    return T


def test_keypoint_markers_counts_frames_and_colours():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    kp = Keypoints.from_indices(pts, np.arange(20), rng.random(20).astype(np.float32))
    arr = keypoint_markers(kp, HEADER, ns="kp", scale=0.05)
    assert [m.action for m in arr.markers] == [Marker.DELETEALL, Marker.ADD]
    clear, spheres = arr.markers
    assert spheres.type == Marker.SPHERE_LIST and len(spheres.points) == len(spheres.colors) == 20
    for m in arr.markers:
        assert m.header.frame_id == HEADER.frame_id and m.header.stamp == HEADER.stamp and m.ns == "kp"
    assert spheres.scale.x == spheres.scale.y == spheres.scale.z == 0.05
    assert 0 < stamp_seconds(spheres.lifetime) <= 1.0  # short, but not 0 (= forever)
    assert spheres.pose.orientation.w == 1.0
    np.testing.assert_allclose([[p.x, p.y, p.z] for p in spheres.points], kp.xyz, rtol=1e-6)
    # highest score (row 0 after sorting) is the top of the map, lowest the bottom
    rgb = np.array([[c.r, c.g, c.b] for c in spheres.colors])
    assert all(c.a == 1.0 for c in spheres.colors)
    np.testing.assert_allclose(rgb[0], [0.993248, 0.906157, 0.143936], atol=1e-6)
    np.testing.assert_allclose(rgb[-1], [0.267004, 0.004874, 0.329415], atol=1e-6)
    # a header passed in is not aliased by the markers
    assert spheres.header is not HEADER


def test_empty_keypoints_only_clear():
    kp = Keypoints(np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    arr = keypoint_markers(kp, HEADER)
    assert len(arr.markers) == 1 and arr.markers[0].action == Marker.DELETEALL


def test_saliency_colors_follow_viridis():
    matplotlib = pytest.importorskip("matplotlib")
    s = np.linspace(0.0, 1.0, 257)
    ref = matplotlib.colormaps["viridis"](s)[:, :3]
    np.testing.assert_allclose(saliency_colors(s), ref, atol=0.025)  # 17-point interpolation of the map
    fixed = saliency_colors(np.array([0.5]), score_range=(0.0, 1.0))
    np.testing.assert_allclose(fixed[0], [0.127568, 0.566949, 0.550556], atol=1e-6)
    assert saliency_colors(np.array([0.3, 0.3])).shape == (2, 3)  # constant scores do not divide by 0


@pytest.mark.parametrize("seed", range(5))
def test_transform_and_pose_map_back_to_matrix(seed):
    T = random_transform(seed)
    tf = matrix_to_transform_stamped(T, HEADER, "object")
    assert tf.header.frame_id == HEADER.frame_id and tf.child_frame_id == "object" and tf.header.stamp == HEADER.stamp
    r = tf.transform.rotation
    q = np.array([r.x, r.y, r.z, r.w])
    assert abs(np.linalg.norm(q) - 1.0) < 1e-12 and q[3] >= 0
    back = np.eye(4)
    back[:3, :3] = Rotation.from_quat(q).as_matrix()
    back[:3, 3] = [tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z]
    np.testing.assert_allclose(back, T, atol=1e-12)

    pose = matrix_to_pose_stamped(T, HEADER)
    o, p = pose.pose.orientation, pose.pose.position
    np.testing.assert_allclose([o.x, o.y, o.z, o.w], q)
    np.testing.assert_allclose([p.x, p.y, p.z], T[:3, 3])


@pytest.mark.parametrize(
    "T, match",
    [
        (np.eye(3), "4x4"),
        (np.diag([1.0, 1.0, 1.0, 2.0]), "last row"),
        (np.diag([2.0, 1.0, 1.0, 1.0]), "rotation"),
        (np.diag([-1.0, 1.0, 1.0, 1.0]), "rotation"),  # a reflection
        (np.full((4, 4), np.nan), "finite"),
    ],
)
def test_bad_matrices_raise(T, match):
    with pytest.raises(ValueError, match=match):
        matrix_to_transform_stamped(T, HEADER, "x")


@pytest.mark.parametrize(
    "seconds, sec, nanosec",
    [(0.0, 0, 0), (1.5, 1, 500_000_000), (1700000000.123456789, 1700000000, 123456716), (-0.25, -1, 750_000_000),
     (2.9999999999, 3, 0)],
)
def test_stamp_conversions(seconds, sec, nanosec):
    t = seconds_to_stamp(seconds)
    assert t.sec == sec and abs(t.nanosec - nanosec) <= 1000 and 0 <= t.nanosec < 1_000_000_000
    assert abs(stamp_seconds(t) - seconds) < 1e-6
    with pytest.raises(ValueError):
        seconds_to_stamp(float("nan"))


def test_fastdds_shm_profile_loads_cleanly_and_sizes_the_segment(tmp_path):
    """config/fastdds_shm.xml parses in the real Fast DDS 3 and gives a participant a >= 32 MiB SHM segment."""
    repo = Path(__file__).resolve().parents[1]
    code = (
        "import os, rclpy\n"
        "before = set(os.listdir('/dev/shm'))\n"
        "rclpy.init(); node = rclpy.create_node('profile_check')\n"
        "sizes = [os.stat('/dev/shm/' + f).st_size for f in set(os.listdir('/dev/shm')) - before\n"
        "         if f.startswith('fastdds_') and '_port' not in f and not f.endswith('_el')]\n"
        "print('SIZES', max(sizes, default=0))\n"
        "node.destroy_node(); rclpy.shutdown()\n"
    )
    env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=str(repo / "config" / "fastdds_shm.xml"),
               RMW_FASTRTPS_USE_QOS_FROM_XML="1", ROS_DOMAIN_ID=str(random.randrange(1, 100)),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Error" not in res.stderr, res.stderr  # Fast DDS logs XMLPARSER errors and carries on
    assert int(res.stdout.split("SIZES")[1]) >= 32 * 1024 * 1024
