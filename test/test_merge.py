"""Two mapping sessions of one room end in one map: ``merge_maps`` registers two saved maps to
each other with no guess and recovers the known offset between their frames (the synthetic
camera's ground truth); the CLI does the same; maps that do not overlap are refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.datasets.synthetic import SyntheticSequence
from ukpgan_ros.loops import LoopPolicy, merge_maps
from ukpgan_ros.maps import MapFormatError, load_map, save_map
from ukpgan_ros.pipeline import KeypointPipeline
from ukpgan_ros.posegraph import LOOP
from ukpgan_ros.tracking import KeyframePolicy, KeyframeTracker, RelocalizationPolicy
from ukpgan_ros.transforms import rotation_error_deg, translation_error

CFG = PipelineConfig()


@pytest.fixture(scope="module")
def two_maps(tmp_path_factory):
    """Frames 0-36 and 24-60 (every 4th) of the synthetic camera, each tracked in its own frame
    (each session starts at identity) and saved."""
    seq = SyntheticSequence(num_frames=64, width=320, height=240, fx=262.5, seed=3)
    pipe = KeypointPipeline(CFG, tracking=False)
    feats = {i: pipe.describe(seq[i].points(), dense=True, descriptors=True) for i in range(0, 61, 4)}
    root = tmp_path_factory.mktemp("maps")
    out = {}
    for name, idx in (("a", range(0, 37, 4)), ("b", range(24, 61, 4))):
        tr = KeyframeTracker(KeyframePolicy(max_distance=0.15, max_angle_deg=8.0), RelocalizationPolicy(),
                             CFG.match_distance, sigma_floor=0.1 * CFG.voxel_size,
                             meta={"voxel_size": CFG.voxel_size, "descriptor": CFG.descriptor})
        for i in idx:
            assert tr.step(feats[i], lambda s, t: pipe.register(s, t), index=i).placed
        out[name] = load_map(save_map(tr.map_for_saving(), root / name))
    out["gt"] = lambda i: np.linalg.inv(seq.pose(0)) @ seq.pose(i)
    out["root"] = root
    return out


def _keypoint_register():
    pipe = KeypointPipeline(dataclasses.replace(CFG, match_against="keypoints"), tracking=False)
    return pipe, pipe.register


def test_merge_recovers_the_offset_between_two_sessions(two_maps):
    a, b, gt = two_maps["a"], two_maps["b"], two_maps["gt"]
    pipe, register = _keypoint_register()
    merged, rep = merge_maps(a, b, register, CFG.match_distance, 0.1 * CFG.voxel_size, LoopPolicy.from_config(CFG))
    truth = gt(24)  # B's map frame is the camera at frame 24
    assert translation_error(rep.T_a_from_b, truth) < 0.03 and rotation_error_deg(rep.T_a_from_b, truth) < 1.5
    assert len({kb for _ka, kb in rep.pairs}) >= 3
    assert len(merged) == len(a) + len(b)
    assert sum(e.kind == LOOP for e in merged.edges) == len(rep.pairs)
    ids = [k.id for k in merged]
    assert len(set(ids)) == len(ids)
    for k in merged:
        assert translation_error(k.pose, gt(k.index)) < 0.05 and rotation_error_deg(k.pose, gt(k.index)) < 2.0
    # A's frame stays: its first keyframe has not moved
    np.testing.assert_allclose(merged.get(min(k.id for k in a)).pose, a.get(min(k.id for k in a)).pose, atol=1e-6)


def test_merge_cli_writes_one_map(two_maps, tmp_path, capsys):
    from ukpgan_ros.cli import main

    root = two_maps["root"]
    rc = main(["map", "--merge", str(root / "a"), str(root / "b"), "--out", str(tmp_path / "ab")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "agree on T_a_from_b" in out
    merged = load_map(tmp_path / "ab")
    assert len(merged) == len(two_maps["a"]) + len(two_maps["b"]) and merged.edges


def test_maps_that_do_not_overlap_are_refused(two_maps):
    a = two_maps["a"]
    pipe, register = _keypoint_register()
    first = load_map(two_maps["root"] / "a")
    first._frames = first._frames[:1]  # one keyframe of A cannot give three agreeing pairs
    with pytest.raises(MapFormatError, match="do not overlap enough"):
        merge_maps(a, first, register, CFG.match_distance, policy=LoopPolicy(min_inliers=10 ** 6))
