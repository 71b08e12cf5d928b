"""The built-in spinning LiDAR: beam geometry recovered from its points, range limits, exact
poses (every return lies on the scene's surface, by an independent signed-distance function),
the culling of its ray caster against a brute-force cast, boxes against Open3D's ray caster,
motion presets, determinism, and its place behind open_sequence."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from ukpgan_ros.datasets import has_depth, open_sequence
from ukpgan_ros.datasets.street_scene import ray_box as _slab
from ukpgan_ros.datasets.street_scene import ray_cylinder as _cylinder
from ukpgan_ros.datasets.street_scene import ray_sphere as _sphere
from ukpgan_ros.datasets.synthetic_lidar import MOTIONS, SyntheticLidarSequence, beam_elevations_deg


def scene_distance(seq: SyntheticLidarSequence, world: np.ndarray) -> np.ndarray:
    """|signed distance| of world points to the scene surface: the ground, every box, cylinder
    and sphere, each by its textbook SDF (no ray casting involved)."""
    s = seq.scene
    best = np.abs(world[:, 2])  # ground z = 0
    for centre, half, yaw in zip(s.box_centre, s.box_half, s.box_yaw):
        d = world - centre
        c, sn = math.cos(yaw), math.sin(yaw)
        local = np.stack([c * d[:, 0] + sn * d[:, 1], -sn * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
        q = np.abs(local) - half
        sdf = np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)
        best = np.minimum(best, np.abs(sdf))
    for cx, cy, r, z0, z1 in s.cyl:
        radial = np.hypot(world[:, 0] - cx, world[:, 1] - cy) - r
        axial = np.abs(world[:, 2] - 0.5 * (z0 + z1)) - 0.5 * (z1 - z0)
        sdf = np.hypot(np.maximum(radial, 0), np.maximum(axial, 0)) + np.minimum(np.maximum(radial, axial), 0)
        best = np.minimum(best, np.abs(sdf))
    for x, y, z, r in s.sph:
        best = np.minimum(best, np.abs(np.linalg.norm(world - [x, y, z], axis=1) - r))
    return best


def to_world(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts.astype(np.float64) @ T[:3, :3].T + T[:3, 3]


@pytest.fixture(scope="module")
def still():
    """The ideal scan (every column from the stamp's pose), without noise."""
    return SyntheticLidarSequence(num_frames=30, distort=False, noise=False)


def test_scan_size_ranges_and_speed(still):
    seq = SyntheticLidarSequence(num_frames=10)
    t0 = time.perf_counter()
    frame = seq[4]
    took = time.perf_counter() - t0
    pts = frame.points()
    assert 60_000 <= len(pts) <= 120_000
    r = np.linalg.norm(pts, axis=1)
    assert r.min() >= seq.min_range and r.max() <= seq.max_range
    assert r.max() > 60.0  # the street runs on: far returns exist
    assert took < 3.0, f"one scan took {took:.2f} s"  # ~0.2 s on an idle core; generous for loaded CI
    assert not frame.has_depth and not has_depth(seq) and frame.pose.shape == (4, 4)
    assert np.isnan(seq.K).all() and (seq.width, seq.height) == (1800, 64)


def test_beam_elevations_are_recovered_from_the_points(still):
    sc = still.scan(3)
    el = np.degrees(np.arctan2(sc.points[:, 2], np.hypot(sc.points[:, 0], sc.points[:, 1])))
    expected = beam_elevations_deg(64)
    for ring in range(64):
        got = el[sc.rings == ring]
        assert len(got) > 0
        np.testing.assert_allclose(got, expected[ring], atol=1e-3)
    assert expected[0] == pytest.approx(2.0) and expected[-1] == pytest.approx(-24.333, abs=1e-3)
    # HDL-64E: 1/3 deg spacing in the upper block, 1/2 deg in the lower
    np.testing.assert_allclose(np.diff(expected[:32]), -1 / 3, atol=1e-9)
    np.testing.assert_allclose(np.diff(expected[32:]), -0.5, atol=1e-9)
    az = np.arctan2(sc.points[:, 1], sc.points[:, 0])
    np.testing.assert_allclose(np.cos(az - still.azimuths[sc.columns]), 1.0, atol=1e-6)


@pytest.mark.parametrize("motion", sorted(MOTIONS))
def test_exact_poses_put_every_return_on_the_scene_surface(motion):
    seq = SyntheticLidarSequence(num_frames=12, motion=motion, distort=False, noise=False)
    rng = np.random.default_rng(0)
    for k in (2, 9):
        f = seq[k]
        pts = f.points()[rng.choice(len(f.points()), 1500, replace=False)]
        d = scene_distance(seq, to_world(f.pose, pts))
        assert np.percentile(d, 99) < 2e-3 and d.max() < 0.02, motion  # float32 points at up to 100 m
    # two scans mapped by the exact relative pose land on the same surfaces; a 5 cm error does not
    a, b = seq[2], seq[9]
    T_a_from_b = np.linalg.inv(a.pose) @ b.pose
    pts_b = b.points()[rng.choice(len(b.points()), 1500, replace=False)]
    d = scene_distance(seq, to_world(a.pose, to_world(T_a_from_b, pts_b)))
    assert np.median(d) < 1e-4
    off = T_a_from_b.copy()
    off[:3, 3] += [0.03, 0.03, 0.03]
    d_off = scene_distance(seq, to_world(a.pose, to_world(off, pts_b)))
    assert np.median(d_off) > 0.01


def test_range_noise_is_centimetres_along_the_ray():
    exact = SyntheticLidarSequence(num_frames=3, noise=False, distort=False)
    noisy = SyntheticLidarSequence(num_frames=3, noise=True, distort=False)
    r0, r1 = exact.scan(1).ranges, noisy.scan(1).ranges
    both = (r0 > 0) & (r1 > 0)
    err = (r1 - r0)[both]
    assert 0.012 < err.std() < 0.018 and abs(err.mean()) < 1e-3
    d = scene_distance(noisy, to_world(noisy.pose(1), noisy[1].points()[::50]))
    assert np.percentile(d, 50) < 0.02


def test_motion_distortion_follows_the_sweep():
    """A moving sensor's points lie on the scene only through the pose at their own firing time."""
    seq = SyntheticLidarSequence(num_frames=6, motion="fast_turn", noise=False)
    sc = seq.scan(3)
    assert sc.times.min() == 0.0 and sc.times.max() < seq.period
    np.testing.assert_allclose(sc.times, sc.columns / seq.columns * seq.period)
    idx = np.random.default_rng(1).choice(len(sc.points), 1500, replace=False)
    poses = seq.pose_at(sc.stamp + sc.times[idx])
    world = np.einsum("nij,nj->ni", poses[:, :3, :3], sc.points[idx].astype(np.float64)) + poses[:, :3, 3]
    assert np.percentile(scene_distance(seq, world), 99) < 2e-3
    at_stamp = scene_distance(seq, to_world(sc.pose, sc.points[idx]))
    # the distortion a deskew has to undo (many points slide along their surface: the ground, a wall)
    assert np.percentile(at_stamp, 90) > 0.05 and at_stamp.mean() > 0.03


def test_motion_presets_move_as_described():
    for name, speed_range, max_rate_deg in (("walk", (1.2, 1.6), 60), ("drive", (9.5, 10.5), 60),
                                            ("fast_turn", (7.5, 8.5), 100)):
        seq = SyntheticLidarSequence(num_frames=40, motion=name)
        P = seq.pose_at(np.arange(40) / 10.0)
        speed = np.linalg.norm(np.diff(P[:, :3, 3], axis=0), axis=1) * 10.0
        assert speed_range[0] < np.median(speed) < speed_range[1], name
        rel = np.einsum("nji,njk->nik", P[:-1, :3, :3], P[1:, :3, :3])
        angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1))) * 10.0
        assert angle.max() < max_rate_deg, name
        if name == "fast_turn":
            assert angle.max() > 60.0  # the turn comes within the first 4 s
    seq = SyntheticLidarSequence(num_frames=5, motion="walk", speed=0.0, noise=False)
    np.testing.assert_allclose(seq.pose(0)[:2, 3], seq.pose(4)[:2, 3])
    with pytest.raises(ValueError, match="motion must be one of"):
        SyntheticLidarSequence(motion="fly")


