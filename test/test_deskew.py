"""Deskew: against a per-point matrix-exponential reference, its invariances, and on the
synthetic LiDAR's moving scans, where each point's true world position is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import expm, logm
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from ukpgan_ros.datasets.synthetic_lidar import SyntheticLidarSequence
from ukpgan_ros.deskew import deskew, se3_exp, se3_log


def rigid(rotvec, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


def reference_deskew(points, times, T, reference=0.0, dt=1.0):
    """The slow reader of the same model: per point, the 4x4 matrix exponential of a twist scaled
    by its time (scipy's expm/logm, nothing shared with the code under test)."""
    xi = np.real(logm(T))
    out = []
    for p, t in zip(points, times):
        M = expm((t - reference) / dt * xi)
        out.append(M[:3, :3] @ p + M[:3, 3])
    return np.array(out)


def test_matches_the_matrix_exponential_reference():
    rng = np.random.default_rng(0)
    T = rigid([0.02, -0.03, 0.35], [0.9, 0.15, 0.04])
    pts = rng.uniform(-40, 40, (300, 3)).astype(np.float32)
    times = rng.uniform(0, 1, 300)
    for ref in (0.0, 0.5, 1.0):
        got = deskew(pts, times, T, reference=ref)
        np.testing.assert_allclose(got, reference_deskew(pts.astype(np.float64), times, T, ref), atol=2e-5)
    # seconds with dt give what the fractions give
    np.testing.assert_allclose(deskew(pts, times * 0.1, T, dt=0.1, reference=0.05),
                               deskew(pts, times, T, reference=0.5), atol=1e-5)


def test_se3_log_and_exp_invert_each_other():
    for rv, t in (([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]), ([1e-9, 0, 0], [0.1, 0, 0]), ([0.3, -1.2, 2.0], [4.0, -1.0, 0.5])):
        T = rigid(rv, t)
        xi = se3_log(T)
        np.testing.assert_allclose(np.real(logm(T))[:3, 3], xi[:3], atol=1e-7)  # the same twist as logm's
        rot, trans = se3_exp(xi, [1.0])
        np.testing.assert_allclose(rot[0].as_matrix(), T[:3, :3], atol=1e-12)
        np.testing.assert_allclose(trans[0], T[:3, 3], atol=1e-12)


def test_zero_motion_is_identity_and_references_compose():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(500, 3)).astype(np.float32) * 20
    times = rng.uniform(0, 1, 500)
    np.testing.assert_array_equal(deskew(pts, times, np.eye(4)), pts)
    T = rigid([0.01, 0.0, 0.2], [1.0, 0.0, 0.0])
    # a point at the reference time does not move
    np.testing.assert_allclose(deskew(pts, np.full(500, 0.3), T, reference=0.3), pts, atol=1e-6)
    # KISS-ICP's reference (the end, 1.0) is the start's result seen from the end: p_1 = inv(T) p_0
    p0 = deskew(pts, times, T, reference=0.0).astype(np.float64)
    p1 = deskew(pts, times, T, reference=1.0).astype(np.float64)
    Ti = np.linalg.inv(T)
    np.testing.assert_allclose(p0 @ Ti[:3, :3].T + Ti[:3, 3], p1, atol=2e-5)
    assert deskew(np.zeros((0, 3)), np.zeros(0), T).shape == (0, 3)


def test_bad_input_is_named():
    T = rigid([0, 0, 0.1], [0.5, 0, 0])
    with pytest.raises(ValueError, match="points must be"):
        deskew(np.zeros((3, 2)), np.zeros(3), T)
    with pytest.raises(ValueError, match="times has 2 entries"):
        deskew(np.zeros((3, 3)), np.zeros(2), T)
    with pytest.raises(ValueError, match="NaN"):
        deskew(np.zeros((1, 3)), [np.nan], T)
    with pytest.raises(ValueError, match="dt must be"):
        deskew(np.zeros((1, 3)), [0.0], T, dt=0.0)
    bad = T.copy()
    bad[0, 0] = 2.0
    with pytest.raises(ValueError, match="rotation"):
        deskew(np.zeros((1, 3)), [0.0], bad)


