"""LiDAR datasets as users keep them: KITTI Velodyne folders (own pose files, KITTI camera poses
with calib, times.txt), folders of PCD/PLY scans with KITTI or TUM poses; their errors; real
KITTI scans; and their use by open_sequence, record and the evaluation's frame pairs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from conftest import DATA, need
from ukpgan_ros.datasets import KittiSequence, ScanFolderSequence, has_depth, open_sequence
from ukpgan_ros.io import read_kitti_bin
from ukpgan_ros.io import write_cloud


def rigid(rotvec, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


def kitti_line(T: np.ndarray) -> str:
    return " ".join(f"{v:.9e}" for v in T[:3, :4].reshape(-1))


def write_bin(path, xyz, refl=None):
    scan = np.zeros((len(xyz), 4), "<f4")
    scan[:, :3] = xyz
    scan[:, 3] = np.linspace(0, 1, len(xyz)) if refl is None else refl
    path.parent.mkdir(parents=True, exist_ok=True)
    scan.tofile(path)
    return scan


def make_kitti(root, n=3, points=50, seed=0):
    rng = np.random.default_rng(seed)
    scans = []
    for k in range(n):
        xyz = rng.uniform(-30, 30, (points, 3)).astype(np.float32)
        xyz[::10] = 0.0  # no return: KITTI-style zeros
        scans.append(write_bin(root / "velodyne" / f"{k:06d}.bin", xyz))
    return scans


# ----------------------------------------------------------------------------- KITTI, hand-made


def test_kitti_folder_with_lidar_poses(tmp_path):
    scans = make_kitti(tmp_path)
    poses = [rigid([0, 0, 0.01 * k], [0.7 * k, 0.01 * k, 0]) for k in range(3)]
    (tmp_path / "poses_velodyne.txt").write_text("\n".join(kitti_line(T) for T in poses) + "\n")
    seq = open_sequence(str(tmp_path))
    assert isinstance(seq, KittiSequence) and len(seq) == 3 and not has_depth(seq)
    for k in range(3):
        f = seq[k]
        keep = (scans[k][:, :3] != 0).any(axis=1)
        np.testing.assert_array_equal(f.points(), scans[k][keep, :3])
        assert len(f.points()) == 45  # the 5 zero rows are no point
        np.testing.assert_allclose(f.pose, poses[k], atol=1e-8)
        np.testing.assert_allclose(seq.reflectance(k), scans[k][keep, 3])
    np.testing.assert_allclose(seq.stamps, [0.0, 0.1, 0.2])
    assert seq.rate_hz == 10.0 and seq.frame_id == "velodyne"
    np.testing.assert_allclose(seq.pose(1), poses[1], atol=1e-8)


def test_kitti_camera_poses_with_calib_become_lidar_poses(tmp_path):
    """KITTI's poses.txt holds camera-0 poses; with Tr (velo -> cam0) a LiDAR point maps to the
    first LiDAR frame as velo_k -> cam_k -> cam_0 -> velo_0, done here step by step."""
    seq_dir = tmp_path / "dataset" / "sequences" / "07"
    make_kitti(seq_dir, n=3)
    Tr = np.array([[0.0, -1.0, 0.0, -0.004], [0.0, 0.0, -1.0, -0.076], [1.0, 0.0, 0.0, -0.27], [0, 0, 0, 1]])
    Tr[:3, :3] = Rotation.from_rotvec([0.01, -0.02, 0.005]).as_matrix() @ Tr[:3, :3]
    cams = [rigid([0, 0.02 * k, 0], [0.01 * k, -0.005 * k, 0.8 * k]) for k in range(3)]
    calib = "P0: " + " ".join(["0"] * 12) + "\nTr: " + kitti_line(Tr) + "\n"
    (seq_dir / "calib.txt").write_text(calib)
    (seq_dir / "times.txt").write_text("0.000000e+00\n1.036000e-01\n2.072000e-01\n")
    (tmp_path / "dataset" / "poses").mkdir()
    (tmp_path / "dataset" / "poses" / "07.txt").write_text("\n".join(kitti_line(T) for T in cams))
    seq = open_sequence(str(seq_dir))
    assert seq.name == "07" and seq.pose_source.name == "07.txt"
    np.testing.assert_allclose(seq.stamps, [0.0, 0.1036, 0.2072])
    p_velo = np.array([5.0, -2.0, 1.0, 1.0])
    for k in range(3):
        p_cam_k = Tr @ p_velo
        p_cam_0 = cams[k] @ p_cam_k
        p_velo_0 = np.linalg.solve(Tr, p_cam_0)
        np.testing.assert_allclose(seq[k].pose @ p_velo, p_velo_0, atol=1e-7)
    # SemanticKITTI keeps poses.txt beside calib.txt: the same answer
    (seq_dir / "poses.txt").write_text("\n".join(kitti_line(T) for T in cams))
    np.testing.assert_allclose(KittiSequence(seq_dir).pose(2), seq.pose(2), atol=1e-12)
    (seq_dir / "calib.txt").unlink()
    with pytest.raises(ValueError, match="calib.txt"):
        KittiSequence(seq_dir)


def test_kitti_without_poses_and_bare_bin_folder(tmp_path):
    make_kitti(tmp_path / "run", n=2)
    seq = KittiSequence(tmp_path / "run" / "velodyne")  # the velodyne folder itself
    assert len(seq) == 2 and seq[0].pose is None and seq.name == "run"


@pytest.mark.parametrize("content,match", [
    ("1 0 0 0 0 1 0 0 0 0 1 0\n", r"holds 1 poses for 2 scans"),
    ("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 0 0 1 0 0 0 0 1\n", r"poses_velodyne.txt:2: expected 12 numbers"),
    ("1 0 0 0 0 1 0 0 0 0 1 0\n2 0 0 0 0 1 0 0 0 0 1 0\n", r"poses_velodyne.txt:2: .*not a rotation"),
    ("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 nan 0 1 0 0 0 0 1 0\n", r"poses_velodyne.txt:2: the pose holds NaN"),
    ("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 x 0 1 0 0 0 0 1 0\n", r"poses_velodyne.txt:2: expected numbers"),
])
def test_kitti_bad_pose_files_are_named_with_their_line(tmp_path, content, match):
    make_kitti(tmp_path, n=2)
    (tmp_path / "poses_velodyne.txt").write_text(content)
    with pytest.raises(ValueError, match=match):
        KittiSequence(tmp_path)


def test_kitti_bad_scans_and_times_are_named(tmp_path):
    make_kitti(tmp_path, n=2)
    (tmp_path / "times.txt").write_text("0.0\n")
    with pytest.raises(ValueError, match=r"times.txt: holds 1 times for 2 scans"):
        KittiSequence(tmp_path)
    (tmp_path / "times.txt").write_text("0.0\n-0.1\n")
    with pytest.raises(ValueError, match=r"times.txt:2: time -0.1 goes back"):
        KittiSequence(tmp_path)
    (tmp_path / "times.txt").unlink()
    bad = tmp_path / "velodyne" / "000001.bin"
    bad.write_bytes(bad.read_bytes()[:-3])
    seq = KittiSequence(tmp_path)
    seq[0]  # the good scan still reads
    with pytest.raises(ValueError, match=r"000001.bin: 797 bytes is not a whole number of 16-byte points"):
        seq[1]
    xyz = np.ones((4, 3), np.float32)
    xyz[2, 1] = np.inf
    write_bin(bad, xyz)
    with pytest.raises(ValueError, match=r"000001.bin: point 2 \(byte 32\) holds NaN or inf"):
        read_kitti_bin(bad)


# ----------------------------------------------------------------------------- KITTI, real


def test_real_kitti_scans_and_poses():
    root = need(DATA / "kitti-00-velodyne")
    seq = open_sequence(str(root))
    assert isinstance(seq, KittiSequence) and len(seq) == 6
    file_poses = np.loadtxt(root / "poses_velodyne.txt").reshape(-1, 3, 4)
    for k in range(6):
        raw = np.fromfile(root / "velodyne" / f"{k:06d}.bin", dtype="<f4").reshape(-1, 4)
        zero = (raw[:, :3] == 0).all(axis=1)
        f = seq[k]
        assert len(f.points()) == len(raw) - zero.sum() and len(raw) > 100_000
        np.testing.assert_array_equal(f.points(), raw[~zero, :3])
        np.testing.assert_array_equal(f.pose[:3], file_poses[k])
        assert f.stamp == pytest.approx(0.1 * k)
    # the poses register scan 5 onto scan 0 (3.6 m apart) within a few centimetres
    p0, p5 = seq[0].points(), seq[5].points()
    T = np.linalg.inv(seq.pose(0)) @ seq.pose(5)
    near = np.linalg.norm(p5, axis=1) < 30
    moved = p5[near] @ T[:3, :3].T.astype(np.float32) + T[:3, 3].astype(np.float32)
    tree = cKDTree(p0)
    assert np.median(tree.query(moved)[0]) < 0.08
    assert np.median(tree.query(p5[near])[0]) > 2 * np.median(tree.query(moved)[0])


# ----------------------------------------------------------------------------- PCD/PLY folders


def make_scans(folder, n=3, names=None, suffix=".pcd", seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    clouds = []
    for k in range(n):
        pts = rng.uniform(-20, 20, (40, 3)).astype(np.float32)
        pts[::8] = 0.0
        name = names[k] if names else f"scan_{k:03d}"
        write_cloud(folder / f"{name}{suffix if k % 2 == 0 else '.ply'}", pts)
        clouds.append(pts[(pts != 0).any(axis=1)])
    return clouds


def test_scan_folder_with_kitti_poses(tmp_path):
    clouds = make_scans(tmp_path)
    poses = [rigid([0.0, 0.0, 0.1 * k], [k, 0, 0]) for k in range(3)]
    (tmp_path / "poses.txt").write_text("\n".join(kitti_line(T) for T in poses))
    seq = open_sequence(str(tmp_path))
    assert isinstance(seq, ScanFolderSequence) and len(seq) == 3 and not has_depth(seq)
    for k in range(3):
        np.testing.assert_allclose(seq[k].points(), clouds[k], atol=1e-6)  # zeros dropped, PCD and PLY alike
        np.testing.assert_allclose(seq[k].pose, poses[k], atol=1e-8)
    np.testing.assert_allclose(seq.stamps, [0.0, 0.1, 0.2])
    (tmp_path / "poses.txt").write_text(kitti_line(poses[0]))
    with pytest.raises(ValueError, match=r"poses.txt: holds 1 poses for 3 scans"):
        ScanFolderSequence(tmp_path)


def test_scan_folder_with_tum_poses_in_order_and_by_stamp(tmp_path):
    make_scans(tmp_path / "a" / "scans")
    tum = ["# t x y z qx qy qz qw"] + [f"{100 + 0.1 * k:.3f} {k} 0 0 0 0 {np.sin(0.05 * k):.9f} {np.cos(0.05 * k):.9f}"
                                       for k in range(3)]
    (tmp_path / "a" / "poses.txt").write_text("\n".join(tum))
    seq = open_sequence(str(tmp_path / "a"))
    np.testing.assert_allclose(seq.stamps, [100.0, 100.1, 100.2])
    np.testing.assert_allclose(seq.pose(2), rigid([0, 0, 0.2], [2, 0, 0]), atol=1e-8)
    # scans named by their stamps take the nearest pose within max_dt; one without is None
    names = ["1700000000.000", "1700000000.100", "1700000007.000"]
    make_scans(tmp_path / "b", names=names)
    lines = [f"{1700000000 + 0.01 * k:.3f} {k} 0 0 0 0 0 1" for k in range(20)]
    (tmp_path / "b" / "groundtruth.txt").write_text("\n".join(lines))
    seq = ScanFolderSequence(tmp_path / "b")
    np.testing.assert_allclose(seq.stamps, [1700000000.0, 1700000000.1, 1700000007.0])
    assert seq.pose(0)[0, 3] == 0 and seq.pose(1)[0, 3] == 10 and seq.pose(2) is None
    (tmp_path / "b" / "groundtruth.txt").write_text("1 0 0 0 0 0 0 2\n")
    with pytest.raises(ValueError, match=r"groundtruth.txt:1: quaternion"):
        ScanFolderSequence(tmp_path / "b")


def test_scan_folder_errors_and_organized_pcd_with_holes(tmp_path):
    folder = tmp_path / "org"
    folder.mkdir()
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 3\nHEIGHT 2\n"
              "VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 6\nDATA ascii\n")
    rows = ["1 2 3", "nan nan nan", "0 0 0", "4 5 6", "0 0 0", "7 8 9"]
    (folder / "000.pcd").write_text(header + "\n".join(rows) + "\n")
    seq = open_sequence(str(folder))
    np.testing.assert_array_equal(seq[0].points(), np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.float32))
    (folder / "001.pcd").write_text(header + "1 2 3\n")  # claims 6 points, holds 1
    with pytest.raises(ValueError, match="001.pcd"):
        ScanFolderSequence(folder)[1]
    (folder / "poses.txt").write_text("1 2 3 4 5\n")
    with pytest.raises(ValueError, match=r"poses.txt:1: expected 12 numbers .* or 8"):
        ScanFolderSequence(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="unrecognised sequence layout"):
        open_sequence(str(empty))


# ----------------------------------------------------------------------------- the sequence's users


def test_lidar_sequences_record_to_a_bag_and_read_back(tmp_path):
    pytest.importorskip("rosbags")
    from ukpgan_ros.bags.record import record_sequence
    from ukpgan_ros.datasets.bag import BagSequence

    make_kitti(tmp_path / "k", n=3)
    poses = [rigid([0, 0, 0.05 * k], [0.5 * k, 0, 0]) for k in range(3)]
    (tmp_path / "k" / "poses_velodyne.txt").write_text("\n".join(kitti_line(T) for T in poses))
    seq = open_sequence(str(tmp_path / "k"))
    with pytest.raises(ValueError, match="--output cloud"):
        record_sequence(seq, tmp_path / "x.mcap", output="depth", progress=False)
    counts = record_sequence(seq, tmp_path / "k.mcap", output="cloud", progress=False)
    assert sum(counts.values()) == 6
    back = BagSequence(tmp_path / "k.mcap")
    assert len(back) == 3 and not back.has_depth
    for k in range(3):
        np.testing.assert_array_equal(back[k].points(), seq[k].points())
        np.testing.assert_allclose(back[k].pose, np.linalg.inv(poses[0]) @ poses[k], atol=1e-6)


def test_evaluation_pairs_take_lidar_sequences(tmp_path):
    from ukpgan_ros.evaluation.pairs import sequence_pairs

    make_kitti(tmp_path / "kitti-x", n=4)
    poses = [rigid([0, 0, 0.05 * k], [0.5 * k, 0, 0]) for k in range(4)]
    (tmp_path / "kitti-x" / "poses_velodyne.txt").write_text("\n".join(kitti_line(T) for T in poses))
    pairs, loaders = sequence_pairs(str(tmp_path / "kitti-x"), [1], 1, None, None)
    assert len(pairs) == 3
    for p in pairs:
        s, t = int(p.src[len("frame"):]), int(p.tgt[len("frame"):])
        assert abs(s - t) == 1
        np.testing.assert_allclose(p.T, np.linalg.inv(poses[t]) @ poses[s], atol=1e-8)  # T_tgt_from_src
    assert loaders["frame0"]().shape == (45, 3)
