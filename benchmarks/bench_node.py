"""The live detector node under a camera-like or LiDAR stream, in the spirit of ros2_benchmark.

Three processes: this orchestrator (no ROS), the real ``ukpgan_detector`` node
(``python -m ukpgan_ros.ros.detector_node``, autostart, default parameters unless ``--param``),
and a *publisher process* that plays 640x480 organized PointCloud2 frames (NaN holes, as a depth
camera driver publishes them) from 7-Scenes or the built-in synthetic camera, or spinning-LiDAR
scans as unorganized PointCloud2 (``kitti``: the six KITTI HDL-64E scans of ../shared/data,
looped; ``synthetic_lidar``: the built-in 64-beam street; or any KITTI/PCD/PLY scan folder), stamps
each with the clock at publication, and listens to the node's ``~/keypoints`` and ``/diagnostics``. The
publisher process also samples the node process from /proc (Linux): CPU (% of one core), RSS,
threads, open descriptors.

Two modes, one tool:

* **rates** (default): for each ``--rates`` Hz, ``--seconds`` of publishing, then a settle; per
  rate the processed rate, % of published frames left unprocessed (dropped in the node's
  one-slot mailbox, or lost before it), latency p50/p90/p99 (publish stamp -> keypoints received
  by the publisher process), node CPU/RSS/threads/fds; and the highest rate with < 5 %
  unprocessed.
* **soak** (``--minutes N``): ``--rate`` Hz for N minutes, a line every ``--interval`` s with the
  same figures (latency over the interval; counters cumulative), then the totals and growth.

Frames play forward then backward (0..n-1..0), so consecutive registration sees continuous motion.
LiDAR sources start the node with ``voxel_size:=0.3 max_range:=100.0`` (the LiDAR evaluation
profile's voxel and range; a ``--param`` given on the command line wins).
Each source gets a fresh node on a private ROS domain (localhost only); the publisher uses
``config/fastdds_shm.xml`` unless ``--transport default`` (see README: transport).

    PYTHONPATH=. python benchmarks/bench_node.py --sources 7scenes synthetic --rates 1 2 5 10 15 30 --seconds 20
    PYTHONPATH=. python benchmarks/bench_node.py --sources 7scenes --minutes 10 --rate 30 --interval 60
    PYTHONPATH=. python benchmarks/bench_node.py --sources kitti synthetic_lidar --rates 10 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cloud_transport import ros_env  # noqa: E402  (private domain, localhost, profile on/off)

DEFAULT_7SCENES = REPO.parent / "shared/data/7scenes-redkitchen"
DEFAULT_KITTI = REPO.parent / "shared/data/kitti-00-velodyne"
SOURCE_PATHS = {"7scenes": DEFAULT_7SCENES, "kitti": DEFAULT_KITTI}
LIDAR_PARAMS = ("voxel_size:=0.3", "max_range:=100.0")  # the LiDAR profile's voxel; the scans' range
TOPIC = "/bench/cloud"
NODE = "ukpgan_detector"
COUNTERS = ("frames_received", "frames_processed", "frames_dropped", "frames_malformed", "errors")


# ------------------------------------------------------------------------------ node process (/proc)
class ProcSampler:
    """CPU, RSS, threads and descriptors of one process, from /proc."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last = self._cpu_s(), time.monotonic()

    def _cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.TICK  # utime + stime

    def sample(self) -> dict[str, float]:
        """CPU % of one core since the previous sample; RSS MiB, threads, fds now."""
        cpu, now = self._cpu_s(), time.monotonic()
        pct = 100.0 * (cpu - self._last[0]) / max(1e-6, now - self._last[1])
        self._last = cpu, now
        status = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines() if ":" in line)
        return {"cpu_pct": pct, "rss_mib": int(status["VmRSS"].split()[0]) / 1024.0,
                "threads": int(status["Threads"]), "fds": len(os.listdir(f"/proc/{self.pid}/fd"))}


