"""Metrics of keypoints for registration against ground truth: repeatability, inlier ratio,
registration success, and the rotation / translation errors of an estimate; and the sensor
profiles (:class:`Thresholds`) that say what "close enough" means for a sensor's scale.

The metric functions take their thresholds as physical quantities (metres, degrees); the
evaluation picks one :class:`Thresholds` per data set: :data:`RGBD` (3DMatch conventions) for
depth cameras and fragments, :data:`LIDAR` (KITTI conventions) for spinning LiDARs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ukpgan_ros.transforms import rotation_error_deg, translation_error

__all__ = [
    "relative_repeatability", "inlier_ratio", "registration_success", "PairMetrics",
    "transform_points", "Thresholds", "RGBD", "LIDAR", "PROFILES", "sensor_profile", "TAU1", "TAU2", "LOOSE",
    "STRICT",
]


@dataclass(frozen=True)
class Thresholds:
    """What counts as a repeated keypoint, an inlier match and a registered pair for one kind of
    sensor, and the evaluation's defaults at that scale (voxel, frame gaps)."""

    name: str
    inlier_distance: float  # tau1: a match is an inlier when its points lie this close under the truth [m]
    inlier_ratio: float  # tau2: feature-match recall counts pairs whose inlier ratio exceeds this
    loose: tuple[float, float]  # registration success: (max RE [deg], max TE [m])
    strict: tuple[float, float]  # the stricter success
    repeat_eps: tuple[float, float]  # repeatability radii, tight and loose [m]
    voxel: float  # default working voxel of the evaluation [m]
    gaps: tuple[int, ...]  # default frame gaps of sequence pairs
    stride: int  # default frames between pair starts

    def describe(self) -> str:
        """One line for reports: every threshold with its unit."""
        (r1, t1), (r2, t2) = self.loose, self.strict
        e1, e2 = self.repeat_eps
        return (f"{self.name}: repeatability: nearest keypoint within {_m(e1)}/{_m(e2)}; inlier ratio: mutual "
                f"matches within {_m(self.inlier_distance)}; FMR: inlier ratio > {self.inlier_ratio * 100:g} %; "
                f"RR: RANSAC with RE < {r1:g}° & TE < {_m(t1)} (strict: RE < {r2:g}° & TE < {_m(t2)})")


def _m(x: float) -> str:
    return f"{x * 100:g} cm" if x < 1.0 else f"{x:g} m"


# Depth cameras: the 3DMatch benchmark's tau1 = 10 cm, tau2 = 5 % (Deng et al. 2018, FCGF, Predator)
# and its registration recall RE < 15°, TE < 30 cm (GeoTransformer, Predator); strict 5° / 10 cm.
RGBD = Thresholds("rgbd", 0.10, 0.05, (15.0, 0.30), (5.0, 0.10), (0.05, 0.10), 0.05, (10, 20, 40, 60, 80), 10)
# Spinning LiDARs: KITTI odometry pairs as FCGF, D3Feat, Predator and GeoTransformer report them:
# registration recall RE < 5°, TE < 2 m; inlier distance 0.6 m (GeoTransformer's KITTI inlier
# ratio); strict: Deep Global Registration's and PointDSC's KITTI success, RE < 5°, TE < 0.6 m.
# Repeatability radii and the voxel keep the RGB-D ratios (1 and 2 voxels, inlier distance 2 voxels).
LIDAR = Thresholds("lidar", 0.60, 0.05, (5.0, 2.0), (5.0, 0.60), (0.30, 0.60), 0.30, (1, 2, 5, 10), 5)
PROFILES = {t.name: t for t in (RGBD, LIDAR)}

# The RGB-D values under their old names (3DMatch conventions).
TAU1, TAU2 = RGBD.inlier_distance, RGBD.inlier_ratio
LOOSE, STRICT = RGBD.loose, RGBD.strict


def sensor_profile(sequence) -> Thresholds:
    """The profile of a sequence: :data:`RGBD` when it has depth images, :data:`LIDAR` when it is a
    stream of point-cloud scans (``has_depth`` False: KITTI, PCD/PLY scans, cloud bags, synthetic_lidar)."""
    from ukpgan_ros.datasets import has_depth

    return RGBD if has_depth(sequence) else LIDAR


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
                 tau1: float) -> float:
    """Share of matches (src row, tgt row) whose points lie within ``tau1`` [m] under the true motion."""
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
    repeatability_tight: float  # within the profile's repeat_eps[0]
    repeatability_loose: float  # within repeat_eps[1]
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
    thresholds: str = "rgbd"  # the profile (PROFILES) its metrics were judged with
