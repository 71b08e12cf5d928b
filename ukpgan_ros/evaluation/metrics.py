"""Metrics of keypoints for registration against ground truth: repeatability, inlier ratio,
registration success, and the rotation / translation errors of an estimate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ukpgan_ros.transforms import rotation_error_deg, translation_error

__all__ = [
    "relative_repeatability", "inlier_ratio", "registration_success", "PairMetrics",
    "transform_points", "TAU1", "TAU2", "LOOSE", "STRICT",
]

TAU1, TAU2 = 0.10, 0.05  # inlier distance of a match [m]; inlier ratio for feature-match recall
LOOSE, STRICT = (15.0, 0.30), (5.0, 0.10)  # registration success: (max RE [deg], max TE [m])


def transform_points(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    return (points @ T[:3, :3].T + T[:3, 3]).astype(np.float32)


def relative_repeatability(src_kp: np.ndarray, tgt_kp: np.ndarray, src_cloud: np.ndarray, tgt_cloud: np.ndarray,
                           T_tgt_from_src: np.ndarray, eps: float, overlap: float) -> float:
    """Share of keypoints with a keypoint of the other cloud within ``eps`` after the true motion.

    Only keypoints that land within ``overlap`` of the other cloud count (a keypoint outside
    the common part cannot repeat); both directions are averaged. NaN when none overlap.
    """
    T_inv = np.linalg.inv(T_tgt_from_src)
    shares = []
    for kp, other_kp, other_cloud, T in ((src_kp, tgt_kp, tgt_cloud, T_tgt_from_src),
                                         (tgt_kp, src_kp, src_cloud, T_inv)):
        if len(kp) == 0 or len(other_kp) == 0:
            continue
        moved = transform_points(kp, T)
        inside = cKDTree(other_cloud).query(moved)[0] <= overlap
        if not inside.any():
            continue
        d = cKDTree(other_kp).query(moved[inside])[0]
        shares.append(float((d <= eps).mean()))
    return float(np.mean(shares)) if shares else float("nan")


def inlier_ratio(src_xyz: np.ndarray, tgt_xyz: np.ndarray, corr: np.ndarray, T_tgt_from_src: np.ndarray,
                 tau1: float = TAU1) -> float:
    """Share of matches (src row, tgt row) whose points lie within ``tau1`` under the true motion."""
    if len(corr) == 0:
        return 0.0
    d = np.linalg.norm(transform_points(src_xyz[corr[:, 0]], T_tgt_from_src) - tgt_xyz[corr[:, 1]], axis=1)
    return float((d < tau1).mean())


def registration_success(T_est: np.ndarray, T_gt: np.ndarray, max_rot_deg: float, max_trans: float) -> bool:
    """RE < ``max_rot_deg`` and TE < ``max_trans``."""
    return rotation_error_deg(T_est, T_gt) < max_rot_deg and translation_error(T_est, T_gt) < max_trans


@dataclass(frozen=True)
class PairMetrics:
    """One row of `ukpgan eval`: a (pair, detector, budget, descriptor, trial) and its metrics."""

    dataset: str
    pair: str
    gap: int
    detector: str
    budget: int
    descriptor: str
    trial: int
    keypoints: int
    repeatability_5cm: float
    repeatability_10cm: float
    matches: int
    inlier_ratio: float
    feature_match_recall: float
    rotation_error_deg: float
    translation_error_m: float
    registered: float
    registered_strict: float
    detect_s: float
    describe_s: float
    ransac_s: float
