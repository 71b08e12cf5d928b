"""The numba SHOT kernel (``features/shot_cpu``) against PCL 1.13, the torch implementation on
real clouds, and invariances on synthetic ones."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, ROOT, SHARED, need
from ukpgan_ros.features.normals_cpu import normals_cpu
from ukpgan_ros.features.shot_cpu import SHOT_DIM, ShotResult, shot_cpu, warmup

from ukpgan_ros.features.normals import estimate_normals_torch as estimate_normals
from ukpgan_ros.features.shot import compute_shot

FIXTURE = SHARED / "fixtures" / "shot_pcl_3dmatch_r030.npz"


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def pcl():
    if not FIXTURE.exists():
        pytest.skip(f"PCL fixture not found at {FIXTURE} (see ../shared/data/README.md)")
    d = np.load(FIXTURE)
    return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def ours(pcl):
    return shot_cpu(pcl["xyz"], pcl["normals"], float(pcl["radius"]), pcl["query_idx"])


@pytest.fixture(scope="module")
def surface():
    """A synthetic scan: a wavy sheet with a box on it (edges, corners, sharp normal changes),
    points scattered at random (~2 cm apart) with 2 mm noise, exact normals. Random on purpose:
    points on an exact grid sit on PCL's sector boundaries and have isotropic neighbourhoods
    whose x axis is arbitrary, which no rotation test survives (in PCL neither)."""
    rng = np.random.default_rng(7)
    x, y = rng.uniform(-0.5, 0.5, (2, 2500))
    z = 0.05 * np.sin(4 * x) * np.cos(3 * y)
    n = np.stack([-0.2 * np.cos(4 * x) * np.cos(3 * y), 0.15 * np.sin(4 * x) * np.sin(3 * y),
                  np.ones_like(x)], 1)
    sheet = np.stack([x, y, z], 1)
    a, b = rng.uniform(0, 0.3, (2, 3, 225))  # top and two sides of a 0.3 m box
    faces = [np.stack([a[0] - 0.1, b[0] - 0.1, np.full(225, 0.35)], 1),
             np.stack([a[1] - 0.1, np.full(225, -0.1), b[1] + 0.05], 1),
             np.stack([np.full(225, 0.2), a[2] - 0.1, b[2] + 0.05], 1)]
    pts = np.concatenate([sheet, *faces])
    pts += rng.normal(0, 0.002, pts.shape)
    nrm = np.concatenate([n / np.linalg.norm(n, axis=1, keepdims=True),
                          *(np.tile(v, (225, 1)) for v in ([0.0, 0, 1], [0, -1, 0], [1, 0, 0]))])
    return pts.astype(np.float32), nrm.astype(np.float32)


# ------------------------------------------------------------------------------ PCL fixture
# The same tolerances as the torch implementation's tests (test_shot.py), plus what is measured.


def test_lrf_matches_pcl(pcl, ours):
    assert isinstance(ours, ShotResult) and ours.valid.all()
    assert ours.lrf.dtype == np.float32 and ours.lrf.shape == (1000, 3, 3)
    err = np.abs(ours.lrf.reshape(-1, 9) - pcl["lrf"]).max(1)
    assert (err < 1e-3).mean() >= 0.99
    assert np.median(err) < 1e-5
    # measured: every frame within 4e-6 (median 3e-8): the covariance is summed in double
    # like PCL's, so only the float32 frame itself differs (torch: 2.4e-5, float32 sums)
    assert err.max() < 1e-4


def test_descriptors_match_pcl(pcl, ours):
    d = ours.descriptors
    assert d.dtype == np.float32 and d.shape == (1000, SHOT_DIM)
    cos = _cos(d, pcl["shot"])
    assert np.median(cos) >= 0.999
    assert (cos > 0.99).mean() >= 0.99
    assert np.abs(d - pcl["shot"]).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    # measured: largest bin difference 1.8e-7, every cosine above 1 - 1e-7
    assert cos.min() > 1 - 1e-6


def test_sign_vote_ties_match_pcl(pcl, ours):
    """Queries whose frame axis has as many neighbours on each side (PCL then lets the five
    neighbours around the median distance decide): our frames there equal PCL's."""
    xyz, radius = pcl["xyz"], float(pcl["radius"])
    frames = pcl["lrf"].reshape(-1, 3, 3)
    ties = []
    for row, qi in enumerate(pcl["query_idx"]):
        d = xyz - xyz[qi]
        d2 = (d * d).sum(1)
        off = d[(d2 <= np.float32(radius) ** 2) & (d2 > 0)].astype(np.float64)
        margins = 2 * (off @ frames[row][[0, 2]].T.astype(np.float64) >= 0).sum(0) - len(off)
        if (margins == 0).any():
            ties.append(row)
    assert len(ties) >= 5, "the fixture should hold sign-vote ties"
    err = np.abs(ours.lrf[ties] - frames[ties]).max((1, 2))
    assert err.max() < 1e-4
    assert _cos(ours.descriptors[ties], pcl["shot"][ties]).min() > 1 - 1e-6


