"""Rigid-transform and time helpers, written once: matrix <-> quaternion (with the rigidity
check), pose <-> matrix, rotation angle and errors, the adjoint, stamps <-> nanoseconds/seconds,
and the bounds a pose or covariance from outside must respect.

ROS-free: anything with ``x, y, z, w`` / ``position, orientation`` / ``sec, nanosec``
attributes works (rclpy messages, rosbags dataclasses). Transforms are named by their frames,
``T_a_from_b`` maps b coordinates into a.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "MAX_TRANSLATION_M", "MAX_VARIANCE", "check_rigid", "check_covariance", "matrix_to_quaternion",
    "quaternion_to_matrix", "matrix_from_translation_quaternion", "pose_to_matrix", "rotation_angle_deg",
    "rotation_error_deg", "translation_error", "adjoint", "moved_covariance", "stamp_ns", "stamp_seconds", "ns_to_sec_nsec",
    "seconds_to_sec_nsec",
]

# The largest translation a pose from outside (initialpose, a map file) may have [m]: far beyond
# any robot's workspace, far below where squaring it (covariance propagation) overflows.
MAX_TRANSLATION_M = 1e6
# The largest variance accepted on a covariance's diagonal [m^2 or rad^2].
MAX_VARIANCE = 1e12


def check_rigid(T: Any, what: str = "transform", max_translation: float | None = None) -> np.ndarray:
    """``T`` as a (4, 4) float64 rigid transform; ValueError naming ``what`` if it is not finite,
    its last row is not [0, 0, 0, 1], its 3x3 is not a rotation (to 1e-3), or (with
    ``max_translation``) its translation is longer than that [m]."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"{what}: expected a finite 4x4 transform, got shape {T.shape}")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"{what}: last row of a rigid transform must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    if abs(np.linalg.det(R) - 1.0) > 1e-3 or not np.allclose(R.T @ R, np.eye(3), atol=1e-3):
        raise ValueError(f"{what}: upper-left 3x3 is not a rotation matrix")
    if max_translation is not None:
        t = np.abs(T[:3, 3])
        norm = float(t.max()) if t.max() > max_translation else float(np.linalg.norm(t))  # no overflow
        if not norm <= max_translation:
            raise ValueError(f"{what}: translation {norm:.3g} m is beyond the {max_translation:.0e} m a pose may have")
    return T


def check_covariance(cov: Any, what: str = "covariance", max_variance: float = MAX_VARIANCE) -> np.ndarray:
    """``cov`` as a (6, 6) float64 covariance; ValueError naming ``what`` if it is not finite,
    not symmetric (to 1e-9 relative), or has a negative or huge (> ``max_variance``) diagonal."""
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (6, 6) or not np.isfinite(cov).all():
        raise ValueError(f"{what}: expected a finite 6x6 covariance, got shape {cov.shape}")
    scale = max(1.0, float(np.abs(cov).max()))
    if not np.allclose(cov, cov.T, atol=1e-9 * scale, rtol=0.0):
        raise ValueError(f"{what}: not symmetric")
    d = np.diag(cov)
    if (d < 0).any():
        raise ValueError(f"{what}: negative variance on the diagonal ({d.min():.3g})")
    if (d > max_variance).any():
        raise ValueError(f"{what}: variance {d.max():.3g} is beyond {max_variance:.0e}")
    return cov


def matrix_to_quaternion(T: Any) -> tuple[np.ndarray, np.ndarray]:
    """Translation (3,) and unit quaternion (x, y, z, w) with w >= 0 (one canonical sign, so
    consecutive transforms do not flip) of a rigid 4x4; ValueError if it is not rigid."""
    T = check_rigid(T)
    q = Rotation.from_matrix(T[:3, :3]).as_quat()  # scalar-last (x, y, z, w)
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return T[:3, 3].copy(), q


