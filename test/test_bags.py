"""Bags without ROS: `ukpgan record` writes 7-Scenes frames to bags that read back exactly, and
`ukpgan bag` runs the pipeline over MCAP, sqlite3 and ROS 1 bags, writing stamped results next
to the input topics. Bags are built with rosbags (no ROS install needed)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, need, ros_domain
from ukpgan_ros.bags.messages import MessageBuilder
from ukpgan_ros.bags.record import record_sequence
from ukpgan_ros.bags.writer import BagWriter
from ukpgan_ros.cli import main
from ukpgan_ros.datasets import DepthFrame, SevenScenesSequence, open_sequence
from ukpgan_ros.datasets.bag import BagSequence, choose_topics, open_bag
from ukpgan_ros.transforms import pose_to_matrix
from ukpgan_ros.pointcloud2 import camera_info_to_K, pointcloud2_fields, pointcloud2_to_xyz

KITCHEN = DATA / "7scenes-redkitchen"
FRAMES, STRIDE = 16, 5  # 7-Scenes frames 0, 5, 10, 15: 1.5-2.5 cm and ~1 deg apart


@pytest.fixture(scope="module")
def kitchen() -> SevenScenesSequence:
    return SevenScenesSequence(need(KITCHEN))


@pytest.fixture(scope="module")
def depth_bag(kitchen, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bags") / "k.mcap"
    assert main(["record", str(KITCHEN), "--out", str(out), "--frames", str(FRAMES), "--stride", str(STRIDE)]) == 0
    return out


@pytest.fixture(scope="module")
def processed(depth_bag, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "k_out.mcap"
    rc = main(["bag", str(depth_bag), "--out", str(out), "--quiet", "--device", "cpu"])
    assert rc == 0
    return out


def _messages(path: Path) -> dict[str, list[tuple[int, object]]]:
    """Topic -> [(log time, message)] of a bag, read with the package's reader."""
    out: dict[str, list] = {}
    with open_bag(path) as r:
        for conn, t, raw in r.messages():
            out.setdefault(conn.topic, []).append((t, r.deserialize(raw, conn.msgtype)))
    return out


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


# ----------------------------------------------------------------------------- record


def test_record_writes_frames_that_read_back_exactly(kitchen, depth_bag):
    seq = open_sequence(str(depth_bag))
    assert isinstance(seq, BagSequence) and seq.input == "depth" and seq.has_depth and len(seq) == 4
    assert seq.topics.depth == "/depth/image_raw" and seq.topics.ground_truth == "/ground_truth/pose"
    np.testing.assert_array_equal(seq.K, kitchen.K)
    assert (seq.width, seq.height) == (640, 480) and seq.rate_hz == pytest.approx(30.0 / STRIDE)
    first = kitchen[0].pose
    for j, i in enumerate(range(0, FRAMES, STRIDE)):
        src, got = kitchen[i], seq[j]
        assert got.stamp == pytest.approx(src.stamp, abs=1e-9)
        np.testing.assert_array_equal(got.depth_m, src.depth_m)  # mm survive the 16UC1 round trip
        np.testing.assert_array_equal(seq.points(j), src.points())  # what the node would compute
        # 7-Scenes rotations are printed with 7 digits: the quaternion re-orthonormalises them
        np.testing.assert_allclose(got.pose, np.linalg.inv(first) @ src.pose, atol=1e-5)
        assert seq.header(j) == (round(src.stamp * 1e9), "camera_depth_optical_frame")
    msgs = _messages(depth_bag)
    assert sorted(msgs) == ["/depth/camera_info", "/depth/image_raw", "/ground_truth/pose"]
    assert all(m.header.frame_id == "odom" for _, m in msgs["/ground_truth/pose"])
    assert [t for t, _ in msgs["/depth/image_raw"]] == [_stamp(m) for _, m in msgs["/depth/image_raw"]]


def test_record_as_clouds_and_into_a_rosbag2_folder(kitchen, tmp_path):
    from rosbags.highlevel import AnyReader

    folder = tmp_path / "clouds"
    counts = record_sequence(kitchen, folder, frames=6, stride=5, output="cloud", progress=False)
    assert counts == {"/cloud_in": 2, "/ground_truth/pose": 2}
    assert (folder / "metadata.yaml").is_file() and (folder / "clouds.mcap").is_file()
    with AnyReader([folder]) as r:  # a plain rosbag2 folder, as ros2 bag writes it
        assert {c.topic for c in r.connections} == {"/cloud_in", "/ground_truth/pose"}
    seq = open_sequence(str(folder))
    assert seq.input == "cloud" and not seq.has_depth and np.isnan(seq.K).all()
    frame = seq[1]
    assert isinstance(frame, DepthFrame) and not frame.has_depth and frame.depth_m.shape == (0, 0)
    np.testing.assert_array_equal(frame.points(), kitchen[5].points())
    np.testing.assert_array_equal(frame.points(stride=3), kitchen[5].points()[::3])
    with pytest.raises(ValueError, match="holds point clouds, not depth images"):
        record_sequence(seq, tmp_path / "again.mcap", output="depth", progress=False)