# ------------------------------------------------------------------- torch on real clouds


def _real_cloud(name: str):
    """A real cloud voxelised at 5 cm with normals (radius 2 voxels, facing the sensor)."""
    from ukpgan_ros.cloud import make_working_cloud
    from ukpgan_ros.datasets import SevenScenesSequence
    from ukpgan_ros.io import read_cloud

    if name == "7scenes frame 0":
        pts = SevenScenesSequence(need(DATA / "7scenes-redkitchen"))[0].points()
    else:
        pts = read_cloud(need(DATA / "3dmatch-redkitchen" / "cloud_bin_0.ply"))
    return make_working_cloud(pts, 0.05, normal_radius=0.1)


@pytest.mark.parametrize("name", ["7scenes frame 0", "3dmatch cloud_bin_0"])
def test_matches_torch_on_real_clouds(name):
    """Agreement with the torch implementation on every point of a real cloud.

    Measured (5 cm voxels, r = 0.3 m, 4 k / 5.2 k points): valid flags equal everywhere, frames
    within 5e-5, descriptors at cosine > 0.9999999 except for 0-2 points per cloud (>= 0.9997)
    that have a neighbour within ~1e-7 m of a sector boundary (|x| = |y| or x = 0 in the
    frame): PCL gives the radial, elevation and cosine-neighbour votes to the neighbour's own
    sector, so the histogram jumps there, and the two frames differ by float32 rounding
    (torch's covariance sums are float32, ours float64 like PCL's).
    """
    cloud = _real_cloud(name)
    ours = shot_cpu(cloud.points, cloud.normals, 0.3)
    desc, lrf, valid = compute_shot(cloud.points, 0.3, cloud.normals)
    np.testing.assert_array_equal(ours.valid, valid)
    assert valid.mean() > 0.99
    cos = _cos(ours.descriptors[valid], desc[valid])
    assert (cos > 0.99999).mean() >= 0.999
    assert cos.min() > 0.99
    err = np.abs(ours.lrf[valid] - lrf[valid]).max((1, 2))
    assert (err < 1e-3).mean() >= 0.999
    assert np.all(ours.descriptors[~ours.valid] == 0) and np.all(ours.lrf[~ours.valid] == 0)


def test_nan_normals_are_skipped_like_torch(pcl):
    xyz, radius = pcl["xyz"], float(pcl["radius"])
    normals = pcl["normals"].copy()
    normals[::7] = np.nan
    normals[3::11, 1] = np.inf
    qi = pcl["query_idx"][:200]
    ours = shot_cpu(xyz, normals, radius, qi)
    desc, lrf, valid = compute_shot(xyz, radius, normals, qi)
    np.testing.assert_array_equal(ours.valid, valid)
    assert valid.all() and np.isfinite(ours.descriptors).all()
    assert _cos(ours.descriptors, desc).min() > 0.99999
    # the frames do not depend on normals at all
    np.testing.assert_array_equal(ours.lrf, shot_cpu(xyz, pcl["normals"], radius, qi).lrf)


