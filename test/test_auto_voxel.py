"""working_points > 0: the voxel is chosen per stream so the working cloud has about that many points."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA, need
from ukpgan_ros._voxel_kernel import occupied_counts, octave_counts
from ukpgan_ros.cloud import choose_voxel, voxel_downsample, voxel_for_budget, voxel_ladder
from ukpgan_ros.config import ConfigError, PipelineConfig
from ukpgan_ros.pipeline import KeypointPipeline


def _room(scale: float, n: int = 120_000, seed: int = 0) -> np.ndarray:
    """Floor, two walls and a box, ``scale`` metres across, seen from the origin (z forward)."""
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(-1, 1, (2, n))
    part = rng.integers(0, 4, n)
    pts = np.stack([u, v, np.full(n, 2.0)], 1)  # back wall z = 2
    pts[part == 1] = np.stack([u, np.full(n, 1.0), 1.0 + v], 1)[part == 1]  # floor y = 1
    pts[part == 2] = np.stack([np.full(n, -1.0), u, 1.0 + v], 1)[part == 2]  # left wall
    box = np.stack([0.3 * u, 0.3 * v + 0.4, np.full(n, 1.3)], 1)
    pts[part == 3] = box[part == 3]
    return (pts * scale / 2).astype(np.float32)


@pytest.mark.parametrize("budget", [800, 3000, 8000])
def test_voxel_for_budget_hits_the_budget(budget: int) -> None:
    pts = _room(4.0)
    v = voxel_for_budget(pts, budget, 0.005, 1.0)
    n = len(voxel_downsample(pts, v))
    assert abs(n - budget) <= 0.15 * budget, (v, n)


def _unique_count(pts: np.ndarray, voxel: float, anchor: float | None = None) -> int:
    """Slow reference: occupied voxels by np.unique (grid anchored at min - anchor / 2, Open3D's
    grid when anchor is the voxel)."""
    anchor = voxel if anchor is None else anchor
    keys = np.floor((pts.astype(np.float64) - (pts.min(0).astype(np.float64) - 0.5 * anchor)) / voxel).astype(np.int64)
    return len(np.unique((keys[:, 0] << 42) | (keys[:, 1] << 21) | keys[:, 2]))


def _reference_voxel(pts: np.ndarray, budget: int, lo: float, hi: float) -> float:
    """The definition, slowly: the first voxel of the ladder whose np.unique count fits."""
    ladder = voxel_ladder(lo, hi)
    return next((float(v) for v in ladder if _unique_count(pts, v) <= budget), float(ladder[-1]))


def _kitti_scan() -> np.ndarray:
    d = need(DATA / "kitti-00-velodyne")
    return np.fromfile(d / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)[:, :3].copy()


def test_counts_equal_slow_references() -> None:
    pts = _room(6.0)
    voxels = np.array([0.03, 0.1, 0.37])
    np.testing.assert_array_equal(occupied_counts(pts, voxels), [_unique_count(pts, v) for v in voxels])
    np.testing.assert_array_equal(occupied_counts(pts, voxels, expected=10),  # too small a guess costs time only
                                  [len(voxel_downsample(pts, v)) for v in voxels])
    base, levels = octave_counts(pts, 0.01)
    assert base == 0.01  # octave counts: cells anchored half a base cell below the minimum
    assert [int(c) for c in levels[:8]] == [_unique_count(pts, 0.01 * 2**k, anchor=0.01) for k in range(8)]
    with pytest.raises(ValueError, match="finite"):
        octave_counts(np.array([[0, 0, np.nan]] * 3, np.float32), 0.01)


@pytest.mark.parametrize("budget, lo", [(500, 0.005), (4000, 0.005), (15000, 0.005), (6000, 0.05)])
def test_voxel_choice_equals_the_slow_definition_on_a_room(budget: int, lo: float) -> None:
    pts = _room(5.0, seed=4)
    got = voxel_for_budget(pts, budget, lo, 1.0)
    ref = _reference_voxel(pts, budget, lo, 1.0)
    assert abs(np.log2(got / ref)) <= 1.01 / 16  # the same candidate, or its neighbour on the ladder
    n = len(voxel_downsample(pts, got))
    assert n <= budget and (got == lo or n >= 0.85 * budget), (got, n)


@pytest.mark.parametrize("budget", [5000, 8000, 20000])
def test_voxel_choice_on_a_lidar_scan_equals_the_slow_definition(budget: int) -> None:
    """Correctness only: its speed (one compiled pass, ~5 ms on a 124 k-point scan) is printed by
    benchmarks/bench_pipeline.py's preprocess stage, not asserted in a timed test."""
    scan = _kitti_scan()
    got = voxel_for_budget(scan, budget, 0.05, 1.0)
    ladder = voxel_ladder(0.05, 1.0)
    j = int(np.searchsorted(ladder, got))
    # the definition near the answer (the whole ladder by np.unique takes seconds)
    assert _unique_count(scan, got) <= budget < _unique_count(scan, ladder[j - 1])
    assert abs(np.log2(got / _reference_voxel(scan, budget, float(ladder[j - 3]), 1.0))) <= 1.01 / 16