def test_bag_writer_refuses_to_overwrite_and_cleans_up(tmp_path):
    out = tmp_path / "x.mcap"
    out.write_text("precious")
    with pytest.raises(ValueError, match="exists"):
        BagWriter(out)
    assert out.read_text() == "precious"
    with pytest.raises(RuntimeError):
        with BagWriter(tmp_path / "y.mcap") as w:
            w.write("/gt", w.builder.pose_stamped(np.eye(4), w.builder.header(1, "odom")), 1)
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mcap"]  # no half-written file or temp folder
    with BagWriter(out, overwrite=True) as w:
        b = w.builder
        w.write("/gt", b.pose_stamped(np.eye(4), b.header(5, "odom")), 5)
    assert list(_messages(out)) == ["/gt"]


# ----------------------------------------------------------------------------- bag


def test_bag_writes_keypoints_markers_transforms_and_poses_stamped_like_the_input(depth_bag, processed):
    inp, out = _messages(depth_bag), _messages(processed)
    for topic, items in inp.items():  # the input topics are copied unchanged
        assert [(t, _stamp(m)) for t, m in out[topic]] == [(t, _stamp(m)) for t, m in items]
    images = inp["/depth/image_raw"]
    kps = out["/ukpgan_detector/keypoints"]
    assert [t for t, _ in kps] == [t for t, _ in images]  # recorded at the input's log time
    assert [_stamp(m) for _, m in kps] == [_stamp(m) for _, m in images]  # stamped with its header stamp
    for _, m in kps:
        assert m.header.frame_id == "camera_depth_optical_frame"  # REP 105: keypoints in the input frame
        xyz, sal = pointcloud2_to_xyz(m), pointcloud2_fields(m, ["saliency"])["saliency"]
        assert len(xyz) == 250 and (np.diff(sal) <= 0).all()
    markers = out["/ukpgan_detector/markers"]
    assert len(markers) == 4 and all(len(m.markers[1].points) == 250 for _, m in markers)
    tfs, poses = out["/ukpgan_detector/transform"], out["/ukpgan_detector/pose"]
    # every frame placed (the first at the origin), the motion of every one after it registered
    assert len(tfs) == 3 and len(poses) == 4
    assert [_stamp(m) for _, m in tfs] == [_stamp(m) for _, m in images[1:]]
    assert all(m.header.frame_id == "odom" for _, m in poses)
    pairs = [(m.transforms[0].header.frame_id, m.transforms[0].child_frame_id) for _, m in out["/tf"]]
    # odom -> sensor per placed frame, and (keyframe mode closes loops) map -> odom beside it
    assert pairs.count(("odom", "camera_depth_optical_frame")) == 4 and pairs.count(("map", "odom")) == 4, pairs
    gt = [pose_to_matrix(m.pose) for _, m in inp["/ground_truth/pose"]]
    for k, (_, m) in enumerate(tfs, 1):
        tr = m.transform
        T = pose_to_matrix(type("P", (), {"position": tr.translation, "orientation": tr.rotation})())
        T_gt = np.linalg.inv(gt[k - 1]) @ gt[k]
        assert np.linalg.norm(T[:3, 3] - T_gt[:3, 3]) < 0.03
    final = pose_to_matrix(poses[-1][1].pose)
    assert np.linalg.norm(final[:3, 3] - gt[-1][:3, 3]) < 0.05