def test_max_neighbors_like_torch(pcl):
    xyz, nrm, radius = pcl["xyz"], pcl["normals"], float(pcl["radius"])
    qi = pcl["query_idx"][:100]
    ours = shot_cpu(xyz, nrm, radius, qi, max_neighbors=40)
    desc, lrf, valid = compute_shot(xyz, radius, nrm, qi, max_neighbors=40)
    np.testing.assert_array_equal(ours.valid, valid)
    assert _cos(ours.descriptors[valid], desc[valid]).min() > 0.99999
    full = shot_cpu(xyz, nrm, radius, qi)
    assert _cos(ours.descriptors, full.descriptors).min() < 0.99  # the cap did something


# ------------------------------------------------------------------------------ invariances


def test_rigid_motion_invariance(surface):
    pts, nrm = surface
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = (q * np.sign(np.linalg.det(q))).astype(np.float32)
    t = np.array([2.0, -1.0, 0.5], np.float32)
    a = shot_cpu(pts, nrm, 0.12)
    b = shot_cpu(pts @ rot.T + t, nrm @ rot.T, 0.12)
    np.testing.assert_array_equal(a.valid, b.valid)
    assert a.valid.mean() > 0.99
    cos = _cos(a.descriptors[a.valid], b.descriptors[b.valid])
    assert (cos > 0.9999).mean() >= 0.99 and np.median(cos) > 0.999999
    frame_err = np.abs(a.lrf @ rot.T - b.lrf).max((1, 2))[a.valid]
    assert (frame_err < 1e-3).mean() >= 0.99


def test_query_subsets_equal_rows_of_the_full_run(surface):
    pts, nrm = surface
    full = shot_cpu(pts, nrm, 0.12)
    qi = np.array([5, 900, 17, 5, len(pts) - 1, 0, 1400])
    for sub in (shot_cpu(pts, nrm, 0.12, qi), shot_cpu(pts, nrm, 0.12, qi, threads=1),
                shot_cpu(pts, nrm, 0.12, qi.astype(np.int32))):
        np.testing.assert_array_equal(sub.descriptors, full.descriptors[qi])
        np.testing.assert_array_equal(sub.lrf, full.lrf[qi])
        np.testing.assert_array_equal(sub.valid, full.valid[qi])


def test_threads_give_the_same_result(surface):
    pts, nrm = surface
    one = shot_cpu(pts, nrm, 0.12, threads=1)
    three = shot_cpu(pts, nrm, 0.12, threads=3)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)


def test_permutation_equivariance(surface):
    pts, nrm = surface
    perm = np.random.default_rng(2).permutation(len(pts))
    a = shot_cpu(pts, nrm, 0.12)
    b = shot_cpu(pts[perm], nrm[perm], 0.12)
    np.testing.assert_array_equal(b.valid, a.valid[perm])
    # equal up to the order of the float sums
    np.testing.assert_allclose(b.descriptors, a.descriptors[perm], atol=1e-5)
    np.testing.assert_allclose(b.lrf, a.lrf[perm], atol=1e-5)


def test_copies_of_the_query_point_change_nothing(surface):
    """PCL skips neighbours at the query's own position, in the frame and in the histogram."""
    pts, nrm = surface
    for qi in (0, 100, 2600):
        a = shot_cpu(pts, nrm, 0.12, [qi])
        b = shot_cpu(np.concatenate([pts, pts[[qi, qi]]]), np.concatenate([nrm, -nrm[[qi, qi]]]),
                     0.12, [qi])
        assert a.valid[0] and b.valid[0]
        np.testing.assert_array_equal(b.lrf, a.lrf)
        np.testing.assert_allclose(b.descriptors, a.descriptors, atol=1e-6)


