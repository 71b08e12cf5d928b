"""One output path: the rules of ukpgan_ros/outputs.py, its two back ends (rclpy, rosbags), and
the same frames through the real node and through `ukpgan bag` giving the same topics, types,
frame ids, stamps and transforms (odometry included)."""

from __future__ import annotations

import argparse
import importlib.util
import threading
import time

import numpy as np
import pytest

from conftest import ros_domain
from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.detectors.base import Keypoints
from ukpgan_ros.outputs import (OUTPUT_TOPICS, UNKNOWN_TWIST_VARIANCE, OutputSettings, frame_outputs,
                                resolve_topic)
from ukpgan_ros.pipeline import FrameResult
from ukpgan_ros.tracking import TrackState, TrackStep
from ukpgan_ros.transforms import pose_to_matrix

STAMP = 1_700_000_123_456_789_012
HAVE_TF2_MSGS = importlib.util.find_spec("tf2_msgs") is not None  # without it the node publishes no /tf


def _rigid(seed: int) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rng.normal(size=3) * 0.3).as_matrix()
    T[:3, 3] = rng.normal(size=3)
    return T


def _result(placed: bool = True, motion: bool = True, tracking: bool = True, map_pose: bool = False,
            map_from_odom: np.ndarray | None = None) -> FrameResult:
    rng = np.random.default_rng(0)
    kps = Keypoints(rng.normal(size=(5, 3)).astype(np.float32), np.linspace(1, 0, 5).astype(np.float32),
                    np.arange(5, dtype=np.int64))
    pose = _rigid(1)
    cov = np.diag([1e-4, 2e-4, 3e-4, 1e-5, 2e-5, 3e-5])
    cov[0, 1], cov[1, 0] = 2e-5, 0.0  # not symmetric: published symmetrised
    step = TrackStep(TrackState.TRACKING if placed else TrackState.LOST, pose if placed else None,
                     cov if placed else None, _rigid(2) if placed and motion else None, None)
    return FrameResult(kps, 100, 200, None, pose, {}, 0.05, step if tracking else None, is_map_pose=map_pose,
                       map_from_odom=map_from_odom)


def _by_key(outs) -> dict:
    assert len({o.key for o in outs}) == len(outs), "one message per topic and frame"
    return {o.key: o for o in outs}


# ----------------------------------------------------------------------------- rules


def test_a_frame_that_is_not_placed_publishes_only_keypoints_and_markers():
    s = OutputSettings()
    for res in (_result(placed=False), _result(tracking=False)):
        outs = frame_outputs(res, STAMP, "cam", s)
        assert [o.key for o in outs] == ["keypoints", "markers"]
        assert all(o.frame_id == "cam" and o.stamp_ns == STAMP for o in outs)
    assert frame_outputs(_result(placed=False, map_pose=True), STAMP, "cam", OutputSettings())[-1].key == "markers"


def test_odometry_frames_follow_rep_105():
    res = _result()
    outs = _by_key(frame_outputs(res, STAMP, "cam", OutputSettings(odom_frame="odom", marker_scale=0.07)))
    assert list(outs) == ["keypoints", "markers", "transform", "pose", "odometry", "tf"]
    assert outs["keypoints"].frame_id == outs["markers"].frame_id == "cam" and outs["markers"].marker_scale == 0.07
    tr = outs["transform"]  # the motion since the last placed frame, in the sensor frame
    assert (tr.frame_id, tr.child_frame_id) == ("cam", "cam")
    np.testing.assert_array_equal(tr.matrix, res.tracking.motion)
    for key in ("pose", "odometry", "tf"):
        assert outs[key].frame_id == "odom"
        np.testing.assert_array_equal(outs[key].matrix, res.pose)
    assert outs["odometry"].child_frame_id == outs["tf"].child_frame_id == "cam"
    cov = outs["odometry"].covariance
    np.testing.assert_array_equal(cov, cov.T)
    assert cov[0, 1] == pytest.approx(1e-5) and np.trace(cov) == pytest.approx(np.trace(res.tracking.covariance))
    np.testing.assert_array_equal(outs["odometry"].twist_covariance, np.eye(6) * UNKNOWN_TWIST_VARIANCE)
    assert {o.stamp_ns for o in outs.values()} == {STAMP}
    # the first frame of an odometry: placed at the origin, no motion yet
    assert "transform" not in _by_key(frame_outputs(_result(motion=False), STAMP, "cam", OutputSettings()))


def test_reference_mode_publishes_map_from_sensor_on_transform():
    res = _result(motion=False, map_pose=True)
    outs = _by_key(frame_outputs(res, STAMP, "cam", OutputSettings(odom_frame="map")))
    tr = outs["transform"]
    assert (tr.frame_id, tr.child_frame_id) == ("map", "cam")
    np.testing.assert_array_equal(tr.matrix, res.pose)
    assert outs["pose"].frame_id == outs["odometry"].frame_id == outs["tf"].frame_id == "map"


