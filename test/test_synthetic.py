"""The built-in synthetic depth camera: geometry, trajectory, noise model, determinism."""

from __future__ import annotations

import time

import numpy as np
import open3d as o3d
import pytest
from scipy.spatial import cKDTree

from ukpgan_ros.datasets import DepthFrame, DepthSequence
from ukpgan_ros.datasets.synthetic import KINECT_SIGMA_Z2, ROOM_SIZE, SyntheticSequence, camera_pose


def small(noise: bool = False, **kw) -> SyntheticSequence:
    """Same field of view as the default 640x480/525 camera at a quarter of the pixels."""
    return SyntheticSequence(num_frames=kw.pop("num_frames", 900), width=320, height=240, fx=262.5, noise=noise, **kw)


def to_world(frame: DepthFrame) -> np.ndarray:
    pts = frame.points().astype(np.float64)
    return pts @ frame.pose[:3, :3].T + frame.pose[:3, 3]


def in_view_of(fi: DepthFrame, fj: DepthFrame) -> np.ndarray:
    """Points of frame j, in frame i's optical frame, that project inside frame i's image."""
    T = np.linalg.inv(fi.pose) @ fj.pose
    b = fj.points().astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(fi.K[0, 0] * b[:, 0] / b[:, 2] + fi.K[0, 2])
        v = np.round(fi.K[1, 1] * b[:, 1] / b[:, 2] + fi.K[1, 2])
    return b[(b[:, 2] > 0) & (u >= 0) & (u < fi.width) & (v >= 0) & (v < fi.height)]


def rotation_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def test_default_camera_frames_are_valid_metric_and_fast():
    seq = SyntheticSequence()
    assert isinstance(seq, DepthSequence) and seq.name == "synthetic"
    assert len(seq) == 120 and (seq.width, seq.height, seq.rate_hz) == (640, 480, 30.0)
    np.testing.assert_allclose(seq.K, [[525, 0, 319.5], [0, 525, 239.5], [0, 0, 1]])
    seq[0]  # warm-up
    times = []
    for i in (0, 60, 119):
        t0 = time.perf_counter()
        f = seq[i]
        times.append(time.perf_counter() - t0)
        assert f.index == i and f.stamp == pytest.approx(i / 30.0)
        assert f.depth_m.shape == (480, 640) and f.depth_m.dtype == np.float32
        valid = f.depth_m > 0
        assert valid.mean() > 0.85, f"frame {i}: only {valid.mean():.0%} valid"
        d = f.depth_m[valid]
        assert d.min() >= 0.4 and d.max() <= 6.0
        np.testing.assert_allclose(d * 1000.0, np.round(d * 1000.0), atol=2e-3)  # whole millimetres
        np.testing.assert_allclose(f.pose, seq.pose(i))
    # Generous bound for a loaded 2-core machine; the measured time is ~45 ms per frame.
    assert np.median(times) < 0.25, f"rendering took {np.median(times) * 1e3:.0f} ms"


def test_depth_is_optical_z_on_the_room_surface():
    seq = small()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(seq.mesh()))
    for i in (0, 250):
        pts = to_world(seq[i]).astype(np.float32)
        dist = scene.compute_distance(o3d.core.Tensor(pts)).numpy()
        # Ray length instead of z would put off-axis points up to ~25 % behind the surface.
        assert np.quantile(dist, 0.999) < 1e-3, np.quantile(dist, [0.5, 0.999])


def test_ground_truth_poses_align_noise_free_frames():
    seq = small()
    f0, f6 = seq[0], seq[6]
    d, _ = cKDTree(to_world(f0)).query(to_world(f6))
    assert np.mean(d < 0.02) >= 0.90
    d_raw, _ = cKDTree(f0.points()).query(f6.points())  # no transform: clearly worse
    assert np.mean(d_raw < 0.02) < 0.5
    for i in (0, 300, 600):  # one second apart, over the part both frames see
        fi, fj = seq[i], seq[i + 30]
        d, _ = cKDTree(fi.points().astype(np.float64)).query(in_view_of(fi, fj))
        assert np.mean(d < 0.02) >= 0.90, (i, np.mean(d < 0.02))


def test_noise_matches_kinect_model_at_3m():
    noisy, clean = small(noise=True), small(noise=False)
    zn, zc = noisy[80].depth_m, clean[80].depth_m  # sees the kitchen from 1.3 to 4.5 m
    both = (zn > 0) & (zc > 0)
    at3 = both & (np.abs(zc - 3.0) < 0.2)
    assert at3.sum() > 2000
    err = (zn - zc)[at3]
    expected = KINECT_SIGMA_Z2 * 3.0**2  # ~1.3 cm
    assert 0.75 * expected < err.std() < 1.3 * expected, err.std()
    assert abs(err.mean()) < 2e-3
    near = both & (np.abs(zc - 1.5) < 0.1)
    assert near.sum() > 500
    # Quadratic growth: at 1.5 m the error is about a quarter of that at 3 m.
    ratio = err.std() / (zn - zc)[near].std()
    assert 2.5 < ratio < 6.0, ratio
    # Dropout exists (grazing floor, edges) but leaves most of the image.
    assert 0.02 < np.mean((zc > 0) & (zn == 0)) < 0.15


