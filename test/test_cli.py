"""The ukpgan command as a user runs it: detect, register, demo, and clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import DATA, need, ros_domain
from ukpgan_ros.cli import main


def test_register_3dmatch_pair_within_issue_bounds(capsys):
    d = need(DATA / "3dmatch-redkitchen")
    rc = main(["register", str(d / "cloud_bin_1.ply"), str(d / "cloud_bin_0.ply"), "--gt", str(d / "gt_T_0_from_1.txt")])
    out = capsys.readouterr().out
    assert rc == 0, out
    m = re.search(r"rotation ([\d.]+) deg, translation ([\d.]+) cm", out)
    assert m and float(m.group(1)) < 2.0 and float(m.group(2)) < 5.0, out



def test_register_kitti_scans_with_the_defaults(tmp_path, capsys):
    """A KITTI Velodyne .bin is a cloud file like any other; with the shipped defaults the scan
    registers to scan 0 within 5 cm / 0.5 deg of the reference pose, at the voxel the cap chose."""
    d = need(DATA / "kitti-00-velodyne")
    T = np.eye(4)
    T[:3] = np.loadtxt(d / "poses_velodyne.txt")[4].reshape(3, 4)
    gt = tmp_path / "gt.txt"
    np.savetxt(gt, T)
    rc = main(["register", str(d / "velodyne/000004.bin"), str(d / "velodyne/000000.bin"), "--gt", str(gt)])
    out = capsys.readouterr().out
    assert rc == 0 and "success True" in out, out
    m = re.search(r"rotation ([\d.]+) deg, translation ([\d.]+) cm", out)
    assert m and float(m.group(1)) < 0.5 and float(m.group(2)) < 5.0, out
    voxel = float(re.search(r"shot, ([\d.]+) m voxels", out).group(1))
    assert voxel > 0.3, "the working-point cap picks a coarser voxel for a 124 k-point scan"

def test_detect_writes_keypoints_and_picture(tmp_path, capsys):
    d = need(DATA / "pcl-bunny")
    out_ply, png = tmp_path / "kp.ply", tmp_path / "kp.png"
    rc = main(["detect", str(d / "bun0.pcd"), "--detector", "fps", "--voxel-size", "0.005", "--max-keypoints", "30",
               "--out", str(out_ply), "--png", str(png)])
    assert rc == 0
    from ukpgan_ros.io import read_cloud

    assert read_cloud(out_ply).shape == (30, 3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "30 fps keypoints" in capsys.readouterr().out


def test_detect_depth_png_finds_intrinsics_beside_the_sequence(capsys):
    frames = need(DATA / "7scenes-redkitchen" / "frames")
    rc = main(["detect", str(frames / "frame-000000.depth.png"), "--detector", "random"])
    assert rc == 0 and "random keypoints" in capsys.readouterr().out


@pytest.mark.parametrize("argv, word", [
    (["detect", "/nonexistent/cloud.ply"], "nonexistent"),
    (["register", "/nope/a.ply", "/nope/b.ply"], "nope"),
])
def test_missing_files_are_clear_errors(argv, word, capsys):
    assert main(argv) == 2
    assert word in capsys.readouterr().err


def test_bad_parameter_is_a_clear_error(tmp_path, capsys):
    p = tmp_path / "c.npy"
    np.save(p, np.random.default_rng(0).uniform(0, 1, (500, 3)).astype(np.float32))
    assert main(["detect", str(p), "--voxel-size", "-1"]) == 2
    assert "voxel_size" in capsys.readouterr().err


def test_depth_png_without_intrinsics_is_a_clear_error(tmp_path, capsys):
    import open3d as o3d

    png = tmp_path / "d.png"
    o3d.io.write_image(str(png), o3d.geometry.Image(np.full((48, 64), 1500, np.uint16)))
    assert main(["detect", str(png)]) == 2
    assert "--intrinsics" in capsys.readouterr().err


@pytest.fixture
def own_domain(monkeypatch):
    """The demo runs on ROS_DOMAIN_ID: give it this test process's own domain."""
    monkeypatch.setenv("ROS_DOMAIN_ID", str(ros_domain(6)))


@pytest.mark.usefixtures("own_domain")
def test_demo_on_the_builtin_synthetic_camera(tmp_path, capsys):
    rc = main(["demo", "--frames", "16", "--stride", "4", "--detector", "fps", "--max-keypoints", "128",
               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "registration error: median rotation" in out and "final drift" in out
    m = re.search(r"registered (\d+) \((\d+) %\)", out)
    assert m and int(m.group(2)) == 100, out
    assert (tmp_path / "trajectory.png").exists() and (tmp_path / "frames.csv").exists()


@pytest.mark.usefixtures("own_domain")
def test_demo_with_depth_image_input(tmp_path, capsys):
    rc = main(["demo", "--frames", "8", "--stride", "4", "--input", "depth", "--detector", "fps", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "processed 2" in out, out


def test_demo_jump_reports_recovery_and_compares_both_odometry_modes(tmp_path, capsys):
    rc = main(["demo", "--frames", "40", "--stride", "4", "--jump", "12", "--detector", "fps", "--max-keypoints", "128",
               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "frames 20-31 skipped" in out
    m = re.search(r"jump: placed again at frame (\d+), published frame (\d+) after the jump", out)
    assert m and m.group(1) == "32" and int(m.group(2)) <= 5, out
    assert re.search(r"jump: motion across it \(16 -> 32\) off the true one by [\d.]+ deg, [\d.]+ cm", out), out
    assert "summary (keyframe)" in out and "summary (consecutive)" in out
    assert re.search(r"keyframe drift / frame-to-frame drift = [\d.]+", out), out
    assert (tmp_path / "consecutive" / "frames.csv").exists()


def test_map_command_then_reference_demo_against_the_map(tmp_path, capsys):
    folder = tmp_path / "map"
    rc = main(["map", "--frames", "16", "--stride", "4", "--detector", "fps", "--max-keypoints", "128",
               "--out", str(folder)])
    out = capsys.readouterr().out
    assert rc == 0 and (folder / "map.json").is_file() and "keyframes written to" in out, out
    rc = main(["demo", "--start", "4", "--frames", "12", "--stride", "4", "--detector", "fps", "--max-keypoints", "128",
               "--registration", "reference", "--reference-cloud", str(folder), "--out", str(tmp_path / "ref")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "localised 3 of 3 frames (100 %)" in out and "pose error against ground truth in the map frame" in out
    assert "summary (consecutive)" not in out, "reference mode is not an odometry mode: nothing to compare"


def test_map_command_refuses_to_overwrite_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    rc = main(["map", "--frames", "8", "--stride", "4", "--detector", "fps", "--out", str(tmp_path)])
    assert rc == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
