"""Keyframe tracking, relocalisation and maps against the synthetic camera's exact ground truth
(and 7-Scenes when ../shared is there): drift, loss and recovery, invariances, the map format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA, need, random_rigid, transform
from ukpgan_ros.cloud import WorkingCloud
from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.detectors.base import Keypoints
from ukpgan_ros.transforms import rotation_error_deg, translation_error
from ukpgan_ros.maps import KeyframeMap, MapFormatError, load_map, save_map
from ukpgan_ros.transforms import adjoint
from ukpgan_ros.pipeline import KeypointPipeline
from ukpgan_ros.registration import FrameFeatures, registration_covariance
from ukpgan_ros.tracking import (FrameToFrame, KeyframePolicy, KeyframeTracker, MapLocalizer, RelocalizationPolicy,
                                 TrackState)

CFG = PipelineConfig()  # the shipped defaults: UKPGAN + SHOT at 5 cm


@pytest.fixture(scope="module")
def stream():
    """Every 4th of 64 frames of the built-in camera (320 x 240), described once, with poses."""
    from ukpgan_ros.datasets.synthetic import SyntheticSequence

    seq = SyntheticSequence(num_frames=64, width=320, height=240, fx=262.5, seed=3)
    pipe = KeypointPipeline(CFG)
    frames = [(seq[i], pipe.describe(seq[i].points(), dense=True)) for i in range(0, 64, 4)]
    noise = np.random.default_rng(7).uniform(-2, 2, (20000, 3)).astype(np.float32) + np.float32([0, 0, 3])
    return {"frames": frames, "pipe": pipe, "noise": pipe.describe(noise, dense=True)}


def _register(pipe):
    return lambda src, tgt: pipe.register(src, tgt)


def _keyframe_tracker(**kw) -> KeyframeTracker:
    return KeyframeTracker(KeyframePolicy(**kw), RelocalizationPolicy(), CFG.match_distance)


def _gt(frames, i, origin=0):
    return np.linalg.inv(frames[origin][0].pose) @ frames[i][0].pose


def test_keyframe_tracking_drifts_less_than_frame_to_frame(stream):
    frames, reg = stream["frames"], _register(stream["pipe"])
    kf, f2f = _keyframe_tracker(), FrameToFrame(CFG.match_distance)
    for frame, feats in frames:
        a, b = kf.step(feats, reg), f2f.step(feats, reg)
        assert a.placed and b.placed
    gt = _gt(frames, -1)
    err_kf, err_f2f = translation_error(kf.pose, gt), translation_error(f2f.pose, gt)
    assert err_kf < 0.02 and rotation_error_deg(kf.pose, gt) < 0.5
    assert err_kf < err_f2f
    assert 2 <= len(kf.map) < len(frames) // 2, "a keyframe spans several frames"


def test_frames_register_against_their_keyframe_and_the_policy_starts_new_ones(stream):
    frames, reg = stream["frames"], _register(stream["pipe"])
    tr = _keyframe_tracker(max_distance=0.15)
    steps = [tr.step(f, reg) for _, f in frames]
    assert steps[0].new_keyframe and steps[0].motion is None and steps[0].message.endswith("placed, not tracked")
    for prev, s, (frame, _) in zip(steps, steps[1:], frames[1:]):
        kf = tr.map.get(s.keyframe_id) if not s.new_keyframe else tr.map.get(prev.keyframe_id)
        moved = np.linalg.norm((np.linalg.inv(kf.pose) @ s.pose)[:3, 3])
        assert s.new_keyframe == (moved > 0.15 or "overlap" in s.message or "inliers" in s.message)
        # the motion is the pose difference to the last placed frame
        np.testing.assert_allclose(s.motion, np.linalg.inv(prev.pose) @ s.pose, atol=1e-9)
    # the covariance grows with the keyframes the pose hangs on, never shrinks in between
    sd = [np.sqrt(np.diag(s.covariance)[:3].max()) for s in steps]
    assert sd[0] == 0.0 and 0 < sd[-1] < 0.05


def test_lost_after_n_failures_then_relocalised_against_a_stored_keyframe(stream):
    frames, reg, noise = stream["frames"], _register(stream["pipe"]), stream["noise"]
    tr = _keyframe_tracker()
    for _, f in frames[:8]:
        assert tr.step(f, reg).placed
    held = tr.pose
    states = [tr.step(noise, reg) for _ in range(3)]
    assert [s.state for s in states] == [TrackState.FAILING, TrackState.FAILING, TrackState.LOST]
    assert all(s.pose is None and s.covariance is None for s in states)
    np.testing.assert_array_equal(tr.pose, held)
    # kidnapped back to frame 2 (not the last keyframe): placed by relocalisation, from no guess
    s = tr.step(frames[2][1], reg)
    assert s.placed and s.relocalized and s.state is TrackState.TRACKING and "relocalized" in s.message
    gt = _gt(frames, 2)
    assert translation_error(s.pose, gt) < 0.02 and rotation_error_deg(s.pose, gt) < 0.5
    assert tr.step(frames[3][1], reg).placed


def test_frame_to_frame_reports_loss_and_holds_the_pose(stream):
    frames, reg, noise = stream["frames"], _register(stream["pipe"]), stream["noise"]
    tr = FrameToFrame(CFG.match_distance, lost_after=2)
    tr.step(frames[0][1], reg)
    assert tr.step(noise, reg).state is TrackState.FAILING
    assert tr.step(noise, reg).state is TrackState.LOST
    np.testing.assert_array_equal(tr.pose, np.eye(4))


def test_reset_forgets_trajectory_and_keyframes(stream):
    frames, reg = stream["frames"], _register(stream["pipe"])
    tr = _keyframe_tracker()
    for _, f in frames[:5]:
        tr.step(f, reg)
    tr.reset()
    assert len(tr.map) == 0 and tr.state is TrackState.INITIALIZING
    s = tr.step(frames[4][1], reg)
    np.testing.assert_array_equal(s.pose, np.eye(4))
    assert s.new_keyframe and len(tr.map) == 1


def test_set_pose_moves_the_whole_trajectory_rigidly(stream):
    """Placing the sensor at M before the first frame, or mid-way, changes every later pose to
    M @ (the pose it would have had) relative to where it was placed: the registrations do not
    depend on where the map sits."""
    frames, reg = stream["frames"], _register(stream["pipe"])
    M = random_rigid(np.random.default_rng(5), max_angle_deg=90, max_t=3.0)
    plain, placed = _keyframe_tracker(), _keyframe_tracker()
    placed.set_pose(M)
    ref = [plain.step(f, reg).pose for _, f in frames[:10]]
    got = [placed.step(f, reg).pose for _, f in frames[:10]]
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, M @ a, atol=1e-6)
    # mid-way: the sensor (and every keyframe with it) moves to N
    N = random_rigid(np.random.default_rng(6), max_angle_deg=45, max_t=1.0)
    C = N @ np.linalg.inv(plain.pose)
    before = {k.id: k.pose for k in plain.map}
    plain.set_pose(N)
    np.testing.assert_allclose(plain.pose, N)
    for k in plain.map:
        np.testing.assert_allclose(k.pose, C @ before[k.id], atol=1e-9)
    s = plain.step(frames[10][1], reg)
    follow = placed.step(frames[10][1], reg)
    np.testing.assert_allclose(s.pose, C @ np.linalg.inv(M) @ follow.pose, atol=1e-6)


def test_frame_to_frame_set_pose_chains_from_there(stream):
    frames, reg = stream["frames"], _register(stream["pipe"])
    M = random_rigid(np.random.default_rng(8), max_angle_deg=30, max_t=1.0)
    tr = FrameToFrame(CFG.match_distance)
    tr.set_pose(M)
    tr.step(frames[0][1], reg)
    s = tr.step(frames[1][1], reg)
    np.testing.assert_allclose(s.pose, M @ s.motion, atol=1e-9)


def test_saved_map_round_trips_and_localises_frames_from_any_start(stream, tmp_path):
    frames, reg = stream["frames"], _register(stream["pipe"])
    tr = _keyframe_tracker()
    for k, (frame, f) in enumerate(frames[:10]):
        tr.step(f, reg, stamp=frame.stamp, index=k)
    folder = save_map(tr.map, tmp_path / "map", {"voxel_size": CFG.voxel_size, "descriptor": CFG.descriptor})
    index = json.loads((folder / "map.json").read_text())
    assert index["format"] == "ukpgan_ros.keyframe_map" and index["version"] == 2
    assert index["origin"] == {"stamp": frames[0][0].stamp, "index": 0} and (folder / "cloud.ply").is_file()
    loaded = load_map(folder)
    assert [k.id for k in loaded] == [k.id for k in tr.map]
    for a, b in zip(tr.map, loaded):
        np.testing.assert_array_equal(a.pose, b.pose)
        np.testing.assert_array_equal(a.covariance, b.covariance)
        np.testing.assert_array_equal(a.features.cloud.points, b.features.cloud.points)
        np.testing.assert_array_equal(a.features.descriptors, b.features.descriptors)
        np.testing.assert_array_equal(a.features.keypoints.indices, b.features.keypoints.indices)
    # every frame on its own, in a shuffled order, from no guess
    loc = MapLocalizer(loaded, RelocalizationPolicy(), CFG.match_distance)
    order = np.random.default_rng(1).permutation(len(frames))
    placed = 0
    for i in order:
        s = loc.step(frames[i][1], reg)
        if s.placed:
            placed += 1
            gt = _gt(frames, i)
            assert translation_error(s.pose, gt) < 0.03 and rotation_error_deg(s.pose, gt) < 1.0, i
            assert s.relocalized and s.covariance.shape == (6, 6)
    assert placed >= 0.9 * len(frames)
    with pytest.raises(ValueError, match="no pose to set"):
        loc.set_pose(np.eye(4))


def test_map_folder_errors_are_clear(stream, tmp_path):
    frames, reg = stream["frames"], _register(stream["pipe"])
    tr = _keyframe_tracker()
    for _, f in frames[:3]:
        tr.step(f, reg)
    with pytest.raises(MapFormatError, match="no such map folder"):
        load_map(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MapFormatError, match="map.json is missing"):
        load_map(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(MapFormatError, match="refusing to overwrite"):
        save_map(tr.map, other)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(MapFormatError, match="no keyframes"):
        save_map(KeyframeMap(), tmp_path / "nothing")
    folder = save_map(tr.map, tmp_path / "map")
    save_map(tr.map, folder)  # an existing map is replaced
    index = json.loads((folder / "map.json").read_text())
    bad = dict(index, version=99)
    (folder / "map.json").write_text(json.dumps(bad))
    with pytest.raises(MapFormatError, match="version 99"):
        load_map(folder)
    (folder / "map.json").write_text("{not json")
    with pytest.raises(MapFormatError, match="unreadable"):
        load_map(folder)
    (folder / "map.json").write_text(json.dumps(index))
    (folder / index["keyframes"][0]["file"]).write_bytes(b"truncated")
    with pytest.raises(MapFormatError, match="corrupt keyframe file"):
        load_map(folder)
    (folder / index["keyframes"][0]["file"]).unlink()
    with pytest.raises(MapFormatError, match="keyframe file missing"):
        load_map(folder)


def test_pipeline_modes_with_a_saved_map(stream, tmp_path):
    """keyframe mode builds and saves a map (the last frame becomes a keyframe); reference mode
    reads it and refuses one built with other descriptors or another voxel."""
    frames = stream["frames"]
    pipe = KeypointPipeline(CFG, detector=stream["pipe"].detector)
    for k, (frame, _) in enumerate(frames[:6]):
        r = pipe.process(frame.points(), stamp=frame.stamp, index=k)
        assert r.placed and r.tracking.covariance.shape == (6, 6)
    folder, count = pipe.save_map(tmp_path / "map")
    assert count == len(load_map(folder)) and load_map(folder).get(count - 1).index == 5
    ref = KeypointPipeline(PipelineConfig(registration="reference", reference_cloud=str(folder)),
                           detector=stream["pipe"].detector)
    r = ref.process(frames[3][0].points())
    assert r.placed and translation_error(r.pose, _gt(frames, 3)) < 0.03
    with pytest.raises(MapFormatError, match="descriptor: shot"):
        KeypointPipeline(PipelineConfig(registration="reference", reference_cloud=str(folder), descriptor="fpfh"),
                         detector=stream["pipe"].detector)
    with pytest.raises(MapFormatError, match="voxel_size: 0.05"):
        KeypointPipeline(PipelineConfig(registration="reference", reference_cloud=str(folder), voxel_size=0.06),
                         detector=stream["pipe"].detector)
    with pytest.raises(ValueError, match="keeps no keyframes"):
        KeypointPipeline(PipelineConfig(registration="consecutive"), detector=stream["pipe"].detector).save_map(tmp_path / "x")


def _features(points: np.ndarray, descriptors: np.ndarray) -> FrameFeatures:
    n = len(points)
    cloud = WorkingCloud(points.astype(np.float32), np.tile(np.float32([0, 0, 1]), (n, 1)), n)
    kps = Keypoints(points[: len(descriptors)].astype(np.float32), np.ones(len(descriptors), np.float32),
                    np.arange(len(descriptors)))
    return FrameFeatures(cloud, kps, descriptors.astype(np.float32))


def _pose(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
    T[0, 3] = x
    return T


def test_full_store_drops_the_most_redundant_keyframe_never_the_protected_one():
    rng = np.random.default_rng(0)
    kmap = KeyframeMap(max_keyframes=4, spacing_m=0.3, spacing_deg=15.0)
    f = _features(rng.normal(size=(10, 3)), rng.normal(size=(5, 8)))
    for x in (0.0, 1.0, 1.05, 2.0):
        kmap.add(_pose(x), f)
    kf, removed = kmap.add(_pose(3.0), f)
    assert removed == [1], "of the two keyframes 5 cm apart, the older goes"
    assert [k.id for k in kmap] == [0, 2, 3, 4] and kf.id == 4
    _, removed = kmap.add(_pose(3.01), f, protect=(4,))
    assert removed and 4 not in removed and len(kmap) == 4
    # turning counts like moving: 15 deg is one spacing
    kmap = KeyframeMap(max_keyframes=3, spacing_m=0.3, spacing_deg=15.0)
    for T in (_pose(0.0), _pose(0.0, 90.0), _pose(0.0, 92.0)):
        kmap.add(T, f)
    _, removed = kmap.add(_pose(5.0), f)
    assert removed == [1]


def test_descriptor_votes_pick_the_keyframes_that_look_alike():
    rng = np.random.default_rng(1)
    descs = [rng.normal(size=(40, 16)) for _ in range(5)]
    kmap = KeyframeMap()
    for i, d in enumerate(descs):
        kmap.add(_pose(float(i)), _features(rng.normal(size=(50, 3)), d))
    query = np.concatenate([descs[3][:30], descs[1][:10]]) + 0.01 * rng.normal(size=(40, 16))
    cands = kmap.candidates(query.astype(np.float32), 2)
    assert [(k.id, v) for k, v in cands] == [(3, 30), (1, 10)]
    assert [k.id for k, _ in kmap.candidates(query.astype(np.float32), 5, exclude=(3,))] == [1]
    with pytest.raises(MapFormatError, match="dimension"):
        kmap.candidates(np.zeros((3, 8), np.float32), 2)


def _box_cloud(rng, planes: int) -> WorkingCloud:
    """Points on 1-3 orthogonal planes, with their normals."""
    pts, nrm = [], []
    for axis in range(planes):
        p = rng.uniform(-1, 1, (1500, 3))
        p[:, axis] = 0.0
        n = np.zeros((1500, 3))
        n[:, axis] = 1.0
        pts.append(p)
        nrm.append(n)
    p = np.concatenate(pts).astype(np.float32)
    return WorkingCloud(p, np.concatenate(nrm).astype(np.float32), len(p))


def test_covariance_is_large_where_the_geometry_does_not_constrain_the_fit():
    rng = np.random.default_rng(2)
    corner, plane = _box_cloud(rng, 3), _box_cloud(rng, 1)
    noisy = lambda c: WorkingCloud(c.points + 0.003 * rng.normal(size=c.points.shape).astype(np.float32),  # noqa: E731
                                   c.normals, c.raw_count)
    c_corner = registration_covariance(noisy(corner), corner, np.eye(4), 0.05)
    c_plane = registration_covariance(noisy(plane), plane, np.eye(4), 0.05)
    # a plane x = 0 fixes x (and the two rotations that tilt it), not y, z or the spin about x
    assert c_plane[1, 1] > 1e3 * c_plane[0, 0] and c_plane[3, 3] > 1e3 * c_corner[3, 3]
    assert np.all(np.linalg.eigvalsh(c_corner) > 0) and max(np.diag(c_corner)[:3]) < 1e-4
    # the covariance of a moved pair is the same one moved with the adjoint
    M = random_rigid(np.random.default_rng(3), max_angle_deg=40, max_t=0.5)
    moved = WorkingCloud(transform(corner.points, M), (corner.normals @ M[:3, :3].T).astype(np.float32), corner.raw_count)
    src = noisy(corner)
    c_moved = registration_covariance(src, moved, M, 0.05)
    Ad = adjoint(M)
    np.testing.assert_allclose(c_moved, Ad @ registration_covariance(src, corner, np.eye(4), 0.05) @ Ad.T,
                               rtol=1e-6, atol=1e-12)


def test_map_built_on_7scenes_frames_0_199_localises_frames_200_299(tmp_path):
    from ukpgan_ros.datasets import SevenScenesSequence

    seq = SevenScenesSequence(need(DATA / "7scenes-redkitchen"))
    pipe = KeypointPipeline(CFG)
    for i in range(0, 200, 10):
        f = seq[i]
        assert pipe.process(f.points(), stamp=f.stamp, index=i).placed, i
    folder, _ = pipe.save_map(tmp_path / "map")
    pipe.release()
    ref = KeypointPipeline(PipelineConfig(registration="reference", reference_cloud=str(folder)))
    placed = 0
    for i in range(200, 300, 10):
        r = ref.process(seq[i].points())
        if r.placed:
            placed += 1
            gt = np.linalg.inv(seq[0].pose) @ seq[i].pose
            assert translation_error(r.pose, gt) < 0.15 and rotation_error_deg(r.pose, gt) < 4.0, i
    assert placed >= 9


def test_a_live_config_change_reaches_the_tracker_through_configure(stream):
    """The node assigns ``pipeline.cfg`` on a live parameter change: the tracker takes the new
    thresholds at the next frame (lost_after, the keyframe policy, the store's bound, the
    relocalisation), and a voxel chosen from the first frame (working_points) reaches its
    distances, its covariance floor and what its map records."""
    import dataclasses

    from ukpgan_ros.tracking import SIGMA_FLOOR_VOXELS, make_tracker

    frames, det = stream["frames"], stream["pipe"].detector
    noise = np.random.default_rng(7).uniform(-2, 2, (20000, 3)).astype(np.float32) + np.float32([0, 0, 3])
    odo = KeypointPipeline(dataclasses.replace(CFG, registration="consecutive"), detector=det)
    assert odo.process(frames[0][0].points()).placed
    odo.cfg = dataclasses.replace(odo.cfg, lost_after=1)
    assert odo.process(noise).tracking.state is TrackState.LOST  # lost_after 3 would say FAILING

    kf = KeypointPipeline(CFG, detector=det)
    steps = [kf.process(f.points()).tracking for f, _ in frames[:2]]
    assert steps[0].new_keyframe and not steps[1].new_keyframe
    kf.cfg = dataclasses.replace(kf.cfg, keyframe_max_distance=0.01)
    s = kf.process(frames[2][0].points()).tracking
    assert s.new_keyframe and "moved" in s.message

    new = dataclasses.replace(CFG, keyframe_min_inliers=12, keyframe_max_distance=0.07, max_keyframes=9,
                              relocalization_candidates=2, relocalization_min_fitness=0.45, lost_after=5)
    kf.cfg = new
    for tr in (kf.tracker, make_tracker(CFG)):
        tr.configure(new)
        assert tr.policy == KeyframePolicy(CFG.keyframe_min_fitness, 12, 0.07, CFG.keyframe_max_angle)
        assert tr.reloc == RelocalizationPolicy(2, 0.45, 5)
        assert (tr.map.max_keyframes, tr.map.spacing_m) == (9, 0.07)
    loc = make_tracker(dataclasses.replace(CFG, registration="reference", reference_cloud="unused"), kf.tracker.map)
    loc.configure(new)
    assert loc.reloc == RelocalizationPolicy(2, 0.45, 5)

    auto = KeypointPipeline(PipelineConfig(detector="fps", descriptor="fpfh", working_points=3000))
    assert auto.process(frames[0][0].points()).placed
    voxel = auto.cfg.voxel_size
    assert voxel != CFG.voxel_size
    assert auto.tracker.distance == auto.cfg.match_distance and auto.tracker.sigma_floor == SIGMA_FLOOR_VOXELS * voxel
    assert auto.tracker.map.meta["voxel_size"] == voxel  # a saved map records the voxel it was described at
    auto.release()