def test_same_seed_same_frames_other_seed_differs():
    a, b = small(noise=True, seed=7), small(noise=True, seed=7)
    fa5 = a[5]
    b[40], b[3]  # access order must not matter
    np.testing.assert_array_equal(fa5.depth_m, b[5].depth_m)
    np.testing.assert_array_equal(fa5.pose, b[5].pose)
    c = small(noise=True, seed=8)
    assert not np.array_equal(fa5.depth_m, c[5].depth_m)
    np.testing.assert_array_equal(fa5.pose, c[5].pose)  # the trajectory is fixed
    # The seed also moves the clutter: the noise-free geometry differs somewhere.
    assert not np.array_equal(small(seed=7)[120].depth_m, small(seed=8)[120].depth_m)


def test_trajectory_is_a_smooth_handheld_walk_inside_the_room():
    seq = small(num_frames=1000)
    poses = np.stack([seq.pose(i) for i in range(len(seq))])
    R = poses[:, :3, :3]
    np.testing.assert_allclose(R.transpose(0, 2, 1) @ R, np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    step = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    turn = np.array([rotation_deg(R[k].T @ R[k + 1]) for k in range(len(R) - 1)])
    assert 0.008 < step.min() and step.max() < 0.03, (step.min(), step.max())
    assert 0.2 < turn.min() and turn.max() < 1.2, (turn.min(), turn.max())
    assert np.all(poses[:, 2, 1] < -0.8)  # optical y points down (world z is up)
    assert np.all(poses[:, 2, 2] < 0)  # looking slightly downwards
    # Never inside furniture: at least 0.4 m from every surface.
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(seq.mesh()))
    clearance = scene.compute_distance(o3d.core.Tensor(poses[:, :3, 3].astype(np.float32))).numpy()
    assert clearance.min() > 0.4 and np.all(poses[:, :3, 3] > 0) and np.all(poses[:, :3, 3] < ROOM_SIZE)
    np.testing.assert_allclose(camera_pose(10 / 30.0), seq.pose(10))


def test_views_are_geometrically_well_conditioned():
    """Point-to-plane ICP has no weak direction anywhere on a loop (a bare room would)."""
    seq = small()
    voxel = 0.05
    for i in range(0, 480, 60):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(seq[i].points().astype(np.float64)))
        pcd = pcd.voxel_down_sample(voxel)
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * voxel, max_nn=30))
        p = np.asarray(pcd.points)
        n = np.asarray(pcd.normals)
        p = (p - p.mean(0)) / np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean())
        A = np.hstack([np.cross(p, n), n])
        ev = np.linalg.eigvalsh(A.T @ A / len(A))
        assert ev[0] / ev[-1] > 0.05, (i, ev)


def test_fpfh_ransac_recovers_ground_truth_between_frames():
    seq = SyntheticSequence(num_frames=40)
    voxel = 0.05
    reg = o3d.pipelines.registration

    def prep(frame: DepthFrame):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(frame.points(stride=2, max_depth=5.0).astype(np.float64)))
        pcd = pcd.voxel_down_sample(voxel)
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * voxel, max_nn=30))
        return pcd, reg.compute_fpfh_feature(pcd, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * voxel, max_nn=100))

    o3d.utility.random.seed(0)
    f0, f20 = seq[0], seq[20]
    (p0, h0), (p20, h20) = prep(f0), prep(f20)
    ransac = reg.registration_ransac_based_on_feature_matching(
        p20, p0, h20, h0, True, 1.5 * voxel, reg.TransformationEstimationPointToPoint(False), 3,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(1.5 * voxel)],
        reg.RANSACConvergenceCriteria(100000, 0.999),
    )
    T = reg.registration_icp(p20, p0, 1.5 * voxel, ransac.transformation, reg.TransformationEstimationPointToPlane()).transformation
    E = np.linalg.inv(np.linalg.inv(f0.pose) @ f20.pose) @ T
    assert np.linalg.norm(E[:3, 3]) < 0.05 and rotation_deg(E[:3, :3]) < 2.0


def test_bad_arguments_and_indices():
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticSequence(num_frames=0)
    with pytest.raises(ValueError, match="image size"):
        SyntheticSequence(width=1)
    with pytest.raises(ValueError, match="fx"):
        SyntheticSequence(fx=float("nan"))
    with pytest.raises(ValueError, match="min_depth"):
        SyntheticSequence(min_depth=3.0, max_depth=2.0)
    seq = SyntheticSequence(num_frames=5, width=16, height=12, fx=13.0)
    assert seq[-1].index == 4 and [f.index for f in seq] == [0, 1, 2, 3, 4]
    with pytest.raises(IndexError):
        seq[5]
    with pytest.raises(TypeError):
        seq[1.5]
