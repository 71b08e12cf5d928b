"""Inputs from outside are bounded and maps are checked before they are trusted: a valid map
built by the real pipeline, corrupted in one way per case, must fail ``load_map`` with a
MapFormatError naming the file and the field; poses from outside must be rigid, within
MAX_TRANSLATION_M, with a bounded covariance; a symlink-loop map destination is a clear error."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ukpgan_ros.cli import main
from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.maps import KeyframeMap, MapFormatError, check_map_destination, load_map
from ukpgan_ros.pipeline import KeypointPipeline
from ukpgan_ros.registration import FrameFeatures
from ukpgan_ros.transforms import MAX_TRANSLATION_M

# A cheap detector: the map's contents, not its keypoints' quality, are under test.
CFG = PipelineConfig(detector="fps", descriptor="fpfh", max_keypoints=64, keyframe_max_distance=0.05)


@pytest.fixture(scope="module")
def valid_map(tmp_path_factory) -> Path:
    """A map the keyframe pipeline built and saved from six synthetic frames."""
    from ukpgan_ros.datasets.synthetic import SyntheticSequence

    seq = SyntheticSequence(num_frames=24, width=160, height=120, fx=131.25, seed=2)
    pipe = KeypointPipeline(CFG)
    for i in range(0, 24, 4):
        assert pipe.process(seq[i].points(), stamp=seq[i].stamp, index=i).placed
    folder, count = pipe.save_map(tmp_path_factory.mktemp("valid") / "map")
    assert count >= 2
    pipe.release()
    return folder


@pytest.fixture
def copy(valid_map, tmp_path) -> Path:
    return Path(shutil.copytree(valid_map, tmp_path / "map"))


def _index(folder: Path) -> dict:
    return json.loads((folder / "map.json").read_text())


def _write_index(folder: Path, index: dict) -> None:
    (folder / "map.json").write_text(json.dumps(index))  # NaN/Infinity written as JSON allows


def _edit_entry(field: str | None = None, in_file: bool = False, **changes):
    """Change the first keyframe's entry in map.json; the error names map.json (or, for a count
    the keyframe file contradicts, that file) and ``field`` (default: the keyframe and the key)."""
    def edit(folder: Path):
        index = _index(folder)
        entry = index["keyframes"][0]
        name = field or f"keyframe {entry['id']} {next(iter(changes))}:"
        entry.update(changes)
        _write_index(folder, index)
        return (folder / entry["file"] if in_file else folder / "map.json"), name
    return edit


def _edit_pose(fn):
    def edit(folder: Path):
        index = _index(folder)
        pose = np.asarray(index["keyframes"][0]["pose"])
        index["keyframes"][0]["pose"] = fn(pose).tolist()
        _write_index(folder, index)
        return folder / "map.json", f"keyframe {index['keyframes'][0]['id']} pose:"
    return edit


def _edit_cov(fn):
    def edit(folder: Path):
        index = _index(folder)
        cov = np.asarray(index["keyframes"][0]["covariance"], np.float64)
        index["keyframes"][0]["covariance"] = fn(cov).tolist()
        _write_index(folder, index)
        return folder / "map.json", f"keyframe {index['keyframes'][0]['id']} covariance:"
    return edit


def _edit_top(key, value):
    def edit(folder: Path):
        index = _index(folder)
        index[key] = value
        _write_index(folder, index)
        return folder / "map.json", f"{key}:"
    return edit


def _edit_arrays(fn, field: str):
    """Rewrite the first keyframe's .npz with ``fn(arrays)`` applied."""
    def edit(folder: Path):
        path = folder / _index(folder)["keyframes"][0]["file"]
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        fn(arrays)
        np.savez_compressed(path, **arrays)
        return path, f"{field}:"
    return edit


def _set(key, fn):
    def apply(arrays):
        arrays[key] = fn(arrays[key])
    return apply


def _nan_first(a):
    a = a.astype(np.float32).copy()
    a.reshape(-1)[0] = np.nan
    return a


def _scaled_rotation(pose):
    pose = pose.copy()
    pose[:3, :3] *= 1000.0
    return pose


def _translated(pose):
    pose = pose.copy()
    pose[0, 3] = 1e160
    return pose


def _with(i, j, value, symmetric=True):
    def fn(cov):
        cov = cov.copy()
        cov[i, j] = value
        if symmetric:
            cov[j, i] = value
        return cov
    return fn


def _duplicate_ids(folder: Path):
    index = _index(folder)
    index["keyframes"][1]["id"] = index["keyframes"][0]["id"]
    _write_index(folder, index)
    return folder / "map.json", f"keyframe id {index['keyframes'][0]['id']} appears more than once"