def test_grid_with_binary_search_gives_the_same_result(surface, monkeypatch):
    """Clouds too sparse for a dense table of cells take the sorted-keys path."""
    import ukpgan_ros.features._grid as mod

    pts, nrm = surface
    a = shot_cpu(pts, nrm, 0.12)
    monkeypatch.setattr(mod, "_DENSE_LIMIT", 0)
    monkeypatch.setattr(mod, "_DENSE_PER_POINT", 0)
    b = shot_cpu(pts, nrm, 0.12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------ degenerate and invalid


def test_points_with_fewer_than_five_neighbours_are_invalid():
    rng = np.random.default_rng(3)
    cluster = rng.normal(size=(200, 3)) * 0.05
    lonely = [[10.0, 10, 10]]
    four = [[20.0, 20, 20], [20.01, 20, 20], [20, 20.01, 20], [20, 20, 20.01], [20.01, 20.01, 20]]
    dup = [[30.0, 30, 30]] * 6  # one position six times: no distinct neighbour
    pts = np.concatenate([cluster, lonely, four, dup]).astype(np.float32)
    nrm = np.tile(np.float32([0, 0, 1]), (len(pts), 1))
    res = shot_cpu(pts, nrm, 0.1)
    assert res.valid[:200].mean() > 0.9
    assert not res.valid[200:].any()
    assert (res.descriptors[200:] == 0).all() and (res.lrf[200:] == 0).all()
    assert np.isfinite(res.descriptors).all() and np.isfinite(res.lrf).all()
    # five distinct neighbours are enough
    five = np.concatenate([four, [[20.0, 20.01, 20.01]]]).astype(np.float32)
    ok = shot_cpu(five, nrm[:6], 0.1, [0])
    assert ok.valid[0] and np.isclose(np.linalg.norm(ok.descriptors[0]), 1)


def test_degenerate_frames_and_normals_give_invalid_points():
    # all neighbours on one line: the covariance has a double zero eigenvalue, like torch
    line = np.stack([np.linspace(0, 0.1, 11), np.zeros(11), np.zeros(11)], 1).astype(np.float32)
    nrm = np.tile(np.float32([0, 0, 1]), (11, 1))
    a = shot_cpu(line, nrm, 0.5)
    _, _, tv = compute_shot(line, 0.5, nrm)
    np.testing.assert_array_equal(a.valid, tv)
    # every neighbour's normal missing: an empty histogram
    res = shot_cpu(line + np.float32([0, 0.001, 0]) * np.arange(11)[:, None] ** 2,
                   np.full((11, 3), np.nan, np.float32), 0.5)
    assert not res.valid.any() and (res.descriptors == 0).all() and (res.lrf == 0).all()


def test_empty_query_set_and_dtypes(surface):
    pts, nrm = surface
    for qi in (np.zeros(0, np.int64), [], np.zeros(0, np.int32)):
        res = shot_cpu(pts, nrm, 0.12, qi)
        assert res.descriptors.shape == (0, SHOT_DIM) and res.descriptors.dtype == np.float32
        assert res.lrf.shape == (0, 3, 3) and res.lrf.dtype == np.float32
        assert res.valid.shape == (0,) and res.valid.dtype == bool
    res = shot_cpu(pts.astype(np.float64), nrm.astype(np.float64), 0.12, [0, 1])
    assert res.descriptors.dtype == np.float32 and res.valid.all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"points": np.zeros((0, 3), np.float32), "normals": np.zeros((0, 3), np.float32)},
        {"points": np.array([[0.0, 0, 0], [np.nan, 0, 0]]), "normals": np.zeros((2, 3))},
        {"points": np.array([[0.0, 0, 0], [np.inf, 0, 0]]), "normals": np.zeros((2, 3))},
        {"points": np.zeros((10, 2)), "normals": np.zeros((10, 2))},
        {"points": np.zeros((10, 3, 1)), "normals": np.zeros((10, 3, 1))},
        {"points": np.array([["a", "b", "c"]]), "normals": np.zeros((1, 3))},
        {"normals": np.zeros((5, 3))},
        {"radius": 0.0},
        {"radius": -1.0},
        {"radius": float("inf")},
        {"radius": float("nan")},
        {"radius": True},
        {"radius": "0.5"},
        {"query_idx": np.array([0, 10])},
        {"query_idx": np.array([-1])},
        {"query_idx": np.array([0.0, 1.0])},
        {"query_idx": np.array([True, False])},
        {"query_idx": np.zeros((2, 2), np.int64)},
        {"max_neighbors": 0},
        {"max_neighbors": 2.5},
        {"threads": 0},
    ],
)
def test_bad_input_raises(kwargs):
    rng = np.random.default_rng(0)
    args = {"points": rng.random((10, 3)), "normals": np.tile([0.0, 0, 1], (10, 1)),
            "radius": 0.5}
    args.update(kwargs)
    with pytest.raises(ValueError):
        shot_cpu(**args)


