"""Preprocessing and the classic detectors against Open3D / slow references, and invariances."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest

from conftest import random_rigid, transform
from ukpgan_ros.cloud import as_points, crop_range, make_working_cloud, voxel_downsample
from ukpgan_ros.features.normals import estimate_normals
from ukpgan_ros.detectors import make_detector
from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.detectors.classic import FpsDetector, IssDetector, RandomDetector, farthest_point_sampling, iss_saliency


@pytest.fixture(scope="module")
def scene():
    """A box room corner with a sphere and a cylinder: curved and sharp structure, no symmetry."""
    meshes = [o3d.geometry.TriangleMesh.create_box(2.0, 2.0, 0.05), o3d.geometry.TriangleMesh.create_box(0.05, 2.0, 1.5),
              o3d.geometry.TriangleMesh.create_sphere(0.3).translate((1.0, 0.8, 0.4)),
              o3d.geometry.TriangleMesh.create_cylinder(0.15, 0.8).translate((0.5, 1.5, 0.45)),
              o3d.geometry.TriangleMesh.create_box(0.4, 0.3, 0.5).translate((1.4, 0.2, 0.05))]
    mesh = meshes[0]
    for m in meshes[1:]:
        mesh += m
    o3d.utility.random.seed(1)
    return np.asarray(mesh.sample_points_uniformly(20000).points, np.float32)


def test_as_points_validates_and_drops_nonfinite():
    pts = np.array([[0, 0, 1], [np.nan, 0, 1], [1, np.inf, 2], [1, 2, 3]], np.float64)
    out = as_points(pts)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    with pytest.raises(ValueError, match="shape"):
        as_points(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="numeric"):
        as_points(np.array([["a", "b", "c"]]))


def test_crop_and_voxel_match_slow_references(scene):
    d = np.linalg.norm(scene, axis=1)
    assert len(crop_range(scene, 0.5, 2.0)) == int(((d >= 0.5) & (d <= 2.0)).sum())
    vox = voxel_downsample(scene, 0.1)
    keys = np.floor((scene - (scene.min(0) - 0.05)) / 0.1).astype(np.int64)  # grid anchored at min - v/2
    assert len(vox) == len(np.unique(keys, axis=0))
    # each output point is the mean of one occupied voxel
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    means = np.zeros((len(uniq), 3))
    np.add.at(means, inv.ravel(), scene)
    means /= np.bincount(inv.ravel())[:, None]
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(means).query(vox)
    assert np.mean(dist < 1e-5) > 0.99  # points on a voxel face may fall either side in float32


def test_normals_face_the_viewpoint_and_are_unit(scene):
    n = estimate_normals(scene, 0.1, viewpoint=(5.0, 5.0, 5.0))
    assert np.allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    assert np.all(np.einsum("ij,ij->i", n, np.array([5.0, 5.0, 5.0]) - scene) >= 0)


def test_fps_equals_a_slow_textbook_loop(scene):
    # (Open3D 0.20's farthest_point_down_sample is no reference: its 2nd sample is not the
    # point farthest from the 1st.)
    pts = voxel_downsample(scene, 0.08)
    idx = farthest_point_sampling(pts, 40)
    ref = [0]
    for _ in range(39):
        far = max(range(len(pts)), key=lambda i: min(float(np.sum((pts[i].astype(float) - pts[j]) ** 2)) for j in ref))
        ref.append(far)
    np.testing.assert_array_equal(idx, ref)


def test_random_is_seeded_and_changes_per_frame(scene):
    a, b = RandomDetector(seed=3), RandomDetector(seed=3)
    ka, kb = a.detect(scene, None, 50), b.detect(scene, None, 50)
    np.testing.assert_array_equal(np.sort(ka.indices), np.sort(kb.indices))
    assert not np.array_equal(np.sort(a.detect(scene, None, 50).indices), np.sort(ka.indices))
    assert len(RandomDetector().detect(scene[:10], None, 50)) == 10


def test_iss_indices_scores_and_budget(scene):
    pts = voxel_downsample(scene, 0.03)
    det = IssDetector(voxel_size=0.03, nms_radius=0.06)
    k = det.detect(pts, None, 40)
    assert 0 < len(k) <= 40
    np.testing.assert_array_equal(k.xyz, pts[k.indices])
    assert np.all(np.diff(k.scores) <= 0)
    # scores are the smallest eigenvalue of the neighbourhood scatter: check two against NumPy
    for j in (0, len(k) - 1):
        nb = pts[np.linalg.norm(pts - pts[k.indices[j]], axis=1) <= det.salient_radius] - pts[k.indices[j]]
        assert k.scores[j] == pytest.approx(np.linalg.eigvalsh(nb.T @ nb / len(nb))[0], rel=1e-3, abs=1e-9)
    assert iss_saliency(pts, np.zeros(0, np.int64), 0.1).shape == (0,)


@pytest.mark.parametrize("name", ["iss", "fps"])
def test_detections_move_with_the_cloud(scene, name):
    """Rigidly moving the cloud moves the keypoints with it (rotation/translation invariance)."""
    pts = voxel_downsample(scene, 0.04)
    T = random_rigid(np.random.default_rng(5))
    det = make_detector(PipelineConfig(detector=name, voxel_size=0.04))
    k0 = det.detect(pts, None, 60)
    k1 = det.detect(transform(pts, T), None, 60)
    if name == "iss":  # same points up to float noise in near-tied eigenvalues: compare as sets
        common = np.intersect1d(k0.indices, k1.indices)
        assert len(common) >= 0.9 * len(k0)
    else:
        np.testing.assert_array_equal(k0.indices, k1.indices)


def test_empty_clouds_give_empty_keypoints():
    empty = np.zeros((0, 3), np.float32)
    for det in (IssDetector(0.05, 0.1), RandomDetector(), FpsDetector()):
        assert len(det.detect(empty, None, 10)) == 0


def test_working_cloud_rejects_garbage():
    with pytest.raises(ValueError):
        make_working_cloud(np.zeros((5, 4)), 0.05, normal_radius=0.1)


@pytest.mark.parametrize("voxel", [0.005, 0.015, 0.05, 0.2])
def test_compiled_voxel_grid_equals_open3d(voxel):
    """The one-pass kernel returns Open3D's voxel means (as a set), in a deterministic order."""
    import open3d as o3d

    rng = np.random.default_rng(3)
    pts = np.concatenate([rng.normal(0, 1, (20000, 3)), rng.uniform(-3, 3, (5000, 3))]).astype(np.float32)
    ours = voxel_downsample(pts, voxel)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
    ref = np.asarray(pcd.voxel_down_sample(voxel).points, np.float32)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours[np.lexsort(ours.T[::-1])], ref[np.lexsort(ref.T[::-1])], atol=1e-6)
    np.testing.assert_array_equal(voxel_downsample(pts, voxel), ours)  # same order every call


def test_working_cloud_crops_finite_points_by_range_like_the_numpy_steps(scene):
    noisy = np.concatenate([scene, [[np.nan, 0, 0], [0, np.inf, 1]], scene[:10] * 40]).astype(np.float32)
    wc = make_working_cloud(noisy, 0.05, 0.3, 4.0, normal_radius=0.1)
    ref = voxel_downsample(crop_range(as_points(noisy), 0.3, 4.0), 0.05)
    assert wc.raw_count == len(noisy) - 2
    np.testing.assert_allclose(np.sort(wc.points, axis=0), np.sort(ref, axis=0), atol=1e-6)
    assert len(make_working_cloud(noisy, 0.0, 0.3, 4.0, normal_radius=0.1)) == len(crop_range(as_points(noisy), 0.3, 4.0))
