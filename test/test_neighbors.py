"""Radius neighbourhoods against scipy's cKDTree and Open3D's KD-tree, capping, batching, chunking."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from conftest import SHARED
from ukpgan_ros.features.neighbors import (
    build_grid,
    pairs_to_padded,
    radius_neighbors,
    radius_pairs,
)

BUNNY = SHARED / "data" / "pcl-bunny" / "bun0.pcd"
FRAGMENT = SHARED / "data" / "3dmatch-redkitchen" / "cloud_bin_0.ply"


def _random_cloud(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, 3)) * scale).astype(np.float32)


def _as_sets(nb) -> list[set[int]]:
    idx = nb.idx.numpy()
    return [set(row[row >= 0].tolist()) for row in idx]


def _check_against_tree(pts: np.ndarray, qs: np.ndarray, radius: float, nb) -> None:
    """Same neighbour sets as a float64 KD-tree, ignoring pairs within rounding of the sphere."""
    tree = cKDTree(pts.astype(np.float64))
    inner = tree.query_ball_point(qs.astype(np.float64), radius * (1 - 1e-5))
    outer = tree.query_ball_point(qs.astype(np.float64), radius * (1 + 1e-5))
    got = _as_sets(nb)
    counts = nb.counts.numpy()
    for q in range(len(qs)):
        assert set(inner[q]) <= got[q] <= set(outer[q]), f"query {q}"
        assert len(inner[q]) <= counts[q] <= len(outer[q])
    # distances are the float32 squared distances of the returned pairs
    rows, cols = np.nonzero(nb.idx.numpy() >= 0)
    pid = nb.idx.numpy()[rows, cols]
    ref = ((pts[pid].astype(np.float64) - qs[rows].astype(np.float64)) ** 2).sum(1)
    np.testing.assert_allclose(nb.dist2.numpy()[rows, cols], ref, rtol=1e-5, atol=1e-7)


def test_random_cloud_matches_kdtree():
    pts = _random_cloud(3000, seed=1)
    qs = np.concatenate([pts[:300], _random_cloud(200, seed=2, scale=1.4) - 0.2])  # some outside
    nb = radius_neighbors(torch.from_numpy(pts), torch.from_numpy(qs), 0.08, max_neighbors=10_000)
    assert nb.idx.dtype == torch.int64 and nb.idx.shape[0] == len(qs)
    _check_against_tree(pts, qs, 0.08, nb)
    assert (nb.idx[:300] >= 0).sum(1).min() >= 1  # cloud points find themselves


@pytest.mark.parametrize("cells_per_radius", [1, 2, 3])
@pytest.mark.parametrize("dense", [True, False])
def test_grid_variants_agree(cells_per_radius, dense):
    """Dense cell table and binary search, and any cell size, give the same pairs."""
    pts = torch.from_numpy(_random_cloud(1500, seed=3))
    qs = torch.from_numpy(_random_cloud(300, seed=4))
    grid = build_grid(pts, 0.1, cells_per_radius=cells_per_radius, dense_limit=None if dense else 0)
    assert (grid.start is not None) == dense
    got = radius_neighbors(pts, qs, 0.1, max_neighbors=4096, grid=grid, sort=True)
    ref = radius_neighbors(pts, qs, 0.1, max_neighbors=4096, sort=True)
    assert torch.equal(got.idx, ref.idx) and torch.equal(got.counts, ref.counts)


def test_chunking_does_not_change_the_result():
    pts = torch.from_numpy(_random_cloud(1000, seed=5))
    ref = radius_neighbors(pts, pts, 0.1, max_neighbors=4096, sort=True)
    got = radius_neighbors(pts, pts, 0.1, max_neighbors=4096, sort=True, chunk_size=97,
                           max_candidates=300)  # forces chunks to split
    assert torch.equal(got.idx, ref.idx)
    assert torch.equal(got.dist2, ref.dist2)
    assert torch.equal(got.counts, ref.counts)


def test_cap_keeps_the_nearest_and_reports_true_counts():
    pts = _random_cloud(4000, seed=6)
    qs = pts[:200]
    k = 8
    nb = radius_neighbors(torch.from_numpy(pts), torch.from_numpy(qs), 0.15, max_neighbors=k,
                          sort=True)
    assert nb.idx.shape == (200, k)
    tree = cKDTree(pts.astype(np.float64))
    full = np.array([len(v) for v in tree.query_ball_point(qs.astype(np.float64), 0.15)])
    assert (full > k).all()  # every query is capped
    np.testing.assert_array_equal(nb.counts.numpy(), full)
    d_ref, _ = tree.query(qs.astype(np.float64), k=k)
    np.testing.assert_allclose(np.sqrt(nb.dist2.numpy()), d_ref, atol=1e-6)
    assert (np.diff(nb.dist2.numpy(), axis=1) >= 0).all()


def test_padding_and_empty_queries():
    pts = torch.tensor([[0.0, 0, 0], [0.05, 0, 0], [1.0, 1, 1]])
    qs = torch.tensor([[0.0, 0, 0], [5.0, 5, 5], [1.0, 1, 1.01]])
    nb = radius_neighbors(pts, qs, 0.1, sort=True)
    assert nb.idx.shape == (3, 2)
    assert nb.idx.tolist() == [[0, 1], [-1, -1], [2, -1]]
    assert nb.counts.tolist() == [2, 0, 1]
    assert torch.isinf(nb.dist2[1]).all() and torch.isinf(nb.dist2[2, 1])
    none = radius_neighbors(pts, qs[:0], 0.1)
    assert none.idx.shape[0] == 0 and none.counts.shape == (0,)


def test_duplicates_are_all_returned():
    pts = torch.tensor([[0.0, 0, 0]] * 4 + [[0.2, 0, 0]])
    nb = radius_neighbors(pts, pts[:1], 0.1)
    assert sorted(nb.idx[0].tolist()) == [0, 1, 2, 3] and nb.counts.tolist() == [4]


def test_batches_never_mix():
    a = _random_cloud(800, seed=7)
    b = _random_cloud(600, seed=8)  # same region of space, another cloud
    pts = torch.from_numpy(np.concatenate([a, b]))
    batch = torch.cat([torch.zeros(800, dtype=torch.long), torch.ones(600, dtype=torch.long)])
    got = radius_pairs(pts, pts, 0.1, 4096, points_batch=batch, queries_batch=batch)
    assert torch.equal(batch[got.query], batch[got.point])
    ref_a = radius_pairs(pts[:800], pts[:800], 0.1, 4096)
    ref_b = radius_pairs(pts[800:], pts[800:], 0.1, 4096)
    assert torch.equal(got.counts, torch.cat([ref_a.counts, ref_b.counts]))
    assert got.query.numel() == ref_a.query.numel() + ref_b.query.numel()


def test_pairs_are_grouped_by_query_and_pad_back():
    pts = torch.from_numpy(_random_cloud(1000, seed=9))
    pairs = radius_pairs(pts, pts[:100], 0.1)
    assert (torch.diff(pairs.query) >= 0).all()
    nb = pairs_to_padded(pairs)
    assert torch.equal((nb.idx >= 0).sum(1), torch.bincount(pairs.query, minlength=100))


def test_real_cloud_matches_open3d():
    if not FRAGMENT.exists():
        pytest.skip(f"real data not found at {FRAGMENT}")
    o3d = pytest.importorskip("open3d")
    pcd = o3d.io.read_point_cloud(str(FRAGMENT)).voxel_down_sample(0.05)
    pts = np.asarray(pcd.points, np.float32)
    tree = o3d.geometry.KDTreeFlann(pcd)
    rng = np.random.default_rng(0)
    qi = rng.choice(len(pts), 300, replace=False)
    nb = radius_neighbors(torch.from_numpy(pts), torch.from_numpy(pts[qi]), 0.15, max_neighbors=4096)
    got = _as_sets(nb)
    agree = 0
    for row, i in enumerate(qi):
        _, idx, _ = tree.search_radius_vector_3d(pcd.points[i], 0.15)
        agree += set(idx) == got[row]
    assert agree >= 299  # at most one boundary pair may round differently (float32 vs float64)
    _check_against_tree(pts, pts[qi], 0.15, nb)


def test_bunny_matches_kdtree():
    if not BUNNY.exists():
        pytest.skip(f"PCL bunny not found at {BUNNY}")
    o3d = pytest.importorskip("open3d")
    pts = np.asarray(o3d.io.read_point_cloud(str(BUNNY)).points, np.float32)
    nb = radius_neighbors(torch.from_numpy(pts), torch.from_numpy(pts), 0.01, max_neighbors=4096)
    _check_against_tree(pts, pts, 0.01, nb)


@pytest.mark.parametrize(
    "points, queries, radius, kwargs",
    [
        (torch.zeros(0, 3), torch.zeros(1, 3), 0.1, {}),
        (torch.tensor([[0.0, float("nan"), 0.0]]), torch.zeros(1, 3), 0.1, {}),
        (torch.zeros(1, 3), torch.tensor([[float("inf"), 0.0, 0.0]]), 0.1, {}),
        (torch.zeros(4, 2), torch.zeros(1, 2), 0.1, {}),
        (torch.zeros(4, 3, dtype=torch.int64), torch.zeros(1, 3), 0.1, {}),
        (torch.zeros(4, 3), torch.zeros(1, 3), 0.0, {}),
        (torch.zeros(4, 3), torch.zeros(1, 3), float("nan"), {}),
        (torch.zeros(4, 3), torch.zeros(1, 3), 0.1, {"max_neighbors": 0}),
        (torch.zeros(4, 3), torch.zeros(1, 3, dtype=torch.float64), 0.1, {}),
        (torch.zeros(4, 3), torch.zeros(1, 3), 0.1, {"points_batch": torch.zeros(4, dtype=torch.long)}),
    ],
)
def test_bad_input_raises(points, queries, radius, kwargs):
    with pytest.raises(ValueError):
        radius_neighbors(points, queries, radius, **kwargs)