def _truncated(folder: Path):
    path = folder / _index(folder)["keyframes"][0]["file"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "corrupt keyframe file (BadZipFile"


def _symlink_out(folder: Path):
    index = _index(folder)
    outside = folder.parent / "outside.npz"
    shutil.copy(folder / index["keyframes"][0]["file"], outside)
    link = folder / "keyframes" / "link.npz"
    os.symlink(outside, link)
    index["keyframes"][0]["file"] = "keyframes/link.npz"
    _write_index(folder, index)
    return folder / "map.json", f"keyframe {index['keyframes'][0]['id']} file:"


def _no_points(arrays):
    arrays["points"] = arrays["points"][:0]
    arrays["normals"] = arrays["normals"][:0]
    arrays["keypoint_indices"] = arrays["keypoint_indices"][:0]
    arrays["keypoint_xyz"] = arrays["keypoint_xyz"][:0]
    arrays["keypoint_scores"] = arrays["keypoint_scores"][:0]
    arrays["descriptors"] = arrays["descriptors"][:0]


def _short_points(arrays):
    """Points (and normals) shorter than the keypoint indices reach."""
    n = int(arrays["keypoint_indices"].max())
    arrays["points"], arrays["normals"] = arrays["points"][:n], arrays["normals"][:n]


CORRUPTIONS = {
    "voxel_size NaN": _edit_top("voxel_size", math.nan),
    "voxel_size not a number": _edit_top("voxel_size", "five centimetres"),
    "voxel_size out of range": _edit_top("voxel_size", 50.0),
    "descriptor_dim negative": _edit_top("descriptor_dim", -3),
    "descriptor unknown": _edit_top("descriptor", "sift"),
    "pose rotation scaled x1000": _edit_pose(_scaled_rotation),
    "pose translation 1e160": _edit_pose(_translated),
    "pose NaN": _edit_pose(lambda p: p * np.nan),
    "covariance NaN": _edit_cov(_with(0, 0, math.nan)),
    "covariance negative variance": _edit_cov(_with(2, 2, -1.0)),
    "covariance 1e308": _edit_cov(_with(1, 1, 1e308)),
    "covariance asymmetric": _edit_cov(_with(0, 3, 0.5, symmetric=False)),
    "keyframe id negative": _edit_entry("keyframe id:", id=-1),
    "keyframe id not an integer": _edit_entry("keyframe id:", id="first"),
    "duplicate keyframe ids": _duplicate_ids,
    "file path absolute": _edit_entry(file="/etc/passwd"),
    "file path leaves the folder": _edit_entry(file="../outside.npz"),
    "file symlink leaves the folder": _symlink_out,
    "points count negative": _edit_entry(points=-5),
    "points count inconsistent": _edit_entry("points: the index says 7", in_file=True, points=7),
    "keypoints count inconsistent": _edit_entry("keypoint_indices: the index says 100000", in_file=True,
                                                keypoints=100000),
    "stamp not finite": _edit_entry(stamp=math.inf),
    "truncated keyframe file": _truncated,
    "keypoint indices beyond the points": _edit_arrays(_short_points, "keypoint_indices"),
    "keypoint indices negative": _edit_arrays(_set("keypoint_indices", lambda a: a - a.max() - 1), "keypoint_indices"),
    "keypoint indices not integers": _edit_arrays(_set("keypoint_indices", lambda a: a.astype(np.float32)),
                                                  "keypoint_indices"),
    "points NaN": _edit_arrays(_set("points", _nan_first), "points"),
    "normals NaN": _edit_arrays(_set("normals", _nan_first), "normals"),
    "descriptors NaN": _edit_arrays(_set("descriptors", _nan_first), "descriptors"),
    "descriptors of another dimension": _edit_arrays(_set("descriptors", lambda a: a[:, :5]), "descriptors"),
    "keypoint scores wrong length": _edit_arrays(_set("keypoint_scores", lambda a: a[:-1]), "keypoint_scores"),
    "points not (N, 3)": _edit_arrays(_set("points", lambda a: a[:, :2]), "points"),
    "zero-point keyframe": _edit_arrays(_no_points, "points"),
    "array missing": _edit_arrays(lambda arrays: arrays.pop("descriptors"), "descriptors"),
}


def test_the_valid_map_loads(valid_map):
    kmap = load_map(valid_map)
    index = _index(valid_map)
    assert [k.id for k in kmap] == [e["id"] for e in index["keyframes"]]
    assert kmap.meta["voxel_size"] == CFG.voxel_size and kmap.meta["descriptor"] == "fpfh"
    for k in kmap:
        assert len(k.features.cloud) > 0 and k.features.descriptors.shape[1] == index["descriptor_dim"]


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_map_fails_to_load_naming_file_and_field(copy, kind):
    path, field = CORRUPTIONS[kind](copy)
    with pytest.raises(MapFormatError) as err:
        load_map(copy)
    msg = str(err.value)
    assert str(path) in msg and field in msg, msg


def test_a_corrupt_map_fails_the_pipeline_cleanly(copy):
    """What the node's configure sees: a MapFormatError (a ValueError), not an error per frame."""
    CORRUPTIONS["descriptors NaN"](copy)
    with pytest.raises(MapFormatError, match="descriptors"):
        KeypointPipeline(PipelineConfig(detector="fps", descriptor="fpfh", registration="reference",
                                        reference_cloud=str(copy)))


def _rotation_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def _bad_poses():
    far = _rotation_z(30)
    far[0, 3] = 1e160
    just_beyond = np.eye(4)
    just_beyond[1, 3] = 1.01 * MAX_TRANSLATION_M
    scaled = _rotation_z(30)
    scaled[:3, :3] *= 1000.0
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    return {"x=1e160": (far, "translation"), "beyond MAX_TRANSLATION_M": (just_beyond, "translation"),
            "rotation scaled x1000": (scaled, "rotation"), "sheared": (sheared, "rotation"),
            "NaN": (np.full((4, 4), np.nan), "finite")}


def _bad_covariances():
    nan = np.eye(6) * 0.01
    nan[0, 0] = np.nan
    neg = np.eye(6) * 0.01
    neg[4, 4] = -0.01
    asym = np.eye(6) * 0.01
    asym[0, 1] = 0.005
    huge = np.eye(6) * 0.01
    huge[2, 2] = 1e308
    return {"NaN": (nan, "finite"), "negative variance": (neg, "negative"), "asymmetric": (asym, "symmetric"),
            "1e308": (huge, "beyond"), "wrong shape": (np.eye(3), "6x6")}


@pytest.fixture(scope="module", params=["keyframe", "consecutive"])
def tracking_pipe(request):
    pipe = KeypointPipeline(PipelineConfig(detector="fps", descriptor="fpfh", registration=request.param))
    yield pipe
    pipe.release()


@pytest.mark.parametrize("kind", sorted(_bad_poses()))
def test_set_pose_refuses_a_pose_that_is_not_a_bounded_rigid_transform(tracking_pipe, kind):
    pose, why = _bad_poses()[kind]
    before = tracking_pipe.pose
    with pytest.raises(ValueError, match=f"pose: .*{why}"):
        tracking_pipe.set_pose(pose)
    np.testing.assert_array_equal(tracking_pipe.pose, before)


@pytest.mark.parametrize("kind", sorted(_bad_covariances()))
def test_set_pose_refuses_a_covariance_that_is_not_bounded(tracking_pipe, kind):
    cov, why = _bad_covariances()[kind]
    with pytest.raises(ValueError, match=f"pose covariance: .*{why}"):
        tracking_pipe.set_pose(_rotation_z(10), cov)


def test_set_pose_takes_a_bounded_pose_with_its_covariance(tracking_pipe):
    T = _rotation_z(10)
    T[:3, 3] = [0.5 * MAX_TRANSLATION_M, 3.0, -2.0]
    tracking_pipe.set_pose(T, np.eye(6) * 0.04)
    np.testing.assert_array_equal(tracking_pipe.pose, T)
    tracking_pipe.reset()


def test_moving_the_map_refuses_a_covariance_that_would_overflow():
    """A pose moved by a far transform squares its translation into the covariance: a product
    that is not finite is refused and the map keeps its keyframes where they were."""
    pts = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    from ukpgan_ros.cloud import WorkingCloud
    from ukpgan_ros.detectors.base import Keypoints

    feats = FrameFeatures(WorkingCloud(pts, np.tile(np.float32([0, 0, 1]), (50, 1)), 50),
                          Keypoints(pts[:5], np.ones(5, np.float32), np.arange(5)), np.ones((5, 4), np.float32))
    kmap = KeyframeMap()
    kmap.add(np.eye(4), feats, np.eye(6) * 1e300)
    C = np.eye(4)
    C[:3, 3] = [MAX_TRANSLATION_M, 0.0, 0.0]
    with pytest.raises(ValueError, match="keyframe 0 covariance.*overflows"):
        kmap.transform_all(C)
    np.testing.assert_array_equal(kmap.get(0).pose, np.eye(4))
    kmap.transform_all(np.eye(4))  # a harmless move still works


@pytest.fixture
def loop(tmp_path) -> Path:
    a, b = tmp_path / "loop_a", tmp_path / "loop_b"
    os.symlink(b, a)
    os.symlink(a, b)
    return a


def test_a_symlink_loop_destination_is_a_map_format_error(loop, tmp_path, capsys):
    with pytest.raises(MapFormatError, match="does not resolve"):
        check_map_destination(loop)
    with pytest.raises(MapFormatError, match="does not resolve"):
        check_map_destination(loop / "map")
    pipe = KeypointPipeline(CFG)
    try:
        from ukpgan_ros.datasets.synthetic import SyntheticSequence

        frame = SyntheticSequence(num_frames=2, width=160, height=120, fx=131.25, seed=2)[0]
        assert pipe.process(frame.points()).placed
        with pytest.raises(MapFormatError, match="does not resolve"):
            pipe.save_map(loop)
    finally:
        pipe.release()
    # ukpgan map --out LOOP: a clear message before any work, no traceback
    assert main(["map", "--out", str(loop), "--frames", "1", "--detector", "fps", "--descriptor", "fpfh"]) == 2
    err = capsys.readouterr().err
    assert "does not resolve" in err and str(loop) in err