@pytest.mark.parametrize("motion", ["drive", "fast_turn"])
def test_deskew_undoes_the_synthetic_lidars_motion(motion):
    """Each point's true world position is pose(firing time) @ point; deskewed with the true motion
    over the sweep, the points land there from the stamp's pose, and they match the ideal scan
    (every column fired at the stamp) far better than the raw points do."""
    seq = SyntheticLidarSequence(num_frames=12, motion=motion)
    k = 9
    sc = seq.scan(k)
    P_t = seq.pose_at(sc.stamp + sc.times)
    world = np.einsum("nij,nj->ni", P_t[:, :3, :3], sc.points.astype(np.float64)) + P_t[:, :3, 3]

    def error(p):
        return np.linalg.norm(p.astype(np.float64) @ sc.pose[:3, :3].T + sc.pose[:3, 3] - world, axis=1)

    true = np.linalg.inv(sc.pose) @ seq.pose_at(sc.stamp + seq.period)  # the sweep's motion
    fixed = deskew(sc.points, sc.times, true, dt=seq.period)
    raw_err, fixed_err = error(sc.points).mean(), error(fixed).mean()
    # a point fired at fraction s of the sweep is off by at least the distance travelled by then:
    # on average half of speed * period (rotation only adds to it)
    speed = np.linalg.norm(true[:3, 3]) / seq.period
    assert raw_err > 0.45 * speed * seq.period
    # the sweep is one constant twist up to the trajectory's sway: 1 % of the raw error is left
    assert fixed_err < 0.01 * raw_err
    # constant velocity from the last two poses (what a live pipeline knows) still removes most of it
    cv = np.linalg.inv(seq.pose(k - 1)) @ sc.pose
    assert error(deskew(sc.points, sc.times, cv, dt=seq.period)).mean() < 0.05 * raw_err
    # against the scan taken at the reference time (the ideal one, same noise)
    ideal = SyntheticLidarSequence(num_frames=12, motion=motion, distort=False)[k].points()
    tree = cKDTree(ideal)
    nn_raw, nn_fixed = tree.query(sc.points)[0], tree.query(fixed)[0]
    assert nn_fixed.mean() < 0.5 * nn_raw.mean()
    assert np.percentile(nn_fixed, 90) < 0.5 * np.percentile(nn_raw, 90)


def test_the_pipeline_deskews_with_the_motion_it_estimated():
    """``deskew: true``: the pipeline keeps the motion of its last two placed frames and the time
    between them, and the next scan's points (with per-point times) are corrected with it; the
    result lands near each point's true position, the raw scan half a metre off (10 m/s)."""
    from ukpgan_ros.config import PipelineConfig
    from ukpgan_ros.pipeline import KeypointPipeline

    seq = SyntheticLidarSequence(num_frames=6, motion="drive")
    cfg = PipelineConfig(registration="consecutive", deskew=True)  # the shipped defaults otherwise
    pipe = KeypointPipeline(cfg)
    try:
        scans = [seq.scan(k) for k in (2, 3, 4)]
        for sc in scans[:2]:
            assert pipe.deskewed(sc.points, sc.times) is sc.points or pipe._velocity is None
            res = pipe.process(sc.points, stamp=sc.stamp, times=sc.times)
            assert res.placed
        sc = scans[2]
        P_t = seq.pose_at(sc.stamp + sc.times)
        world = np.einsum("nij,nj->ni", P_t[:, :3, :3], sc.points.astype(np.float64)) + P_t[:, :3, 3]

        def error(p):
            return np.linalg.norm(p.astype(np.float64) @ sc.pose[:3, :3].T + sc.pose[:3, 3] - world, axis=1).mean()

        motion, dt = pipe._velocity
        assert dt == pytest.approx(seq.period)
        fixed = pipe.deskewed(sc.points, sc.times)
        assert error(sc.points) > 0.3 and error(fixed) < 0.1 * error(sc.points)
        res = pipe.process(sc.points, stamp=sc.stamp, times=sc.times)
        assert "deskew" in res.timings  # (registered against a frame that was not deskewed: see README)
        # off: the points stay as they are
        pipe.cfg = PipelineConfig(**{**cfg.to_dict(), "deskew": False})
        assert pipe.deskewed(sc.points, sc.times) is sc.points
    finally:
        pipe.release()
