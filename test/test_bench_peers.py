"""benchmarks/bench_peers.py: the core run on three synthetic frames gives sane rows."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "benchmarks" / "bench_peers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _peer(name: str):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (pip install .[bench])")


@pytest.fixture(scope="module")
def result(bench):
    from ukpgan_ros.datasets import SyntheticSequence

    # The default camera's field of view at a quarter of the pixels: fast, same geometry.
    seq = SyntheticSequence(num_frames=3, width=320, height=240, fx=262.5)
    methods = ["ukpgan", "iss", "open3d"] + [m for m, mod in (("small_gicp", "small_gicp"), ("kiss_icp", "kiss_icp"))
                                    if importlib.util.find_spec(mod) is not None]
    return bench.run_benchmark(seq, methods=methods, voxels=(0.05,), strides=(1,), frames=3, max_pairs=5,
                               threads=1, warmup=False, log=lambda s: None)


def _row(result, method):
    rows = [r for r in result["rows"] if r["method"] == method]
    assert len(rows) == 1, result["rows"]
    return rows[0]


@pytest.mark.parametrize("method", ["ukpgan", "iss", "open3d", "small_gicp", "kiss_icp"])
def test_rows_are_sane(bench, result, method):
    if method in ("small_gicp", "kiss_icp"):
        _peer(method)
    if method in result["skipped"]:
        pytest.skip(f"{method}: {result['skipped'][method]}")
    r = _row(result, method)
    assert r["pairs"] == 2 and r["stride"] == 1 and r["frames"] == [0, 2]
    assert math.isfinite(r["ms_median"]) and 0 < r["ms_median"] <= r["ms_p90"] < 60_000
    assert r["success"] == 1.0, r  # consecutive synthetic frames are the easy case
    assert r["re_deg_median"] < 2.0 and r["te_cm_median"] < 5.0, r
    assert 100 < r["working_points"] < 50_000
    assert r["ratio_to_open3d"] > 0 and r["ratio_to_open3d_paired"] > 0
    if method == "open3d":
        assert r["ratio_to_open3d"] == pytest.approx(1.0) and r["ratio_to_open3d_paired"] == pytest.approx(1.0)


def test_pairs_follow_the_stream(result):
    iss = [p for p in result["pairs"] if p["method"] == "iss"]
    assert [(p["ref"], p["frame"]) for p in iss] == [(0, 1), (1, 2)]
    assert result["motion"]["1"]["motion_cm_median"] > 0.1  # the camera moves between frames


def test_missing_peer_is_skipped_with_a_reason(bench, monkeypatch):
    monkeypatch.setitem(sys.modules, "small_gicp", None)  # import now fails as if not installed
    runnable, skipped = bench.availability(["open3d", "small_gicp"])
    assert runnable == ["open3d"]
    assert skipped == {"small_gicp": "not installed (pip install .[bench])"}


def test_stream_indices(bench):
    assert bench.stream_indices(400, 0, 400, 60, 40) == [0, 60, 120, 180, 240, 300, 360]
    assert bench.stream_indices(400, 0, 400, 1, 3) == [0, 1, 2, 3]
    assert bench.stream_indices(10, 5, 400, 10, 40) == [5]


def test_table_and_plot(bench, result, tmp_path):
    table = bench.markdown_table(result["rows"])
    assert table.count("\n") == len(result["rows"]) + 1 and "| open3d | 0.05 | 1 | 2 |" in table and "| 1.00 | 1.00 |" in table
    png = bench.plot_time_vs_success(result["rows"], tmp_path / "t.png")
    assert png.stat().st_size > 1000


@pytest.fixture(scope="module")
def lidar_result(bench):
    from ukpgan_ros.datasets import SyntheticLidarSequence

    # the street at half the beams and columns: the same 100 m scene, a quarter of the points
    seq = SyntheticLidarSequence(num_frames=3, beams=32, columns=900, motion="drive")
    methods = ["ukpgan", "iss", "open3d"] + [m for m in ("small_gicp", "kiss_icp", "kiss_matcher")
                                             if importlib.util.find_spec(m) is not None]
    return bench.run_benchmark(seq, methods=methods, voxels=(0.3,), strides=(1,), frames=3, max_pairs=5,
                               threads=1, warmup=False, log=lambda s: None)


@pytest.mark.parametrize("method", ["ukpgan", "iss", "open3d", "small_gicp", "kiss_icp", "kiss_matcher"])
def test_lidar_streams_use_the_lidar_profile(bench, lidar_result, method):
    from ukpgan_ros.evaluation.metrics import LIDAR

    assert lidar_result["sensor"] == "lidar" and lidar_result["max_range"] == bench.LIDAR_MAX_RANGE
    assert lidar_result["thresholds"] == {"strict": LIDAR.strict, "loose": LIDAR.loose}
    if method in ("small_gicp", "kiss_icp", "kiss_matcher"):
        _peer(method)
    if method in lidar_result["skipped"]:
        pytest.skip(f"{method}: {lidar_result['skipped'][method]}")
    r = _row(lidar_result, method)
    assert r["pairs"] == 2 and r["frames"] == [0, 2]
    # the car drives 1 m per scan; every method finds it within the strict 5 deg / 0.6 m
    assert lidar_result["motion"]["1"]["motion_cm_median"] > 50
    assert r["success"] == 1.0 and r["success_loose"] == 1.0, r
    assert r["te_cm_median"] < 30.0, r
    # the whole street, not a 5 m camera cut: thousands of 0.3 m voxels
    assert r["working_points"] > 2000, r
    pairs = [p for p in lidar_result["pairs"] if p["method"] == method]
    for p in pairs:  # success is exactly the LiDAR thresholds applied to the errors
        assert p["success"] == (p["ok_self"] and p["re_deg"] < LIDAR.strict[0] and p["te_m"] < LIDAR.strict[1])
