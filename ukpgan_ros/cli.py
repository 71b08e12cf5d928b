"""The ``ukpgan`` command: detect, register, demo, map, record, bag, train, eval.

Each subcommand parses its flags, builds a PipelineConfig (the same fields the ROS node
declares) and calls the core; ``demo`` runs the real lifecycle node in-process (it needs
rclpy); ``record`` and ``bag`` read and write bags with rosbags, without ROS.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ukpgan_ros.config import ConfigError, PipelineConfig

__all__ = ["main", "build_parser"]


def _add_pipeline_flags(p: argparse.ArgumentParser, **defaults) -> None:
    """Expose every PipelineConfig field as --flag (bools as --flag/--no-flag)."""
    for f in PipelineConfig.field_specs():
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        meta = f.metadata
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=meta["help"])
        else:
            p.add_argument(flag, dest=f.name, type=type(f.default), default=default, help=meta["help"],
                           choices=meta.get("choices"))


def _config(args: argparse.Namespace, **override) -> PipelineConfig:
    values = {f.name: getattr(args, f.name) for f in PipelineConfig.field_specs()}
    values.update(override)
    return PipelineConfig.from_mapping(values)


def _load_points(path: str, intrinsics: str | None, max_bytes: int) -> np.ndarray:
    """A cloud file, or a depth PNG back-projected with a 3x3 intrinsics file (looked up beside it)."""
    from ukpgan_ros.io import read_cloud

    p = Path(path)
    if p.suffix.lower() != ".png":
        return read_cloud(p, max_bytes=max_bytes)
    from ukpgan_ros.depth import depth_to_metres, depth_to_points
    from ukpgan_ros.io import read_depth_png

    cands = [Path(intrinsics)] if intrinsics else [d / "camera-intrinsics.txt" for d in (p.parent, p.parent.parent)]
    k_file = next((c for c in cands if c.is_file()), None)
    if k_file is None:
        raise FileNotFoundError(f"{p}: a depth PNG needs --intrinsics (a 3x3 K text file); looked for "
                                + ", ".join(map(str, cands)))
    return depth_to_points(depth_to_metres(read_depth_png(p)), np.loadtxt(k_file))


def cmd_detect(args: argparse.Namespace) -> int:
    from ukpgan_ros.pipeline import KeypointPipeline

    cfg = _config(args, registration="none")
    pts = _load_points(args.file, args.intrinsics, cfg.max_cloud_bytes)
    t0 = time.perf_counter()
    pipe = KeypointPipeline(cfg)
    load = time.perf_counter() - t0
    timings: dict[str, float] = {}
    feats = pipe.describe(pts, timings=timings)
    cloud, kps = feats.cloud, feats.keypoints
    print(f"{args.file}: {len(pts)} points -> {len(cloud)} at {pipe.cfg.voxel_size:.3g} m voxels -> "
          f"{len(kps)} {cfg.detector} keypoints")
    print(f"time: preprocess {1e3 * timings['preprocess']:.1f} ms, load detector {1e3 * load:.1f} ms, "
          f"detect {1e3 * timings['detect']:.1f} ms")
    if args.out:
        from ukpgan_ros.io import write_cloud
        from ukpgan_ros.plots import saliency_colors

        write_cloud(args.out, kps.xyz, colors=saliency_colors(kps.scores))
        print(f"keypoints written to {args.out}")
    if args.png:
        from ukpgan_ros.plots import plot_keypoints

        plot_keypoints(cloud.points, kps, args.png, title=f"{Path(args.file).name}: {len(kps)} {cfg.detector} keypoints")
        print(f"picture written to {args.png}")
    pipe.release()
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from ukpgan_ros.transforms import rotation_error_deg, translation_error
    from ukpgan_ros.io import read_transform
    from ukpgan_ros.pipeline import register_clouds

    cfg = _config(args)
    src = _load_points(args.source, args.intrinsics, cfg.max_cloud_bytes)
    tgt = _load_points(args.target, args.intrinsics, cfg.max_cloud_bytes)
    t0 = time.perf_counter()
    res = register_clouds(src, tgt, cfg)
    total = time.perf_counter() - t0
    np.set_printoptions(precision=6, suppress=True)
    print(f"T_target_from_source ({cfg.detector} keypoints, {cfg.descriptor}, {res.voxel_size:.3g} m voxels):")
    print(res.T_tgt_from_src)
    print(f"success {res.success}{' (' + res.message + ')' if res.message else ''}; fitness {res.fitness:.3f}, "
          f"inlier RMSE {100 * res.inlier_rmse:.2f} cm, {res.num_inliers}/{res.num_correspondences} inlier matches")
    print("time: " + ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in res.timings.items()) + f", total {1e3 * total:.0f} ms")
    if args.gt:
        T_gt = read_transform(args.gt)
        re, te = rotation_error_deg(res.T_tgt_from_src, T_gt), translation_error(res.T_tgt_from_src, T_gt)
        print(f"error vs ground truth: rotation {re:.3f} deg, translation {100 * te:.2f} cm")
    if args.out:
        np.savetxt(args.out, res.T_tgt_from_src)
    return 0 if res.success else 1


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from ukpgan_ros.ros.demo import run_demo
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        print(f"ukpgan demo runs the ROS 2 node and needs rclpy and the ROS message packages, which are not "
              f"importable here (missing: {missing}). Install them with `pip install 'ukpgan_ros[ros]'` (the "
              "ROS 2 Kilted wheels from PyPI) or source a ROS 2 installation. `ukpgan bag` runs the same "
              "pipeline over a bag without ROS.", file=sys.stderr)
        return 2
    return run_demo(args, _config(args))


def cmd_map(args: argparse.Namespace) -> int:
    """Track a recorded sequence in keyframe mode and save its keyframes as a map folder (or, with
    --merge, join two saved maps into one)."""
    if args.merge:
        return _merge_maps(args)
    from ukpgan_ros.datasets import ThereAndBackSequence, open_sequence
    from ukpgan_ros.transforms import rotation_error_deg, translation_error
    from ukpgan_ros.maps import check_map_destination
    from ukpgan_ros.pipeline import KeypointPipeline

    cfg = _config(args, registration="keyframe")
    check_map_destination(args.out)  # before the work, not after it
    seq = open_sequence(args.data or "synthetic")
    start = max(0, args.start)
    end = len(seq) if args.frames <= 0 else min(len(seq), start + args.frames)
    indices = list(range(start, end, max(1, args.stride)))
    if not indices:
        raise ValueError(f"no frames to map: start {start} of {len(seq)}")
    source_of = None  # playback index -> sequence index, when they differ
    if args.there_and_back:
        seq = ThereAndBackSequence(seq, indices)
        source_of = dict(enumerate(seq.order))
        indices = list(range(len(seq)))
    pipe = KeypointPipeline(cfg)
    print(f"map: {getattr(seq, 'name', args.data)} frames {start}-{end - 1} every {max(1, args.stride)}th "
          f"({len(indices)} frames{', there and back' if args.there_and_back else ''}), {cfg.detector} + "
          f"{cfg.descriptor}, finest voxel {cfg.voxel_size} m, loop closure {'on' if cfg.loop_closure else 'off'}")
    first_gt, placed, last, gts = None, 0, None, {}
    t0, frame_s = time.perf_counter(), []
    for i in indices:
        frame = seq[i]
        src = source_of[i] if source_of else i
        try:
            t1 = time.perf_counter()
            res = pipe.process(frame.points(), stamp=frame.stamp, index=src)
            frame_s.append(time.perf_counter() - t1)
        except ValueError as e:
            print(f"{i:>6} unusable: {e}")
            continue
        step = res.tracking
        line = f"{i:>6} {step.state.value:>10} keyframe {step.keyframe_id!s:>4}{' new' if step.new_keyframe else '    '}"
        if frame.pose is not None:
            first_gt = frame.pose if first_gt is None else first_gt
            gts[src] = np.linalg.inv(first_gt) @ frame.pose
        if step.placed:
            placed += 1
            if frame.pose is not None:
                gt = gts[src]
                last = (rotation_error_deg(res.pose, gt), translation_error(res.pose, gt), gt, res.pose)
                line += f"  pose vs GT {last[0]:.2f} deg {100 * last[1]:.2f} cm"
        if step.message:
            line += f"  {step.message}"
        print(line, flush=True)
    t_track = time.perf_counter() - t0
    folder, count = pipe.save_map(args.out)  # waits for queued loop closure work
    print(f"placed {placed}/{len(indices)} frames at {pipe.cfg.voxel_size:.3g} m voxels in {t_track:.0f} s "
          f"({1e3 * np.mean(frame_s):.0f} ms per frame); "
          f"{count} keyframes written to {folder}"
          + (f"; last pose off ground truth by {last[0]:.2f} deg, {100 * last[1]:.2f} cm" if last else ""))
    _report_loops(pipe.tracker, gts, last)
    pipe.release()
    return 0 if placed == len(indices) else 1


def _report_loops(tracker, gts: dict, last) -> None:
    """Loop closure's figures: the final pose in the map frame against odometry's, and the
    keyframes' position error (ATE, RMS, in the first frame's frame) before and after."""
    from ukpgan_ros.transforms import rotation_error_deg, translation_error

    loops = getattr(tracker, "loops", None)
    if loops is None or not loops.started:
        return
    st = loops.stats
    print(f"loop closure: {st.queries} queries, {st.verified} verified, {st.accepted} accepted, "
          f"{st.rejected_by_agreement} not confirmed, {st.rejected_by_kernel} down-weighted by the kernel, "
          f"{st.skipped} skipped (worker behind), {loops.snapshot.optimisations} optimisations "
          f"(last {1e3 * st.last_optimisation_s:.0f} ms){'; error: ' + st.last_error if st.last_error else ''}")
    if last is not None:
        corrected = tracker.map_from_odom @ last[3]
        print(f"final pose vs ground truth: odometry {100 * last[1]:.2f} cm {last[0]:.2f} deg; map frame "
              f"(map_from_odom @ pose) {100 * translation_error(corrected, last[2]):.2f} cm "
              f"{rotation_error_deg(corrected, last[2]):.2f} deg")
    kfs = [k for k in tracker.map if k.index in gts]
    if kfs:
        def ate(poses):
            return 100 * float(np.sqrt(np.mean([np.sum((p[:3, 3] - gts[k.index][:3, 3]) ** 2) for k, p in zip(kfs, poses)])))

        odom = ate([k.pose for k in kfs])
        opt = ate([loops.map_pose(k.id, k.pose) for k in kfs])
        print(f"keyframe ATE ({len(kfs)} keyframes): odometry {odom:.2f} cm, optimised {opt:.2f} cm")


def _merge_maps(args: argparse.Namespace) -> int:
    """``ukpgan map --merge A B --out C``: register B to A (no guess), optimise, write C."""
    import dataclasses

    from ukpgan_ros.loops import LoopPolicy, merge_maps
    from ukpgan_ros.maps import check_map_destination, load_map, save_map
    from ukpgan_ros.pipeline import KeypointPipeline
    from ukpgan_ros.tracking import SIGMA_FLOOR_VOXELS
    from ukpgan_ros.transforms import rotation_error_deg, translation_error

    check_map_destination(args.out)
    a, b = (load_map(m) for m in args.merge)
    voxel = float(a.meta.get("voxel_size", args.voxel_size))
    # stored keyframes keep keypoint descriptors only: match keypoints against keypoints
    cfg = dataclasses.replace(_config(args, registration="none", match_against="keypoints"), voxel_size=voxel,
                              descriptor=a.meta.get("descriptor", args.descriptor)).validate()
    pipe = KeypointPipeline(cfg, tracking=False)
    t0 = time.perf_counter()
    merged, rep = merge_maps(a, b, pipe.register, cfg.match_distance, SIGMA_FLOOR_VOXELS * voxel,
                             LoopPolicy.from_config(cfg), args.merge_min_pairs)
    folder = save_map(merged, args.out)
    np.set_printoptions(precision=4, suppress=True)
    print(f"merge: {len(a)} + {len(b)} keyframes; {rep.verified} of {rep.tried} keyframe pairs verified, "
          f"{len(rep.pairs)} agree on T_a_from_b (translation {100 * np.linalg.norm(rep.T_a_from_b[:3, 3]):.1f} cm, "
          f"rotation {rotation_error_deg(rep.T_a_from_b, np.eye(4)):.2f} deg); {rep.rejected_by_kernel} loop edges "
          f"down-weighted; {time.perf_counter() - t0:.1f} s; {len(merged)} keyframes written to {folder}")
    if args.data:
        from ukpgan_ros.datasets import open_sequence

        seq = open_sequence(args.data)
        pose = seq.pose if callable(getattr(seq, "pose", None)) else (lambda i: seq[i].pose)
        origin = min((k for k in a if k.index is not None), key=lambda k: k.id, default=None)
        if origin is None or pose(origin.index) is None:
            print("merge: no keyframe indices or no ground truth to compare with")
        else:
            gt0 = pose(origin.index)
            errs = []
            for k in merged:
                if k.index is None or pose(k.index) is None:
                    continue
                gt = np.linalg.inv(gt0) @ pose(k.index)
                errs.append((translation_error(k.pose, gt), rotation_error_deg(k.pose, gt)))
            e = np.array(errs)
            print(f"merged keyframes vs ground truth ({len(e)}): translation max {100 * e[:, 0].max():.2f} cm, "
                  f"RMS {100 * np.sqrt(np.mean(e[:, 0] ** 2)):.2f} cm; rotation max {e[:, 1].max():.2f} deg")
            b0 = min((k for k in b if k.index is not None), key=lambda k: k.id, default=None)
            if b0 is not None and pose(b0.index) is not None:  # the map-to-map transform on its own
                T_true = np.linalg.inv(gt0) @ pose(b0.index) @ np.linalg.inv(b0.pose)
                print(f"T_a_from_b vs ground truth: {100 * translation_error(rep.T_a_from_b, T_true):.2f} cm, "
                      f"{rotation_error_deg(rep.T_a_from_b, T_true):.2f} deg (map A's drift where they overlap included)")
    pipe.release()
    return 0


def cmd_bag(args: argparse.Namespace) -> int:
    from ukpgan_ros.bags.process import run_bag

    return run_bag(args, _config(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ukpgan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("detect", help="keypoints of one cloud file or depth PNG")
    p.add_argument("file")
    p.add_argument("--intrinsics", help="3x3 K text file for a depth PNG")
    p.add_argument("--out", help="write keypoints (PLY/PCD/NPY), coloured by saliency")
    p.add_argument("--png", help="write a picture of cloud and keypoints")
    _add_pipeline_flags(p, max_range=1000.0, min_range=0.0)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("register", help="rigid transform between two clouds (T_target_from_source)")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--gt", help="ground-truth 4x4 T_target_from_source to report errors against")
    p.add_argument("--intrinsics", help="3x3 K text file for depth PNG inputs")
    p.add_argument("--out", help="write the estimated 4x4 matrix as text")
    _add_pipeline_flags(p, max_range=1000.0, min_range=0.0, registration="none")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("demo", help="run the node and a player on a depth stream and score it")
    p.add_argument("--data", default="synthetic", help="'synthetic' (default), 'synthetic_loop', 'synthetic_lidar', "
                                                            "'synthetic_lidar_loop', a 7-Scenes/TUM, KITTI "
                                                            "or PCD/PLY scan folder, or a bag")
    p.add_argument("--frames", type=int, default=0, help="frames of the sequence to cover (0: all)")
    p.add_argument("--start", type=int, default=0, help="first frame covered")
    p.add_argument("--stride", type=int, default=1, help="publish every k-th frame")
    p.add_argument("--jump", type=int, default=0,
                   help="skip the K frames that follow the middle of the covered ones, once (a kidnapped sensor)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="in an odometry mode, also run the other one (keyframe / consecutive) and compare drift")
    p.add_argument("--there-and-back", action="store_true",
                   help="play the covered frames forward on the even ones and back on the odd ones (a loop to close); "
                        "the final drift is then the pose at the return against the start")
    p.add_argument("--input", choices=("cloud", "depth"), default="cloud", help="publish clouds or depth images")
    p.add_argument("--out", default="out/demo", help="folder for the trajectory plot and CSV")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one frame's result")
    _add_pipeline_flags(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("map", help="track a sequence with keyframes and save them as a map folder")
    p.add_argument("--data", help="'synthetic' (default), 'synthetic_loop', 'synthetic_lidar', 'synthetic_lidar_loop', "
                                  "a 7-Scenes/TUM, KITTI or PCD/PLY scan folder, or a bag")
    p.add_argument("--start", type=int, default=0, help="first frame")
    p.add_argument("--frames", type=int, default=0, help="frames to cover from --start (0: to the end)")
    p.add_argument("--stride", type=int, default=1, help="use every k-th frame")
    p.add_argument("--out", default="out/map", help="map folder to write (an existing map there is replaced)")
    p.add_argument("--there-and-back", action="store_true",
                   help="play the covered frames forward on the even ones and back on the odd ones (a loop to close)")
    p.add_argument("--merge", nargs=2, metavar=("A", "B"),
                   help="join two saved maps (no guess: keyframe votes, RANSAC + ICP, agreement, pose graph) into "
                        "--out, in A's frame; with --data, the merged keyframes are compared with its ground truth")
    p.add_argument("--merge-min-pairs", type=int, default=3,
                   help="keyframes of B that must agree on the map-to-map transform")
    _add_pipeline_flags(p, registration="keyframe")
    p.set_defaults(func=cmd_map)

    try:
        from ukpgan_ros.bags import process as bag_process, record as bag_record
    except ImportError as e:  # a missing optional part must not break the other commands
        bag_process = bag_record = None
        for name in ("record", "bag"):
            p = sub.add_parser(name, help=f"(unavailable: {e})")
            p.set_defaults(func=lambda a, e=e: (print(f"unavailable: {e}", file=sys.stderr), 2)[1])
    if bag_process is not None:
        p = sub.add_parser("record", help="write a depth sequence (7-Scenes/TUM folder, synthetic) to a bag, no ROS needed")
        bag_record.add_record_arguments(p)
        p.set_defaults(func=bag_record.run_record)

        p = sub.add_parser("bag", help="run the pipeline over a bag; write keypoints, markers, transforms, poses "
                                       "and odometry next to its topics (MCAP), no ROS needed")
        bag_process.add_bag_arguments(p)
        _add_pipeline_flags(p)
        p.set_defaults(func=cmd_bag)

    for name, module, help_text in (
        ("train", "ukpgan_ros.model.train", "train the UKPGAN detector (self-supervised)"),
        ("eval", "ukpgan_ros.evaluation.run", "evaluate detectors: repeatability, inlier ratio, registration recall"),
    ):
        try:
            mod = __import__(module, fromlist=["add_arguments"])
        except ImportError as e:  # a missing optional part must not break the other commands
            p = sub.add_parser(name, help=f"{help_text} (unavailable: {e})")
            p.set_defaults(func=lambda a, e=e: (print(f"unavailable: {e}", file=sys.stderr), 2)[1])
            continue
        p = sub.add_parser(name, help=help_text)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"ukpgan {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