# ------------------------------------------------------------------------------ frames
def _open(source: str, count: int):
    """The sequence of a source name: 7scenes, kitti, synthetic, synthetic_lidar or a path."""
    from ukpgan_ros.datasets import is_synthetic, open_sequence

    if source == "synthetic":
        return open_sequence("synthetic", num_frames=count, width=640, height=480)  # camera only
    if is_synthetic(source):
        return open_sequence(source, num_frames=count)
    return open_sequence(str(SOURCE_PATHS.get(source, source)))


def is_lidar_source(source: str) -> bool:
    """Whether a source plays LiDAR scans (a sequence without depth images)."""
    from ukpgan_ros.datasets import has_depth

    return not has_depth(_open(source, 1))


def stream_msgs(source: str, count: int):
    """The messages a source plays: LiDAR scans or organized camera clouds."""
    seq = _open(source, count)
    from ukpgan_ros.datasets import has_depth

    return organized_cloud_msgs(seq, count) if has_depth(seq) else lidar_cloud_msgs(seq, count)


def lidar_cloud_msgs(seq, count: int):
    """Up to ``count`` scans as unorganized PointCloud2 (x, y, z float32) in the sensor frame."""
    from ukpgan_ros.ros.cloud_msgs import xyz_to_pointcloud2

    msgs = [xyz_to_pointcloud2(seq[i].points().astype(np.float32), frame_id="velodyne")
            for i in range(min(len(seq), count))]
    return msgs + msgs[-2:0:-1]  # forward, then backward: no jump when it loops