@pytest.mark.parametrize("sensor, settings, tf", [
    ("cam", OutputSettings(), True),
    ("cam", OutputSettings(publish_tf=False), False),
    ("", OutputSettings(), False),
    ("odom", OutputSettings(odom_frame="odom"), False),
])
def test_tf_only_when_asked_and_between_two_frames(sensor, settings, tf):
    keys = [o.key for o in frame_outputs(_result(), STAMP, sensor, settings)]
    assert ("tf" in keys) is tf and "odometry" in keys


def test_a_covariance_that_is_not_finite_is_refused():
    res = _result()
    res.tracking.covariance[2, 2] = np.nan
    with pytest.raises(ValueError, match="6x6 pose covariance"):
        frame_outputs(res, STAMP, "cam", OutputSettings())


def test_loop_closure_publishes_map_to_odom_and_leaves_odometry_alone():
    """REP 105: with loop closure the correction goes on /tf as map -> odom and the sensor in the
    map on ~/map_pose (its covariance moved with the correction); odom -> sensor is unchanged."""
    from ukpgan_ros.transforms import adjoint

    C = _rigid(5)
    res = _result(map_from_odom=C)
    outs = _by_key(frame_outputs(res, STAMP, "cam", OutputSettings(odom_frame="odom", map_frame="map")))
    assert list(outs) == ["keypoints", "markers", "transform", "pose", "odometry", "tf", "map_pose", "map_tf"]
    m = outs["map_tf"]
    assert (m.frame_id, m.child_frame_id) == ("map", "odom") and m.topic == "/tf"
    np.testing.assert_array_equal(m.matrix, C)
    mp = outs["map_pose"]
    assert mp.frame_id == "map" and mp.topic == "~/map_pose"
    np.testing.assert_allclose(mp.matrix, C @ res.pose, atol=1e-12)
    Ad = adjoint(C)
    cov = 0.5 * (res.tracking.covariance + res.tracking.covariance.T)
    np.testing.assert_allclose(mp.covariance, Ad @ cov @ Ad.T, atol=1e-15)
    np.testing.assert_array_equal(outs["tf"].matrix, res.pose)  # odometry untouched
    assert "map_tf" not in _by_key(frame_outputs(res, STAMP, "cam", OutputSettings(publish_tf=False)))
    assert "map_pose" not in _by_key(frame_outputs(_result(), STAMP, "cam", OutputSettings()))  # no loop closure
    assert [o.key for o in frame_outputs(_result(placed=False, map_from_odom=C), STAMP, "cam", OutputSettings())] \
        == ["keypoints", "markers"]
    with pytest.raises(Exception, match="map_frame"):
        PipelineConfig(map_frame="odom").validate()


def test_the_topic_table():
    keys = [o.key for o in OUTPUT_TOPICS]
    assert keys == ["keypoints", "markers", "transform", "pose", "odometry", "tf", "map_pose", "map_tf"]
    assert [o.key for o in OUTPUT_TOPICS if not o.private] == ["tf", "map_tf"]
    assert resolve_topic("~/odometry") == "/ukpgan_detector/odometry" and resolve_topic("/tf") == "/tf"
    assert OutputSettings.from_config(PipelineConfig(voxel_size=0.01)).marker_scale == 0.02  # at least 2 cm


