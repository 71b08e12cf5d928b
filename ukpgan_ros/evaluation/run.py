"""``ukpgan eval``: how good are a detector's keypoints for registration, on real pairs with
ground truth?

For every detector (ukpgan, iss, random, fps) and keypoint budget, on (a) frame pairs of a
sequence with poses (7-Scenes/TUM depth frames, KITTI/PCD/PLY LiDAR scans, a bag, 'synthetic'
or 'synthetic_lidar') at several frame gaps and (b) 3DMatch-style fragment pairs with a
ground-truth transform:

* relative repeatability: share of keypoints (inside the other cloud's overlap) whose nearest
  keypoint of the other cloud lies within ε after the true motion (ε tight and loose), averaged
  over both directions;
* mutual descriptor matches (FPFH, optionally SHOT) between the two keypoint sets: inlier ratio
  (true distance < τ1) and feature-match recall (inlier ratio > τ2);
* registration recall: RANSAC on those matches, success when RE and TE are below the loose and
  the strict limits;
* timings of detection, description and RANSAC.

The thresholds, the voxel and the frame gaps come from the data's sensor profile
(:mod:`ukpgan_ros.evaluation.metrics`): RGB-D (3DMatch: ε 5/10 cm, τ1 10 cm, τ2 5 %, RR 15°/30 cm,
strict 5°/10 cm, voxel 5 cm) for depth-image sequences and fragments, LiDAR (KITTI: ε 0.3/0.6 m,
τ1 0.6 m, τ2 5 %, RR 5°/2 m, strict 5°/0.6 m, voxel 0.3 m) for point-cloud scan sequences;
``--thresholds rgbd|lidar`` forces one for every data set, ``--voxel``/``--gaps``/``--stride``
override the profile's defaults.

``all-points`` is the detector-free baseline: descriptors of every voxel matched mutually. Clouds are
voxelised once, keypoints are detected once per cloud at the largest budget and cut to smaller
budgets (every backend ranks its keypoints, so the first k are its k-keypoint answer), and
descriptors are taken from one dense computation per cloud. Writes ``results.json``,
``results.md`` and PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ukpgan_ros.evaluation.metrics import (PROFILES, RGBD, PairMetrics, Thresholds, inlier_ratio,
                                          registration_success, relative_repeatability, sensor_profile)
from ukpgan_ros.evaluation.pairs import Pair, crop_pairs, fragment_pairs, sequence_name, sequence_pairs
from ukpgan_ros.evaluation.report import (
    FULL, markdown, paired_differences, paired_markdown, plots, probability_markdown, probability_stats, summarize,
)

__all__ = ["PairMetrics", "EvalOptions", "evaluate", "profile_for", "probability_histogram", "add_arguments", "run", "DATA_ENV"]

DATA_ENV = "UKPGAN_DATA"  # folder holding 7scenes-redkitchen/ and 3dmatch-redkitchen/


@dataclass
class CloudFeatures:
    points: np.ndarray
    keypoints: dict[str, np.ndarray]  # detector -> ranked indices (up to the largest budget)
    detect_time: dict[str, float]
    descriptors: dict[str, np.ndarray]  # kind -> (N, D) at every point
    describe_time: dict[str, float]


def _prepare_cloud(points: np.ndarray, cfg, detectors: dict, budget: int, descriptors: list[str],
                   device: str) -> CloudFeatures:
    """The pipeline's working cloud (``cfg``'s voxel and normal radius), keypoints of every
    detector at the largest budget, and dense descriptors of every kind."""
    from ukpgan_ros.cloud import WorkingCloud, make_working_cloud
    from ukpgan_ros.features import compute_descriptors

    # normals face the origin: the sensor for depth frames and, for 3DMatch fragments, the first
    # camera of the fragment, whose frame they are stored in (FPFH inlier ratio 0.36 vs 0.33 with
    # PCA signs on the redkitchen pair)
    cloud = make_working_cloud(points, cfg.voxel_size, normal_radius=cfg.normal_radius)
    order = np.lexsort(cloud.points.T[::-1])  # Open3D's voxel order varies from run to run
    cloud = WorkingCloud(cloud.points[order], cloud.normals[order], cloud.raw_count)
    kps, det_t = {}, {}
    for name, det in detectors.items():
        t0 = time.perf_counter()
        kps[name] = det.detect(cloud.points, cloud.normals, budget).indices
        det_t[name] = time.perf_counter() - t0
    desc, desc_t = {}, {}
    for kind in descriptors:
        t0 = time.perf_counter()
        desc[kind] = compute_descriptors(kind, cloud.points, cloud.normals, None, cfg.descriptor_radius(kind), device)
        desc_t[kind] = time.perf_counter() - t0
    return CloudFeatures(cloud.points, kps, det_t, desc, desc_t)


def _pair_metrics(pair: Pair, src: CloudFeatures, tgt: CloudFeatures, detector: str, budget: int, kind: str,
                  trial: int, voxel: float, distance: float, ransac_iterations: int, seed: int,
                  th: Thresholds) -> PairMetrics:
    from ukpgan_ros.transforms import rotation_error_deg, translation_error
    from ukpgan_ros.registration import mutual_matches, ransac_from_correspondences

    if detector == FULL:
        si, ti = np.arange(len(src.points)), np.arange(len(tgt.points))
        rep5 = rep10 = float("nan")
        det_s = 0.0
    else:
        si, ti = src.keypoints[detector][:budget], tgt.keypoints[detector][:budget]
        args = (src.points[si], tgt.points[ti], src.points, tgt.points, pair.T)
        rep5 = relative_repeatability(*args, eps=th.repeat_eps[0], overlap=2 * voxel)
        rep10 = relative_repeatability(*args, eps=th.repeat_eps[1], overlap=2 * voxel)
        det_s = (src.detect_time[detector] + tgt.detect_time[detector]) / 2
    sx, tx = src.points[si], tgt.points[ti]
    corr = mutual_matches(src.descriptors[kind][si], tgt.descriptors[kind][ti])
    ir = inlier_ratio(sx, tx, corr, pair.T, th.inlier_distance)
    t0 = time.perf_counter()
    T, _ = ransac_from_correspondences(sx, tx, corr, distance, ransac_iterations, 0.999, seed)
    ransac_s = time.perf_counter() - t0
    return PairMetrics(
        pair.dataset, pair.name, pair.gap, detector, budget if detector != FULL else 0, kind, trial, len(si),
        rep5, rep10, len(corr), ir, float(ir > th.inlier_ratio), rotation_error_deg(T, pair.T),
        translation_error(T, pair.T), float(registration_success(T, pair.T, *th.loose)),
        float(registration_success(T, pair.T, *th.strict)),
        det_s, (src.describe_time[kind] + tgt.describe_time[kind]) / 2, ransac_s, th.name,
    )


@dataclass(frozen=True)
class EvalOptions:
    detectors: tuple[str, ...] = ("ukpgan", "iss", "random", "fps")
    all_points: bool = True
    budgets: tuple[int, ...] = (50, 100, 250, 500)
    descriptors: tuple[str, ...] = ("fpfh",)
    gaps: tuple[int, ...] | None = None  # None: the sensor profile's (RGB-D 10..80, LiDAR 1, 2, 5, 10)
    stride: int | None = None  # None: the profile's
    max_gaps: int | None = None  # only the first N gaps
    frames: tuple[int, int] | None = None
    max_pairs_per_gap: int | None = None
    trials: int = 3
    fragment_crops: int = 20
    crop_radius: float = 1.5
    voxel: float | None = None  # None: the profile's (RGB-D 5 cm, LiDAR 30 cm)
    thresholds: str = "auto"  # 'auto' (from the data), or a PROFILES name for every data set
    nms_radius: float = 0.0  # 0: the pipeline's default, 1.5 x voxel
    model_path: str = ""
    device: str = "auto"
    ransac_iterations: int = 100000
    seed: int = 0


def profile_for(choice: str, sequence=None) -> Thresholds:
    """``choice`` 'auto' -> the profile of ``sequence`` (an opened sequence: :func:`sensor_profile`;
    None: fragments, RGB-D), else the named profile (``rgbd`` or ``lidar``)."""
    if choice == "auto":
        return RGBD if sequence is None else sensor_profile(sequence)
    if choice not in PROFILES:
        raise ValueError(f"unknown thresholds {choice!r} (one of: auto, {', '.join(PROFILES)})")
    return PROFILES[choice]


def _make_detectors(opts: EvalOptions, trial: int, voxel: float) -> dict:
    from ukpgan_ros.config import PipelineConfig
    from ukpgan_ros.detectors import make_detector

    out = {}
    for name in opts.detectors:
        cfg = PipelineConfig(detector=name, voxel_size=voxel, nms_radius=opts.nms_radius,
                             model_path=opts.model_path, device=opts.device, seed=opts.seed + trial)
        out[name] = make_detector(cfg.validate())
    return out


def evaluate(opts: EvalOptions, sequence: str | Path | None, fragments: Path | None,
             progress: bool = True) -> list[PairMetrics]:
    """All metrics rows for the requested data sets (either may be None)."""
    if not opts.budgets or min(opts.budgets) < 1:
        raise ValueError("budgets must be positive")
    if sequence is None and fragments is None:
        raise ValueError(f"nothing to evaluate: give --sequence and/or --fragments, or set {DATA_ENV} to a folder "
                         "holding 7scenes-redkitchen/ and 3dmatch-redkitchen/")
    from ukpgan_ros.config import DESCRIPTORS, PipelineConfig

    unknown = set(opts.descriptors) - set(DESCRIPTORS)
    if unknown:
        raise ValueError(f"unknown descriptor(s) {sorted(unknown)} (one of: {', '.join(DESCRIPTORS)})")
    jobs: list[tuple[list[Pair], dict, Thresholds]] = []
    if sequence is not None:
        from ukpgan_ros.datasets import open_sequence

        th = profile_for(opts.thresholds, open_sequence(str(sequence)))
        gaps = list(opts.gaps or th.gaps)[:opts.max_gaps]
        pairs, loaders = sequence_pairs(str(sequence), gaps, opts.stride or th.stride, opts.max_pairs_per_gap,
                                         opts.frames)
        if not pairs:
            raise ValueError(f"{sequence}: no frame pairs with poses at gaps {gaps} (a sequence of fewer frames "
                             "than the smallest gap, or no poses); pass --gaps")
        jobs.append((pairs, loaders, th))
    if fragments is not None:
        th = profile_for(opts.thresholds)
        pairs, loaders = fragment_pairs(Path(fragments))
        jobs.append((pairs, loaders, th))
        if opts.fragment_crops > 0:
            crops, crop_loaders = crop_pairs(pairs, loaders, opts.fragment_crops, opts.crop_radius, opts.seed,
                                             opts.voxel or th.voxel)
            jobs.append((crops, crop_loaders, th))
    from tqdm import tqdm

    from ukpgan_ros.device import resolve_device

    device = str(resolve_device(opts.device))  # SHOT descriptors need a concrete device
    rows: list[PairMetrics] = []
    names = list(opts.detectors) + ([FULL] if opts.all_points else [])
    trials = opts.trials
    for pairs, loaders, th in jobs:
        voxel = opts.voxel or th.voxel
        cfg = PipelineConfig(voxel_size=voxel).validate()  # radii and distances of the pipeline
        for trial in range(trials):
            detectors = _make_detectors(opts, trial, voxel)
            cache: dict[str, CloudFeatures] = {}

            def feats(key: str) -> CloudFeatures:
                if key not in cache:
                    cache[key] = _prepare_cloud(loaders[key](), cfg, detectors, max(opts.budgets),
                                                list(opts.descriptors), device)
                return cache[key]

            desc = f"{pairs[0].dataset} trial {trial + 1}/{trials}" if pairs else "pairs"
            for pair in tqdm(pairs, desc=desc, unit="pair", disable=not progress):
                src, tgt = feats(pair.src), feats(pair.tgt)
                for name in names:
                    for kind in opts.descriptors:
                        for budget in (opts.budgets if name != FULL else (0,)):
                            rows.append(_pair_metrics(pair, src, tgt, name, budget, kind, trial, voxel,
                                                      cfg.match_distance, opts.ransac_iterations, opts.seed + trial,
                                                      th))
            for det in detectors.values():
                det.release()
    return rows


def probability_histogram(opts: EvalOptions, clouds: dict[str, tuple[np.ndarray, float]],
                          out: Path) -> dict[str, dict]:
    """UKPGAN probabilities of every voxel of ``clouds`` (name -> (raw points, voxel [m])): stats and a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ukpgan_ros.cloud import make_working_cloud
    from ukpgan_ros.config import DEFAULT_MODEL_PATH, PipelineConfig
    from ukpgan_ros.detectors.ukpgan import UkpganDetector

    probs = {}
    for name, (raw, voxel) in clouds.items():
        cfg = PipelineConfig(voxel_size=voxel).validate()
        det = UkpganDetector(opts.model_path or DEFAULT_MODEL_PATH, device=opts.device, voxel_size=voxel)
        wc = make_working_cloud(raw, cfg.voxel_size, normal_radius=cfg.normal_radius)
        probs[name] = det.probabilities(wc.points, wc.normals)
        det.release()
    groups = sorted({n.split(" ")[0] for n in probs})
    stats = {g: probability_stats(np.concatenate([p for n, p in probs.items() if n.split(" ")[0] == g]))
             for g in groups}
    fig, ax = plt.subplots(figsize=(6, 4))
    for g in groups:
        p = np.concatenate([v for n, v in probs.items() if n.split(" ")[0] == g])
        ax.hist(p, bins=50, range=(0, 1), histtype="step", density=True, label=f"{g} ({len(p)} points)")
    ax.set_yscale("log")
    ax.set_xlabel("UKPGAN keypoint probability")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "probabilities.png", dpi=90)
    plt.close(fig)
    return stats


