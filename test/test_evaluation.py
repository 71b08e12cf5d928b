"""Evaluation metrics against brute-force references, and ``ukpgan eval --quick`` end to end."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from ukpgan_ros.evaluation.metrics import (LIDAR, RGBD, inlier_ratio, registration_success, relative_repeatability,
                                          sensor_profile)
from ukpgan_ros.evaluation.pairs import frame_pairs
from ukpgan_ros.evaluation.report import paired_differences, summarize
from ukpgan_ros.evaluation.run import DATA_ENV, PairMetrics, add_arguments, run
from ukpgan_ros.model.shapes import random_rotation

from conftest import DATA



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rigid(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = random_rotation(rng)
    T[:3, 3] = rng.uniform(-2, 2, 3)
    return T


def _move(p: np.ndarray, T: np.ndarray) -> np.ndarray:
    return (p @ T[:3, :3].T + T[:3, 3]).astype(np.float32)


def _repeatability_loop(src_kp, tgt_kp, src_cloud, tgt_cloud, T, eps, overlap):
    shares = []
    for kp, okp, ocloud, M in ((src_kp, tgt_kp, tgt_cloud, T), (tgt_kp, src_kp, src_cloud, np.linalg.inv(T))):
        hits, total = 0, 0
        for p in kp:
            q = M[:3, :3] @ p + M[:3, 3]
            if min(np.linalg.norm(c - q) for c in ocloud) > overlap:
                continue
            total += 1
            hits += min(np.linalg.norm(k - q) for k in okp) <= eps
        if total:
            shares.append(hits / total)
    return float(np.mean(shares))


def test_repeatability_matches_loop_and_is_one_for_moved_copies() -> None:
    rng = np.random.default_rng(0)
    cloud = rng.uniform(0, 1, (300, 3)).astype(np.float32)
    T = _rigid(1)
    kp = cloud[:40]
    # the same keypoints seen after the motion repeat perfectly
    assert relative_repeatability(kp, _move(kp, T), cloud, _move(cloud, T), T, 0.05, 0.1) == 1.0
    # noisy, partly different keypoints against the slow reference
    other = _move(np.concatenate([kp[:20] + rng.normal(0, 0.04, (20, 3)), cloud[200:230]]), T)
    tgt_cloud = _move(cloud[100:], T)  # partial overlap: only rows 100.. exist in the target
    for eps in (0.05, 0.1):
        fast = relative_repeatability(kp, other, cloud, tgt_cloud, T, eps, 0.08)
        ref = _repeatability_loop(kp, other, cloud, tgt_cloud, T, eps, 0.08)
        assert fast == pytest.approx(ref)
    assert np.isnan(relative_repeatability(kp, other + 100, cloud, tgt_cloud + 100, T, 0.05, 0.08))


def test_inlier_ratio_and_success_thresholds() -> None:
    rng = np.random.default_rng(2)
    src = rng.uniform(-1, 1, (50, 3)).astype(np.float32)
    T = _rigid(3)
    tgt = _move(src, T)
    corr = np.stack([np.arange(50), np.arange(50)], 1)
    corr[:10, 1] = (corr[:10, 1] + 25) % 50  # 10 wrong matches
    assert inlier_ratio(src, tgt, corr, T, RGBD.inlier_distance) == pytest.approx(0.8)
    assert inlier_ratio(src, tgt, corr[:0], T, RGBD.inlier_distance) == 0.0
    E = T.copy()
    E[:3, 3] += [0.2, 0.0, 0.0]
    assert registration_success(E, T, 15, 0.3) and not registration_success(E, T, 5, 0.1)
    R = np.eye(4)
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    R[:2, :2] = [[c, -s], [s, c]]
    assert not registration_success(R @ T, T, 5, 10.0) and registration_success(R @ T, T, 15, 10.0)


def _inlier_ratio_loop(src, tgt, corr, T, tau1):
    hits = 0
    for i, j in corr:
        q = T[:3, :3] @ src[i] + T[:3, 3]
        hits += float(np.sqrt(sum((q[k] - tgt[j][k]) ** 2 for k in range(3)))) < tau1
    return hits / len(corr)


def test_metric_functions_take_the_profiles_thresholds() -> None:
    """The same matches and estimates judged at street scale (LiDAR) and room scale (RGB-D),
    against a hand computation."""
    rng = np.random.default_rng(5)
    src = rng.uniform(-30, 30, (200, 3))
    T = _rigid(6)
    # target points displaced by known distances: 0.05 m (inlier for both), 0.3 m (LiDAR only), 1 m (neither)
    shift = np.repeat([0.05, 0.3, 1.0, 0.05], 50)
    direction = rng.normal(size=(200, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    tgt = _move(src, T) + shift[:, None] * direction
    corr = np.stack([np.arange(200), np.arange(200)], 1)
    assert inlier_ratio(src, tgt, corr, T, RGBD.inlier_distance) == pytest.approx(100 / 200)
    assert inlier_ratio(src, tgt, corr, T, LIDAR.inlier_distance) == pytest.approx(150 / 200)
    for tau in (RGBD.inlier_distance, LIDAR.inlier_distance, 2.0):
        assert inlier_ratio(src, tgt, corr, T, tau) == pytest.approx(_inlier_ratio_loop(src, tgt, corr, T, tau))
    # an estimate 1 m and 3 degrees off: a KITTI success (5°, 2 m), not a strict one (0.6 m), no RGB-D one
    E = np.eye(4)
    c, s = np.cos(np.radians(3)), np.sin(np.radians(3))
    E[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    E = E @ T
    E[:3, 3] = T[:3, 3] + [1.0, 0, 0]
    assert registration_success(E, T, *LIDAR.loose)
    assert not registration_success(E, T, *LIDAR.strict) and not registration_success(E, T, *RGBD.loose)
    # the profiles themselves: KITTI's 5°/2 m and 0.6 m, 3DMatch's 15°/30 cm and 10 cm
    assert (LIDAR.loose, LIDAR.strict, LIDAR.inlier_distance) == ((5.0, 2.0), (5.0, 0.6), 0.6)
    assert (RGBD.loose, RGBD.strict, RGBD.inlier_distance, RGBD.repeat_eps) == ((15.0, 0.3), (5.0, 0.1), 0.1,
                                                                                 (0.05, 0.1))
    # repeatability radii scale: keypoints 0.4 m off repeat at LiDAR's loose radius, not at RGB-D's
    kp = src[:40]
    moved = _move(kp, T) + 0.4 * direction[:40]
    assert relative_repeatability(kp, moved, src, _move(src, T), T, LIDAR.repeat_eps[1], 2 * LIDAR.voxel) == 1.0
    assert relative_repeatability(kp, moved, src, _move(src, T), T, RGBD.repeat_eps[1], 2 * LIDAR.voxel) == 0.0


def test_sensor_profile_follows_the_sequence(tmp_path) -> None:
    from ukpgan_ros.datasets import open_sequence
    from ukpgan_ros.evaluation.run import profile_for

    assert sensor_profile(open_sequence("synthetic_lidar", num_frames=2)) is LIDAR
    assert sensor_profile(open_sequence("synthetic", num_frames=2)) is RGBD
    scans = tmp_path / "scans"
    scans.mkdir()
    from ukpgan_ros.io import write_cloud

    write_cloud(scans / "000.ply", np.random.default_rng(0).uniform(-5, 5, (50, 3)).astype(np.float32))
    assert sensor_profile(open_sequence(str(scans))) is LIDAR  # a folder of scans is a LiDAR stream
    if (DATA / "kitti-00-velodyne").is_dir():
        assert sensor_profile(open_sequence(str(DATA / "kitti-00-velodyne"))) is LIDAR
    if (DATA / "7scenes-redkitchen").is_dir():
        assert sensor_profile(open_sequence(str(DATA / "7scenes-redkitchen"))) is RGBD
    assert profile_for("auto") is RGBD  # fragments
    assert profile_for("lidar", open_sequence("synthetic", num_frames=2)) is LIDAR  # the flag wins
    assert profile_for("rgbd", open_sequence("synthetic_lidar", num_frames=2)) is RGBD
    with pytest.raises(ValueError, match="unknown thresholds"):
        profile_for("sonar")
    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--thresholds", "sonar"])


def test_lidar_pairs_follow_the_profile() -> None:
    from ukpgan_ros.datasets import open_sequence
    from ukpgan_ros.evaluation.pairs import sequence_pairs

    # synthetic_lidar at the LiDAR profile's gaps and stride: 1, 2, 5, 10 scans (1 to 10 m at 10 m/s)
    pairs, loaders = sequence_pairs("synthetic_lidar", list(LIDAR.gaps), LIDAR.stride, None, (0, 16))
    assert sorted({p.gap for p in pairs}) == [1, 2, 5, 10]
    assert {p.dataset for p in pairs} == {"synthetic_lidar"}
    seq = open_sequence("synthetic_lidar")
    for p in pairs:
        s, t = int(p.src[len("frame"):]), int(p.tgt[len("frame"):])
        assert s - t == p.gap and t % LIDAR.stride == 0 and s < 16
        np.testing.assert_allclose(p.T, np.linalg.inv(seq.pose(t)) @ seq.pose(s), atol=1e-9)
        assert np.linalg.norm(p.T[:3, 3]) == pytest.approx(p.gap * 1.0, rel=0.05)  # drive: 10 m/s at 10 Hz
    if (DATA / "kitti-00-velodyne").is_dir():
        # KITTI's six scans: gaps 1..5 with a stride past the end give exactly the pairs (0, k)
        pairs, loaders = sequence_pairs(str(DATA / "kitti-00-velodyne"), [1, 2, 3, 4, 5], 10, None, None)
        assert [(p.src, p.tgt, p.dataset) for p in pairs] == [(f"frame{k}", "frame0", "kitti") for k in range(1, 6)]
        assert np.linalg.norm(pairs[-1].T[:3, 3]) == pytest.approx(3.57, abs=0.05)  # the README's 3.57 m


def test_eval_on_synthetic_lidar_uses_lidar_thresholds(tmp_path) -> None:
    out = tmp_path / "out"
    assert run(_args("--sequence", "synthetic_lidar", "--fragments", "", "--detectors", "iss", "random",
                     "--budgets", "100", "--gaps", "1", "--max-pairs-per-gap", "1", "--trials", "1",
                     "--out", str(out), "--no-progress")) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["options"]["thresholds"] == "auto"
    assert {r["thresholds"] for r in res["rows"]} == {"lidar"}
    by = {r["detector"]: r for r in res["summary"] if r["gap"] == 0}
    # a 1 m drive registered within KITTI's 5 deg / 2 m from all voxels at the LiDAR profile's 0.3 m
    assert by["all-points"]["registered"] == 1.0 and 5000 < by["all-points"]["keypoints"] < 30000
    assert by["iss"]["inlier_ratio"] > by["random"]["inlier_ratio"]
    text = (out / "results.md").read_text()
    assert "RE < 5° & TE < 2 m" in text and "within 60 cm" in text
    forced = tmp_path / "forced"  # --thresholds rgbd judges the same street by room-scale limits
    assert run(_args("--sequence", "synthetic_lidar", "--fragments", "", "--detectors", "random", "--budgets", "100",
                     "--gaps", "1", "--max-pairs-per-gap", "1", "--trials", "1", "--thresholds", "rgbd",
                     "--voxel", "0.3", "--no-all-points", "--out", str(forced), "--no-progress")) == 0
    res = json.loads((forced / "results.json").read_text())
    assert {r["thresholds"] for r in res["rows"]} == {"rgbd"}
    assert "RE < 15° & TE < 30 cm" in (forced / "results.md").read_text()


def test_probability_stats() -> None:
    from ukpgan_ros.evaluation.report import probability_stats

    st = probability_stats(np.array([0.0, 0.05, 0.5, 0.95, 1.0]))
    assert st["below_0.1"] == pytest.approx(0.4) and st["above_0.9"] == pytest.approx(0.4)
    assert st["between_0.1_0.9"] == pytest.approx(0.2) and st["above_0.5"] == pytest.approx(0.4)
    assert st["histogram_10_bins"] == [0.4, 0, 0, 0, 0, 0.2, 0, 0, 0, 0.4]


def test_frame_pairs_and_summary() -> None:
    assert frame_pairs(50, [10, 20], 20) == [(10, 10, 0), (10, 30, 20), (20, 20, 0), (20, 40, 20)]
    assert frame_pairs(50, [10], 5, max_pairs=2) == [(10, 10, 0), (10, 15, 5)]
    assert frame_pairs(100, [10], 20, frames=(40, 80)) == [(10, 50, 40), (10, 70, 60)]
    with pytest.raises(ValueError):
        frame_pairs(50, [0], 5)
    with pytest.raises(ValueError, match="frame range"):
        frame_pairs(50, [10], 5, frames=(60, 70))
    base = dict(dataset="d", pair="p", gap=1, detector="random", budget=50, descriptor="fpfh", trial=0,
                keypoints=50, repeatability_tight=0.2, repeatability_loose=0.4, matches=10, inlier_ratio=0.1,
                feature_match_recall=1.0, rotation_error_deg=1.0, translation_error_m=0.1, registered=1.0,
                registered_strict=0.0, detect_s=0.1, describe_s=0.1, ransac_s=0.1)
    rows = [PairMetrics(**base), PairMetrics(**{**base, "trial": 1, "registered": 0.0, "inlier_ratio": 0.3}),
            PairMetrics(**{**base, "pair": "q", "gap": 2, "registered": 1.0, "inlier_ratio": 0.2})]
    (s,) = summarize(rows)
    assert s["pairs"] == 2 and s["runs"] == 3
    assert s["registered"] == pytest.approx(2 / 3) and s["inlier_ratio"] == pytest.approx(0.2)
    by_gap = summarize(rows, by_gap=True)
    assert [(r["gap"], r["runs"]) for r in by_gap] == [(0, 3), (1, 2), (2, 1)]


def test_paired_differences_match_a_loop_and_bracket_the_mean() -> None:
    base = dict(dataset="d", pair="p", gap=1, detector="iss", budget=100, descriptor="fpfh", trial=0,
                keypoints=100, repeatability_tight=0.2, repeatability_loose=0.4, matches=10, inlier_ratio=0.1,
                feature_match_recall=1.0, rotation_error_deg=1.0, translation_error_m=0.1, registered=1.0,
                registered_strict=0.0, detect_s=0.1, describe_s=0.1, ransac_s=0.1)
    rng = np.random.default_rng(3)
    rows, expected = [], []
    for k in range(30):
        ref_ir, det_ir = rng.uniform(0.1, 0.4, size=2), rng.uniform(0.2, 0.5, size=2)
        for trial in range(2):
            rows.append(PairMetrics(**{**base, "pair": f"p{k}", "trial": trial, "inlier_ratio": ref_ir[trial]}))
            rows.append(PairMetrics(**{**base, "pair": f"p{k}", "trial": trial, "detector": "ukpgan",
                                       "inlier_ratio": det_ir[trial], "registered": float(k % 10 != 0)}))
        expected.append(det_ir.mean() - ref_ir.mean())
    rows.append(PairMetrics(**{**base, "pair": "only-iss"}))  # unpaired rows are left out
    (d,) = paired_differences(rows, reference="iss")
    assert d["pairs"] == 30 and d["detector"] == "ukpgan"
    ir = d["inlier_ratio"]
    assert ir["mean"] == pytest.approx(np.mean(expected))
    assert ir["lo"] < ir["mean"] < ir["hi"] and ir["lo"] > 0  # a clear, consistent gain excludes 0
    rr = d["registered"]
    assert rr["mean"] == pytest.approx(-0.1) and rr["lo"] < rr["mean"] < rr["hi"]
    same = [PairMetrics(**{**asdict(r), "detector": "random"}) for r in rows if r.detector == "iss"]
    (z,) = paired_differences([r for r in rows if r.detector == "iss"] + same)
    assert z["inlier_ratio"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0}


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_eval_on_a_synthetic_fragment_pair(tmp_path) -> None:
    from ukpgan_ros.model.shapes import random_shape, sample_surface
    from ukpgan_ros.io import write_cloud

    rng = np.random.default_rng(0)
    parts = [sample_surface(random_shape(rng, (k,)), 15000, rng)[0] @ random_rotation(rng).T + [1.6 * i, 0, 0]
             for i, k in enumerate(("table", "chair", "lamp"))]
    cloud = np.concatenate(parts).astype(np.float32)
    T = _rigid(4)  # T_0_from_1: cloud 1 is cloud 0 moved by inv(T)
    frag = tmp_path / "frag"
    frag.mkdir()
    write_cloud(frag / "cloud_bin_0.ply", cloud)
    write_cloud(frag / "cloud_bin_1.ply", _move(cloud, np.linalg.inv(T)))
    np.savetxt(frag / "gt_T_0_from_1.txt", T)
    out = tmp_path / "out"
    assert run(_args("--sequence", "", "--fragments", str(frag), "--detectors", "random", "fps",
                     "--budgets", "100", "200", "--trials", "1", "--fragment-crops", "3", "--crop-radius", "1.0",
                     "--out", str(out), "--no-progress")) == 0
    res = json.loads((out / "results.json").read_text())
    by = {(r["detector"], r["budget"]): r for r in res["summary"] if r["dataset"] == "3dmatch"}
    assert by[("all-points", 0)]["registered"] == 1.0 and by[("all-points", 0)]["feature_match_recall"] == 1.0
    assert by[("fps", 200)]["keypoints"] == 200
    crops = [r for r in res["summary"] if r["dataset"] == "3dmatch-crops"]
    assert len(crops) == 5 and all(r["pairs"] == 3 for r in crops)
    assert (out / "results.md").read_text().count("| 3dmatch |") == 5
    assert (out / "recall_3dmatch_fpfh.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError):
        run(_args("--sequence", str(tmp_path / "nope"), "--fragments", "", "--out", str(out)))
    with pytest.raises(ValueError, match="nothing"):
        run(_args("--sequence", "", "--fragments", "", "--out", str(out)))


@pytest.mark.skipif(not (DATA / "7scenes-redkitchen").is_dir() or not (DATA / "3dmatch-redkitchen").is_dir(),
                    reason="real data not found at ../shared/data (7scenes-redkitchen, 3dmatch-redkitchen)")
def test_quick_eval_on_real_data_with_a_model(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(DATA))  # the default data come from the environment
    from ukpgan_ros.model.checkpoint import export_encoder
    from ukpgan_ros.model.networks import ModelConfig, UkpganNet

    torch.manual_seed(0)
    cfg = ModelConfig(hidden_dim=16, hidden_layers=1, emb_dim=8, code_dim=16, critic_dims=(16,))
    model = export_encoder(tmp_path / "m.safetensors", UkpganNet(cfg).encoder, cfg,
                           {"feature": {"kind": "shot", "radius_voxels": 6.0, "normal_radius_voxels": 2.0}})
    out = tmp_path / "out"
    assert run(_args("--quick", "--model", str(model), "--detectors", "ukpgan", "random", "iss",
                     "--out", str(out), "--no-progress")) == 0
    res = json.loads((out / "results.json").read_text())
    paired = {(d["dataset"], d["detector"]) for d in res["paired_to_iss"]}
    assert paired == {(ds, det) for ds in ("7scenes", "3dmatch", "3dmatch-crops") for det in ("ukpgan", "random")}
    assert "Paired differences to iss" in (out / "results.md").read_text()
    assert {r["dataset"] for r in res["summary"]} == {"7scenes", "3dmatch", "3dmatch-crops"}
    full = [r for r in res["summary"] if r["detector"] == "all-points"]
    # ground truth sanity: dense FPFH registers these easy pairs, so the poses are read right
    assert all(r["registered"] == 1.0 for r in full)
    assert all(r["keypoints"] == r["budget"] for r in res["summary"] if r["detector"] == "ukpgan")
    probs = res["ukpgan_probabilities"]
    assert set(probs) == {"7scenes", "3dmatch"} and (out / "probabilities.png").is_file()
    for st in probs.values():
        assert st["points"] > 1000 and sum(st["histogram_10_bins"]) == pytest.approx(1.0, abs=1e-3)
