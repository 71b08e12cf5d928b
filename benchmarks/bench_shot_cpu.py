"""Time the numba SHOT kernel (``features/shot_cpu``) against torch ``compute_shot`` on CPU.

Every point of the cloud is described with all points as the surface, the pipeline's SHOT radius
(6 x voxel, from the descriptor registry), on 7-Scenes depth frames and on 3DMatch ``cloud_bin_0``, each
voxelised at 5 cm and 2.5 cm with Open3D normals (the pipeline's ``make_working_cloud``; not
timed). Both implementations run alternately on the same cloud, so a change in the machine's
load hits both: the ratio of the medians (torch / numba) is the number to read on a shared
machine; the load average is printed before and after.

    PYTHONPATH=. python benchmarks/bench_shot_cpu.py [--data ../shared/data] [--repeats 7]
        [--frames 0 150 300] [--threads 2]

``--threads`` sets both torch's intra-op threads and the numba kernel's worker threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data"


def load_clouds(data: Path, frames: list[int], voxels: list[float]):
    """[(name, voxel, [(points, normals), ...])] for the 7-Scenes frames and cloud_bin_0."""
    from ukpgan_ros.cloud import make_working_cloud
    from ukpgan_ros.datasets import SevenScenesSequence
    from ukpgan_ros.io import read_cloud

    seq = SevenScenesSequence(data / "7scenes-redkitchen")
    raw_frames = [seq[i].points() for i in frames]
    fragment = read_cloud(data / "3dmatch-redkitchen" / "cloud_bin_0.ply")
    out = []
    for voxel in voxels:
        clouds = [make_working_cloud(p, voxel, normal_radius=2 * voxel) for p in raw_frames]
        out.append((f"7-Scenes frames {','.join(map(str, frames))}", voxel,
                    [(c.points, c.normals) for c in clouds]))
    for voxel in voxels:
        c = make_working_cloud(fragment, voxel, normal_radius=2 * voxel)
        out.append(("3DMatch cloud_bin_0", voxel, [(c.points, c.normals)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help=f"the shared data folder (default {DEFAULT_DATA})")
    ap.add_argument("--frames", type=int, nargs="+", default=[0, 150, 300],
                    help="7-Scenes frame indices")
    ap.add_argument("--voxels", type=float, nargs="+", default=[0.05, 0.025])
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per cloud and method")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both (default: the CPUs this process may use)")
    args = ap.parse_args()
    if not (args.data / "7scenes-redkitchen").is_dir() or \
            not (args.data / "3dmatch-redkitchen" / "cloud_bin_0.ply").is_file():
        sys.exit(f"shared data not found under {args.data}: it needs 7scenes-redkitchen/ and "
                 "3dmatch-redkitchen/cloud_bin_0.ply (see README); pass --data")

    import torch

    from ukpgan_ros.features.registry import descriptor
    from ukpgan_ros.features.shot_cpu import shot_cpu, warmup

    from ukpgan_ros.features.shot import compute_shot

    try:
        threads = args.threads or len(os.sched_getaffinity(0))
    except AttributeError:
        threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    warmup()
    print(f"numba kernel ready in {time.perf_counter() - t0:.1f} s (compiled or loaded from "
          "its cache); loading clouds...")
    cases = load_clouds(args.data, args.frames, args.voxels)
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {threads} threads for both, {os.cpu_count()} CPUs, "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; median of "
          f"{args.repeats} runs per cloud after one warm-up run")
    head = (f"{'cloud':<28} {'voxel':>6} {'radius':>6} {'points':>7} {'torch ms':>9} "
            f"{'numba ms':>9} {'1 thread':>9} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for name, voxel, clouds in cases:
        radius = descriptor("shot").radius(voxel)
        t_torch, t_numba, t_one = [], [], []
        for pts, nrm in clouds:
            compute_shot(pts, radius, nrm)
            shot_cpu(pts, nrm, radius)
            for _ in range(args.repeats):
                t = time.perf_counter()
                compute_shot(pts, radius, nrm)
                t_torch.append(time.perf_counter() - t)
                t = time.perf_counter()
                shot_cpu(pts, nrm, radius, threads=threads)
                t_numba.append(time.perf_counter() - t)
                t = time.perf_counter()
                shot_cpu(pts, nrm, radius, threads=1)
                t_one.append(time.perf_counter() - t)
        med_t, med_n, med_1 = (statistics.median(v) * 1e3 for v in (t_torch, t_numba, t_one))
        n_pts = round(statistics.mean(len(p) for p, _ in clouds))
        print(f"{name:<28} {voxel:>6.3f} {radius:>6.2f} {n_pts:>7d} {med_t:>9.1f} {med_n:>9.1f} "
              f"{med_1:>9.1f} {med_t / med_n:>5.1f}x")
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} "
          "(other processes on the machine: compare the ratio, not the milliseconds)")


if __name__ == "__main__":
    main()
