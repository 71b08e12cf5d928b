"""Loop closure on the synthetic camera's looping trajectory (exact ground truth): it removes most
of the drift at the return without touching odometry; the map format v2 round trip (optimised
poses, odometry poses, the pose graph) and v1 maps still loading; edge validation; the
there-and-back playback order; the looping sources return to their start."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.datasets import ThereAndBackSequence, open_sequence, there_and_back
from ukpgan_ros.datasets.synthetic import SyntheticSequence
from ukpgan_ros.loops import LoopPolicy, agree, drift_of
from ukpgan_ros.maps import MapFormatError, load_map, save_map
from ukpgan_ros.pipeline import KeypointPipeline
from ukpgan_ros.posegraph import LOOP, ODOMETRY
from ukpgan_ros.tracking import KeyframePolicy, KeyframeTracker, RelocalizationPolicy
from ukpgan_ros.transforms import rotation_error_deg, translation_error

CFG = PipelineConfig()


@pytest.fixture(scope="module")
def loop_run():
    """One lap of the looping synthetic camera (48 frames, 320 x 240), tracked with and without
    loop closure on the same described frames."""
    seq = SyntheticSequence(num_frames=48, width=320, height=240, fx=262.5, seed=3, loop=True)
    pipe = KeypointPipeline(CFG, tracking=False)
    frames = [(seq[i], pipe.describe(seq[i].points(), dense=True, descriptors=True)) for i in range(len(seq))]

    calls = {"with": [], "without": []}

    def counted(name):
        def reg(src, tgt):
            calls[name].append(threading.current_thread().name)
            return pipe.register(src, tgt)
        return reg

    def tracker(loops):
        return KeyframeTracker(KeyframePolicy(), RelocalizationPolicy(), CFG.match_distance,
                               sigma_floor=0.1 * CFG.voxel_size, meta={"voxel_size": CFG.voxel_size},
                               loops=LoopPolicy.from_config(CFG) if loops else None)

    with_loops, without = tracker(True), tracker(False)
    poses = []
    for k, (frame, feats) in enumerate(frames):
        a = with_loops.step(feats, counted("with"), stamp=frame.stamp, index=k)
        b = without.step(feats, counted("without"), stamp=frame.stamp, index=k)
        assert a.placed and b.placed
        np.testing.assert_allclose(a.pose, b.pose, atol=1e-9)  # loop closure never moves odometry
        poses.append(a.pose)
        # frames arrive at sensor rate, not as fast as this loop steps: let the worker keep up (on a
        # loaded machine its bounded queue would otherwise drop queries, as it should in a node)
        assert with_loops.loops.wait(60)
    assert with_loops.loops.wait(120)
    gt = [np.linalg.inv(frames[0][0].pose) @ f.pose for f, _ in frames]
    return {"with": with_loops, "without": without, "gt": gt, "poses": poses, "seq": seq, "calls": calls}


def test_loop_closure_removes_most_of_the_drift_at_the_return(loop_run):
    tr, gt, pose = loop_run["with"], loop_run["gt"][-1], loop_run["poses"][-1]
    st = tr.loops.stats
    assert st.accepted >= 1 and not st.last_error, st
    odom_err = translation_error(pose, gt)
    corrected = tr.map_from_odom @ pose
    map_err = translation_error(corrected, gt)
    print(f"drift at the return: odometry {100 * odom_err:.2f} cm, map frame {100 * map_err:.2f} cm")
    assert odom_err > 0.01, "the odometry drifts over the lap"
    assert map_err <= odom_err / 3, (map_err, odom_err)
    assert rotation_error_deg(corrected, gt) <= rotation_error_deg(pose, gt)
    np.testing.assert_array_equal(loop_run["without"].map_from_odom, np.eye(4))  # no loop closure, no correction
    # the correction is the current keyframe's optimised pose after its odometry pose
    kf = tr.current_keyframe
    np.testing.assert_allclose(tr.map_from_odom @ kf.pose, tr.loops.map_pose(kf.id, kf.pose), atol=1e-9)


def test_step_only_enqueues_loop_work(loop_run):
    """Every loop registration runs in the worker: on the calling thread, tracking with loop
    closure registers exactly as often as without it."""
    calls = loop_run["calls"]
    main = threading.current_thread().name
    on_main = [c for c in calls["with"] if c == main]
    assert len(on_main) == len(calls["without"])
    worker = [c for c in calls["with"] if c != main]
    assert worker and set(worker) == {"ukpgan-loop-closure"}


def test_map_v2_round_trip_and_v1_still_loads(loop_run, tmp_path):
    tr = loop_run["with"]
    kmap = tr.map_for_saving()
    assert any(e.kind == LOOP for e in kmap.edges) and any(e.kind == ODOMETRY for e in kmap.edges)
    folder = save_map(kmap, tmp_path / "v2")
    index = json.loads((folder / "map.json").read_text())
    assert index["version"] == 2 and index["edges"]
    loaded = load_map(folder)
    for a, b in zip(kmap, loaded):
        np.testing.assert_array_equal(a.pose, b.pose)
        np.testing.assert_array_equal(a.odom_pose, b.odom_pose)
    opt = {k.id: k for k in loaded}
    for e in loaded.edges:  # optimised poses differ from odometry where a loop pulled them
        assert e.i in opt and e.j in opt
    assert [(e.i, e.j, e.kind) for e in loaded.edges] == [(e.i, e.j, e.kind) for e in kmap.edges]
    for a, b in zip(kmap.edges, loaded.edges):
        np.testing.assert_array_equal(a.T_i_from_j, b.T_i_from_j)
        np.testing.assert_array_equal(a.covariance, b.covariance)
    # the optimised keyframe poses are closer to the truth than the odometry ones
    gt = loop_run["gt"]
    ate = [math.sqrt(np.mean([np.sum((p(k)[:3, 3] - gt[k.index][:3, 3]) ** 2) for k in loaded]))
           for p in (lambda k: k.odom_pose, lambda k: k.pose)]
    assert ate[1] < ate[0], ate
    # a version 1 map (no edges, no odom_pose) still loads
    index["version"] = 1
    del index["edges"]
    for e in index["keyframes"]:
        e.pop("odom_pose")
    (folder / "map.json").write_text(json.dumps(index))
    v1 = load_map(folder)
    assert v1.edges == [] and all(k.odom_pose is None for k in v1) and len(v1) == len(kmap)


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.update(i=999), "edge 0 i: keyframe 999 is not in the map"),
    (lambda e: e.update(kind="guess"), "edge 0 kind: expected 'odometry' or 'loop', got 'guess'"),
    (lambda e: e["T_i_from_j"][0].__setitem__(0, 2.0), "edge 0 T_i_from_j: upper-left 3x3 is not a rotation"),
    (lambda e: e["covariance"][0].__setitem__(1, 5.0), "edge 0 covariance: not symmetric"),
    (lambda e: e.update(fitness=1.5), r"edge 0 fitness: 1.5 is outside \[0, 1\]"),
    (lambda e: e.pop("covariance"), "edge 0 covariance: missing"),
    (lambda e: e.update(j=e["i"]), "edge 0: joins keyframe"),
])
def test_bad_edges_are_refused_naming_the_file_and_field(loop_run, tmp_path, edit, message):
    folder = save_map(loop_run["with"].map_for_saving(), tmp_path / "m")
    index = json.loads((folder / "map.json").read_text())
    edit(index["edges"][0])
    (folder / "map.json").write_text(json.dumps(index))
    with pytest.raises(MapFormatError, match=f"map.json: {message}"):
        load_map(folder)


def test_a_lone_loop_that_implies_too_much_drift_is_not_accepted():
    """The agreement check (module docstring, step 3) without a partner or a graph: a loop that
    says odometry drifted farther than it can over the path is held back."""
    pol = LoopPolicy(agree_m=0.15, agree_deg=3.0)
    old, new = np.eye(4), np.eye(4)
    new[:3, 3] = [1.0, 0, 0]
    T_true = np.linalg.inv(old) @ new
    wrong = T_true.copy()
    wrong[:3, 3] += [0.8, 0.5, 0]
    path = 1.0
    tol = (pol.agree_m + pol.drift_per_m * path, pol.agree_deg + pol.drift_deg_per_m * path)
    assert agree(np.eye(4), drift_of(old, T_true, new), *tol)
    assert not agree(np.eye(4), drift_of(old, wrong, new), *tol)


def test_there_and_back_order_and_stamps():
    assert there_and_back(range(6)) == [0, 2, 4, 5, 3, 1]
    assert there_and_back(range(5)) == [0, 2, 4, 3, 1]
    assert there_and_back([10, 20, 30]) == [10, 30, 20]
    src = SyntheticSequence(num_frames=9, width=32, height=24, fx=26.0)
    tab = ThereAndBackSequence(src, range(1, 8))
    assert tab.order == [1, 3, 5, 7, 6, 4, 2] and len(tab) == 7
    frames = list(tab)
    assert [f.index for f in frames] == list(range(7))
    assert all(b.stamp > a.stamp for a, b in zip(frames, frames[1:]))
    for k, f in enumerate(frames):
        np.testing.assert_array_equal(f.pose, src.pose(tab.order[k]))
        assert tab.source_index(k) == tab.order[k]
    with pytest.raises(IndexError):
        ThereAndBackSequence(src, [0, 9])


def test_looping_sources_return_to_their_start():
    cam = open_sequence("synthetic_loop", num_frames=40, width=32, height=24, fx=26.0)
    assert cam.name == "synthetic_loop"
    from ukpgan_ros.datasets.synthetic import camera_pose

    np.testing.assert_allclose(camera_pose(40 / cam.rate_hz, cam.loop_period), cam.pose(0), atol=1e-9)
    assert translation_error(cam.pose(20), cam.pose(0)) > 1.0  # half way round it is far away
    lidar = open_sequence("synthetic_lidar_loop", num_frames=50, beams=4, columns=64)
    assert lidar.name == "synthetic_lidar_loop"
    back = lidar.pose_at(50 / lidar.rate_hz)
    assert np.linalg.norm(back[:3, 3] - lidar.pose(0)[:3, 3]) < 1e-6
    assert np.linalg.norm(lidar.pose(25)[:3, 3] - lidar.pose(0)[:3, 3]) > 20.0


def test_map_cli_plays_there_and_back_and_reports_loop_closure(tmp_path, capsys):
    from ukpgan_ros.cli import main

    rc = main(["map", "--data", "synthetic", "--frames", "12", "--stride", "2", "--there-and-back",
               "--out", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "(6 frames, there and back)" in out and "loop closure:" in out and "keyframe ATE" in out
    rows = [line.split()[0] for line in out.splitlines() if line[:6].strip().isdigit()]
    assert rows == ["0", "1", "2", "3", "4", "5"]
    kmap = load_map(tmp_path / "m")
    assert {k.index for k in kmap} <= {0, 2, 4, 6, 8, 10}  # keyframes keep the sequence's own indices
