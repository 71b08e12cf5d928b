"""``ukpgan demo``: the real detector node and a depth player in one process, scored against
ground truth.

Frames go out in lock step (the next one after the node has accounted for the last), and the
score covers exactly the frames the node processed, matched by stamp: each placed frame's pose is
compared with the ground truth relative to the last placed frame (the motion the node reports on
``~/transform``), or, in reference mode, relative to the map's origin. In an
odometry mode (keyframe, consecutive) the demo then runs the other odometry mode on the same
frames and compares their drift per metre. ``--jump K`` skips the K frames that follow the
middle of the covered ones (a kidnapped sensor) and reports whether, and after how many
published frames, the node placed the sensor again, and how far the estimated motion across the
jump is from the true one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from ukpgan_ros.transforms import rotation_error_deg, translation_error
from ukpgan_ros.tracking import gives_map_poses
from ukpgan_ros.ros.detector_node import UkpganDetectorNode
from ukpgan_ros.ros.messages import pose_stamped_to_matrix, transform_stamped_to_matrix
from ukpgan_ros.transforms import stamp_seconds
from ukpgan_ros.ros.player_node import DepthPlayerNode

__all__ = ["run_demo", "demo_indices"]


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


def demo_indices(n_seq: int, start: int, frames: int, stride: int, jump: int) -> tuple[list[int], tuple[int, int] | None]:
    """Published frame indices: every ``stride``-th of the ``frames`` covered from ``start``
    (0: to the end), without the ``jump`` frames that follow the middle of the covered ones;
    and that skipped range [first, end) or None."""
    start = max(0, start)
    end = n_seq if frames <= 0 else min(n_seq, start + frames)
    skipped = None
    if jump > 0 and end > start:
        mid = start + (end - start) // 2
        skipped = (mid, min(end, mid + jump))
    idx = [i for i in range(start, end, max(1, stride)) if skipped is None or not skipped[0] <= i < skipped[1]]
    return idx, skipped


def run_demo(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    from ukpgan_ros.datasets import open_sequence

    seq = open_sequence(args.data)
    indices, skipped = demo_indices(len(seq), getattr(args, "start", 0), args.frames, args.stride,
                                    getattr(args, "jump", 0))
    if not indices:
        print(f"demo: no frames to play ({len(seq)} in the sequence, start {getattr(args, 'start', 0)})")
        return 2
    if getattr(args, "there_and_back", False):  # forward on the even frames, back on the odd ones
        from ukpgan_ros.datasets import ThereAndBackSequence

        seq = ThereAndBackSequence(seq, indices)
        indices, skipped = list(range(len(seq))), None
    modes = [cfg.registration]
    if getattr(args, "compare", False) and cfg.registration in ("keyframe", "consecutive"):
        modes.append("consecutive" if cfg.registration == "keyframe" else "keyframe")
    summaries, rc = [], 0
    for k, mode in enumerate(modes):
        out = Path(args.out) if k == 0 else Path(args.out) / mode
        run_cfg = dataclasses.replace(cfg, registration=mode)
        if k:
            print(f"\n=== the same frames with registration: {mode} ===")
        code, summary = _run_mode(args, run_cfg, seq, indices, skipped, out)
        rc = rc or code
        summaries.append(summary)
    if len(summaries) > 1:
        _compare(summaries)
    return rc


def _compare(summaries: list[dict]) -> None:
    print("\nodometry modes on the same frames (final drift of the pose per metre travelled):")
    for s in summaries:
        if "drift_m" not in s:
            print(f"  {s['mode']:<12} no drift figure (no ground truth or no pose)")
            continue
        print(f"  {s['mode']:<12} {100 * s['drift_m']:.1f} cm over {s['path_m']:.2f} m = "
              f"{100 * s['drift_m'] / max(s['path_m'], 1e-9):.2f} cm/m, rotation {s['drift_deg']:.2f} deg; "
              f"placed {s['placed']}/{s['pairs']}")
    by = {s["mode"]: s for s in summaries}
    if "drift_m" in by.get("keyframe", {}) and "drift_m" in by.get("consecutive", {}):
        ratio = by["keyframe"]["drift_m"] / max(by["consecutive"]["drift_m"], 1e-9)
        print(f"  keyframe drift / frame-to-frame drift = {ratio:.2f}")


def _run_mode(args, cfg: PipelineConfig, seq, indices: list[int], skipped, out: Path) -> tuple[int, dict]:
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [Parameter(k, value=v) for k, v in cfg.to_dict().items()]
    overrides.append(Parameter("input", value=args.input))
    det = UkpganDetectorNode(context=context, parameter_overrides=overrides)
    player = DepthPlayerNode(
        context=context, sequence=seq,
        parameter_overrides=[Parameter("autostart", value=False), Parameter("start", value=indices[0]),
                             Parameter("max_frames", value=1),
                             Parameter("output", value=args.input)],
    )
    probe = rclpy.create_node("ukpgan_demo_probe", context=context)
    inbox = _Inbox()
    ns = det.get_fully_qualified_name()
    probe.create_subscription(PointCloud2, f"{ns}/keypoints",
                              lambda m: inbox.put("keypoints", stamp_seconds(m.header.stamp),
                                                  (m.width * m.height, time.monotonic())), 10)
    probe.create_subscription(TransformStamped, f"{ns}/transform",
                              lambda m: inbox.put("transforms", stamp_seconds(m.header.stamp), transform_stamped_to_matrix(m)), 10)
    probe.create_subscription(PoseStamped, f"{ns}/pose",
                              lambda m: inbox.put("poses", stamp_seconds(m.header.stamp), pose_stamped_to_matrix(m)), 10)
    executor = MultiThreadedExecutor(num_threads=3, context=context)
    for n in (det, player, probe):
        executor.add_node(n)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        if det.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            print("demo: the detector node failed to configure (see the log above)")
            return 1, {"mode": cfg.registration}
        det.trigger_activate()
        # Discovery: the first frame must not be published before every reader is matched.
        outputs = [det._pubs[k] for k in ("keypoints", "transform", "pose")]
        deadline = time.monotonic() + 20.0
        while any(p.get_subscription_count() == 0 for p in outputs) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not player.wait_for_subscribers(max(0.0, deadline - time.monotonic())):
            print("demo: the detector did not subscribe to the player within 20 s")
            return 1, {"mode": cfg.registration}
        return _play(args, cfg, seq, indices, skipped, player, det, inbox, out)
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


def _map_origin(cfg: PipelineConfig, seq) -> np.ndarray | None:
    """Ground-truth pose of a reference map's origin frame (its first keyframe), when the map
    records the sequence index and the sequence has poses: reference-mode poses are scored
    against it."""
    folder = Path(cfg.reference_cloud).expanduser()
    try:
        index = json.loads((folder / "map.json").read_text()).get("origin", {}).get("index")
    except (OSError, ValueError, AttributeError):
        return None
    if index is None or not 0 <= int(index) < len(seq):
        return None
    return seq[int(index)].pose


def _status(before: dict, after: dict, placed: bool, reference: bool) -> str:
    if not placed:
        return after.get("tracking") or "failed"
    if reference:
        return "localised"
    if after.get("relocalizations", 0) > before.get("relocalizations", 0):
        return "reloc"
    return "kf" if after.get("keyframes", 0) > before.get("keyframes", 0) else "ok"


def _play(args, cfg, seq, indices, skipped, player, det, inbox, out: Path) -> tuple[int, dict]:
    rows, est_positions, gt_positions = [], [], []
    first_gt = prev_gt = None
    reference = gives_map_poses(cfg.registration)  # each pose on its own in a map, not a chain
    origin_gt = _map_origin(cfg, seq) if reference else None
    last_placed = None  # (index, gt, estimated pose) of the last frame that got a pose
    before_jump = None  # last_placed when the jump happened
    jump_report: dict = {}
    print(f"demo: {getattr(seq, 'name', args.data)} — {len(indices)} frames (every {max(1, args.stride)}th from "
          f"{indices[0]}{f', frames {skipped[0]}-{skipped[1] - 1} skipped' if skipped else ''}), "
          f"registration {cfg.registration}, detector {cfg.detector}, descriptor {cfg.descriptor}, voxel {cfg.voxel_size} m")
    err_head = "pose vs GT in the map" if reference else "motion error"
    published = 0
    print(f"{'frame':>6} {'kps':>5} {'latency':>9} {'status':>12} {'RE[deg]':>8} {'TE[cm]':>7} {'GT motion':>14}  ({err_head})")
    for idx in indices:
        frame_gt = seq[idx].pose
        if skipped is not None and idx >= skipped[1] and before_jump is None and "frames_after" not in jump_report:
            before_jump = last_placed or (None, None, None)
            jump_report["after_frame"] = before_jump[0]
        before = det.diagnostics_snapshot()
        t_pub = time.monotonic()
        header = player.publish_frame(idx)
        published += 1
        stamp = stamp_seconds(header.stamp)
        # The node (in this process) accounts for every frame it received: processed or a counted drop.
        after = _wait_accounted(det, sum(before[k] for k in _OUTCOMES) + 1, args.timeout)
        if after["processed"] == before["processed"] or not inbox.wait_for("keypoints", stamp, args.timeout):
            why = ", ".join(f"{k} +{after[k] - before[k]}" for k in _OUTCOMES if after[k] != before[k]) or "no answer"
            print(f"{idx:>6} not processed ({why})", flush=True)
            continue
        n_kps, t_kps = inbox.keypoints[stamp]
        # The node says whether the frame got a pose; only then is a pose (and a transform) on the
        # way, however long the loaded machine takes to deliver them.
        placed = cfg.registration != "none" and after["failed"] == before["failed"]
        got_pose = placed and inbox.wait_for("poses", stamp, args.timeout)
        if got_pose and (reference or last_placed is not None):
            inbox.wait_for("transforms", stamp, args.timeout)
        pose = inbox.poses.get(stamp) if got_pose else None
        status = _status(before, after, pose is not None, reference)
        row = {"frame": idx, "keypoints": n_kps, "latency_ms": 1e3 * (t_kps - t_pub), "status": status}
        line = f"{idx:>6} {row['keypoints']:>5} {row['latency_ms']:>7.0f}ms {status:>12}"
        ref_gt = last_placed[1] if last_placed is not None and not reference else prev_gt
        if reference:
            ref_gt = origin_gt
        if frame_gt is not None and prev_gt is not None:
            T_gt_step = np.linalg.inv(prev_gt) @ frame_gt
            row.update(gt_rot_deg=rotation_error_deg(np.eye(4), T_gt_step), gt_trans_m=float(np.linalg.norm(T_gt_step[:3, 3])))
        if frame_gt is not None and ref_gt is not None and pose is not None:
            T_gt = np.linalg.inv(ref_gt) @ frame_gt
            T = pose if reference else np.linalg.inv(last_placed[2]) @ pose
            row.update(re_deg=rotation_error_deg(T, T_gt), te_m=translation_error(T, T_gt))
            line += f" {row['re_deg']:>8.3f} {100 * row['te_m']:>7.2f}"
        else:
            line += f" {'':>8} {'':>7}"
        if "gt_rot_deg" in row:
            line += f" {row['gt_rot_deg']:>5.2f}deg {100 * row['gt_trans_m']:>4.1f}cm"
        print(line, flush=True)
        if before_jump is not None and "frames_after" not in jump_report:
            jump_report["published_after"] = jump_report.get("published_after", 0) + 1
            if pose is not None:
                jump_report.update(frames_after=jump_report["published_after"], frame=idx, status=status)
                if before_jump[2] is not None and frame_gt is not None and before_jump[1] is not None:
                    T_est = np.linalg.inv(before_jump[2]) @ pose
                    T_true = np.linalg.inv(before_jump[1]) @ frame_gt
                    jump_report.update(re_deg=rotation_error_deg(T_est, T_true), te_m=translation_error(T_est, T_true),
                                       true_m=float(np.linalg.norm(T_true[:3, 3])),
                                       true_deg=rotation_error_deg(np.eye(4), T_true))
        if frame_gt is not None:
            first_gt = frame_gt if first_gt is None else first_gt
            gt_positions.append((np.linalg.inv(first_gt) @ frame_gt)[:3, 3])
        if pose is not None:
            est_positions.append(pose[:3, 3])
            last_placed = (idx, frame_gt, pose)
        elif not est_positions:
            est_positions.append(np.zeros(3))
        prev_gt = frame_gt
        rows.append(row)
    summary = _summarise(args, cfg, published, rows, det, inbox, np.array(est_positions), np.array(gt_positions),
                         first_gt, prev_gt, out, origin_gt)
    if skipped is not None:
        _report_jump(skipped, jump_report, summary)
    ok = len(rows) > 0 and summary["errors"] == 0
    return (0 if ok else 1), summary


_PLACED = ("ok", "kf", "reloc", "localised")


def _report_jump(skipped, rep: dict, summary: dict) -> None:
    after = rep.get("after_frame")
    print(f"  jump: frames {skipped[0]}-{skipped[1] - 1} skipped (the sensor kidnapped after frame {after})")
    if "frames_after" not in rep:
        print(f"  jump: never placed again in the {rep.get('published_after', 0)} published frames after it")
        summary["jump"] = {"recovered": False}
        return
    how = "by relocalisation" if rep["status"] == "reloc" else f"({rep['status']})"
    print(f"  jump: placed again at frame {rep['frame']}, published frame {rep['frames_after']} after the jump, {how}")
    if "te_m" in rep:
        print(f"  jump: motion across it ({after} -> {rep['frame']}) off the true one by {rep['re_deg']:.2f} deg, "
              f"{100 * rep['te_m']:.2f} cm (true motion {100 * rep['true_m']:.1f} cm, {rep['true_deg']:.1f} deg)")
    summary["jump"] = {"recovered": True, **rep}


def _wait_accounted(det, n: int, timeout: float) -> dict:
    """The node's counters once ``n`` frames have an outcome (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    snap = det.diagnostics_snapshot()
    while sum(snap[k] for k in _OUTCOMES) < n and time.monotonic() < deadline:
        time.sleep(0.005)
        snap = det.diagnostics_snapshot()
    return snap


