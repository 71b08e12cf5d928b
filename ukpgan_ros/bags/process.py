"""``ukpgan bag``: run the pipeline over a bag, in order and without drops, and write a bag that
holds every input topic plus exactly what the node publishes for each frame (the topics, types,
frame ids and rules of :mod:`ukpgan_ros.outputs`: ``/ukpgan_detector/keypoints``, ``markers``,
``transform``, ``pose``, ``odometry`` and ``/tf``), stamped with the input's header stamp and
recorded at the input's log time.

A bag that cannot be read (corrupt chunk, truncated file, a message that does not deserialize)
or written (no space, read-only) ends the command with a one-line error, exit status 2, and no
output bag left behind.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from ukpgan_ros.bags.messages import render
from ukpgan_ros.bags.writer import BagWriter, copy_connections
from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.datasets.mcap import BagError
from ukpgan_ros.outputs import OUTPUT_TOPICS, OutputSettings, frame_outputs, resolve_topic
from ukpgan_ros.transforms import stamp_seconds

__all__ = ["add_bag_arguments", "process_bag", "run_bag", "OUTPUT_TOPIC_NAMES"]

OUTPUT_TOPIC_NAMES = {o.key: resolve_topic(o.topic) for o in OUTPUT_TOPICS}  # as the node's default name


def add_bag_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", help="input bag: a rosbag2 folder, a .mcap/.db3 file, or a ROS 1 .bag")
    p.add_argument("--out", required=True, help="output bag: NAME.mcap (one file) or a folder name (rosbag2)")
    p.add_argument("--input", choices=("auto", "cloud", "depth"), default="auto",
                   help="input kind; auto takes the only PointCloud2 topic, else the only depth Image topic")
    p.add_argument("--cloud-topic", help="PointCloud2 input topic")
    p.add_argument("--depth-topic", help="depth Image input topic (16UC1/mono16/32FC1)")
    p.add_argument("--info-topic", help="CameraInfo topic of the depth images (default: camera_info beside them)")
    p.add_argument("--gt-topic", help="ground-truth PoseStamped topic (default: the one ending in ground_truth/pose)")
    p.add_argument("--frames", type=int, default=0, help="frames of the bag to cover (0: all)")
    p.add_argument("--stride", type=int, default=1, help="process every k-th frame (all messages are copied)")
    p.add_argument("--depth-stride", type=int, default=1, help="use every k-th depth pixel row/column (depth input)")
    p.add_argument("--depth-scale", type=float, default=1000.0, help="16UC1 depth units per metre")
    p.add_argument("--report", help="folder for frames.csv and trajectory.png")
    p.add_argument("--no-compress", dest="compress", action="store_false", help="write uncompressed MCAP chunks")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no per-frame lines and no progress bar")


def process_bag(args: argparse.Namespace, cfg: PipelineConfig) -> dict[str, Any]:
    """Run the pipeline over every selected frame of ``args.bag`` in order (no drops) and write
    ``args.out``; returns the per-frame rows and counters the summary is made of."""
    from tqdm import tqdm

    from ukpgan_ros.datasets.bag import BagSequence, open_bag
    from ukpgan_ros.transforms import rotation_error_deg, translation_error
    from ukpgan_ros.pipeline import KeypointPipeline

    seq = BagSequence(args.bag, input=args.input, cloud_topic=args.cloud_topic, depth_topic=args.depth_topic,
                      info_topic=args.info_topic, gt_topic=args.gt_topic, depth_scale=args.depth_scale)
    topics = OUTPUT_TOPIC_NAMES
    settings = OutputSettings.from_config(cfg)
    copier = None
    try:
        copier = open_bag(args.bag)  # a second handle: the full pass must not share file offsets with seq
        n_total = len(seq) if args.frames <= 0 else min(args.frames, len(seq))
        todo = list(range(0, n_total, max(1, args.stride)))
        pipe = KeypointPipeline(cfg)
        quiet = getattr(args, "quiet", False)
        say = (lambda s: None) if quiet else tqdm.write
        t = seq.topics
        every = "every frame" if args.stride <= 1 else f"every {args.stride}th"
        say(f"bag: {seq.name} — {len(todo)} of {len(seq)} frames ({every}) from "
            f"{t.cloud if t.input == 'cloud' else f'{t.depth} + {t.info}'}"
            f"{', ground truth ' + t.ground_truth if t.ground_truth else ', no ground truth'}; detector {cfg.detector}, "
            f"descriptor {cfg.descriptor}, voxel {cfg.voxel_size} m")
        say(f"{'frame':>6} {'kps':>5} {'time':>9} {'RE[deg]':>8} {'TE[cm]':>7} {'GT motion':>14}")
        rows: list[dict] = []
        state = {"malformed": 0, "failed": 0, "prev_gt": None, "first_gt": None,
                 "last_gt": None, "pose": None, "gt_positions": [], "est_positions": []}
        bar = tqdm(total=len(todo), desc="bag", unit="frame", disable=quiet or not sys.stderr.isatty(), file=sys.stderr)
        with BagWriter(args.out, compress=args.compress, overwrite=args.overwrite) as w:
            # the input's own outputs are replaced; its /tf (static or not) is kept beside ours
            connmap, convmap = copy_connections(copier, w, skip={v for k, v in topics.items() if k != "tf"})
            b = w.builder

            def run(i: int) -> None:
                stamp, frame_id = seq.header(i)
                log_time = seq.ready_time(i)
                frame_gt = seq.pose(i)
                t0 = time.perf_counter()
                try:
                    res = pipe.process(seq.points(i, stride=args.depth_stride if seq.input == "depth" else 1),
                                       stamp=stamp_seconds(b.time(stamp)))  # as the node: the header stamp
                except BagError:
                    raise  # a corrupt bag is not a malformed frame: stop, keep nothing
                except ValueError as e:  # what the node counts as malformed input
                    state["malformed"] += 1
                    say(f"{i:>6} dropped: {e}")
                    return
                dt = time.perf_counter() - t0
                for out in frame_outputs(res, stamp, frame_id, settings):  # what the node publishes
                    w.write(topics[out.key], render(b, out), log_time)
                kps, step, ok = res.keypoints, res.tracking, res.placed
                map_pose = res.is_map_pose
                motion = res.frame_transform
                if step is not None and not ok:
                    state["failed"] += 1
                if ok:
                    state["pose"] = res.pose
                row = {"frame": i, "stamp": stamp * 1e-9, "keypoints": len(kps), "time_ms": 1e3 * dt}
                line = f"{i:>6} {len(kps):>5} {1e3 * dt:>7.0f}ms"
                prev_gt = state["prev_gt"]  # of the last placed frame: the motion is measured from it
                if frame_gt is not None and prev_gt is not None:
                    T_gt = np.linalg.inv(prev_gt) @ frame_gt
                    row.update(gt_rot_deg=rotation_error_deg(np.eye(4), T_gt), gt_trans_m=float(np.linalg.norm(T_gt[:3, 3])))
                    if ok and motion is not None and not map_pose:
                        row.update(re_deg=rotation_error_deg(motion, T_gt), te_m=translation_error(motion, T_gt))
                        line += f" {row['re_deg']:>8.3f} {100 * row['te_m']:>7.2f}"
                    else:
                        line += f" {'' if ok else 'failed':>8} {'':>7}"
                    line += f" {row['gt_rot_deg']:>5.2f}deg {100 * row['gt_trans_m']:>4.1f}cm"
                say(line)
                if frame_gt is not None:
                    state["first_gt"] = frame_gt if state["first_gt"] is None else state["first_gt"]
                    state["gt_positions"].append((np.linalg.inv(state["first_gt"]) @ frame_gt)[:3, 3])
                    state["last_gt"] = frame_gt
                state["est_positions"].append(res.pose[:3, 3].copy())
                if ok or step is None:
                    state["prev_gt"] = frame_gt
                rows.append(row)

            queue = todo  # in order: each frame registers against the one before it
            k = 0
            for conn, log_time, raw in copier.messages():
                # A frame is processed once everything it needs has been copied, so outputs land
                # in log-time order right after their input.
                while k < len(queue) and seq.ready_time(queue[k]) < log_time:
                    run(queue[k])
                    bar.update(1)
                    k += 1
                if conn.id in connmap:
                    w.write_raw(connmap[conn.id], log_time, convmap[conn.msgtype](raw))
            while k < len(queue):
                run(queue[k])
                bar.update(1)
                k += 1
            bar.close()
            counts = dict(w.counts)
        pipe.release()
    finally:
        if copier is not None:
            copier.close()
        seq.close()
    return {"rows": rows, "counts": counts, "frames": len(seq), "selected": len(todo), "topics": topics, **state}


def run_bag(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    """``ukpgan bag``: process, then print a summary like ``ukpgan demo``'s."""
    from ukpgan_ros.transforms import rotation_error_deg, translation_error

    t0 = time.perf_counter()
    r = process_bag(args, cfg)
    rows = r["rows"]
    scored = [x for x in rows if "re_deg" in x]
    pairs = [x for x in rows if "gt_rot_deg" in x]
    print("\nsummary")
    print(f"  frames in the bag {r['frames']}, selected {r['selected']}, processed {len(rows)}, "
          f"malformed {r['malformed']}, registrations failed {r['failed']}")
    if rows:
        t = [x["time_ms"] for x in rows]
        print(f"  processing time per frame: median {np.median(t):.0f} ms, max {np.max(t):.0f} ms "
              f"(total {time.perf_counter() - t0:.0f} s)")
    if pairs:
        print(f"  pairs with ground truth {len(pairs)}, registered {len(scored)} "
              f"({100 * len(scored) / len(pairs):.0f} %)")
        print(f"  ground-truth motion between processed frames: median {np.median([x['gt_rot_deg'] for x in pairs]):.2f} deg, "
              f"{100 * np.median([x['gt_trans_m'] for x in pairs]):.1f} cm")
    if scored:
        print(f"  registration error: median rotation {np.median([x['re_deg'] for x in scored]):.3f} deg, "
              f"median translation {100 * np.median([x['te_m'] for x in scored]):.2f} cm "
              f"(max {np.max([x['re_deg'] for x in scored]):.2f} deg, {100 * np.max([x['te_m'] for x in scored]):.2f} cm)")
    gt = np.array(r["gt_positions"])
    if r["pose"] is not None and r["first_gt"] is not None and r["last_gt"] is not None:
        gt_final = np.linalg.inv(r["first_gt"]) @ r["last_gt"]
        path = float(np.sum(np.linalg.norm(np.diff(gt, axis=0), axis=1))) if len(gt) > 1 else 0.0
        drift = translation_error(r["pose"], gt_final)
        print(f"  final drift of the accumulated pose: {100 * drift:.1f} cm over {path:.2f} m travelled "
              f"({100 * drift / max(path, 1e-9):.1f} %), rotation {rotation_error_deg(r['pose'], gt_final):.2f} deg")
    counts = r["counts"]
    made = ", ".join(f"{topic} {counts.get(topic, 0)}" for topic in r["topics"].values())
    print(f"  wrote {args.out}: {sum(counts.values())} messages; {made}")
    if args.report:
        from ukpgan_ros.trajectory_report import write_trajectory_report

        where = write_trajectory_report(args.report, rows, np.array(r["est_positions"]).reshape(-1, 3), gt,
                                        title=f"{cfg.detector} + {cfg.descriptor}, voxel {cfg.voxel_size} m")
        print(f"  {where}")
    return 0 if rows else 1
