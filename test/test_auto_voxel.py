"""working_points > 0: the voxel is chosen per stream so the working cloud has about that many points."""

from __future__ import annotations

import numpy as np
import pytest

from ukpgan_ros.cloud import voxel_downsample, voxel_for_budget
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
    v = voxel_for_budget(pts, budget, 0.05, 0.005, 1.0)
    n = len(voxel_downsample(pts, v))
    assert abs(n - budget) <= 0.15 * budget, (v, n)


def test_voxel_for_budget_scales_with_the_scene_and_respects_bounds() -> None:
    small, large = _room(0.8), _room(8.0)
    v_small = voxel_for_budget(small, 2000, 0.05, 0.005, 1.0)
    v_large = voxel_for_budget(large, 2000, 0.05, 0.005, 1.0)
    # ten times the size, about ten times the voxel for the same number of points
    assert 6.0 < v_large / v_small < 14.0
    assert voxel_for_budget(small, 10**6, 0.05, 0.02, 1.0) == 0.02  # can't go below lo
    with pytest.raises(ValueError):
        voxel_for_budget(small, 0, 0.05, 0.005, 1.0)


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
