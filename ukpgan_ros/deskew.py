"""Motion distortion of spinning-LiDAR scans (deskew), under constant velocity as KISS-ICP does.

A spinning LiDAR measures its points over one sweep (100 ms at 10 Hz) while it moves: each
point lies in the sensor frame *of its own firing time*. Given each point's time and the motion
of the sensor over one interval (``T_prev_from_curr``, the relative motion of the last two
poses, p_prev = T @ p_curr), a constant body twist ``xi = log(T_prev_from_curr)`` over that
interval gives the sensor pose at time ``tau`` relative to the reference time ``tau_ref`` as
``exp((tau - tau_ref) / dt * xi)``; applying it moves every point into the sensor frame at the
reference time. KISS-ICP uses the same model with min-max normalised times and the end of the
sweep as reference (``reference=1.0``); drivers stamp most clouds at the start of the sweep with
per-point offsets >= 0 (Ouster ``t``, Velodyne ``time``), for which the default ``reference=0``
corrects to the header stamp. Pure NumPy/SciPy on physical quantities, no ROS, no config.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from ukpgan_ros.transforms import check_rigid

__all__ = ["deskew", "se3_log", "se3_exp"]

_SMALL = 1e-6  # rotation angle [rad] below which the series of the SE(3) Jacobian is used


def _jacobian_coefficients(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 - cos θ)/θ² and (θ - sin θ)/θ³ of the SO(3) left Jacobian, with their series near 0."""
    theta = np.asarray(theta, dtype=np.float64)
    small = theta < _SMALL
    t = np.where(small, 1.0, theta)
    a = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(t)) / t**2)
    b = np.where(small, 1.0 / 6.0 - theta**2 / 120.0, (t - np.sin(t)) / t**3)
    return a, b


def se3_log(T: np.ndarray) -> np.ndarray:
    """The twist (v, omega) of a rigid 4x4 transform: ``T = se3_exp(twist)`` (omega as a rotation vector)."""
    T = check_rigid(T, "T_prev_from_curr")
    omega = Rotation.from_matrix(T[:3, :3]).as_rotvec()
    theta = float(np.linalg.norm(omega))
    a, b = (float(c) for c in _jacobian_coefficients(np.array(theta)))
    W = np.array([[0.0, -omega[2], omega[1]], [omega[2], 0.0, -omega[0]], [-omega[1], omega[0], 0.0]])
    V = np.eye(3) + a * W + b * (W @ W)
    v = np.linalg.solve(V, T[:3, 3])
    return np.concatenate([v, omega])


def se3_exp(twist: np.ndarray, s: np.ndarray | float = 1.0) -> tuple[Rotation, np.ndarray]:
    """Rotations and translations of ``exp(s * twist)`` for every scale in ``s`` (vectorised).

    Returns a (stacked) scipy Rotation and (M, 3) translations, M = ``len(s)``.
    """
    twist = np.asarray(twist, dtype=np.float64).reshape(6)
    s = np.atleast_1d(np.asarray(s, dtype=np.float64))
    v, omega = twist[:3], twist[3:]
    phi = s[:, None] * omega  # (M, 3) rotation vectors
    theta = np.abs(s) * float(np.linalg.norm(omega))
    a, b = _jacobian_coefficients(theta)
    wv = np.cross(omega, v)
    wwv = np.cross(omega, wv)
    # V(s omega) (s v) = s v + a s^2 (omega x v) + b s^3 (omega x (omega x v))
    t = s[:, None] * v + (a * s**2)[:, None] * wv + (b * s**3)[:, None] * wwv
    return Rotation.from_rotvec(phi), t


def deskew(
    points: np.ndarray,
    times: np.ndarray,
    T_prev_from_curr: np.ndarray,
    *,
    dt: float | None = None,
    reference: float = 0.0,
) -> np.ndarray:
    """Move each point from the sensor frame at its own time into the sensor frame at ``reference``.

    ``points`` (N, 3) in the sensor frame, ``times`` (N,) their firing times. The sensor moved by
    ``T_prev_from_curr`` (the relative motion of the last two poses, p_prev = T @ p_curr) over one
    interval, at constant velocity. With ``dt`` None, ``times`` and ``reference`` are fractions of
    that interval (times normalised to [0, 1] over a sweep that lasts one interval, as
    :func:`ukpgan_ros.pointcloud2.pointcloud2_point_times` gives with ``normalize=True``); with
    ``dt`` [s] (the time between the two poses), they are seconds relative to the scan stamp.
    Returns float32 (N, 3) ("point at tau" -> ``exp((tau - reference) / dt * xi) @ point``).
    Zero motion returns the points unchanged.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {pts.shape}")
    tau = np.asarray(times, dtype=np.float64).reshape(-1)
    if tau.shape[0] != pts.shape[0]:
        raise ValueError(f"times has {tau.shape[0]} entries for {pts.shape[0]} points")
    if not np.isfinite(tau).all():
        raise ValueError("times hold NaN or inf")
    if not np.isfinite(reference):
        raise ValueError(f"reference must be finite, got {reference}")
    if dt is not None and not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number of seconds, got {dt}")
    twist = se3_log(T_prev_from_curr)
    out = np.asarray(pts, dtype=np.float32)
    if len(pts) == 0 or not np.any(twist):
        return out.copy()
    s = (tau - reference) / (1.0 if dt is None else float(dt))
    # Points of one firing share a time (a column of a spinning LiDAR): one pose per distinct time.
    uniq, inverse = np.unique(s, return_inverse=True)
    rot, trans = se3_exp(twist, uniq)
    moved = rot[inverse].apply(pts.astype(np.float64)) + trans[inverse]
    return moved.astype(np.float32)
