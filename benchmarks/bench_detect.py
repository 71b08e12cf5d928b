"""Time keypoint detection per stage on real clouds: UKPGAN (SHOT, encoder, NMS) against the
classic backends, over voxel sizes and devices.

Example:

    PYTHONPATH=. python benchmarks/bench_detect.py --voxels 0.05 0.025 --threads 2 --repeats 3

Clouds: a 7-Scenes depth frame (back-projected) and a 3DMatch fragment from ../shared/data,
voxelised with the pipeline's preprocessing (not timed). UKPGAN stages are timed separately
(``features`` = SHOT at the model's radius, ``encoder`` = probabilities in blocks, ``nms``), then
the whole ``detect`` call of every backend at the budget.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ukpgan_ros.cloud import make_working_cloud
from ukpgan_ros.config import DEFAULT_MODEL_PATH, PipelineConfig
from ukpgan_ros.detectors import make_detector
from ukpgan_ros.features import compute_descriptors
from ukpgan_ros.detectors.nms import radius_nms

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def clouds() -> dict[str, np.ndarray]:
    from ukpgan_ros.datasets import SevenScenesSequence
    from ukpgan_ros.io import read_cloud

    out = {}
    seq_dir, frag = DATA / "7scenes-redkitchen", DATA / "3dmatch-redkitchen" / "cloud_bin_0.ply"
    if seq_dir.is_dir():
        out["7scenes frame 0"] = SevenScenesSequence(seq_dir)[0].points()
    if frag.is_file():
        out["3dmatch cloud_bin_0"] = read_cloud(frag)
    if not out:
        raise SystemExit(f"no real data under {DATA}")
    return out


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", nargs="+", type=float, default=[0.05])
    ap.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    ap.add_argument("--budget", type=int, default=250)
    ap.add_argument("--model", default=DEFAULT_MODEL_PATH)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, budget {args.budget}")
    print(f"{'cloud':22s} {'voxel':>6s} {'points':>7s} {'device':>6s} {'stage':>16s} {'median ms':>10s}")
    for name, raw in clouds().items():
        for voxel in args.voxels:
            wc = make_working_cloud(raw, voxel, normal_radius=2 * voxel)
            pts, nrm = wc.points, wc.normals
            for dev in args.devices:
                device = torch.device(dev)
                cfg = PipelineConfig(detector="ukpgan", voxel_size=voxel, model_path=args.model, device=dev)
                det = make_detector(cfg)
                radius = det.feature_radius

                def row(stage: str, seconds: float) -> None:
                    print(f"{name:22s} {voxel:6.3f} {len(pts):7d} {dev:>6s} {stage:>16s} {seconds * 1e3:10.1f}")

                t, feats = timed(lambda: compute_descriptors("shot", pts, nrm, None, radius, dev), args.repeats, device)
                row("ukpgan features", t)
                f_t = torch.from_numpy(feats).to(device)
                t, prob = timed(lambda: det.encoder.probabilities(f_t), args.repeats, device)
                row("ukpgan encoder", t)
                prob = prob.cpu().numpy()
                t, _ = timed(lambda: radius_nms(pts, prob, det.nms_radius, args.budget), args.repeats, device)
                row("ukpgan nms", t)
                t, _ = timed(lambda: det.detect(pts, nrm, args.budget), args.repeats, device)
                row("ukpgan detect", t)
                det.release()
            for backend in ("iss", "random", "fps"):
                det = make_detector(PipelineConfig(detector=backend, voxel_size=voxel))
                t, _ = timed(lambda: det.detect(pts, nrm, args.budget), args.repeats, torch.device("cpu"))
                print(f"{name:22s} {voxel:6.3f} {len(pts):7d} {'cpu':>6s} {backend + ' detect':>16s} {t * 1e3:10.1f}")


if __name__ == "__main__":
    main()