def test_both_back_ends_render_the_same_messages():
    """Every output of a placed frame rendered as an rclpy and as a rosbags message: the same
    stamps, frame ids, poses, covariances and points."""
    pytest.importorskip("rclpy")
    from ukpgan_ros.bags.messages import MessageBuilder, render as render_bag
    from ukpgan_ros.pointcloud2 import pointcloud2_fields
    from ukpgan_ros.ros.render import render as render_ros

    b = MessageBuilder()
    outs = frame_outputs(_result(map_from_odom=_rigid(5)), STAMP, "cam", OutputSettings())
    assert [o.key for o in outs][-3:] == ["tf", "map_pose", "map_tf"]
    for out in outs if HAVE_TF2_MSGS else [o for o in outs if o.topic != "/tf"]:
        ros, bag = render_ros(out), render_bag(b, out)
        assert type(ros).__name__ == out.msgtype.rsplit("/", 1)[1] and bag.__msgtype__ == out.msgtype
        if out.key in ("tf", "map_tf"):
            ros, bag = ros.transforms[0], bag.transforms[0]
        if out.key == "markers":
            ros, bag = ros.markers[1], bag.markers[1]
            assert len(ros.points) == len(bag.points) == 5 and ros.scale.x == bag.scale.x
            assert [(c.r, c.g, c.b) for c in ros.colors] == [(c.r, c.g, c.b) for c in bag.colors]
        assert (ros.header.stamp.sec, ros.header.stamp.nanosec) == (bag.header.stamp.sec, bag.header.stamp.nanosec)
        assert ros.header.frame_id == bag.header.frame_id == out.frame_id
        if out.key == "keypoints":
            for name in ("x", "y", "z", "saliency"):
                np.testing.assert_array_equal(pointcloud2_fields(ros, [name])[name], pointcloud2_fields(bag, [name])[name])
        if out.key in ("transform", "tf", "map_tf"):
            assert ros.child_frame_id == bag.child_frame_id == out.child_frame_id
            for f in ("x", "y", "z"):
                assert getattr(ros.transform.translation, f) == getattr(bag.transform.translation, f)
            for f in ("x", "y", "z", "w"):
                assert getattr(ros.transform.rotation, f) == getattr(bag.transform.rotation, f)
        if out.key in ("pose", "odometry"):
            rp, bp = (ros.pose, bag.pose) if out.key == "pose" else (ros.pose.pose, bag.pose.pose)
            np.testing.assert_allclose(pose_to_matrix(rp), out.matrix, atol=1e-12)
            np.testing.assert_array_equal(pose_to_matrix(rp), pose_to_matrix(bp))
        if out.key == "map_pose":
            np.testing.assert_allclose(pose_to_matrix(ros.pose.pose), out.matrix, atol=1e-12)
            np.testing.assert_array_equal(pose_to_matrix(ros.pose.pose), pose_to_matrix(bag.pose.pose))
            np.testing.assert_array_equal(np.asarray(ros.pose.covariance), bag.pose.covariance)
        if out.key == "odometry":
            assert ros.child_frame_id == bag.child_frame_id == "cam"
            np.testing.assert_array_equal(np.asarray(ros.pose.covariance), bag.pose.covariance)
            np.testing.assert_array_equal(np.asarray(ros.twist.covariance), bag.twist.covariance)


# ----------------------------------------------------------------------------- node == bag

PARAMS = {"detector": "fps", "max_keypoints": 64, "voxel_size": 0.05, "ransac_max_iterations": 20000,
          "device": "cpu"}


def _bag_args(bag, out) -> argparse.Namespace:
    from ukpgan_ros.bags.process import add_bag_arguments

    p = argparse.ArgumentParser()
    add_bag_arguments(p)
    return p.parse_args([str(bag), "--out", str(out), "--quiet"])


