"""transforms: quaternions against SciPy, rigidity and bound checks, adjoint identity, stamps."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ukpgan_ros.transforms import (MAX_TRANSLATION_M, adjoint, check_covariance, check_rigid,
                                   matrix_from_translation_quaternion, matrix_to_quaternion, ns_to_sec_nsec,
                                   pose_to_matrix, rotation_angle_deg, rotation_error_deg, seconds_to_sec_nsec,
                                   stamp_ns, stamp_seconds, translation_error)


def _random_T(rng):
    return matrix_from_translation_quaternion(rng.normal(size=3), Rotation.random(random_state=rng).as_quat())


def test_quaternion_round_trip_and_canonical_sign():
    rng = np.random.default_rng(0)
    for _ in range(50):
        T = _random_T(rng)
        t, q = matrix_to_quaternion(T)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(matrix_from_translation_quaternion(t, q), T, atol=1e-12)
        np.testing.assert_allclose(matrix_from_translation_quaternion(t, -q), T, atol=1e-12)
        pose = SimpleNamespace(position=SimpleNamespace(x=t[0], y=t[1], z=t[2]),
                               orientation=SimpleNamespace(x=q[0], y=q[1], z=q[2], w=q[3]))
        np.testing.assert_allclose(pose_to_matrix(pose), T, atol=1e-12)


def test_rigidity_and_bounds_are_checked_by_name():
    T = np.eye(4)
    T[:3, :3] *= 1000.0
    with pytest.raises(ValueError, match="initialpose: .*rotation"):
        check_rigid(T, "initialpose")
    far = np.eye(4)
    far[0, 3] = 1e160
    with pytest.raises(ValueError, match="beyond"):
        check_rigid(far, "pose", max_translation=MAX_TRANSLATION_M)
    with pytest.raises(ValueError, match="finite"):
        matrix_to_quaternion(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="quaternion"):
        matrix_from_translation_quaternion((0, 0, 0), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="negative"):
        check_covariance(-np.eye(6))
    with pytest.raises(ValueError, match="symmetric"):
        check_covariance(np.eye(6) + np.triu(np.ones((6, 6)), 1))
    with pytest.raises(ValueError, match="beyond"):
        check_covariance(np.eye(6) * 1e308)


def test_angles_against_scipy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        A, B = _random_T(rng), _random_T(rng)
        ref = np.degrees(Rotation.from_matrix(A[:3, :3].T @ B[:3, :3]).magnitude())
        assert abs(rotation_error_deg(A, B) - ref) < 1e-6
        assert abs(rotation_angle_deg(A[:3, :3]) - np.degrees(Rotation.from_matrix(A[:3, :3]).magnitude())) < 1e-6
        assert abs(translation_error(A, B) - np.linalg.norm(A[:3, 3] - B[:3, 3])) < 1e-12


def test_adjoint_moves_perturbations():
    """exp(Ad d) T == T exp(d) for small d (first order)."""
    rng = np.random.default_rng(2)
    T = _random_T(rng)
    d = 1e-6 * rng.normal(size=6)

    def exp(v):
        E = np.eye(4)
        E[:3, :3] = Rotation.from_rotvec(v[3:]).as_matrix()
        E[:3, 3] = v[:3]
        return E

    np.testing.assert_allclose(exp(adjoint(T) @ d) @ T, T @ exp(d), atol=1e-10)


def test_stamps():
    assert stamp_ns(SimpleNamespace(sec=3, nanosec=7)) == 3_000_000_007
    assert stamp_seconds(SimpleNamespace(sec=3, nanosec=500_000_000)) == 3.5
    assert ns_to_sec_nsec(-1) == (-1, 999_999_999)
    assert seconds_to_sec_nsec(-0.25) == (-1, 750_000_000)
    assert seconds_to_sec_nsec(1.9999999999) == (2, 0)
    with pytest.raises(ValueError):
        seconds_to_sec_nsec(float("inf"))
