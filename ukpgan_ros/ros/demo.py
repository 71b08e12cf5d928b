"""``ukpgan demo``: the real detector node and a depth player in one process, scored against
ground truth.

Frames go out in lock step (the next one after the node has accounted for the last), and the
score covers exactly the frames the node processed, matched by stamp: each registration is
compared with the ground-truth motion from the frame the node registered against (its anchor).
"""

from __future__ import annotations

import argparse
import csv
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2

from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.evaluation.metrics import rotation_error_deg, translation_error
from ukpgan_ros.pipeline import KeypointPipeline
from ukpgan_ros.ros.detector_node import UkpganDetectorNode
from ukpgan_ros.ros.messages import pose_stamped_to_matrix, stamp_to_seconds, transform_stamped_to_matrix
from ukpgan_ros.ros.player_node import DepthPlayerNode

__all__ = ["run_demo"]


class _Inbox:
    """Messages from the node's output topics, keyed by header stamp."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.keypoints: dict[float, tuple[int, float]] = {}  # stamp -> (count, arrival time)
        self.transforms: dict[float, np.ndarray] = {}
        self.poses: dict[float, np.ndarray] = {}

    def put(self, table: str, stamp: float, value) -> None:
        with self.lock:
            getattr(self, table)[stamp] = value
            self.lock.notify_all()

    def wait_for(self, table: str, stamp: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while stamp not in getattr(self, table):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
            return True


def run_demo(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    from ukpgan_ros.datasets import open_sequence

    seq = open_sequence(args.data)
    n_total = len(seq) if args.frames <= 0 else min(args.frames, len(seq))
    stride = max(1, args.stride)
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [Parameter(k, value=v) for k, v in cfg.to_dict().items()]
    overrides.append(Parameter("input", value=args.input))
    det = UkpganDetectorNode(context=context, parameter_overrides=overrides)
    player = DepthPlayerNode(
        context=context, sequence=seq,
        parameter_overrides=[Parameter("autostart", value=False), Parameter("stride", value=stride),
                             Parameter("max_frames", value=len(range(0, n_total, stride))),
                             Parameter("output", value=args.input)],
    )
    probe = rclpy.create_node("ukpgan_demo_probe", context=context)
    inbox = _Inbox()
    ns = det.get_fully_qualified_name()
    probe.create_subscription(PointCloud2, f"{ns}/keypoints",
                              lambda m: inbox.put("keypoints", stamp_to_seconds(m.header.stamp),
                                                  (m.width * m.height, time.monotonic())), 10)
    probe.create_subscription(TransformStamped, f"{ns}/transform",
                              lambda m: inbox.put("transforms", stamp_to_seconds(m.header.stamp), transform_stamped_to_matrix(m)), 10)
    probe.create_subscription(PoseStamped, f"{ns}/pose",
                              lambda m: inbox.put("poses", stamp_to_seconds(m.header.stamp), pose_stamped_to_matrix(m)), 10)
    executor = MultiThreadedExecutor(num_threads=3, context=context)
    for n in (det, player, probe):
        executor.add_node(n)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        if det.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            print("demo: the detector node failed to configure (see the log above)")
            return 1
        det.trigger_activate()
        # Discovery: the first frame must not be published before every reader is matched.
        outputs = [det._pubs[k] for k in ("keypoints", "transform", "pose")]
        deadline = time.monotonic() + 20.0
        while any(p.get_subscription_count() == 0 for p in outputs) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not player.wait_for_subscribers(max(0.0, deadline - time.monotonic())):
            print("demo: the detector did not subscribe to the player within 20 s")
            return 1
        return _play(args, cfg, seq, player, det, inbox)
    finally:
        try:
            det.trigger_shutdown()
        except Exception:  # noqa: BLE001
            pass
        executor.shutdown()
        for n in (det, player, probe):
            n.destroy_node()
        rclpy.try_shutdown(context=context)


_OUTCOMES = ("processed", "dropped", "malformed", "unpaired", "errors")


def _play(args, cfg, seq, player, det, inbox) -> int:
    rows, est_positions, gt_positions = [], [], []
    first_gt = last_gt = None
    # The frame the node registers against, as KeypointPipeline keeps it in consecutive mode.
    has_anchor, anchor_gt, failures = False, None, 0
    print(f"demo: {getattr(seq, 'name', args.data)} — {len(player.indices)} frames (every {player.stride}th), "
          f"detector {cfg.detector}, descriptor {cfg.descriptor}, voxel {cfg.voxel_size} m, input {args.input}")
    print(f"{'frame':>6} {'kps':>5} {'latency':>9} {'RE[deg]':>8} {'TE[cm]':>7} {'GT motion':>14}")
    published = 0
    for idx in player.indices:
        frame_gt = seq[idx].pose
        before = det.diagnostics_snapshot()
        t_pub = time.monotonic()
        header = player.publish_frame(idx)
        published += 1
        stamp = stamp_to_seconds(header.stamp)
        # The node (in this process) accounts for every frame it received: processed or a counted drop.
        after = _wait_accounted(det, sum(before[k] for k in _OUTCOMES) + 1, args.timeout)
        if after["processed"] == before["processed"] or not inbox.wait_for("keypoints", stamp, args.timeout):
            why = ", ".join(f"{k} +{after[k] - before[k]}" for k in _OUTCOMES if after[k] != before[k]) or "no answer"
            print(f"{idx:>6} not processed ({why})", flush=True)
            continue
        n_kps, t_kps = inbox.keypoints[stamp]
        registered = cfg.registration != "none" and has_anchor and after["failed"] == before["failed"]
        # Only a registered frame has a transform and a pose on the way; wait as long as they take.
        got_tf = registered and inbox.wait_for("transforms", stamp, args.timeout)
        if got_tf:
            inbox.wait_for("poses", stamp, args.timeout)
        row = {"frame": idx, "keypoints": n_kps, "latency_ms": 1e3 * (t_kps - t_pub)}
        line = f"{idx:>6} {row['keypoints']:>5} {row['latency_ms']:>7.0f}ms"
        if frame_gt is not None and anchor_gt is not None:
            T_gt = np.linalg.inv(anchor_gt) @ frame_gt
            row.update(gt_rot_deg=rotation_error_deg(np.eye(4), T_gt), gt_trans_m=float(np.linalg.norm(T_gt[:3, 3])))
            if got_tf:
                T = inbox.transforms[stamp]
                row.update(re_deg=rotation_error_deg(T, T_gt), te_m=translation_error(T, T_gt))
                line += f" {row['re_deg']:>8.3f} {100 * row['te_m']:>7.2f}"
            else:
                line += f" {'failed':>8} {'':>7}"
            line += f" {row['gt_rot_deg']:>5.2f}deg {100 * row['gt_trans_m']:>4.1f}cm"
        print(line, flush=True)
        if frame_gt is not None:
            first_gt = frame_gt if first_gt is None else first_gt
            gt_positions.append((np.linalg.inv(first_gt) @ frame_gt)[:3, 3])
        pose = inbox.poses.get(stamp)
        if pose is not None:
            est_positions.append(pose[:3, 3])
        elif not est_positions:
            est_positions.append(np.zeros(3))
        if not has_anchor or got_tf:
            has_anchor, anchor_gt, failures = True, frame_gt, 0
        else:
            failures += 1
            if failures >= KeypointPipeline.MAX_ANCHOR_FAILURES:
                anchor_gt, failures = frame_gt, 0
        last_gt = frame_gt
        rows.append(row)
    return _summarise(args, cfg, published, rows, det, inbox, np.array(est_positions), np.array(gt_positions),
                      first_gt, last_gt)


def _wait_accounted(det, n: int, timeout: float) -> dict:
    """The node's counters once ``n`` frames have an outcome (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    snap = det.diagnostics_snapshot()
    while sum(snap[k] for k in _OUTCOMES) < n and time.monotonic() < deadline:
        time.sleep(0.005)
        snap = det.diagnostics_snapshot()
    return snap