def test_deterministic_in_seed_and_index():
    a = SyntheticLidarSequence(num_frames=4, beams=16, columns=360, seed=3)
    b = SyntheticLidarSequence(num_frames=4, beams=16, columns=360, seed=3)
    np.testing.assert_array_equal(a[2].points(), b[2].points())
    _ = b[3]
    np.testing.assert_array_equal(a[1].points(), b[1].points())
    c = SyntheticLidarSequence(num_frames=4, beams=16, columns=360, seed=4)
    assert len(c[2].points()) != len(a[2].points()) or not np.array_equal(c[2].points(), a[2].points())
    with pytest.raises(IndexError):
        a[4]
    assert len(beam_elevations_deg(32)) == 32 and a[0].points().shape[1] == 3


def test_culled_cast_equals_a_brute_force_cast():
    """The caster only tests the primitives whose bearing and elevation intervals can reach a
    ray; a cast of every ray against every primitive must give the same ranges."""
    seq = SyntheticLidarSequence(num_frames=8, beams=12, columns=240, motion="fast_turn", noise=False)
    stamp = 5 / seq.rate_hz
    got = seq.cast(stamp)
    R = seq.pose_at(stamp + seq.column_times)
    D = np.einsum("cij,bcj->bci", R[:, :3, :3], seq._dirs).reshape(-1, 3)
    O = np.broadcast_to(R[None, :, :3, 3], (seq.beams, seq.columns, 3)).reshape(-1, 3)
    s = seq.scene
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = -O[:, 2] / D[:, 2]
    best = np.where((D[:, 2] < 0) & (tg > 0), tg, np.inf)
    for centre, half, yaw in zip(s.box_centre, s.box_half, s.box_yaw):
        c, sn = math.cos(yaw), math.sin(yaw)
        oo = O - centre
        ol = np.stack([c * oo[:, 0] + sn * oo[:, 1], -sn * oo[:, 0] + c * oo[:, 1], oo[:, 2]], 1)
        dl = np.stack([c * D[:, 0] + sn * D[:, 1], -sn * D[:, 0] + c * D[:, 1], D[:, 2]], 1)
        best = np.minimum(best, _slab(ol, dl, half))
    for cyl in s.cyl:
        best = np.minimum(best, _cylinder(O, D, *cyl))
    for x, y, z, r in s.sph:
        best = np.minimum(best, _sphere(O, D, np.array([x, y, z]), r))
    ref = np.where(np.isfinite(best) & (best >= seq.min_range) & (best <= seq.max_range), best, 0.0)
    np.testing.assert_allclose(got.reshape(-1), ref.astype(np.float32), atol=1e-4)
    assert (got > 0).mean() > 0.5