def _stamp(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _summary(msg) -> tuple:
    """What both paths must agree on: header stamp and frame, child frame, and the 4x4 it carries."""
    name = type(msg).__name__.rsplit("__", 1)[-1]  # rosbags: sensor_msgs__msg__PointCloud2
    if name == "TFMessage":
        msg = msg.transforms[0]
        name = "TransformStamped"
    if name == "MarkerArray":
        return _stamp(msg.markers[0].header), msg.markers[0].header.frame_id, "", len(msg.markers[-1].points)
    if name == "PointCloud2":
        return _stamp(msg.header), msg.header.frame_id, "", msg.width
    if name == "TransformStamped":
        tr = msg.transform
        T = pose_to_matrix(type("P", (), {"position": tr.translation, "orientation": tr.rotation})())
        return _stamp(msg.header), msg.header.frame_id, msg.child_frame_id, T
    if name == "PoseStamped":
        return _stamp(msg.header), msg.header.frame_id, "", pose_to_matrix(msg.pose)
    if name == "PoseWithCovarianceStamped":
        return (_stamp(msg.header), msg.header.frame_id, "", pose_to_matrix(msg.pose.pose),
                np.asarray(msg.pose.covariance).reshape(6, 6))
    if name == "Odometry":
        return (_stamp(msg.header), msg.header.frame_id, msg.child_frame_id, pose_to_matrix(msg.pose.pose),
                np.asarray(msg.pose.covariance).reshape(6, 6), np.asarray(msg.twist.covariance).reshape(6, 6))
    raise AssertionError(name)


def _same(a: tuple, b: tuple, what: str) -> None:
    assert a[:3] == b[:3], what
    for x, y in zip(a[3:], b[3:]):
        if isinstance(x, np.ndarray) and x.shape == (4, 4):  # RANSAC runs in two processes: allow its noise
            from ukpgan_ros.transforms import rotation_error_deg, translation_error

            assert rotation_error_deg(x, y) < 0.2 and translation_error(x, y) < 0.005, what
        elif isinstance(x, np.ndarray) and x.shape == (6, 6):
            np.testing.assert_allclose(x, y, rtol=0.3, atol=1e-9, err_msg=what)
        else:
            assert x == y, what


def _run_node(seq) -> tuple[dict[str, list], dict[str, str]]:
    """Feed the bag's input frames (its clouds with their headers) to a real node, one at a time,
    and record every output topic; also the topic types the node advertises."""
    rclpy = pytest.importorskip("rclpy")
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import PointCloud2

    from ukpgan_ros.ros.cloud_msgs import xyz_to_pointcloud2
    from ukpgan_ros.ros.detector_node import UkpganDetectorNode
    from ukpgan_ros.ros.render import message_class

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain(6))
    node = UkpganDetectorNode("ukpgan_detector", context=ctx,
                              parameter_overrides=[Parameter(k, value=v) for k, v in PARAMS.items()])
    probe = rclpy.create_node("probe", context=ctx)
    got: dict[str, list] = {}
    for o in (o for o in OUTPUT_TOPICS if HAVE_TF2_MSGS or o.topic != "/tf"):
        topic = resolve_topic(o.topic)
        got[topic] = []
        probe.create_subscription(message_class(o.msgtype), topic, got[topic].append, 100)
    ex = MultiThreadedExecutor(num_threads=3, context=ctx)
    ex.add_node(node)
    ex.add_node(probe)
    thread = threading.Thread(target=ex.spin, daemon=True)
    thread.start()
    try:
        change = probe.create_client(ChangeState, "/ukpgan_detector/change_state")
        assert change.wait_for_service(timeout_sec=10)
        for tid in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            fut = change.call_async(ChangeState.Request(transition=Transition(id=tid)))
            deadline = time.monotonic() + 60
            while not fut.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert fut.result().success
        pub = probe.create_publisher(PointCloud2, "/cloud_in", 10)
        time.sleep(0.5)
        for i in range(len(seq)):
            stamp, frame_id = seq.header(i)
            msg = xyz_to_pointcloud2(seq.points(i), frame_id=frame_id, stamp=stamp * 1e-9)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)  # exact
            pub.publish(msg)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and node.diagnostics_snapshot()["processed"] < i + 1:
                time.sleep(0.02)
        time.sleep(1.0)  # the last frame's messages in flight
        types = {t: ts[0] for t, ts in probe.get_publisher_names_and_types_by_node("ukpgan_detector", "/")
                 if t in got}
        return got, types
    finally:
        ex.shutdown()
        thread.join(timeout=10)
        node.destroy_node()
        probe.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_the_node_and_ukpgan_bag_publish_the_same(tmp_path):
    """Three synthetic frames recorded as a bag, then processed by the real node (clouds
    published with the bag's headers) and by `ukpgan bag`: the same topics with the same types,
    and per frame the same stamps, frame ids, transforms, poses and odometry."""
    pytest.importorskip("rclpy")
    from ukpgan_ros.bags.process import process_bag
    from ukpgan_ros.bags.record import record_sequence
    from ukpgan_ros.datasets.bag import BagSequence, open_bag
    from ukpgan_ros.datasets.synthetic import SyntheticSequence

    bag, out = tmp_path / "in.mcap", tmp_path / "out.mcap"
    seq = SyntheticSequence(num_frames=12, width=320, height=240, fx=262.5, seed=3)
    record_sequence(seq, bag, frames=7, stride=3, output="cloud", progress=False)
    r = process_bag(_bag_args(bag, out), PipelineConfig(**PARAMS))
    assert r["failed"] == 0 and len(r["rows"]) == 3
    outputs = {resolve_topic(o.topic) for o in OUTPUT_TOPICS}
    from_bag: dict[str, list] = {}
    with open_bag(out) as reader:
        bag_types = {c.topic: c.msgtype for c in reader.connections if c.topic in outputs}
        for conn, _, raw in reader.messages():
            if conn.topic in outputs:
                from_bag.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    with BagSequence(bag) as frames:
        from_node, node_types = _run_node(frames)
        stamps = [frames.header(i)[0] for i in range(len(frames))]

    assert set(bag_types) == outputs  # odometry and /tf included
    if not HAVE_TF2_MSGS:  # the node then broadcasts no TF (it says so): compare the rest
        outputs.discard("/tf")
        bag_types.pop("/tf")
        from_bag.pop("/tf")
    assert node_types == bag_types
    assert {t for t, msgs in from_node.items() if msgs} == set(from_bag)
    for topic, msgs in from_bag.items():
        assert len(from_node[topic]) == len(msgs), topic
        for k, (a, b) in enumerate(zip(from_node[topic], msgs)):
            _same(_summary(a), _summary(b), f"{topic} message {k}")
    # every frame placed: keypoints/pose/odometry/tf for all three, a transform from the second on
    assert [_stamp(m.header) for m in from_bag["/ukpgan_detector/odometry"]] == stamps
    assert [_stamp(m.header) for m in from_bag["/ukpgan_detector/transform"]] == stamps[1:]