def organized_cloud_msgs(seq, count: int):
    """``count`` 640x480 organized PointCloud2 messages (x, y, z float32; NaN where depth is invalid)."""
    from ukpgan_ros.ros.cloud_msgs import xyz_to_pointcloud2

    step = max(1, min(5, len(seq) // count))
    msgs = []
    for i in range(0, min(len(seq), step * count), step):
        frame = seq[i]
        d = frame.depth_m.astype(np.float32)
        h, w = d.shape
        v, u = np.mgrid[0:h, 0:w].astype(np.float32)
        K = frame.K
        z = np.where(d > 0, d, np.nan).astype(np.float32)
        pts = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=-1).reshape(-1, 3)
        msg = xyz_to_pointcloud2(pts, frame_id="camera_depth_optical_frame")
        msg.height, msg.width, msg.row_step = h, w, w * msg.point_step
        msgs.append(msg)
    return msgs + msgs[-2:0:-1]  # forward, then backward: no jump when it loops


def _pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


# ------------------------------------------------------------------------------ publisher process
class Probe:
    """Publishes clouds, records keypoints by stamp and the node's latest diagnostics."""

    def __init__(self, args) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2

        rclpy.init()
        self.node = rclpy.create_node("bench_node_publisher")
        self.pub = self.node.create_publisher(PointCloud2, TOPIC, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.lock = threading.Lock()
        self.keypoints: dict[int, float] = {}  # stamp ns -> arrival (time.time())
        self.diag: dict[str, str] = {}
        self.diag_seq = 0
        self.diag_stamp_ns = 0  # when the node published the latest diagnostics (its clock)
        self.node.create_subscription(PointCloud2, f"/{NODE}/keypoints", self._on_keypoints, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _on_keypoints(self, msg) -> None:
        now = time.time()
        with self.lock:
            self.keypoints[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = now

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if NODE in status.name:
                with self.lock:
                    self.diag = {kv.key: kv.value for kv in status.values}
                    self.diag_seq += 1
                    self.diag_stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def counters(self) -> dict[str, int]:
        with self.lock:
            return {k: int(self.diag.get(k, 0)) for k in COUNTERS}

    def fresh_counters(self, timeout: float = 5.0) -> dict[str, int]:
        """Counters from a diagnostics message that arrives after this call."""
        with self.lock:
            seq = self.diag_seq
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.diag_seq > seq:
                    break
            time.sleep(0.02)
        return self.counters()

    def play(self, msgs, rate: float, seconds: float, start_index: int = 0, on_tick=None) -> tuple[list[int], int]:
        """Publish at ``rate`` Hz for ``seconds``; returns the stamps (ns) and the next index."""
        stamps, period, i = [], 1.0 / rate, start_index
        t0 = time.monotonic()
        n = 0
        while True:
            target = t0 + n * period
            if target - t0 >= seconds:
                break
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            msg = msgs[i % len(msgs)]
            now_ns = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
            self.pub.publish(msg)
            stamps.append(now_ns)
            i, n = i + 1, n + 1
            if on_tick is not None:
                on_tick()
        return stamps, i

    def settle(self, received_target: int, timeout: float = 15.0) -> dict[str, int]:
        """Wait until the node has an outcome for every frame it received (and at least the
        ``received_target`` frames or the timeout), from fresh diagnostics."""
        deadline = time.monotonic() + timeout
        c = self.fresh_counters()
        while time.monotonic() < deadline:
            done = sum(c[k] for k in COUNTERS[1:])
            if done >= c["frames_received"] >= received_target:
                break
            c = self.fresh_counters()
        return c

    def latencies(self, stamps) -> list[float]:
        with self.lock:
            return [(self.keypoints[s] - s * 1e-9) * 1e3 for s in stamps if s in self.keypoints]

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.spinner.join(timeout=10)
        self.node.destroy_node()
        rclpy.try_shutdown()


def _emit(obj) -> None:
    print(json.dumps(obj), flush=True)


def run_publisher(args) -> None:
    msgs = stream_msgs(args.source, args.frames)
    sampler = ProcSampler(args.node_pid)
    probe = Probe(args)
    deadline = time.monotonic() + 60
    while probe.pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if probe.pub.get_subscription_count() == 0:
        _emit({"error": "the node did not subscribe within 60 s"})
        return
    time.sleep(0.5)
    idx = 0
    _, idx = probe.play(msgs, 2.0, args.warmup, idx)  # model warm-up, not measured
    before = probe.settle(0)
    sampler.sample()
    if args.minutes > 0:
        soak(args, probe, sampler, msgs, idx, before)
    else:
        for rate in args.rates:
            stamps, idx = probe.play(msgs, rate, args.seconds, idx)
            mid = sampler.sample()  # CPU over the publishing phase
            after = probe.settle(before["frames_received"] + 1)
            lat = probe.latencies(stamps)
            delta = {k: after[k] - before[k] for k in COUNTERS}
            _emit({"mode": "rate", "source": args.source, "rate_hz": rate, "published": len(stamps),
                   "processed": len(lat), "processed_hz": len(lat) / args.seconds,
                   "unprocessed_pct": 100.0 * (1 - len(lat) / max(1, len(stamps))),
                   "node_dropped": delta["frames_dropped"], "node_malformed": delta["frames_malformed"],
                   "lost_before_node": len(stamps) - delta["frames_received"], "errors": delta["errors"],
                   "lat_p50_ms": _pct(lat, 50), "lat_p90_ms": _pct(lat, 90), "lat_p99_ms": _pct(lat, 99), **mid})
            before = after
            sampler.sample()
    probe.close()


def soak(args, probe, sampler, msgs, idx, before) -> None:
    start = time.monotonic()
    published, all_stamps = 0, []
    first = None
    n = max(1, round(60.0 * args.minutes / args.interval))
    for _ in range(n):
        stamps, idx = probe.play(msgs, args.rate, 60.0 * args.minutes / n, idx)
        published += len(stamps)
        all_stamps += stamps
        proc = sampler.sample()
        with probe.lock:  # the latest diagnostics, without pausing the stream
            c, diag_ns = {k: int(probe.diag.get(k, 0)) for k in COUNTERS}, probe.diag_stamp_ns
        lat = probe.latencies(stamps)  # frames of this interval processed so far
        row = {"mode": "soak", "source": args.source, "elapsed_s": time.monotonic() - start, "published": published,
               "received": c["frames_received"] - before["frames_received"],
               "processed": c["frames_processed"] - before["frames_processed"],
               "dropped": c["frames_dropped"] - before["frames_dropped"],
               "malformed": c["frames_malformed"] - before["frames_malformed"], "errors": c["errors"] - before["errors"],
               "interval_processed_hz": len(lat) / max(1e-6, args.interval),
               "lat_p50_ms": _pct(lat, 50), "lat_p90_ms": _pct(lat, 90), "lat_p99_ms": _pct(lat, 99), **proc}
        # Lost: published before the node's counters were taken, yet not received (a few ms of
        # DDS flight aside).
        row["lost"] = max(0, sum(s <= diag_ns for s in all_stamps) - row["received"])
        first = first or row
        _emit(row)
    after = probe.settle(before["frames_received"] + 1)
    proc = sampler.sample()
    final = {k: after[k] - before[k] for k in COUNTERS}
    _emit({"mode": "soak_end", "source": args.source, "minutes": args.minutes, "published": published,
           "received": final["frames_received"], "processed": final["frames_processed"],
           "dropped": final["frames_dropped"], "malformed": final["frames_malformed"], "errors": final["errors"],
           "lost": published - final["frames_received"], "rss_growth_mib": proc["rss_mib"] - first["rss_mib"],
           "threads_growth": proc["threads"] - first["threads"], "fds_growth": proc["fds"] - first["fds"], **proc})


# ------------------------------------------------------------------------------ orchestrator
def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def run_source(args, source: str, domain: int) -> list[dict]:
    node_env = ros_env(domain, use_profile=False)
    pub_env = ros_env(domain, use_profile=args.transport == "shm_pub")
    cmd = [sys.executable, "-m", "ukpgan_ros.ros.detector_node", "--ros-args", "-p", "autostart:=true",
           "-r", f"cloud_in:={TOPIC}", "-r", f"__node:={NODE}"]
    given = {p.split(":=")[0] for p in args.param}
    for p in (LIDAR_PARAMS if is_lidar_source(source) else ()):
        if p.split(":=")[0] not in given:
            cmd += ["-p", p]
    for p in args.param:
        cmd += ["-p", p]
    node = subprocess.Popen(cmd, env=node_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    node_log: list[str] = []
    threading.Thread(target=lambda: node_log.extend(node.stdout), daemon=True).start()
    deadline = time.monotonic() + 120
    while not any(" active" in line for line in node_log) and node.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if node.poll() is not None or not any(" active" in line for line in node_log):
        print(f"{source}: the node did not come up:\n{''.join(node_log[-20:])}")
        node.kill()
        return []
    pub_cmd = [sys.executable, __file__, "--role", "pub", "--source", source, "--node-pid", str(node.pid),
               "--frames", str(args.frames), "--seconds", str(args.seconds), "--warmup", str(args.warmup),
               "--minutes", str(args.minutes), "--rate", str(args.rate), "--interval", str(args.interval),
               "--rates", *map(str, args.rates)]
    rows = []
    pub = subprocess.Popen(pub_cmd, env=pub_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    for line in pub.stdout:
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        rows.append(r)
        if "error" in r:
            print(f"{source}: {r['error']}")
        elif r["mode"] == "rate":
            print(f"{source:>9} {r['rate_hz']:5.1f} Hz: processed {r['processed_hz']:5.2f} Hz, unprocessed "
                  f"{r['unprocessed_pct']:5.1f} % (node dropped {r['node_dropped']}, lost {r['lost_before_node']}), "
                  f"latency p50/p90/p99 {_fmt(r['lat_p50_ms'], '.0f')}/{_fmt(r['lat_p90_ms'], '.0f')}/"
                  f"{_fmt(r['lat_p99_ms'], '.0f')} ms, node CPU {r['cpu_pct']:.0f} %, RSS {r['rss_mib']:.0f} MiB, "
                  f"{r['threads']} threads, {r['fds']} fds", flush=True)
        elif r["mode"] == "soak":
            print(f"{source:>9} t={r['elapsed_s']:6.0f} s  published {r['published']:6d} received {r['received']:6d} "
                  f"processed {r['processed']:5d} dropped {r['dropped']:6d} lost {r['lost']:4d} errors {r['errors']}  "
                  f"{r['interval_processed_hz']:.2f} Hz  latency p50/p90/p99 {_fmt(r['lat_p50_ms'], '.0f')}/"
                  f"{_fmt(r['lat_p90_ms'], '.0f')}/{_fmt(r['lat_p99_ms'], '.0f')} ms  CPU {r['cpu_pct']:.0f} %  "
                  f"RSS {r['rss_mib']:.0f} MiB  threads {r['threads']}  fds {r['fds']}", flush=True)
        else:
            print(f"{source:>9} soak end after {r['minutes']} min: published {r['published']}, received {r['received']}, "
                  f"processed {r['processed']}, dropped {r['dropped']}, malformed {r['malformed']}, errors {r['errors']}, "
                  f"lost {r['lost']}; RSS {r['rss_mib']:.0f} MiB ({r['rss_growth_mib']:+.1f} since the first interval), "
                  f"threads {r['threads']} ({r['threads_growth']:+d}), fds {r['fds']} ({r['fds_growth']:+d})", flush=True)
    pub.wait()
    if pub.returncode:
        print(f"{source}: publisher exited {pub.returncode}:\n{pub.stderr.read()[-3000:]}")
    node.send_signal(signal.SIGINT)
    try:
        node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        node.kill()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["main", "pub"], default="main", help=argparse.SUPPRESS)
    p.add_argument("--sources", nargs="+", default=["7scenes", "synthetic"],
                   help="7scenes (../shared/data/7scenes-redkitchen), synthetic, kitti (../shared/data/kitti-00-velodyne), "
                        "synthetic_lidar, or a sequence folder")
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--node-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rates", type=float, nargs="+", default=[1, 2, 5, 10, 15, 30], help="input rates, Hz")
    p.add_argument("--seconds", type=float, default=20.0, help="publishing time per rate")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at 2 Hz before measuring")
    p.add_argument("--frames", type=int, default=30, help="distinct frames per source (played forward and back)")
    p.add_argument("--minutes", type=float, default=0.0, help="soak mode: minutes at --rate")
    p.add_argument("--rate", type=float, default=30.0, help="soak input rate, Hz")
    p.add_argument("--interval", type=float, default=60.0, help="soak: seconds between report lines")
    p.add_argument("--transport", choices=["shm_pub", "default"], default="shm_pub",
                   help="publisher with config/fastdds_shm.xml (as the launch file's player) or default transports")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE", help="a node parameter (repeatable)")
    p.add_argument("--json", help="write every result row here")
    args = p.parse_args()
    if args.role == "pub":
        run_publisher(args)
        return
    print(f"# ukpgan_detector under PointCloud2 streams (cameras: 640x480 organized; LiDAR: scans, "
          f"{' '.join(LIDAR_PARAMS)}); {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; node parameters: defaults{' + ' + ' '.join(args.param) if args.param else ''}; "
          f"transport {args.transport}", flush=True)
    base = random.Random(os.getpid() ^ time.time_ns()).randrange(100, 200)
    rows = []
    for i, source in enumerate(args.sources):
        if source in SOURCE_PATHS and not SOURCE_PATHS[source].exists():
            print(f"{source}: {SOURCE_PATHS[source]} is absent, skipped")
            continue
        rows += run_source(args, source, base + i)
    rate_rows = [r for r in rows if r.get("mode") == "rate"]
    if rate_rows:
        print("\n| source | input Hz | processed Hz | unprocessed | latency p50 / p90 / p99 (ms) | node CPU | RSS | threads | fds |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rate_rows:
            print(f"| {r['source']} | {r['rate_hz']:g} | {r['processed_hz']:.2f} | {r['unprocessed_pct']:.1f} % | "
                  f"{_fmt(r['lat_p50_ms'], '.0f')} / {_fmt(r['lat_p90_ms'], '.0f')} / {_fmt(r['lat_p99_ms'], '.0f')} | "
                  f"{r['cpu_pct']:.0f} % | {r['rss_mib']:.0f} MiB | {r['threads']} | {r['fds']} |")
        for source in dict.fromkeys(r["source"] for r in rate_rows):
            ok = [r["rate_hz"] for r in rate_rows if r["source"] == source and r["unprocessed_pct"] < 5.0]
            print(f"{source}: highest input rate with < 5 % of frames unprocessed: "
                  f"{f'{max(ok):g} Hz' if ok else 'none of ' + ', '.join(f'{x:g}' for x in args.rates) + ' Hz'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