def _histogram_clouds(opts: EvalOptions, sequence, fragments: Path | None) -> dict[str, tuple[np.ndarray, float]]:
    out = {}
    if sequence is not None:
        from ukpgan_ros.datasets import open_sequence

        seq = open_sequence(str(sequence))
        name = sequence_name(str(sequence))
        voxel = opts.voxel or profile_for(opts.thresholds, seq).voxel
        for i in np.linspace(0, len(seq) - 1, 4).round().astype(int):
            out[f"{name} {i}"] = (seq[int(i)].points(), voxel)
    if fragments is not None:
        from ukpgan_ros.io import read_cloud

        voxel = opts.voxel or profile_for(opts.thresholds).voxel
        for f in sorted(Path(fragments).glob("cloud_bin_*.ply"))[:2]:
            out[f"3dmatch {f.stem}"] = (read_cloud(f), voxel)
    return out


def _data_default(name: str) -> str:
    """``$UKPGAN_DATA/name`` when the variable is set, else '' (nothing)."""
    root = os.environ.get(DATA_ENV, "")
    return str(Path(root) / name) if root else ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ukpgan_ros.config import DESCRIPTORS, DETECTORS, DEVICES

    d = EvalOptions()
    parser.add_argument("--sequence", default=_data_default("7scenes-redkitchen"),
                        help="sequence with poses: 7-Scenes/TUM folder, KITTI Velodyne or PCD/PLY scan folder, "
                             "bag, 'synthetic' or 'synthetic_lidar' "
                             f"(default: ${DATA_ENV}/7scenes-redkitchen; '' to skip)")
    parser.add_argument("--thresholds", default=d.thresholds, choices=["auto", *PROFILES],
                        help="sensor profile of the thresholds, voxel and gaps: auto (LiDAR for point-cloud scan "
                             "sequences, RGB-D for depth images and fragments), rgbd (3DMatch: 10 cm inliers, RR "
                             "15°/30 cm) or lidar (KITTI: 0.6 m inliers, RR 5°/2 m)")
    parser.add_argument("--frames", nargs=2, type=int, metavar=("START", "END"),
                        help="only pairs with both frames in [START, END)")
    parser.add_argument("--fragments", default=_data_default("3dmatch-redkitchen"),
                        help="folder with cloud_bin_<i>.ply and gt_T_<i>_from_<j>.txt "
                             f"(default: ${DATA_ENV}/3dmatch-redkitchen; '' to skip)")
    parser.add_argument("--detectors", nargs="+", default=list(d.detectors), choices=DETECTORS)
    parser.add_argument("--no-all-points", action="store_true",
                        help="skip the detector-free baseline (descriptors of every voxel)")
    parser.add_argument("--budgets", nargs="+", type=int, default=list(d.budgets))
    parser.add_argument("--descriptors", nargs="+", default=list(d.descriptors), choices=DESCRIPTORS)
    parser.add_argument("--gaps", nargs="+", type=int,
                        help="frame gaps of sequence pairs (default: the profile's; RGB-D 10 20 40 60 80, "
                             "LiDAR 1 2 5 10)")
    parser.add_argument("--stride", type=int, help="frames between pair starts (default: RGB-D 10, LiDAR 5)")
    parser.add_argument("--max-pairs-per-gap", type=int, default=0, help="0: all")
    parser.add_argument("--trials", type=int, default=d.trials,
                        help="repeats of every pair with other RANSAC and random-sampling seeds (RANSAC is a "
                             "coin flip on pairs with few inliers; repeats make recall an expectation)")
    parser.add_argument("--fragment-crops", type=int, default=d.fragment_crops,
                        help="partial sub-pairs cut from each fragment pair (0: none)")
    parser.add_argument("--crop-radius", type=float, default=d.crop_radius, help="radius of those crops [m]")
    parser.add_argument("--voxel", type=float, help="working voxel [m] (default: RGB-D 0.05, LiDAR 0.3)")
    parser.add_argument("--nms-radius", type=float, default=d.nms_radius,
                        help="NMS radius of ukpgan and iss [m] (0: the pipeline's 1.5 x voxel)")
    parser.add_argument("--model", default="", help="UKPGAN weights (default: the shipped model)")
    parser.add_argument("--device", default=d.device, choices=DEVICES)
    parser.add_argument("--ransac-iterations", type=int, default=d.ransac_iterations)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="out/eval", help="folder for results.{json,md} and plots")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 sequence pairs at the first gap, budgets <= 100, 1 trial, 2 crops")
    parser.add_argument("--no-progress", action="store_true")