def test_ray_primitive_hits_match_open3d_and_geometry():
    o3d = pytest.importorskip("open3d")
    rng = np.random.default_rng(5)
    half = np.array([1.5, 0.7, 0.4])
    box = o3d.geometry.TriangleMesh.create_box(*(2 * half)).translate(-half)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(box))
    O = rng.uniform(-6, 6, (4000, 3))
    O = O[(np.abs(O) > half).any(axis=1)]
    target = rng.uniform(-1.8, 1.8, (len(O), 3))
    D = target - O
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    ref = scene.cast_rays(o3d.core.Tensor(np.hstack([O, D]).astype(np.float32)))["t_hit"].numpy()
    got = _slab(O, D, half)
    np.testing.assert_allclose(np.where(np.isfinite(got), got, np.inf), ref, atol=1e-4)
    # a sphere and a vertical cylinder hit at the analytic distances
    o, d = np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]])
    assert _sphere(o, d, np.array([5.0, 0.0, 1.0]), 0.5)[0] == pytest.approx(4.5)
    assert _cylinder(o, d, 5.0, 0.0, 0.5, 0.0, 2.0)[0] == pytest.approx(4.5)
    down = np.array([[0.6, 0.0, -0.8]])
    assert _cylinder(np.array([[0.0, 0.0, 3.0]]), down, 0.75, 0.0, 0.5, 0.0, 2.0)[0] == pytest.approx(1.25)  # top cap
    assert np.isinf(_cylinder(o, d, 5.0, 0.0, 0.5, 1.5, 2.0)[0])  # passes under it


def test_open_sequence_names_and_validation():
    seq = open_sequence("synthetic_lidar", num_frames=3, beams=16, columns=360)
    assert isinstance(seq, SyntheticLidarSequence) and seq.name == "synthetic_lidar" and len(seq) == 3
    assert [f.index for f in seq] == [0, 1, 2]
    np.testing.assert_allclose(seq.stamps, [0.0, 0.1, 0.2])
    for bad in ({"num_frames": 0}, {"rate_hz": 0.0}, {"max_range": 0.5}, {"range_noise": -1.0}, {"speed": -1.0},
                {"elevations_deg": [1.0, 2.0]}):
        with pytest.raises(ValueError):
            SyntheticLidarSequence(**bad)
