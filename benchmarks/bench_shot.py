"""Time torch SHOT (neighbours, LRF, descriptor) on a real cloud, on CPU and CUDA.

Example (the numbers in the module docstring of ukpgan_ros/shot.py come from this):

    PYTHONPATH=. python benchmarks/bench_shot.py \
        --cloud ../shared/data/3dmatch-redkitchen/cloud_bin_0.ply \
        --voxel 0.025 --radius 0.15 --threads 2 --device cpu --repeats 3

The cloud is voxel-downsampled with Open3D and its normals estimated with Open3D (not timed);
descriptors are computed for every point with all points as the search surface, like PCL's
``SHOTEstimationOMP`` run the reference timings quoted at the end came from. ``--shapes B`` also
times a batch of B small unit-scale shapes (UKPGAN training) in one batched call against a loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import open3d as o3d
import torch

from ukpgan_ros.features.shot import shot_descriptors

# PCL 1.13 SHOTEstimationOMP, 2 threads, same points (measured by the project lead on this machine)
PCL_REFERENCE_MS = {(0.025, 0.15): "1133", (0.05, 0.3): "210-370"}


def load_cloud(path: Path, voxel: float, normal_radius: float) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix == ".npy":
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.load(path)[:, :3]))
    else:
        pcd = o3d.io.read_point_cloud(str(path))
    if len(pcd.points) == 0:
        raise SystemExit(f"no points in {path}")
    if voxel > 0:
        pcd = pcd.voxel_down_sample(voxel)
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=normal_radius, max_nn=60))
    pcd.orient_normals_towards_camera_location(np.zeros(3))
    return np.asarray(pcd.points, np.float32), np.asarray(pcd.normals, np.float32)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_cloud(xyz: np.ndarray, nrm: np.ndarray, radius: float, device: torch.device,
                repeats: int) -> None:
    p = torch.from_numpy(xyz).to(device)
    n = torch.from_numpy(nrm).to(device)
    shot_descriptors(p, radius, n)  # warm-up (allocator, kernels, lazy CUDA init)
    stages: dict[str, list[float]] = {"neighbors": [], "lrf": [], "shot": [], "total": []}
    for _ in range(repeats):
        t: dict[str, float] = {}
        shot_descriptors(p, radius, n, timings=t)  # per-stage split (syncs between stages)
        for k in ("neighbors", "lrf", "shot"):
            stages[k].append(t[k])
        sync(device)
        t0 = time.perf_counter()
        res = shot_descriptors(p, radius, n)  # end-to-end, no stage syncs
        sync(device)
        stages["total"].append(time.perf_counter() - t0)
    npts = len(xyz)
    print(f"  device {device}: {npts} points, {int(res.valid.sum())} valid descriptors "
          f"(stage times are summed over worker threads; 'total' is wall time)")
    for k, v in stages.items():
        best = min(v)
        print(f"    {k:<10} best {best * 1e3:8.1f} ms  median {statistics.median(v) * 1e3:8.1f} ms"
              f"  {npts / best:10.0f} points/s")


def bench_shapes(xyz: np.ndarray, nrm: np.ndarray, shapes: int, device: torch.device,
                 repeats: int) -> None:
    """B crops of 2048 points rescaled to unit size, r = 0.15: one batched call vs a loop."""
    rng = np.random.default_rng(0)
    clouds, normals = [], []
    for _ in range(shapes):
        c = xyz[rng.integers(len(xyz))]
        idx = np.argsort(np.linalg.norm(xyz - c, axis=1))[:2048]
        pts = xyz[idx] - xyz[idx].mean(0)
        clouds.append(pts / np.abs(pts).max())
        normals.append(nrm[idx])
    p = torch.from_numpy(np.concatenate(clouds)).to(device)
    n = torch.from_numpy(np.concatenate(normals)).to(device)
    batch = torch.arange(shapes, device=device).repeat_interleave(2048)
    shot_descriptors(p, 0.15, n, batch=batch)
    loop, batched = [], []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for b in range(shapes):
            shot_descriptors(p[b * 2048:(b + 1) * 2048], 0.15, n[b * 2048:(b + 1) * 2048])
        sync(device)
        t1 = time.perf_counter()
        shot_descriptors(p, 0.15, n, batch=batch)
        sync(device)
        t2 = time.perf_counter()
        loop.append(t1 - t0)
        batched.append(t2 - t1)
    print(f"  device {device}: {shapes} shapes x 2048 points, r = 0.15 (unit scale)")
    print(f"    loop       best {min(loop) * 1e3:8.1f} ms  ({min(loop) / shapes * 1e3:.1f} ms/shape)")
    print(f"    batched    best {min(batched) * 1e3:8.1f} ms  ({min(batched) / shapes * 1e3:.1f} ms/shape)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cloud", type=Path, required=True, help="PLY/PCD/NPY point cloud")
    ap.add_argument("--voxel", type=float, default=0.025, help="voxel size [m] (0: none)")
    ap.add_argument("--radius", type=float, default=0.15, help="SHOT radius [m]")
    ap.add_argument("--normal-radius", type=float, default=None,
                    help="Open3D normal radius [m] (default 2 x voxel, or radius / 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                    help="'all' runs the CPU and, when available, CUDA")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", type=int, default=0, help="also time a batch of this many shapes")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    nr = args.normal_radius or (2 * args.voxel if args.voxel > 0 else args.radius / 3)
    xyz, nrm = load_cloud(args.cloud, args.voxel, nr)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        else:
            print("CUDA not available: skipped")
    print(f"{args.cloud.name}: voxel {args.voxel} m -> {len(xyz)} points, radius {args.radius} m, "
          f"torch {torch.__version__}, {args.threads} CPU threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for dev in devices:
        bench_cloud(xyz, nrm, args.radius, dev, args.repeats)
        if args.shapes:
            bench_shapes(xyz, nrm, args.shapes, dev, args.repeats)
    ref = PCL_REFERENCE_MS.get((round(args.voxel, 4), round(args.radius, 4)))
    if ref:
        print(f"  reference: PCL SHOTEstimationOMP (2 threads, same voxel/radius) {ref} ms")


if __name__ == "__main__":
    main()