def _options(args: argparse.Namespace) -> EvalOptions:
    opts = EvalOptions(
        detectors=tuple(args.detectors), all_points=not args.no_all_points, budgets=tuple(args.budgets),
        descriptors=tuple(args.descriptors), gaps=tuple(args.gaps) if args.gaps else None, stride=args.stride,
        frames=tuple(args.frames) if args.frames else None,
        max_pairs_per_gap=args.max_pairs_per_gap or None, trials=args.trials,
        fragment_crops=args.fragment_crops, crop_radius=args.crop_radius, voxel=args.voxel,
        nms_radius=args.nms_radius, thresholds=args.thresholds,
        model_path=args.model, device=args.device, ransac_iterations=args.ransac_iterations, seed=args.seed)
    if args.quick:
        opts = EvalOptions(**{**asdict(opts), "budgets": tuple(b for b in opts.budgets if b <= 100) or (50,),
                              "max_gaps": 1, "max_pairs_per_gap": 2, "trials": 1,
                              "fragment_crops": min(opts.fragment_crops, 2),
                              "ransac_iterations": min(opts.ransac_iterations, 20000)})
    return opts


def _existing(path: str, what: str) -> Path | None:
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist (pass '' to skip it)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    opts = _options(args)
    t0 = time.perf_counter()
    from ukpgan_ros.datasets import is_synthetic

    sequence = args.sequence if is_synthetic(args.sequence) else _existing(args.sequence, "sequence")
    fragments = _existing(args.fragments, "fragments")
    rows = evaluate(opts, sequence, fragments, progress=not args.no_progress)
    summary = summarize(rows, by_gap=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probs = (probability_histogram(opts, _histogram_clouds(opts, sequence, fragments), out)
             if "ukpgan" in opts.detectors else {})
    diffs = paired_differences(rows) if "iss" in opts.detectors else []
    command = "ukpgan eval " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["eval"] else sys.argv[1:])
    (out / "results.json").write_text(json.dumps(
        {"command": command, "options": asdict(opts), "seconds": time.perf_counter() - t0, "summary": summary,
         "ukpgan_probabilities": probs, "paired_to_iss": diffs,
         "rows": [asdict(r) for r in rows]}, indent=1, default=float) + "\n")
    profiles = {r.dataset: PROFILES[r.thresholds] for r in rows}
    text = markdown(summary, command, profiles) + paired_markdown(diffs) + probability_markdown(probs)
    (out / "results.md").write_text(text)
    written = plots(summary, out)
    print(text)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {len(written)} plot(s)", file=sys.stderr)
    return 0
