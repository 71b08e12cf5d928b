"""Cross-process PointCloud2 throughput: reliability x Fast DDS transport, plus conversion cost.

A measurement, not a test. For every case a fresh *case process* hosts the subscriber and
spawns a *publisher process*; both are fresh because Fast DDS reads its XML profile once per
process. The publisher waits until it is matched, then sends ``--count`` 640x480 clouds
(point_step 16: x, y, z, intensity; ~4.9 MB) at ``--rate`` Hz, stamping each with the wall clock
and its sequence number (in ``header.frame_id``); the subscriber records arrival times. Printed
per case: received Hz, mean / p95 latency (stamp -> callback), fraction lost.

Every case gets its own ROS_DOMAIN_ID (random base per run) and
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, so runs do not cross-talk and nothing leaves loopback.

    PYTHONPATH=. python benchmarks/bench_cloud_transport.py                # full matrix
    PYTHONPATH=. python benchmarks/bench_cloud_transport.py --count 60 --rate 30 \
        --cases reliable:default best_effort:shm_pub
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable without PYTHONPATH or an install
    sys.path.insert(0, str(REPO))
PROFILE = REPO / "config" / "fastdds_shm.xml"
TOPIC = "/bench/cloud"
WIDTH, HEIGHT = 640, 480
# transport name -> which processes load config/fastdds_shm.xml
TRANSPORTS = {"default": (), "shm_pub": ("pub",), "shm_both": ("pub", "sub")}
DEFAULT_CASES = [f"{r}:{t}" for t in ("default", "shm_pub", "shm_both") for r in ("reliable", "best_effort")]


def ros_env(domain_id: int, use_profile: bool, qos_from_xml: bool = False) -> dict[str, str]:
    """Environment for one ROS process: private domain, loopback only, profile on or off."""
    env = dict(os.environ)
    for k in ("ROS_LOCALHOST_ONLY", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
              "RMW_FASTRTPS_USE_QOS_FROM_XML", "ROS_STATIC_PEERS"):
        env.pop(k, None)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        SKIP_DEFAULT_XML_FILE="1",  # never pick up a DEFAULT_FASTDDS_PROFILES.xml from the cwd
    )
    if use_profile:
        env.pop("SKIP_DEFAULT_XML_FILE")
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
        if qos_from_xml:
            env["RMW_FASTRTPS_USE_QOS_FROM_XML"] = "1"
    return env


def qos_profile(reliability: str, depth: int):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


def make_cloud() -> object:
    """A 640x480 cloud with point_step 16, as a depth camera publishes it (x, y, z, intensity)."""
    from ukpgan_ros.ros.cloud_msgs import xyz_to_pointcloud2

    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, size=(WIDTH * HEIGHT, 3)).astype(np.float32)
    return xyz_to_pointcloud2(pts, extra_fields={"intensity": pts[:, 2]}, frame_id="bench/0")


# ------------------------------------------------------------------------------ publisher


def run_publisher(args: argparse.Namespace) -> None:
    import rclpy

    from ukpgan_ros.ros.messages import seconds_to_stamp

    rclpy.init()
    node = rclpy.create_node("bench_cloud_pub")
    pub = node.create_publisher(type(make_cloud()), TOPIC, qos_profile(args.reliability, args.pub_depth))
    msg = make_cloud()
    deadline = time.monotonic() + args.match_timeout
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if pub.get_subscription_count() == 0:
        print(json.dumps({"sent": 0, "error": "no subscriber matched"}), flush=True)
        return
    time.sleep(0.3)  # let the reader side finish matching too
    period = 1.0 / args.rate
    start = time.monotonic()
    publish_s = []
    for i in range(args.count):
        target = start + i * period
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        msg.header.frame_id = f"bench/{i}"
        msg.header.stamp = seconds_to_stamp(time.time())
        t0 = time.perf_counter()
        pub.publish(msg)
        publish_s.append(time.perf_counter() - t0)
    send_s = time.monotonic() - start
    time.sleep(args.linger)  # reliable writers may still be repairing fragments
    print(json.dumps({"sent": args.count, "send_s": send_s, "publish_ms_mean": 1e3 * statistics.mean(publish_s),
                      "publish_ms_max": 1e3 * max(publish_s)}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


# ------------------------------------------------------------------------------ case (subscriber)


def run_case(args: argparse.Namespace) -> None:
    """Subscriber in this process; publisher in a subprocess. Prints one JSON line."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2

    from ukpgan_ros.transforms import stamp_seconds

    arrivals: list[tuple[int, float, float]] = []  # (seq, receive time, stamp)

    def on_cloud(msg: PointCloud2) -> None:
        now = time.time()
        arrivals.append((int(msg.header.frame_id.rsplit("/", 1)[1]), now, stamp_seconds(msg.header.stamp)))

    rclpy.init()
    node = rclpy.create_node("bench_cloud_sub")
    node.create_subscription(PointCloud2, TOPIC, on_cloud, qos_profile(args.reliability, args.depth))
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    pub_env = ros_env(args.domain_id, "pub" in TRANSPORTS[args.transport], args.qos_from_xml)
    cmd = [sys.executable, __file__, "--role", "pub", "--reliability", args.reliability, "--pub-depth", str(args.pub_depth),
           "--count", str(args.count), "--rate", str(args.rate), "--linger", str(args.linger),
           "--match-timeout", str(args.match_timeout)]
    proc = subprocess.Popen(cmd, env=pub_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hard_stop = time.monotonic() + args.match_timeout + args.count / args.rate + args.linger + 10.0
    while proc.poll() is None and time.monotonic() < hard_stop:
        executor.spin_once(timeout_sec=0.05)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    end = time.monotonic() + 0.3  # drain what is already queued
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()

    pub_report = {}
    for line in out.splitlines():
        if line.startswith("{"):
            pub_report = json.loads(line)
    sent = int(pub_report.get("sent", 0))
    seqs = {s for s, _, _ in arrivals}
    recv_t = np.array([t for _, t, _ in arrivals])
    lat_ms = np.array([(t - st) * 1e3 for _, t, st in arrivals])
    result = {
        "case": f"{args.reliability}:{args.transport}",
        "sent": sent,
        "received": len(seqs),
        "lost": (1.0 - len(seqs) / sent) if sent else None,
        "hz": (len(recv_t) - 1) / (recv_t[-1] - recv_t[0]) if len(recv_t) > 1 else 0.0,
        "lat_mean_ms": float(lat_ms.mean()) if len(lat_ms) else None,
        "lat_p95_ms": float(np.percentile(lat_ms, 95)) if len(lat_ms) else None,
        "pub": pub_report,
        "pub_stderr_tail": err.strip().splitlines()[-3:],
    }
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ conversions


def time_conversions(repeats: int) -> dict[str, float]:
    """Median ms of NumPy -> PointCloud2 and back for 640x480 (no ROS graph needed)."""
    from ukpgan_ros.pointcloud2 import pointcloud2_fields, pointcloud2_to_xyz
    from ukpgan_ros.ros.cloud_msgs import xyz_to_pointcloud2

    rng = np.random.default_rng(1)
    pts = rng.uniform(-1, 1, size=(WIDTH * HEIGHT, 3)).astype(np.float32)
    sal = rng.random(WIDTH * HEIGHT).astype(np.float32)
    xyz_to_pointcloud2(pts)  # import + warm up

    def med(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    msg = xyz_to_pointcloud2(pts, extra_fields={"saliency": sal})
    organized = xyz_to_pointcloud2(pts, extra_fields={"saliency": sal})
    organized.height, organized.width, organized.row_step = HEIGHT, WIDTH, WIDTH * 16
    return {
        "numpy->msg xyz (12 B/pt)": med(lambda: xyz_to_pointcloud2(pts)),
        "numpy->msg xyz+saliency (16 B/pt)": med(lambda: xyz_to_pointcloud2(pts, extra_fields={"saliency": sal})),
        "msg->numpy xyz (unorganized)": med(lambda: pointcloud2_to_xyz(msg)),
        "msg->numpy xyz (organized 480x640)": med(lambda: pointcloud2_to_xyz(organized)),
        "msg->numpy saliency field": med(lambda: pointcloud2_fields(msg, ["saliency"])),
    }


# ------------------------------------------------------------------------------ orchestration


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["main", "case", "pub"], default="main", help=argparse.SUPPRESS)
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="reliability:transport, transport in "
                   f"{list(TRANSPORTS)} (shm_pub = profile on the publisher only)")
    p.add_argument("--count", type=int, default=90, help="clouds per case")
    p.add_argument("--rate", type=float, default=30.0, help="publish rate, Hz")
    p.add_argument("--depth", type=int, default=5, help="KEEP_LAST depth of the subscription")
    p.add_argument("--pub-depth", type=int, default=None, help="KEEP_LAST depth of the publisher (default: --depth)")
    p.add_argument("--linger", type=float, default=1.0, help="s the publisher stays up after its last send")
    p.add_argument("--match-timeout", type=float, default=10.0)
    p.add_argument("--qos-from-xml", action="store_true", help="also set RMW_FASTRTPS_USE_QOS_FROM_XML=1 with the profile")
    p.add_argument("--conversion-repeats", type=int, default=15)
    p.add_argument("--reliability", choices=["reliable", "best_effort"], default="reliable", help=argparse.SUPPRESS)
    p.add_argument("--transport", choices=list(TRANSPORTS), default="default", help=argparse.SUPPRESS)
    p.add_argument("--domain-id", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pub_depth is None:
        args.pub_depth = args.depth

    if args.role == "pub":
        run_publisher(args)
        return
    if args.role == "case":
        run_case(args)
        return

    print(f"# {WIDTH}x{HEIGHT} cloud, point_step 16 ({WIDTH * HEIGHT * 16 / 1e6:.1f} MB), {args.count} clouds "
          f"at {args.rate:g} Hz, KEEP_LAST sub {args.depth} / pub {args.pub_depth}, loadavg {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    base = random.Random(os.getpid() ^ time.time_ns()).randrange(1, 101 - len(args.cases))
    rows = []
    for i, case in enumerate(args.cases):
        reliability, transport = case.split(":")
        env = ros_env(base + i, "sub" in TRANSPORTS[transport], args.qos_from_xml)
        cmd = [sys.executable, __file__, "--role", "case", "--reliability", reliability, "--transport", transport,
               "--domain-id", str(base + i), "--count", str(args.count), "--rate", str(args.rate),
               "--depth", str(args.depth), "--pub-depth", str(args.pub_depth), "--linger", str(args.linger), "--match-timeout", str(args.match_timeout)]
        if args.qos_from_xml:
            cmd.append("--qos-from-xml")
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.match_timeout
                             + args.count / args.rate + args.linger + 60)
        line = next((ln for ln in res.stdout.splitlines()[::-1] if ln.startswith("{")), None)
        if line is None:
            print(f"{case}: no result (rc {res.returncode})\n{res.stderr[-2000:]}")
            continue
        r = json.loads(line)
        rows.append(r)
        print(f"{r['case']:<22} sent {r['sent']:>4}  recv {r['received']:>4}  {r['hz']:6.1f} Hz  "
              f"lat mean {r['lat_mean_ms'] or float('nan'):7.1f} ms  p95 {r['lat_p95_ms'] or float('nan'):7.1f} ms  "
              f"lost {100 * (r['lost'] if r['lost'] is not None else 1):5.1f} %  "
              f"(publish() {r['pub'].get('publish_ms_mean', float('nan')):.1f} ms mean)", flush=True)
        if r["pub"].get("error") or r["pub_stderr_tail"]:
            print(f"    publisher: {r['pub'].get('error', '')} {' | '.join(r['pub_stderr_tail'])}")

    print("\n| case | sent | received | Hz | latency mean (ms) | latency p95 (ms) | lost |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['sent']} | {r['received']} | {r['hz']:.1f} | {r['lat_mean_ms'] or float('nan'):.1f} "
              f"| {r['lat_p95_ms'] or float('nan'):.1f} | {100 * (r['lost'] if r['lost'] is not None else 1):.0f} % |")

    print(f"\n# conversions, {WIDTH}x{HEIGHT}, median of {args.conversion_repeats} (ms)")
    for name, ms in time_conversions(args.conversion_repeats).items():
        print(f"{name:<38} {ms:7.2f}")


if __name__ == "__main__":
    main()