def quaternion_to_matrix(q: Any) -> np.ndarray:
    """The 3x3 rotation of a quaternion (x, y, z, w), normalised; ValueError if it is not finite
    or (nearly) zero."""
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(q)) if q.shape == (4,) else 0.0
    if q.shape != (4,) or not np.isfinite(q).all() or norm < 1e-6:
        raise ValueError(f"invalid orientation quaternion {q.tolist()}")
    return Rotation.from_quat(q / norm).as_matrix()


def matrix_from_translation_quaternion(t: Any, q: Any) -> np.ndarray:
    """The 4x4 of a translation (3,) and a quaternion (x, y, z, w)."""
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(q)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def pose_to_matrix(pose: Any) -> np.ndarray:
    """A geometry_msgs Pose (``position``, ``orientation``) or Transform (``translation``,
    ``rotation``) as a 4x4 rigid transform; ValueError for a bad quaternion."""
    p = pose.position if hasattr(pose, "position") else pose.translation
    q = pose.orientation if hasattr(pose, "orientation") else pose.rotation
    return matrix_from_translation_quaternion((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def rotation_angle_deg(R: Any) -> float:
    """Angle [deg] of a rotation (the 3x3 of ``R``; a 4x4 is accepted)."""
    R = np.asarray(R, dtype=np.float64)[:3, :3]
    return math.degrees(math.acos(float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def rotation_error_deg(T_est: Any, T_gt: Any) -> float:
    """Geodesic angle between the rotations of two transforms [deg]."""
    return rotation_angle_deg(np.asarray(T_est)[:3, :3].T @ np.asarray(T_gt)[:3, :3])


def translation_error(T_est: Any, T_gt: Any) -> float:
    """Euclidean distance between the translations of two transforms [m]."""
    return float(np.linalg.norm(np.asarray(T_est)[:3, 3] - np.asarray(T_gt)[:3, 3]))


def adjoint(T: Any) -> np.ndarray:
    """6x6 adjoint of a rigid transform for (x, y, z, rx, ry, rz) left perturbations:
    ``exp(Ad @ d) T = T exp(d)``; covariances move as ``Ad C Ad^T``."""
    T = np.asarray(T, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    tx = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
    Ad = np.zeros((6, 6))
    Ad[:3, :3] = R
    Ad[:3, 3:] = tx @ R
    Ad[3:, 3:] = R
    return Ad


def moved_covariance(T: np.ndarray, cov: np.ndarray, what: str = "covariance") -> np.ndarray:
    """``cov`` (6x6, x y z rx ry rz) moved by the rigid ``T`` (``Ad C Ad^T``); ValueError naming
    ``what`` when the product overflows (a huge translation times a huge variance)."""
    Ad = adjoint(T)
    with np.errstate(over="ignore", invalid="ignore"):
        out = Ad @ np.asarray(cov, np.float64) @ Ad.T
    if not np.isfinite(out).all():
        raise ValueError(f"{what}: moving it by a transform {float(np.linalg.norm(np.asarray(T)[:3, 3])):.3g} m "
                         "away overflows; refused")
    return out


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces Time (``sec``, ``nanosec``) as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_seconds(stamp: Any) -> float:
    """A builtin_interfaces Time/Duration (``sec``, ``nanosec``) as float seconds."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def ns_to_sec_nsec(ns: int) -> tuple[int, int]:
    """Integer nanoseconds as (sec, nanosec) with nanosec in [0, 1e9), also for ns < 0."""
    ns = int(ns)
    return ns // 1_000_000_000, ns % 1_000_000_000


def seconds_to_sec_nsec(seconds: float) -> tuple[int, int]:
    """Float seconds as (sec, nanosec) with nanosec in [0, 1e9), also for t < 0; ValueError
    when not finite."""
    if not math.isfinite(seconds):
        raise ValueError(f"cannot convert {seconds!r} seconds to a stamp")
    sec = math.floor(seconds)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return int(sec), nanosec