def _summarise(args, cfg, published, rows, det, inbox, est, gt, first_gt, last_gt, out: Path, origin_gt) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    scored = [r for r in rows if "re_deg" in r]
    pairs = [r for r in rows if "gt_rot_deg" in r]
    stats = det.diagnostics_snapshot()
    placed = [r for r in rows[1:] if r["status"] in _PLACED]
    reference = gives_map_poses(cfg.registration)
    summary = {"mode": cfg.registration, "processed": stats["processed"], "errors": stats["errors"],
               "pairs": max(0, len(rows) - 1), "placed": len(placed)}
    print(f"\nsummary ({cfg.registration})")
    # processed: published frames whose keypoints came back (by stamp), so never more than published.
    print(f"  frames published {published}, processed {len(rows)}, dropped by the node {stats['dropped']}, "
          f"malformed {stats['malformed']}, without camera_info {stats['unpaired']}, not placed {stats['failed']}, "
          f"relocalisations {stats['relocalizations']}, keyframes {stats['keyframes']}")
    lat = [r["latency_ms"] for r in rows]
    if lat:
        print(f"  latency publish->keypoints: median {np.median(lat):.0f} ms, max {np.max(lat):.0f} ms")
    if reference:
        placed_all = [r for r in rows if r["status"] in _PLACED]
        summary.update(placed=len(placed_all), pairs=len(rows))
        print(f"  localised {len(placed_all)} of {len(rows)} frames ({100 * len(placed_all) / max(len(rows), 1):.0f} %), "
              "each on its own against the map")
        if scored:
            print(f"  pose error against ground truth in the map frame: median {np.median([r['re_deg'] for r in scored]):.2f} deg, "
                  f"{100 * np.median([r['te_m'] for r in scored]):.2f} cm (max {np.max([r['re_deg'] for r in scored]):.2f} deg, "
                  f"{100 * np.max([r['te_m'] for r in scored]):.2f} cm)")
        elif origin_gt is None:
            print("  (no pose error: the reference records no sequence index of its origin)")
    elif pairs:
        print(f"  pairs with ground truth {len(pairs)}, registered {len(placed)} "
              f"({100 * len(placed) / len(pairs):.0f} %)")
        print(f"  ground-truth motion between published frames: median {np.median([r['gt_rot_deg'] for r in pairs]):.2f} deg, "
              f"{100 * np.median([r['gt_trans_m'] for r in pairs]):.1f} cm")
    if scored and not reference:
        print(f"  registration error: median rotation {np.median([r['re_deg'] for r in scored]):.3f} deg, "
              f"median translation {100 * np.median([r['te_m'] for r in scored]):.2f} cm "
              f"(max {np.max([r['re_deg'] for r in scored]):.2f} deg, {100 * np.max([r['te_m'] for r in scored]):.2f} cm)")
    final_pose = max(inbox.poses.items())[1] if inbox.poses else None
    if not reference and final_pose is not None and first_gt is not None and last_gt is not None:
        gt_final = np.linalg.inv(first_gt) @ last_gt
        path = float(np.sum(np.linalg.norm(np.diff(gt, axis=0), axis=1))) if len(gt) > 1 else 0.0
        drift = translation_error(final_pose, gt_final)
        drift_deg = rotation_error_deg(final_pose, gt_final)
        print(f"  final drift of the accumulated pose: {100 * drift:.1f} cm over {path:.2f} m travelled "
              f"({100 * drift / max(path, 1e-9):.1f} %, {100 * drift / max(path, 1e-9):.2f} cm/m), rotation {drift_deg:.2f} deg")
        summary.update(drift_m=drift, path_m=path, drift_deg=drift_deg)
    from ukpgan_ros.trajectory_report import write_trajectory_report

    where = write_trajectory_report(out, rows, None if reference else est, gt,
                                    title=f"{cfg.registration}: {cfg.detector} + {cfg.descriptor}, voxel {cfg.voxel_size} m")
    print(f"  {where}")
    return summary