def test_choose_voxel_caps_and_targets() -> None:
    pts = _room(4.0, seed=5)
    at_five = len(voxel_downsample(pts, 0.05))
    assert choose_voxel(pts, 0.05, 0, at_five, 0.005, 1.0) == 0.05  # within the cap: the voxel as given
    assert choose_voxel(pts, 0.05, 0, 0, 0.005, 1.0) == 0.05  # no cap
    capped = choose_voxel(pts, 0.05, 0, at_five // 3, 0.005, 1.0)
    assert capped > 0.05 and len(voxel_downsample(pts, capped)) <= at_five // 3
    target = choose_voxel(pts, 0.05, 3 * at_five, at_five // 3, 0.005, 1.0)  # working_points wins
    assert target < 0.05 and 2.5 * at_five <= len(voxel_downsample(pts, target)) <= 3 * at_five


def test_voxel_for_budget_scales_with_the_scene_and_respects_bounds() -> None:
    small, large = _room(0.8), _room(8.0)
    v_small = voxel_for_budget(small, 2000, 0.005, 1.0)
    v_large = voxel_for_budget(large, 2000, 0.005, 1.0)
    # ten times the size, about ten times the voxel for the same number of points
    assert 6.0 < v_large / v_small < 14.0
    assert voxel_for_budget(small, 10**6, 0.02, 1.0) == 0.02  # can't go below lo
    with pytest.raises(ValueError):
        voxel_for_budget(small, 0, 0.005, 1.0)


def test_pipeline_keeps_the_chosen_voxel_for_the_stream_and_rechooses_after_reset() -> None:
    cfg = PipelineConfig(detector="fps", working_points=4000, max_keypoints=64, min_range=0.0, max_range=100.0)
    pipe = KeypointPipeline(cfg)
    first = pipe.process(_room(1.0, seed=1))  # a close-range scene
    assert abs(first.working_points - 4000) <= 0.15 * 4000
    assert pipe.cfg.voxel_size == first.voxel_size != cfg.voxel_size
    second = pipe.process(_room(1.0, seed=2) @ np.diag([1, 1, 1.01]).astype(np.float32))
    assert second.voxel_size == first.voxel_size  # descriptors stay comparable within a stream
    assert second.registration is not None  # registered at the same voxel (planes alone may not lock)
    pipe.reset()
    big = pipe.process(_room(6.0, seed=3))
    assert big.voxel_size > 3 * first.voxel_size
    assert abs(big.working_points - 4000) <= 0.15 * 4000


def test_fixed_voxel_by_default_and_range_checked() -> None:
    pipe = KeypointPipeline(PipelineConfig(detector="fps", max_keypoints=64, min_range=0.0, max_range=100.0))
    assert pipe.process(_room(1.0)).voxel_size == 0.05
    with pytest.raises(ConfigError):
        PipelineConfig(working_points=-1).validate()