def test_bag_summary_scores_against_ground_truth(depth_bag, tmp_path, capsys):
    rc = main(["bag", str(depth_bag), "--out", str(tmp_path / "o.mcap"), "--detector", "iss", "--device", "cpu",
               "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "frames in the bag 4, selected 4, processed 4, malformed 0, registrations failed 0" in out
    assert "pairs with ground truth 3, registered 3 (100 %)" in out
    assert "registration error: median rotation" in out and "final drift" in out
    assert (tmp_path / "rep" / "frames.csv").is_file() and (tmp_path / "rep" / "trajectory.png").is_file()


def test_cloud_input_gives_the_same_keypoints_as_depth_input(kitchen, processed, tmp_path):
    """A PointCloud2 bag of the same frames is auto-detected and gives identical keypoints."""
    clouds = tmp_path / "c.mcap"
    record_sequence(kitchen, clouds, frames=FRAMES, stride=STRIDE, output="cloud", progress=False)
    assert main(["bag", str(clouds), "--out", str(tmp_path / "c_out.mcap"), "--quiet", "--device", "cpu",
                 "--registration", "none"]) == 0
    a = [pointcloud2_to_xyz(m) for _, m in _messages(processed)["/ukpgan_detector/keypoints"]]
    got = _messages(tmp_path / "c_out.mcap")
    b = [pointcloud2_to_xyz(m) for _, m in got["/ukpgan_detector/keypoints"]]
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert "/ukpgan_detector/transform" not in got  # registration none: keypoints only


def _write_rosbag2_sqlite(folder: Path, kitchen, indices) -> None:
    """The same depth frames in a sqlite3 rosbag2 folder, camera topics as a driver names them."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    b = MessageBuilder()
    with Writer(folder, version=8, storage_plugin=StoragePlugin.SQLITE3) as w:
        img = w.add_connection("/camera/depth/image_rect_raw", "sensor_msgs/msg/Image", typestore=b.ts)
        info = w.add_connection("/camera/depth/camera_info", "sensor_msgs/msg/CameraInfo", typestore=b.ts)
        color = w.add_connection("/camera/color/camera_info", "sensor_msgs/msg/CameraInfo", typestore=b.ts)
        rgb = w.add_connection("/camera/color/image_raw", "sensor_msgs/msg/Image", typestore=b.ts)
        for i in indices:
            f = kitchen[i]
            t = 1_700_000_000_000_000_000 + int(round(f.stamp * 1e9))
            h = b.header(t, "camera_depth_optical_frame")
            w.write(img, t, b.ts.serialize_cdr(b.depth_image(f.depth_m, h), "sensor_msgs/msg/Image"))
            # CameraInfo recorded 1 ms after its image, as drivers often do
            w.write(info, t + 1_000_000, b.ts.serialize_cdr(b.camera_info(f.K, 640, 480, h), "sensor_msgs/msg/CameraInfo"))
            w.write(color, t, b.ts.serialize_cdr(b.camera_info(np.diag([500.0, 500.0, 1.0]), 640, 480, h),
                                                   "sensor_msgs/msg/CameraInfo"))
            rgb_msg = b.default("sensor_msgs/msg/Image", header=h, height=2, width=2, encoding="rgb8", step=6,
                                data=np.zeros(12, np.uint8))
            w.write(rgb, t, b.ts.serialize_cdr(rgb_msg, "sensor_msgs/msg/Image"))


def test_sqlite3_bag_with_camera_driver_topics(kitchen, tmp_path):
    folder = tmp_path / "sq"
    _write_rosbag2_sqlite(folder, kitchen, [0, 5])
    seq = BagSequence(folder)  # the depth image is found by its encoding, its info beside it
    assert seq.topics.depth == "/camera/depth/image_rect_raw" and seq.topics.info == "/camera/depth/camera_info"
    assert seq.topics.ground_truth is None and seq[0].pose is None
    np.testing.assert_array_equal(seq.points(1), kitchen[5].points())
    assert seq.ready_time(0) == seq.log_time(0) + 1_000_000  # processed once its CameraInfo is in
    assert main(["bag", str(folder / "sq.db3"), "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu",
                 "--detector", "iss"]) == 0
    got = _messages(tmp_path / "o")
    assert (tmp_path / "o" / "metadata.yaml").is_file()
    assert len(got["/ukpgan_detector/keypoints"]) == 2 and len(got["/camera/color/image_raw"]) == 2
    assert len(got["/ukpgan_detector/transform"]) == 1


def test_ros1_bag_is_read_and_converted(kitchen, tmp_path):
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    T = ts.types
    path = tmp_path / "k.bag"
    with Writer(path) as w:
        img = w.add_connection("/camera/depth/image", "sensor_msgs/msg/Image", typestore=ts)
        info = w.add_connection("/camera/depth/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        for n, i in enumerate((0, 5)):
            f = kitchen[i]
            t = 1_000_000_000 + int(round(f.stamp * 1e9))
            h = T["std_msgs/msg/Header"](seq=n, stamp=T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9),
                                         frame_id="kinect")
            raw = np.rint(f.depth_m * 1000).astype("<u2")
            w.write(img, t, ts.serialize_ros1(T["sensor_msgs/msg/Image"](
                header=h, height=480, width=640, encoding="16UC1", is_bigendian=0, step=1280,
                data=raw.view(np.uint8).reshape(-1)), "sensor_msgs/msg/Image"))
            roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            w.write(info, t, ts.serialize_ros1(T["sensor_msgs/msg/CameraInfo"](
                header=h, height=480, width=640, distortion_model="plumb_bob", D=np.zeros(5), K=f.K.reshape(-1),
                R=np.eye(3).reshape(-1), P=np.hstack([f.K, np.zeros((3, 1))]).reshape(-1), binning_x=0, binning_y=0,
                roi=roi), "sensor_msgs/msg/CameraInfo"))
    seq = open_sequence(str(path))
    assert seq.input == "depth" and len(seq) == 2 and seq.frame_id == "kinect"
    np.testing.assert_array_equal(seq.points(1), kitchen[5].points())
    out = tmp_path / "k_out.mcap"
    assert main(["bag", str(path), "--out", str(out), "--quiet", "--device", "cpu", "--detector", "iss"]) == 0
    got = _messages(out)  # input topics now ROS 2 types (lower-case k, no seq)
    np.testing.assert_array_equal(camera_info_to_K(got["/camera/depth/camera_info"][0][1]), kitchen.K)
    assert not hasattr(got["/camera/depth/camera_info"][0][1].header, "seq")
    assert got["/ukpgan_detector/keypoints"][0][1].header.frame_id == "kinect"


def test_topic_choice_names_the_candidates(kitchen, tmp_path):
    folder = tmp_path / "two"
    from rosbags.rosbag2 import StoragePlugin, Writer

    b = MessageBuilder()
    with Writer(folder, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        for topic in ("/a/points", "/b/points"):
            c = w.add_connection(topic, "sensor_msgs/msg/PointCloud2", typestore=b.ts)
            w.write(c, 1, b.ts.serialize_cdr(b.pointcloud2(np.ones((3, 3)), b.header(1, "f")), "sensor_msgs/msg/PointCloud2"))
    with open_bag(folder) as r:
        with pytest.raises(ValueError, match=r"several PointCloud2 topics \(/a/points, /b/points\); choose one with --cloud-topic"):
            choose_topics(r)
        assert choose_topics(r, cloud_topic="/b/points").cloud == "/b/points"
        with pytest.raises(ValueError, match="no topic '/c'"):
            choose_topics(r, cloud_topic="/c")
        with pytest.raises(ValueError, match="no PointCloud2 and no depth Image topic"):
            choose_topics(r, input="depth")
        with pytest.raises(ValueError, match="/a/points is sensor_msgs/msg/PointCloud2, --depth-topic needs"):
            choose_topics(r, depth_topic="/a/points")
    assert len(BagSequence(folder, cloud_topic="/a/points")) == 1


def test_bad_bag_paths(tmp_path, capsys):
    (tmp_path / "junk.mcap").write_bytes(b"not an mcap file at all")
    with pytest.raises(ValueError, match="junk.mcap: not a readable bag"):
        open_bag(tmp_path / "junk.mcap")
    with pytest.raises(FileNotFoundError, match="bag not found"):
        open_bag(tmp_path / "absent.mcap")
    (tmp_path / "x.db3").write_bytes(b"")
    with pytest.raises(ValueError, match="needs its metadata.yaml"):
        open_bag(tmp_path / "x.db3")
    assert main(["bag", str(tmp_path / "junk.mcap"), "--out", str(tmp_path / "o.mcap")]) == 2
    assert "not a readable bag" in capsys.readouterr().err
    assert not (tmp_path / "o.mcap").exists()


def test_the_player_replays_a_bag(depth_bag, kitchen):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import PointCloud2

    from ukpgan_ros.ros.player_node import DepthPlayerNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain(4))
    try:
        player = DepthPlayerNode(context=ctx, parameter_overrides=[
            Parameter("source", value=str(depth_bag)), Parameter("rate", value=10.0), Parameter("max_frames", value=2)])
        probe = rclpy.create_node("probe", context=ctx)
        got = []
        probe.create_subscription(PointCloud2, "cloud_in", got.append, 10)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(player)
        ex.add_node(probe)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not player.finished or len(got) < 2):
            ex.spin_once(timeout_sec=0.05)
        ex.shutdown()
        assert len(got) == 2
        np.testing.assert_allclose(pointcloud2_to_xyz(got[1]), kitchen[5].points(), atol=1e-6)
    finally:
        rclpy.try_shutdown(context=ctx)


def test_bag_scores_like_the_demo_on_the_same_frames(tmp_path, capsys):
    """`ukpgan record` + `ukpgan bag` against `ukpgan demo` (the real node) on the same synthetic
    frames: same keypoints, same ground-truth motion, errors equal up to RANSAC's run-to-run noise."""
    pytest.importorskip("rclpy")
    import csv

    common = ["--detector", "fps", "--device", "cpu"]
    assert main(["demo", "--frames", "13", "--stride", "4", "--out", str(tmp_path / "demo"), *common]) == 0
    assert main(["record", "synthetic", "--frames", "13", "--stride", "4", "--out", str(tmp_path / "s.mcap")]) == 0
    assert main(["bag", str(tmp_path / "s.mcap"), "--out", str(tmp_path / "s_out.mcap"), "--report",
                 str(tmp_path / "bag"), *common]) == 0
    capsys.readouterr()
    demo = list(csv.DictReader(open(tmp_path / "demo" / "frames.csv")))
    bag = list(csv.DictReader(open(tmp_path / "bag" / "frames.csv")))
    assert [int(r["frame"]) for r in demo] == [0, 4, 8, 12] and len(bag) == 4  # bag frames are 0..3
    for d, b in zip(demo, bag):
        assert d["keypoints"] == b["keypoints"]
        if d.get("gt_rot_deg"):
            assert float(b["gt_rot_deg"]) == pytest.approx(float(d["gt_rot_deg"]), abs=1e-6)
            assert float(b["gt_trans_m"]) == pytest.approx(float(d["gt_trans_m"]), abs=1e-9)
            assert float(b["re_deg"]) == pytest.approx(float(d["re_deg"]), abs=0.05)
            assert float(b["te_m"]) == pytest.approx(float(d["te_m"]), abs=0.005)


def test_cloud_frames_stride_and_range():
    pts = np.array([[0, 0, 0.5], [1, 0, 2.0], [0, 1, 4.0], [1, 1, 8.0]], np.float32)
    f = DepthFrame.from_cloud(3, 0.1, pts)
    assert not f.has_depth and np.isnan(f.K).all() and (f.width, f.height) == (0, 0)
    np.testing.assert_array_equal(f.points(), pts)
    np.testing.assert_array_equal(f.points(stride=2), pts[::2])
    np.testing.assert_array_equal(f.points(min_depth=1.0, max_depth=5.0), pts[1:3])
    with pytest.raises(ValueError, match="cloud must be float32"):
        DepthFrame(index=0, stamp=0.0, depth_m=np.zeros((0, 0), np.float32), K=np.eye(3), cloud=np.zeros((2, 2), np.float32))


def test_the_player_refuses_depth_output_from_a_cloud_bag(kitchen, tmp_path):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from ukpgan_ros.ros.player_node import DepthPlayerNode

    record_sequence(kitchen, tmp_path / "c.mcap", frames=2, output="cloud", progress=False)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain(5))
    try:
        with pytest.raises(ValueError, match="holds point clouds, not depth images: play it with output:=cloud"):
            DepthPlayerNode(context=ctx, parameter_overrides=[Parameter("source", value=str(tmp_path / "c.mcap")),
                                                              Parameter("output", value="depth")])
    finally:
        rclpy.try_shutdown(context=ctx)


def test_record_a_tum_folder_keeps_its_stamps_and_gaps(tmp_path):
    from test_io import make_tum

    root = tmp_path / "rgbd_dataset_freiburg1_desk"
    stamps, _, _ = make_tum(root)
    assert main(["record", str(root), "--out", str(tmp_path / "t.mcap")]) == 0
    tum, seq = open_sequence(str(root)), BagSequence(tmp_path / "t.mcap")
    assert len(seq) == 4 and seq.rate_hz == pytest.approx(30.0, rel=1e-3)
    np.testing.assert_array_equal(seq.K, tum.K)
    for i in range(4):
        assert abs(seq.header(i)[0] - stamps[i] * 1e9) < 1e3  # epoch stamps survive (float64 s -> int ns)
        np.testing.assert_allclose(seq[i].depth_m, tum[i].depth_m, atol=5e-4)  # 1/5000 m rounded to mm
    assert seq.pose(3) is None  # the tracking gap stays a gap
    np.testing.assert_allclose(seq.pose(2), np.linalg.inv(tum[0].pose) @ tum[2].pose, atol=1e-6)
