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
    """Track a recorded sequence in keyframe mode and save its keyframes as a map folder."""
    from ukpgan_ros.datasets import open_sequence
    from ukpgan_ros.transforms import rotation_error_deg, translation_error
    from ukpgan_ros.maps import check_map_destination
    from ukpgan_ros.pipeline import KeypointPipeline

    cfg = _config(args, registration="keyframe")
    check_map_destination(args.out)  # before the work, not after it
    seq = open_sequence(args.data)
    start = max(0, args.start)
    end = len(seq) if args.frames <= 0 else min(len(seq), start + args.frames)
    indices = list(range(start, end, max(1, args.stride)))
    if not indices:
        raise ValueError(f"no frames to map: start {start} of {len(seq)}")
    pipe = KeypointPipeline(cfg)
    print(f"map: {getattr(seq, 'name', args.data)} frames {start}-{end - 1} every {max(1, args.stride)}th "
          f"({len(indices)} frames), {cfg.detector} + {cfg.descriptor}, finest voxel {cfg.voxel_size} m")
    first_gt, placed, last = None, 0, None
    t0 = time.perf_counter()
    for i in indices:
        frame = seq[i]
        try:
            res = pipe.process(frame.points(), stamp=frame.stamp, index=i)
        except ValueError as e:
            print(f"{i:>6} unusable: {e}")
            continue
        step = res.tracking
        line = f"{i:>6} {step.state.value:>10} keyframe {step.keyframe_id!s:>4}{' new' if step.new_keyframe else '    '}"
        if frame.pose is not None:
            first_gt = frame.pose if first_gt is None else first_gt
        if step.placed:
            placed += 1
            if frame.pose is not None:
                gt = np.linalg.inv(first_gt) @ frame.pose
                last = (rotation_error_deg(res.pose, gt), translation_error(res.pose, gt))
                line += f"  pose vs GT {last[0]:.2f} deg {100 * last[1]:.2f} cm"
        if step.message:
            line += f"  {step.message}"
        print(line, flush=True)
    folder, count = pipe.save_map(args.out)
    print(f"placed {placed}/{len(indices)} frames at {pipe.cfg.voxel_size:.3g} m voxels in {time.perf_counter() - t0:.0f} s; "
          f"{count} keyframes written to {folder}"
          + (f"; last pose off ground truth by {last[0]:.2f} deg, {100 * last[1]:.2f} cm" if last else ""))
    pipe.release()
    return 0 if placed == len(indices) else 1


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
    p.add_argument("--data", default="synthetic", help="'synthetic' (default), 'synthetic_lidar', a 7-Scenes/TUM, KITTI "
                                                            "or PCD/PLY scan folder, or a bag")
    p.add_argument("--frames", type=int, default=0, help="frames of the sequence to cover (0: all)")
    p.add_argument("--start", type=int, default=0, help="first frame covered")
    p.add_argument("--stride", type=int, default=1, help="publish every k-th frame")
    p.add_argument("--jump", type=int, default=0,
                   help="skip the K frames that follow the middle of the covered ones, once (a kidnapped sensor)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="in an odometry mode, also run the other one (keyframe / consecutive) and compare drift")
    p.add_argument("--input", choices=("cloud", "depth"), default="cloud", help="publish clouds or depth images")
    p.add_argument("--out", default="out/demo", help="folder for the trajectory plot and CSV")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one frame's result")
    _add_pipeline_flags(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("map", help="track a sequence with keyframes and save them as a map folder")
    p.add_argument("--data", default="synthetic", help="'synthetic', 'synthetic_lidar', a 7-Scenes/TUM, KITTI or PCD/PLY "
                                                            "scan folder, or a bag")
    p.add_argument("--start", type=int, default=0, help="first frame")
    p.add_argument("--frames", type=int, default=0, help="frames to cover from --start (0: to the end)")
    p.add_argument("--stride", type=int, default=1, help="use every k-th frame")
    p.add_argument("--out", default="out/map", help="map folder to write (an existing map there is replaced)")
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
