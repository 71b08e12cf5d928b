"""Per-stage timings of the pipeline on real 7-Scenes frames, KITTI Velodyne scans or the synthetic camera.

    python benchmarks/bench_pipeline.py [--data DIR|synthetic] [--voxels 0.025 0.05]
        [--detectors iss ukpgan] [--pairs 10] [--gap 10] [--threads 2]
    python benchmarks/bench_pipeline.py --data ../shared/data/kitti-00-velodyne --voxels 0 \
        --detectors ukpgan --start 0 --gap 1 --pairs 5

Prints, per voxel size (0: the shipped defaults, the voxel chosen by the working-point cap) and
detector, the median milliseconds of conversion (NumPy -> PointCloud2 -> NumPy), preprocessing,
detection, description, matching, RANSAC, ICP and the degenerate-fit check over consecutive
frame pairs, and the median registration error against ground truth. A KITTI folder
(``velodyne/*.bin`` with ``poses_velodyne.txt``) is read as a stream of 10 Hz scans.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ukpgan_ros.config import DESCRIPTORS, PipelineConfig  # noqa: E402
from ukpgan_ros.datasets import open_sequence  # noqa: E402
from ukpgan_ros.pipeline import KeypointPipeline  # noqa: E402
from ukpgan_ros.transforms import rotation_error_deg, translation_error  # noqa: E402

STAGES = ("convert", "preprocess", "detect", "describe", "match", "ransac", "refine", "verify", "track")


class _Scan:
    """One KITTI Velodyne scan as a frame (points in the LiDAR frame, pose T_scan0_from_scan)."""

    def __init__(self, path: Path, pose: np.ndarray | None) -> None:
        self.path, self.pose = path, pose

    def points(self) -> np.ndarray:
        return np.fromfile(self.path, np.float32).reshape(-1, 4)[:, :3].copy()


def open_frames(data: str):
    """A KITTI Velodyne folder as a list of scans, anything else through ``open_sequence``."""
    root = Path(data)
    if (root / "velodyne").is_dir():
        files = sorted((root / "velodyne").glob("*.bin"))
        poses: list[np.ndarray | None] = [None] * len(files)
        if (root / "poses_velodyne.txt").is_file():
            for i, row in enumerate(np.loadtxt(root / "poses_velodyne.txt", ndmin=2)[:len(files)]):
                poses[i] = np.vstack([row.reshape(3, 4), [0, 0, 0, 1]])
        return [_Scan(f, p) for f, p in zip(files, poses)]
    return open_sequence(data)


def main() -> None:
    default_data = Path(__file__).resolve().parents[2] / "shared/data/7scenes-redkitchen"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(default_data) if default_data.exists() else "synthetic")
    ap.add_argument("--voxels", type=float, nargs="+", default=[0.025, 0.05])
    ap.add_argument("--detectors", nargs="+", default=["iss", "random", "fps"])
    ap.add_argument("--descriptor", default=PipelineConfig().descriptor, choices=DESCRIPTORS)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--gap", type=int, default=10)
    ap.add_argument("--start", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch/Open3D threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ukpgan_ros.pointcloud2 import pointcloud2_to_xyz
    from ukpgan_ros.ros.cloud_msgs import xyz_to_pointcloud2

    seq = open_frames(args.data)
    idx = [min(args.start + k * args.gap, len(seq) - 1) for k in range(args.pairs + 1)]
    frames = [seq[i] for i in idx]
    clouds = [f.points() for f in frames]
    print(f"data {getattr(seq, 'name', args.data)}, frames {idx[0]}..{idx[-1]} every {args.gap}, "
          f"{np.mean([len(c) for c in clouds]):.0f} points per frame")
    print(f"{'voxel':>6} {'detector':>8} {'pts':>6} {'kps':>4} " + " ".join(f"{s:>10}" for s in STAGES)
          + f" {'total':>7} {'RE deg':>7} {'TE cm':>6}")
    for voxel in args.voxels:
        for det in args.detectors:
            fixed = {"voxel_size": voxel, "max_working_points": 0} if voxel > 0 else {}
            cfg = PipelineConfig(detector=det, descriptor=args.descriptor, **fixed)
            try:
                pipe = KeypointPipeline(cfg)
            except (FileNotFoundError, ValueError) as e:
                print(f"{voxel:>6} {det:>8} unavailable: {e}")
                continue
            pipe.process(clouds[0])  # warm-up (first Open3D/torch calls allocate)
            pipe.reset()
            rows, errs, sizes = [], [], []
            for k, (f, pts) in enumerate(zip(frames, clouds)):
                t0 = time.perf_counter()
                pts = pointcloud2_to_xyz(xyz_to_pointcloud2(pts, frame_id="cam", stamp=0.0))
                conv = time.perf_counter() - t0
                r = pipe.process(pts)
                rows.append({"convert": conv, **r.timings})
                sizes.append((r.working_points, len(r.keypoints)))
                # the motion since the previous frame (what ~/transform publishes; in keyframe mode
                # the registration itself is keyframe -> frame)
                motion = r.tracking.motion if r.placed else None
                if k and motion is not None and f.pose is not None:
                    T_gt = np.linalg.inv(frames[k - 1].pose) @ f.pose
                    errs.append((rotation_error_deg(motion, T_gt), translation_error(motion, T_gt)))
            med = {s: 1e3 * float(np.median([r.get(s, 0.0) for r in rows[1:]])) for s in STAGES}
            total = 1e3 * float(np.median([sum(r.values()) for r in rows[1:]]))
            e = np.median(np.array(errs), axis=0) if errs else (np.nan, np.nan)
            print(f"{pipe.cfg.voxel_size:>6.3g} {det:>8} {np.median([s[0] for s in sizes]):>6.0f} "
                  f"{np.median([s[1] for s in sizes]):>4.0f} " + " ".join(f"{med[s]:>8.1f}ms" for s in STAGES)
                  + f" {total:>5.0f}ms {e[0]:>7.3f} {100 * e[1]:>6.2f}")
            pipe.release()


if __name__ == "__main__":
    main()
