"""The keyframe pose graph against hand-made graphs whose solution is known: a square walked with
drift and closed by loops, an injected wrong loop (the Cauchy kernel keeps the map; a Gaussian
one bends it), invariance to the frame, components that keep their anchors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import random_rigid
from ukpgan_ros.posegraph import LOOP, Edge, loop_edge, odometry_edge, optimize
from ukpgan_ros.transforms import adjoint

SIG = np.array([0.01, 0.01, 0.01, np.radians(0.5), np.radians(0.5), np.radians(0.5)])


def _T(x, y, z, yaw_deg=0.0, roll_deg=0.0):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("zx", [yaw_deg, roll_deg], degrees=True).as_matrix()
    T[:3, 3] = x, y, z
    return T


def _square(n_side: int = 5, side: float = 2.0) -> list[np.ndarray]:
    """A closed square walk, facing along it; the last pose is one step before the first."""
    out = []
    for s in range(4):
        for k in range(n_side):
            d = side * k / n_side
            x, y = [(d, 0.0), (side, d), (side - d, side), (0.0, side - d)][s]
            out.append(_T(x, y, 0.1 * np.sin(len(out)), 90.0 * s, 2.0 * np.cos(len(out))))
    return out


def _drifting_odometry(truth, yaw_bias_deg=1.5):
    """Chained odometry with a yaw bias per step (drift) and the edges that measured it."""
    cov = np.diag(SIG ** 2)
    odom, edges = [truth[0]], []
    bias = _T(0.005, 0, 0, yaw_bias_deg)
    for k in range(1, len(truth)):
        meas = np.linalg.inv(truth[k - 1]) @ truth[k] @ bias
        odom.append(odom[-1] @ meas)
        edges.append(Edge(k - 1, k, meas, cov))
    return odom, edges


def _loop(truth, i, j, error=np.eye(4)):
    """A loop edge as a registration of i onto j measures it (T_j_from_i), optionally wrong."""
    return loop_edge(i, j, error @ np.linalg.inv(truth[j]) @ truth[i], np.diag((SIG / 2) ** 2))


def _ate(poses, truth):
    return float(np.sqrt(np.mean([np.sum((poses[k][:3, 3] - truth[k][:3, 3]) ** 2) for k in range(len(truth))])))


def test_exact_measurements_give_the_truth_back():
    truth = _square()
    edges = [odometry_edge(k - 1, truth[k - 1], k, truth[k], np.diag(SIG ** 2)) for k in range(1, len(truth))]
    edges.append(_loop(truth, 0, len(truth) - 1))
    start = {k: truth[k] @ _T(0.05 * np.sin(k), 0.03, -0.02, 3.0 * np.cos(k)) for k in range(len(truth))}
    start[0] = truth[0]
    res = optimize(start, edges, fixed=0)
    for k, T in enumerate(truth):
        np.testing.assert_allclose(res.poses[k], T, atol=1e-6)
    assert res.loop_weights[(0, len(truth) - 1)] > 0.99


def test_a_loop_removes_most_of_the_drift_of_a_square():
    truth = _square()
    odom, edges = _drifting_odometry(truth)
    n = len(truth)
    loops = [_loop(truth, 0, n - 1), _loop(truth, 1, n - 1), _loop(truth, 0, n - 2)]
    res = optimize(dict(enumerate(odom)), edges + loops, fixed=0)
    before = np.linalg.norm(odom[-1][:3, 3] - truth[-1][:3, 3])
    after = np.linalg.norm(res.poses[n - 1][:3, 3] - truth[-1][:3, 3])
    assert before > 0.2, "the hand-made odometry drifts"
    assert after < before / 10
    assert _ate(res.poses, truth) < _ate(dict(enumerate(odom)), truth) / 3
    assert not res.rejected


def test_a_wrong_loop_is_down_weighted_and_the_map_stays():
    truth = _square()
    odom, edges = _drifting_odometry(truth)
    n = len(truth)
    good = [_loop(truth, 0, n - 1), _loop(truth, 1, n - 1), _loop(truth, 0, n - 2)]
    wrong = _loop(truth, 3, 13, error=_T(1.5, -0.8, 0.0, 25.0))  # perceptual aliasing across the square
    clean = optimize(dict(enumerate(odom)), edges + good, fixed=0)
    robust = optimize(dict(enumerate(odom)), edges + good + [wrong], fixed=0)
    gaussian = optimize(dict(enumerate(odom)), edges + good + [wrong], fixed=0, robust=False)
    assert (3, 13) in robust.rejected and robust.loop_weights[(0, n - 1)] > 0.5
    assert _ate(robust.poses, truth) < _ate(clean.poses, truth) + 0.01
    assert _ate(gaussian.poses, truth) > 3 * _ate(robust.poses, truth), "without the kernel the wrong loop bends the map"


def test_moving_every_pose_moves_the_solution():
    truth = _square()
    odom, edges = _drifting_odometry(truth)
    edges.append(_loop(truth, 0, len(truth) - 1))
    C = random_rigid(np.random.default_rng(4), max_angle_deg=120.0, max_t=3.0)
    a = optimize(dict(enumerate(odom)), edges, fixed=0)
    b = optimize({k: C @ T for k, T in enumerate(odom)}, edges, fixed=0)
    for k in a.poses:
        np.testing.assert_allclose(b.poses[k], C @ a.poses[k], atol=1e-6)


def test_odometry_edge_convention_matches_the_tracker_covariance():
    rng = np.random.default_rng(1)
    Pi, Pj = random_rigid(rng), random_rigid(rng)
    C_world = np.diag([1e-4, 2e-4, 3e-4, 1e-5, 2e-5, 3e-5])
    e = odometry_edge(0, Pi, 1, Pj, C_world)
    np.testing.assert_allclose(Pi @ e.T_i_from_j, Pj, atol=1e-12)
    Ad = adjoint(Pj)  # a right perturbation in j's frame moved back to the world is the tracker's
    np.testing.assert_allclose(Ad @ e.covariance @ Ad.T, C_world, atol=1e-12)


def test_separate_components_keep_their_anchors_and_bad_edges_are_refused():
    truth = _square()
    odom, edges = _drifting_odometry(truth)
    poses = dict(enumerate(odom))
    poses[100] = _T(5, 5, 0, 10)  # a keyframe placed without a reference (after set_pose)
    res = optimize(poses, edges + [_loop(truth, 0, len(truth) - 1)], fixed=0)
    np.testing.assert_allclose(res.poses[100], poses[100], atol=1e-9)
    np.testing.assert_allclose(res.poses[0], truth[0], atol=1e-9)
    with pytest.raises(ValueError, match="edge 0 -> 999"):
        optimize(poses, [Edge(0, 999, np.eye(4), np.eye(6) * 1e-4, LOOP)])