# ------------------------------------------------------------------------------- normals


def test_normals_match_open3d_and_torch():
    """Open3D's normals (hybrid search: the 30 nearest within 2 voxels, oriented to face the
    sensor here) and torch ``estimate_normals`` (every point within the radius, like PCL)."""
    import open3d as o3d
    import torch

    cloud = _real_cloud("7scenes frame 0")
    pts = cloud.points
    ours = normals_cpu(pts, 0.1)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=0.1, max_nn=30))
    ref = np.asarray(pcd.normals, np.float32)
    ref[(ref * -pts).sum(1) < 0] *= -1  # facing the sensor at the origin
    ok = np.isfinite(ours).all(1)
    assert ok.mean() > 0.999
    cos = (ours[ok] * ref[ok]).sum(1)
    # measured: all within 0.999 and on the same side (Open3D sums its covariance in float32)
    assert (cos > 0.999).mean() > 0.995
    np.testing.assert_allclose(np.linalg.norm(ours[ok], axis=1), 1, atol=1e-6)
    all_within = normals_cpu(pts, 0.1, max_nn=None)
    ref = estimate_normals(torch.from_numpy(pts), 0.1).numpy()
    np.testing.assert_array_equal(np.isfinite(all_within), np.isfinite(ref))
    ok = np.isfinite(ref).all(1)
    np.testing.assert_allclose(all_within[ok], ref[ok], atol=1e-5)  # measured 3e-6


def test_normals_orientation_few_neighbours_and_bad_input(surface):
    pts, nrm = surface
    got = normals_cpu(pts, 0.06, viewpoint=(0, 0, 10))
    sheet = slice(0, 2500)  # the wavy sheet's exact normals face +z, as does the viewpoint
    assert ((got[sheet] * nrm[sheet]).sum(1) > 0.9).mean() > 0.95
    far = normals_cpu(np.float32([[0, 0, 0], [0.01, 0, 0], [5, 5, 5], [5, 5, 5.01], [5, 5.01, 5]]),
                      0.1)
    assert np.isnan(far[:2]).all() and np.isfinite(far[2:]).all()
    np.testing.assert_array_equal(normals_cpu(pts, 0.06, threads=1),
                                  normals_cpu(pts, 0.06, threads=2))
    for kwargs in ({"viewpoint": (0, 0)}, {"viewpoint": (0, 0, np.nan)}, {"max_nn": 2},
                   {"radius": 0.0}, {"threads": 0}):
        args = {"points": pts, "radius": 0.06, **kwargs}
        with pytest.raises(ValueError):
            normals_cpu(**args)


def test_import_is_cheap_and_warmup_compiles():
    code = ("import sys, ukpgan_ros.features.shot_cpu as m, ukpgan_ros.features.normals_cpu; "
            "assert 'numba' not in sys.modules and 'torch' not in sys.modules; "
            "m.warmup(); assert 'numba' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
    warmup()


def test_cached_kernels_are_keyed_on_the_helper_files_they_compile():
    """numba stamps a cache entry with the kernel's own file only; ours also with ``_grid.py`` and
    ``_eig3.py`` (the helpers compiled into them), so editing a helper recompiles its callers
    instead of loading stale machine code."""
    from ukpgan_ros.features import _eig3, _grid
    from ukpgan_ros.features import normals_cpu as nc
    from ukpgan_ros.features import shot_cpu as sc

    warmup()
    for mod, kernel in ((sc, sc._shot_block), (nc, nc._normals_block)):
        locator = kernel._cache._impl.locator  # numba internals: what stamps the cache entry
        assert set(locator._files) == {mod.__file__, _grid.__file__, _eig3.__file__}
        assert len(locator.get_source_stamp()) == 3
