"""Fuzz/soak the ukpgan_detector node: malformed messages mixed with valid frames, published to
a real node on a real DDS graph. Prints the messages sent per kind, the node's counters, whether
they add up, the valid frames answered, crashes (the worker thread dying, the node leaving the
active state, an exception out of the executor) and the RSS growth.

    PYTHONPATH=$PWD python benchmarks/bench_fuzz.py                       # quick: both inputs
    PYTHONPATH=$PWD python benchmarks/bench_fuzz.py --soak --rounds 400   # longer, with RSS growth

test/test_node_fuzz.py runs :func:`fuzz` briefly in the suite.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FAST = {"detector": "fps", "max_keypoints": 64, "voxel_size": 0.08, "registration": "none"}


def _copy_cloud(msg, **changes):
    from sensor_msgs.msg import PointCloud2

    out = PointCloud2(header=msg.header, height=msg.height, width=msg.width, fields=list(msg.fields),
                      is_bigendian=msg.is_bigendian, point_step=msg.point_step, row_step=msg.row_step,
                      data=msg.data, is_dense=msg.is_dense)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


def _field(name, offset, datatype, count=1):
    from sensor_msgs.msg import PointField

    return PointField(name=name, offset=offset, datatype=datatype, count=count)


def malformed_clouds(rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    """Kinds of bad (or odd but legal) PointCloud2 messages, each a builder."""
    from sensor_msgs.msg import PointField

    from ukpgan_ros.ros.cloud_msgs import xyz_to_pointcloud2

    def cloud(n=200, scale=2.0):
        return xyz_to_pointcloud2((rng.random((n, 3), dtype=np.float32) - 0.5) * scale + np.float32([0, 0, 2]),
                                  frame_id="cam")

    def truncated():
        m = cloud()
        return _copy_cloud(m, data=bytes(m.data)[: int(rng.integers(0, len(m.data)))])

    def big_endian():  # legal: the parser honours is_bigendian
        pts = (rng.random((300, 3)) + [0, 0, 1]).astype(">f4")
        m = cloud(300)
        return _copy_cloud(m, data=pts.tobytes(), is_bigendian=True)

    def garbage_bytes():
        m = cloud(500)
        return _copy_cloud(m, data=rng.integers(0, 256, len(m.data), dtype=np.uint8).tobytes())

    return {
        "truncated_data": truncated,
        "missing_z": lambda: _copy_cloud(cloud(), fields=[f for f in cloud().fields if f.name != "z"]),
        "int8_x": lambda: _copy_cloud(cloud(), fields=[_field("x", 0, PointField.INT8), _field("y", 4, 7), _field("z", 8, 7)]),
        "duplicate_field": lambda: _copy_cloud(cloud(), fields=[_field("x", 0, 7), _field("x", 4, 7), _field("z", 8, 7)]),
        "count_zero": lambda: _copy_cloud(cloud(), fields=[_field("x", 0, 7, 0), _field("y", 4, 7), _field("z", 8, 7)]),
        "bad_datatype": lambda: _copy_cloud(cloud(), fields=[_field("x", 0, 99), _field("y", 4, 7), _field("z", 8, 7)]),
        "offset_past_point_step": lambda: _copy_cloud(cloud(), fields=[_field("x", 0, 7), _field("y", 4, 7), _field("z", 64, 7)]),
        "point_step_zero": lambda: _copy_cloud(cloud(), point_step=0),
        "point_step_small": lambda: _copy_cloud(cloud(), point_step=4),
        "point_step_huge": lambda: _copy_cloud(cloud(), point_step=2**31),
        "row_step_small": lambda: _copy_cloud(cloud(), row_step=7),
        "huge_dims": lambda: _copy_cloud(cloud(), width=2**32 - 1, height=2**32 - 1, row_step=2**32 - 1),
        "height_zero": lambda: _copy_cloud(cloud(), height=0),
        "empty": lambda: xyz_to_pointcloud2(np.zeros((0, 3), np.float32), frame_id="cam"),
        "all_nan": lambda: xyz_to_pointcloud2(np.full((100, 3), np.nan, np.float32), frame_id="cam"),
        "all_inf": lambda: xyz_to_pointcloud2(np.full((100, 3), np.inf, np.float32), frame_id="cam"),
        "huge_coordinates": lambda: xyz_to_pointcloud2(rng.uniform(-3e38, 3e38, (200, 3)).astype(np.float32), frame_id="cam"),
        "one_point": lambda: cloud(1),
        "identical_points": lambda: xyz_to_pointcloud2(np.ones((500, 3), np.float32), frame_id="cam"),
        "garbage_bytes": garbage_bytes,
        "big_endian": big_endian,
        "no_fields": lambda: _copy_cloud(cloud(), fields=[]),
    }


def malformed_depth(rng: np.random.Generator, good_image, good_info) -> dict[str, Callable[[], tuple]]:
    """Kinds of bad (or odd) depth Image + CameraInfo pairs, each a builder of (image, info or None)."""
    from sensor_msgs.msg import CameraInfo, Image

    def image(**changes):
        m = Image(header=good_image.header, height=good_image.height, width=good_image.width,
                  encoding=good_image.encoding, is_bigendian=good_image.is_bigendian, step=good_image.step,
                  data=good_image.data)
        for k, v in changes.items():
            setattr(m, k, v)
        return m

    def info(**changes):
        m = CameraInfo(header=good_info.header, height=good_info.height, width=good_info.width,
                       distortion_model=good_info.distortion_model, d=list(good_info.d), k=list(good_info.k),
                       r=list(good_info.r), p=list(good_info.p))
        for k, v in changes.items():
            setattr(m, k, v)
        return m

    def k_with(i, v):
        k = list(good_info.k)
        k[i] = v
        return k

    h, w = good_image.height, good_image.width
    return {
        "encoding_rgb8": lambda: (image(encoding="rgb8"), info()),
        "encoding_empty": lambda: (image(encoding=""), info()),
        "encoding_mono8": lambda: (image(encoding="mono8", step=w), info()),
        "big_endian_16UC1": lambda: (image(is_bigendian=1), info()),
        "step_small": lambda: (image(step=w), info()),
        "truncated": lambda: (image(data=bytes(good_image.data)[: len(good_image.data) // 3]), info()),
        "height_zero": lambda: (image(height=0), info()),
        "huge_dims": lambda: (image(height=2**31, width=2**31, step=2**32 - 1), info()),
        "float_nan": lambda: (image(encoding="32FC1", step=4 * w, data=np.full(h * w, np.nan, "<f4").tobytes()), info()),
        "float_negative": lambda: (image(encoding="32FC1", step=4 * w, data=np.full(h * w, -1.0, "<f4").tobytes()), info()),
        "float_inf": lambda: (image(encoding="32FC1", step=4 * w, data=np.full(h * w, np.inf, "<f4").tobytes()), info()),
        "all_zero": lambda: (image(data=bytes(len(good_image.data))), info()),
        "k_zero": lambda: (image(), info(k=[0.0] * 9)),
        "k_nan": lambda: (image(), info(k=k_with(0, float("nan")))),
        "k_tiny": lambda: (image(), info(k=k_with(4, 1e-300))),
        "info_other_size": lambda: (image(), info(width=w + 16, height=h + 16)),
        "no_camera_info": lambda: (image(), None),
        "garbage_bytes": lambda: (image(data=rng.integers(0, 256, len(good_image.data), dtype=np.uint8).tobytes()), info()),
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fuzz(input_kind: str, rounds: int, bad_per_round: int, seed: int, domain: int,
         params: dict | None = None, timeout_s: float = 30.0, log: Callable[[str], None] | None = None) -> dict:
    """Start a detector (``input_kind``) and a probe on ``domain``; publish ``rounds`` rounds of
    ``bad_per_round`` malformed messages (kinds drawn at random) and then one valid frame, waiting
    for that frame's keypoints. Returns counts, the node's counters and the crash evidence."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import Header

    from ukpgan_ros.datasets.synthetic import SyntheticSequence
    from ukpgan_ros.ros.cloud_msgs import camera_info_msg, depth_to_image_msg, xyz_to_pointcloud2
    from ukpgan_ros.ros.detector_node import UkpganDetectorNode

    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    seq = SyntheticSequence(num_frames=4, width=160, height=120, fx=131.25, seed=seed)
    frames = [seq[i] for i in range(4)]
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    params = {**FAST, "input": input_kind, "depth_info_timeout": 0.1, "max_range": 20.0, **(params or {})}
    node = UkpganDetectorNode("ukpgan_fuzz", context=ctx,
                              parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    probe = rclpy.create_node("fuzz_probe", context=ctx)
    answered: set[int] = set()
    probe.create_subscription(PointCloud2, "/ukpgan_fuzz/keypoints",
                              lambda m: answered.add(m.header.stamp.sec * 1000 + m.header.stamp.nanosec // 1_000_000), 50)
    qos = QoSProfile(depth=10)
    cloud_pub = probe.create_publisher(PointCloud2, "/cloud_in", qos)
    image_pub = probe.create_publisher(Image, "/depth/image_raw", qos)
    info_pub = probe.create_publisher(CameraInfo, "/depth/camera_info", qos)
    executor = MultiThreadedExecutor(num_threads=3, context=ctx)
    executor.add_node(node)
    executor.add_node(probe)
    crashes: list[str] = []

    def spin():
        try:
            executor.spin()
        except Exception as e:  # noqa: BLE001 - an exception out of a callback: a crash
            crashes.append(f"executor: {type(e).__name__}: {e}")

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    sent: Counter = Counter()
    valid_stamps: list[int] = []
    out: dict = {"input": input_kind}
    try:
        from rclpy.lifecycle import TransitionCallbackReturn

        ok = TransitionCallbackReturn.SUCCESS
        if node.trigger_configure() != ok or node.trigger_activate() != ok:
            raise RuntimeError("the detector did not configure and activate (see the log)")
        worker_thread = node._worker._thread
        pubs = (cloud_pub,) if input_kind == "cloud" else (image_pub, info_pub)
        deadline = time.monotonic() + 10
        while any(p.get_subscription_count() == 0 for p in pubs) and time.monotonic() < deadline:
            time.sleep(0.02)
        stamp_ms = 1000

        def header() -> Header:
            nonlocal stamp_ms
            stamp_ms += 7
            hdr = Header(frame_id="cam")
            hdr.stamp.sec, hdr.stamp.nanosec = stamp_ms // 1000, (stamp_ms % 1000) * 1_000_000
            return hdr

        if input_kind == "depth":
            f0 = frames[0]
            good_image = depth_to_image_msg(f0.depth_m, header())
            good_info = camera_info_msg(f0.K, f0.depth_m.shape[1], f0.depth_m.shape[0], good_image.header)
            kinds = malformed_depth(rng, good_image, good_info)
        else:
            kinds = malformed_clouds(rng)
        names = sorted(kinds)
        rss0 = None
        t0 = time.monotonic()
        for r in range(rounds):
            for _ in range(bad_per_round):
                name = pick.choice(names)
                sent[name] += 1
                if input_kind == "cloud":
                    msg = kinds[name]()
                    msg.header = header()
                    cloud_pub.publish(msg)
                else:
                    img, inf = kinds[name]()
                    img.header = header()
                    if inf is not None:
                        inf.header = img.header
                        info_pub.publish(inf)
                    image_pub.publish(img)
                time.sleep(0.002)  # most reach the node (a keep-last queue drops bursts before any callback)
            f = frames[r % len(frames)]
            hdr = header()
            key = hdr.stamp.sec * 1000 + hdr.stamp.nanosec // 1_000_000
            valid_stamps.append(key)
            sent["valid"] += 1
            if input_kind == "cloud":
                cloud_pub.publish(xyz_to_pointcloud2(f.points(), header=hdr))
            else:
                info_pub.publish(camera_info_msg(f.K, f.depth_m.shape[1], f.depth_m.shape[0], hdr))
                image_pub.publish(depth_to_image_msg(f.depth_m, hdr))
            deadline = time.monotonic() + timeout_s
            while key not in answered and time.monotonic() < deadline and not crashes:
                time.sleep(0.005)
            if rss0 is None and r >= min(10, rounds // 5):
                rss0 = _rss_mb()  # after warm-up (JIT, caches, DDS buffers)
            if log is not None and (r + 1) % 50 == 0:
                log(f"  {input_kind}: round {r + 1}/{rounds}, {sum(sent.values())} messages, "
                    f"{len(answered & set(valid_stamps))} valid answered, RSS {_rss_mb():.0f} MB")
        deadline = time.monotonic() + timeout_s
        snap = node.diagnostics_snapshot()
        while snap["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
            snap = node.diagnostics_snapshot()
        with node._worker.cond:
            snap = node._worker.snapshot()
            unaccounted = node._stats.unaccounted()
        out.update({
            "seconds": time.monotonic() - t0, "messages": sum(sent.values()), "sent": dict(sent),
            "kinds": len(names) + 1, "counters": snap, "unaccounted": unaccounted,
            "valid_sent": len(valid_stamps), "valid_answered": len(answered & set(valid_stamps)),
            "worker_thread_replaced": node._worker._thread is not worker_thread,
            "state": node._state_machine.current_state[1], "rss_start_mb": rss0, "rss_end_mb": _rss_mb(),
        })
        if snap["worker_restarts"]:
            crashes.append(f"worker thread restarted {snap['worker_restarts']} time(s)")
        if out["state"] != "active":
            crashes.append(f"node left the active state: {out['state']}")
        out["crashes"] = crashes
        return out
    finally:
        try:
            node.trigger_shutdown()
        except Exception:  # noqa: BLE001
            pass
        executor.shutdown()
        spinner.join(timeout=10)
        node.destroy_node()
        probe.destroy_node()
        rclpy.try_shutdown(context=ctx)


def report(res: dict) -> str:
    c = res["counters"]
    outcome = {k: c[k] for k in ("received", "processed", "dropped", "malformed", "errors", "unpaired", "in_flight")}
    lines = [
        f"input {res['input']}: {res['messages']} messages of {res['kinds']} kinds in {res['seconds']:.1f} s; "
        f"crashes {len(res['crashes'])}{' ' + '; '.join(res['crashes']) if res['crashes'] else ''}",
        f"  counters {outcome}; unaccounted {res['unaccounted']} (received = processed + dropped + malformed "
        f"+ errors + unpaired + in_flight)",
        f"  valid frames answered {res['valid_answered']}/{res['valid_sent']}; node state {res['state']}",
        f"  RSS {res['rss_start_mb']:.0f} MB after warm-up -> {res['rss_end_mb']:.0f} MB "
        f"(growth {res['rss_end_mb'] - res['rss_start_mb']:+.0f} MB)",
        "  sent per kind: " + ", ".join(f"{k} {v}" for k, v in sorted(res["sent"].items())),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", choices=("cloud", "depth", "both"), default="both")
    ap.add_argument("--rounds", type=int, default=40, help="valid frames per input (each after --bad malformed ones)")
    ap.add_argument("--bad", type=int, default=9, help="malformed messages before each valid frame")
    ap.add_argument("--soak", action="store_true", help="longer run: 400 rounds unless --rounds is given")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domain", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", 100 + os.getpid() % 100)))
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="detector parameter (e.g. registration=keyframe); values parsed as Python literals")
    args = ap.parse_args(argv)
    rounds = 400 if args.soak and "--rounds" not in (argv or sys.argv) else args.rounds
    import ast

    params = {}
    for p in args.param:
        k, v = p.split("=", 1)
        try:
            params[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            params[k] = v
    bad = False
    for kind in (("cloud", "depth") if args.input == "both" else (args.input,)):
        res = fuzz(kind, rounds, args.bad, args.seed, args.domain, params, log=print)
        print(report(res), flush=True)
        bad |= bool(res["crashes"]) or res["unaccounted"] != 0 or res["valid_answered"] != res["valid_sent"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
