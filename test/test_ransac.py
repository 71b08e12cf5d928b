"""The compiled RANSAC against ground truth and against Open3D's RANSAC on the same matches."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import open3d as o3d
import pytest

from conftest import random_rigid, transform
from ukpgan_ros.registration import count_inliers, ransac_from_correspondences


def _matches(seed: int, n: int = 300, outliers: float = 0.7, noise: float = 0.005):
    rng = np.random.default_rng(seed)
    T = random_rigid(rng, 180.0, 2.0)
    src = rng.uniform(-2, 2, (n, 3)).astype(np.float32)
    tgt = transform(src, T) + rng.normal(0, noise, (n, 3)).astype(np.float32)
    bad = rng.random(n) < outliers
    tgt[bad] = rng.uniform(-2, 2, (int(bad.sum()), 3))
    perm = rng.permutation(n)  # targets in another order, as descriptor matches come
    corr = np.stack([np.arange(n), np.argsort(perm)], 1)
    return src, tgt[perm], corr, T, ~bad


@pytest.mark.parametrize("seed", range(8))
def test_recovers_the_motion_like_open3d(seed: int) -> None:
    src, tgt, corr, T, good = _matches(seed)
    ours, inliers = ransac_from_correspondences(src, tgt, corr, 0.03, 100000, 0.999, seed=seed)
    assert np.abs(ours - T).max() < 0.02
    assert inliers == count_inliers(src, tgt, corr, ours, 0.03) >= 0.95 * good.sum()
    reg = o3d.pipelines.registration
    pcd = lambda p: o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p.astype(np.float64)))  # noqa: E731
    o3d.utility.random.seed(seed)
    ref = reg.registration_ransac_based_on_correspondence(
        pcd(src), pcd(tgt), o3d.utility.Vector2iVector(corr.astype(np.int32)), 0.03,
        reg.TransformationEstimationPointToPoint(False), 3,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(0.03)],
        reg.RANSACConvergenceCriteria(100000, 0.999))
    # the least-squares fit on all inliers keeps at least as many as Open3D's best sample
    assert inliers >= count_inliers(src, tgt, corr, np.asarray(ref.transformation), 0.03)


def test_same_seed_same_transform_in_another_process() -> None:
    src, tgt, corr, _, _ = _matches(3, outliers=0.85)
    here, _ = ransac_from_correspondences(src, tgt, corr, 0.03, 100000, 0.999, seed=7)
    code = ("import numpy as np, sys; sys.path[:0] = ['test']; from test_ransac import _matches; "
            "from ukpgan_ros.registration import ransac_from_correspondences as r; "
            "s, t, c, _, _ = _matches(3, outliers=0.85); "
            "print(repr(r(s, t, c, 0.03, 100000, 0.999, seed=7)[0].tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    np.testing.assert_array_equal(np.array(eval(out)), here)


def test_no_structure_gives_few_inliers_and_too_few_matches_give_identity() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(-2, 2, (200, 3)).astype(np.float32)
    tgt = rng.uniform(-2, 2, (200, 3)).astype(np.float32)
    corr = np.stack([np.arange(200), np.arange(200)], 1)
    _, inliers = ransac_from_correspondences(src, tgt, corr, 0.02, 20000, 0.999, seed=0)
    assert inliers < 6
    T, n = ransac_from_correspondences(src, tgt, corr[:2], 0.02)
    assert n == 0 and np.array_equal(T, np.eye(4))