def _summarise(args, cfg, published, rows, det, inbox, est, gt, first_gt, last_gt) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scored = [r for r in rows if "re_deg" in r]
    pairs = [r for r in rows if "gt_rot_deg" in r]
    stats = det.diagnostics_snapshot()
    print("\nsummary")
    # processed: published frames whose keypoints came back (by stamp), so never more than published.
    print(f"  frames published {published}, processed {len(rows)}, dropped by the node {stats['dropped']}, "
          f"malformed {stats['malformed']}, without camera_info {stats['unpaired']}, "
          f"registrations failed {stats['failed']}")
    lat = [r["latency_ms"] for r in rows]
    if lat:
        print(f"  latency publish->keypoints: median {np.median(lat):.0f} ms, max {np.max(lat):.0f} ms")
    if pairs:
        print(f"  pairs with ground truth {len(pairs)}, registered {len(scored)} "
              f"({100 * len(scored) / len(pairs):.0f} %)")
        print(f"  ground-truth motion between registered frames: median {np.median([r['gt_rot_deg'] for r in pairs]):.2f} deg, "
              f"{100 * np.median([r['gt_trans_m'] for r in pairs]):.1f} cm")
    if scored:
        print(f"  registration error: median rotation {np.median([r['re_deg'] for r in scored]):.3f} deg, "
              f"median translation {100 * np.median([r['te_m'] for r in scored]):.2f} cm "
              f"(max {np.max([r['re_deg'] for r in scored]):.2f} deg, {100 * np.max([r['te_m'] for r in scored]):.2f} cm)")
    final_pose = max(inbox.poses.items())[1] if inbox.poses else None
    if final_pose is not None and first_gt is not None and last_gt is not None:
        gt_final = np.linalg.inv(first_gt) @ last_gt
        path = float(np.sum(np.linalg.norm(np.diff(gt, axis=0), axis=1))) if len(gt) > 1 else 0.0
        drift = translation_error(final_pose, gt_final)
        print(f"  final drift of the accumulated pose: {100 * drift:.1f} cm over {path:.2f} m travelled "
              f"({100 * drift / max(path, 1e-9):.1f} %), rotation {rotation_error_deg(final_pose, gt_final):.2f} deg")
    with open(out / "frames.csv", "w", newline="") as fh:
        keys = sorted({k for r in rows for k in r})
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    if len(est):
        from ukpgan_ros.plots import plot_trajectory

        plot_trajectory(est, gt if len(gt) else None, out / "trajectory.png",
                        title=f"{cfg.detector} + {cfg.descriptor}, voxel {cfg.voxel_size} m")
        print(f"  trajectory plot: {out / 'trajectory.png'}, per-frame table: {out / 'frames.csv'}")
    ok = len(rows) > 0 and stats["errors"] == 0
    return 0 if ok else 1
