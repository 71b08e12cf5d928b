"""radius_nms against the sequential greedy loop, plus its invariances and input checks."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ukpgan_ros.detectors.nms import check_nms_input, nms_candidates, radius_nms


def radius_nms_reference(
    points: np.ndarray,
    scores: np.ndarray,
    radius: float,
    max_keypoints: int | None = None,
    min_score: float | None = None,
) -> np.ndarray:
    """The slow, obvious greedy loop that ``radius_nms`` must equal."""
    pts, sc = check_nms_input(points, scores, radius)
    kept: list[int] = []
    for i in nms_candidates(sc, min_score):
        if max_keypoints is not None and len(kept) >= max_keypoints:
            break
        if all(np.linalg.norm(pts[i] - pts[j]) > radius for j in kept):
            kept.append(int(i))
    return np.asarray(kept, np.int64)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("radius", [0.05, 0.12, 0.3])
def test_equals_greedy_loop(seed: int, radius: float) -> None:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (400, 3))
    scores = rng.uniform(0, 1, 400)
    fast = radius_nms(pts, scores, radius)
    ref = radius_nms_reference(pts, scores, radius)
    np.testing.assert_array_equal(fast, ref)
    # greedy result: kept points are pairwise farther than the radius and cover all others
    kp = pts[fast]
    d = np.linalg.norm(kp[:, None] - kp[None], axis=-1) + np.eye(len(kp)) * 10
    assert d.min() > radius
    cover = np.linalg.norm(pts[:, None] - kp[None], axis=-1).min(axis=1)
    assert cover.max() <= radius + 1e-12


def test_top_k_and_threshold_match_reference() -> None:
    rng = np.random.default_rng(7)
    pts = rng.normal(size=(600, 3))
    scores = rng.beta(0.3, 0.3, 600)
    for k in (1, 10, 50):
        for thr in (None, 0.5, 0.9):
            fast = radius_nms(pts, scores, 0.4, max_keypoints=k, min_score=thr)
            ref = radius_nms_reference(pts, scores, 0.4, max_keypoints=k, min_score=thr)
            np.testing.assert_array_equal(fast, ref)
            if thr is not None:
                assert (scores[fast] >= thr).all()
            assert len(fast) <= k


def test_ties_and_duplicates_follow_index_order() -> None:
    pts = np.zeros((5, 3))
    pts[3:] = 10.0
    scores = np.ones(5)
    np.testing.assert_array_equal(radius_nms(pts, scores, 0.1), [0, 3])
    np.testing.assert_array_equal(radius_nms_reference(pts, scores, 0.1), [0, 3])


def test_invariant_to_rigid_motion_and_permutation() -> None:
    rng = np.random.default_rng(3)
    pts = rng.uniform(-1, 1, (500, 3))
    scores = rng.uniform(size=500)
    base = radius_nms(pts, scores, 0.2)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = pts @ q.T + np.array([5.0, -2.0, 1.0])
    np.testing.assert_array_equal(radius_nms(moved, scores, 0.2), base)
    perm = rng.permutation(500)
    out = radius_nms(pts[perm], scores[perm], 0.2)
    np.testing.assert_array_equal(np.sort(perm[out]), np.sort(base))


def test_zero_radius_is_top_k_and_empty_inputs() -> None:
    scores = np.array([0.1, 0.9, 0.5])
    pts = np.zeros((3, 3))
    np.testing.assert_array_equal(radius_nms(pts, scores, 0.0, max_keypoints=2), [1, 2])
    assert radius_nms(np.zeros((0, 3)), np.zeros(0), 0.1).shape == (0,)
    assert radius_nms(pts, scores, 0.1, min_score=0.95).shape == (0,)
    assert radius_nms(pts, scores, 0.1, max_keypoints=0).dtype == np.int64


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        radius_nms(np.zeros((3, 2)), np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="scores"):
        radius_nms(np.zeros((3, 3)), np.zeros(4), 0.1)
    with pytest.raises(ValueError, match="radius"):
        radius_nms(np.zeros((3, 3)), np.zeros(3), -1.0)
    with pytest.raises(ValueError, match="finite"):
        radius_nms(np.full((3, 3), np.nan), np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="max_keypoints"):
        radius_nms(np.zeros((3, 3)), np.zeros(3), 0.1, max_keypoints=-1)


def test_fast_on_scene_sized_input() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 4, (20000, 3)).astype(np.float32)
    scores = rng.uniform(size=20000).astype(np.float32)
    t0 = time.perf_counter()
    keep = radius_nms(pts, scores, 0.1)
    assert time.perf_counter() - t0 < 2.0
    assert len(keep) > 100
