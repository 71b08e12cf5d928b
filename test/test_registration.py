"""Matching, RANSAC, ICP and the pipeline against ground truth on real data and known motions."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA, need, random_rigid, transform
from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.pipeline import EmptyCloudError, KeypointPipeline, register_clouds
from ukpgan_ros.transforms import rotation_error_deg, translation_error
from ukpgan_ros.features.fpfh import compute_fpfh
from ukpgan_ros.registration import count_inliers, mutual_matches, ransac_from_correspondences
from ukpgan_ros.tracking import TrackState


def test_mutual_matches_equal_a_slow_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 33)).astype(np.float32), rng.normal(size=(80, 33)).astype(np.float32)
    b[:30] = a[:30] + 0.01 * rng.normal(size=(30, 33))
    got = {tuple(r) for r in mutual_matches(a, b)}
    ref = set()
    for i in range(len(a)):
        j = int(np.argmin(((b - a[i]) ** 2).sum(1)))
        if int(np.argmin(((a - b[j]) ** 2).sum(1))) == i:
            ref.add((i, j))
    assert got == ref and {(i, i) for i in range(30)} <= got
    assert mutual_matches(a[:0], b).shape == (0, 2)


def test_ransac_recovers_a_transform_from_outlier_heavy_matches():
    rng = np.random.default_rng(1)
    src = rng.uniform(-1, 1, (300, 3)).astype(np.float32)
    T = random_rigid(rng)
    tgt = transform(src, T)
    corr = np.stack([np.arange(300), np.arange(300)], 1)
    corr[120:, 1] = rng.integers(0, 300, 180)  # 60 % outliers
    T_est, inliers = ransac_from_correspondences(src, tgt, corr, 0.02, 100000, 0.999, seed=0)
    assert rotation_error_deg(T_est, T) < 0.1 and translation_error(T_est, T) < 1e-3
    assert inliers == count_inliers(src, tgt, corr, T, 0.02) >= 120
    assert ransac_from_correspondences(src, tgt, corr[:2], 0.02)[1] == 0


def test_fpfh_at_indices_equals_dense_fpfh():
    rng = np.random.default_rng(2)
    pts = rng.uniform(0, 1, (3000, 3)).astype(np.float32)
    from ukpgan_ros.features.normals import estimate_normals

    n = estimate_normals(pts, 0.1)
    idx = np.array([3, 500, 2999])
    np.testing.assert_allclose(compute_fpfh(pts, n, idx, 0.2), compute_fpfh(pts, n, None, 0.2)[idx], atol=1e-4)


@pytest.mark.parametrize("detector", ["iss", "random"])
def test_3dmatch_pair_is_recovered(redkitchen_pair, detector):
    src, tgt, T_gt = redkitchen_pair
    res = register_clouds(src, tgt, PipelineConfig(detector=detector, min_range=0.0, max_range=1000.0))
    assert res.success
    assert rotation_error_deg(res.T_tgt_from_src, T_gt) < 2.0 and translation_error(res.T_tgt_from_src, T_gt) < 0.05
    assert res.fitness > 0.5 and res.num_inliers >= 6 and set(res.timings) >= {"detect", "describe", "ransac", "refine"}


@pytest.mark.parametrize("match_against", ["dense", "keypoints"])
def test_3dmatch_pair_is_recovered_with_shot_descriptors(redkitchen_pair, match_against):
    src, tgt, T_gt = redkitchen_pair
    cfg = PipelineConfig(detector="iss", descriptor="shot", match_against=match_against, min_range=0.0, max_range=1000.0)
    res = register_clouds(src, tgt, cfg)
    assert res.success
    assert rotation_error_deg(res.T_tgt_from_src, T_gt) < 2.0 and translation_error(res.T_tgt_from_src, T_gt) < 0.05


def test_registration_is_equivariant_to_moving_the_source(redkitchen_pair):
    """Moving the source by M must change the estimate to T @ inv(M)."""
    src, tgt, T_gt = redkitchen_pair
    M = random_rigid(np.random.default_rng(3), max_angle_deg=30, max_t=0.5)
    cfg = PipelineConfig(detector="iss", min_range=0.0, max_range=1000.0)
    res = register_clouds(transform(src, M), tgt, cfg)
    expected = T_gt @ np.linalg.inv(M)
    assert rotation_error_deg(res.T_tgt_from_src, expected) < 2.0 and translation_error(res.T_tgt_from_src, expected) < 0.05


def test_bunny_scans_with_pcl_ground_truth():
    from ukpgan_ros.io import read_cloud

    d = need(DATA / "pcl-bunny")
    bun0, bun4 = read_cloud(d / "bun0.pcd"), read_cloud(d / "bun4.pcd")
    T_4_from_0 = np.array([[0.825336, 0, -0.564642, 0.037267], [0, 1, 0, 0], [0.564642, 0, 0.825336, 0.038325],
                           [0, 0, 0, 1]])
    # 400-point scans: every point is a keypoint candidate; FPFH at 3x the point spacing.
    cfg = PipelineConfig(detector="fps", voxel_size=0.005, max_keypoints=400, min_range=0.0, max_range=100.0,
                         ransac_max_iterations=200000)
    res = register_clouds(bun0, bun4, cfg)
    assert rotation_error_deg(res.T_tgt_from_src, T_4_from_0) < 5.0 and translation_error(res.T_tgt_from_src, T_4_from_0) < 0.01


def test_consecutive_odometry_on_7scenes(seven_scenes):
    pipe = KeypointPipeline(PipelineConfig(detector="iss", registration="consecutive"))
    errs = []
    prev = None
    for i in range(100, 160, 10):
        f = seven_scenes[i]
        r = pipe.process(f.points())
        if prev is not None:
            T_gt = np.linalg.inv(prev.pose) @ f.pose
            assert r.registration is not None and r.registration.success
            errs.append((rotation_error_deg(r.registration.T_tgt_from_src, T_gt), translation_error(r.registration.T_tgt_from_src, T_gt)))
        prev = f
    errs = np.array(errs)
    assert np.median(errs[:, 0]) < 1.0 and np.median(errs[:, 1]) < 0.025
    # the accumulated pose is the chain of relative estimates
    T_gt_total = np.linalg.inv(seven_scenes[100].pose) @ seven_scenes[150].pose
    assert translation_error(pipe.pose, T_gt_total) < 0.08


def test_reference_mode_localises_against_a_map(seven_scenes):
    ref_frame, cur = seven_scenes[200], seven_scenes[215]
    cfg = PipelineConfig(detector="iss", registration="reference", reference_cloud="unused-when-points-given")
    pipe = KeypointPipeline(cfg, reference_points=ref_frame.points())
    r = pipe.process(cur.points())
    T_gt = np.linalg.inv(ref_frame.pose) @ cur.pose
    assert r.registration.success
    assert rotation_error_deg(pipe.pose, T_gt) < 1.5 and translation_error(pipe.pose, T_gt) < 0.04


def test_failed_registration_keeps_pose_and_anchor():
    """A frame that cannot be matched (pure noise) must not move the pose or replace the anchor."""
    rng = np.random.default_rng(4)
    from ukpgan_ros.datasets.synthetic import SyntheticSequence

    seq = SyntheticSequence(num_frames=8, width=320, height=240, fx=262.5, seed=1)
    pipe = KeypointPipeline(PipelineConfig(detector="fps", max_keypoints=128, min_fitness=0.5,
                                           registration="consecutive"))
    pipe.process(seq[0].points())
    noise = rng.uniform(-2, 2, (20000, 3)).astype(np.float32) + np.float32([0, 0, 3])
    r = pipe.process(noise)
    assert r.registration is not None and not r.registration.success and not r.placed
    np.testing.assert_array_equal(pipe.pose, np.eye(4))
    r = pipe.process(seq[3].points())  # registers against frame 0, the last good anchor
    T_gt = np.linalg.inv(seq[0].pose) @ seq[3].pose
    assert r.registration.success and translation_error(r.registration.T_tgt_from_src, T_gt) < 0.03


def test_unusable_clouds_raise_without_touching_state():
    pipe = KeypointPipeline(PipelineConfig(detector="fps"))
    for bad in (np.zeros((0, 3)), np.full((50, 3), np.nan), np.zeros((10, 3)) + 100.0):
        with pytest.raises(EmptyCloudError, match="points left"):
            pipe.process(bad)
    with pytest.raises(ValueError, match="shape"):
        pipe.process(np.zeros((10, 2)))
    assert pipe.state is TrackState.INITIALIZING and len(pipe.tracker.map) == 0


def test_register_clouds_uses_the_config_as_given_and_builds_no_tracker(monkeypatch, tmp_path):
    """A one-shot registration has no tracking mode: whatever ``registration`` says, no tracker is
    built (a spy on the pipeline's make_tracker), no reference is loaded (reference mode names a
    map that does not exist), and every mode gives the same transform, the true one."""
    import dataclasses

    import ukpgan_ros.pipeline as pipeline_module
    from ukpgan_ros.datasets.synthetic import SyntheticSequence

    seq = SyntheticSequence(num_frames=8, width=320, height=240, fx=262.5, seed=1)
    src, tgt = seq[3].points(), seq[0].points()
    T_gt = np.linalg.inv(seq[0].pose) @ seq[3].pose
    base = PipelineConfig()  # UKPGAN + SHOT: the descriptors come from the detector's pass
    pipe = KeypointPipeline(dataclasses.replace(base, registration="none"))  # lends its detector
    built = []
    real = pipeline_module.make_tracker
    monkeypatch.setattr(pipeline_module, "make_tracker", lambda *a, **k: built.append(a) or real(*a, **k))
    try:
        results = {mode: register_clouds(src, tgt, dataclasses.replace(base, registration=mode,
                                                                      reference_cloud=str(tmp_path / "no_map")),
                                         pipe.detector)
                   for mode in ("none", "consecutive", "keyframe", "reference")}
    finally:
        pipe.release()
    assert built == []
    for mode, res in results.items():
        assert res.success, mode
        np.testing.assert_allclose(res.T_tgt_from_src, results["none"].T_tgt_from_src, atol=1e-9)
    assert translation_error(results["none"].T_tgt_from_src, T_gt) < 0.03
    assert rotation_error_deg(results["none"].T_tgt_from_src, T_gt) < 1.0
