"""Fuzz the ukpgan_detector node: a few hundred malformed PointCloud2 and depth Image/CameraInfo
messages (wrong fields, truncated data, NaNs, huge dimensions, wrong point_step, empty, zero
size, wrong encodings, big-endian, absurd intrinsics, missing CameraInfo, garbage bytes) mixed
with valid frames, published to a real node on a real DDS graph (benchmarks/bench_fuzz.py builds
them; ``--soak`` there runs longer). Afterwards nothing crashed, the counters add up and every
valid frame was answered with keypoints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import ros_domain

pytest.importorskip("rclpy")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_fuzz", ROOT / "benchmarks" / "bench_fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("input_kind, domain", [("cloud", ros_domain(3)), ("depth", ros_domain(4))])
def test_malformed_messages_mixed_with_valid_frames(bench, input_kind, domain):
    res = bench.fuzz(input_kind, rounds=25, bad_per_round=7, seed=11, domain=domain)
    print(bench.report(res))
    c = res["counters"]
    assert res["crashes"] == [], res["crashes"]
    assert res["messages"] == 25 * 8 and len(res["sent"]) >= 12, res["sent"]
    assert res["unaccounted"] == 0 and c["in_flight"] == 0, c
    assert c["received"] == c["processed"] + c["dropped"] + c["malformed"] + c["errors"] + c["unpaired"], c
    assert res["valid_answered"] == res["valid_sent"] == 25, "a valid frame got no keypoints"
    assert c["errors"] == 0, "malformed input must be counted as malformed (a clear reason), not as an error"
    assert c["malformed"] > 25, "the malformed messages did not reach the parsers"
    assert res["state"] == "active" and not res["worker_thread_replaced"]
