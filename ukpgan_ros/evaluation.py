"""``ukpgan eval``: how good are a detector's keypoints for registration, on real pairs with
ground truth?

For every detector (ukpgan, iss, random, fps) and keypoint budget, on (a) frame pairs of a
7-Scenes-layout depth sequence at several frame gaps and (b) 3DMatch-style fragment pairs with
a ground-truth transform:

* relative repeatability: share of keypoints (inside the other cloud's overlap) whose nearest
  keypoint of the other cloud lies within ε after the true motion (ε = 5 and 10 cm), averaged
  over both directions;
* mutual descriptor matches (FPFH, optionally SHOT) between the two keypoint sets: inlier ratio
  (true distance < τ1 = 10 cm) and feature-match recall (inlier ratio > τ2 = 5 %);
* registration recall: RANSAC on those matches, success when RE < 15° and TE < 30 cm, and the
  strict RE < 5° and TE < 10 cm;
* timings of detection, description and RANSAC.

``all-points`` is the detector-free baseline: descriptors of every voxel matched mutually. Clouds are
voxelised once, keypoints are detected once per cloud at the largest budget and cut to smaller
budgets (every backend ranks its keypoints, so the first k are its k-keypoint answer), and
descriptors are taken from one dense computation per cloud. Writes ``results.json``,
``results.md`` and PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
import numpy as np
from scipy.spatial import cKDTree

from ukpgan_ros.config import MATCH_DISTANCE_VOXELS

__all__ = [
    "PairMetrics",
    "relative_repeatability",
    "inlier_ratio",
    "registration_success",
    "frame_pairs",
    "paired_differences",
    "evaluate",
    "summarize",
    "probability_stats",
    "add_arguments",
    "run",
]

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TAU1, TAU2 = 0.10, 0.05
LOOSE, STRICT = (15.0, 0.30), (5.0, 0.10)
FULL = "all-points"


def _transform(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    return (points @ T[:3, :3].T + T[:3, 3]).astype(np.float32)


def relative_repeatability(src_kp: np.ndarray, tgt_kp: np.ndarray, src_cloud: np.ndarray, tgt_cloud: np.ndarray,
                           T_tgt_from_src: np.ndarray, eps: float, overlap: float) -> float:
    """Share of keypoints with a keypoint of the other cloud within ``eps`` after the true motion.

    Only keypoints that land within ``overlap`` of the other cloud count (a keypoint outside
    the common part cannot repeat); both directions are averaged. NaN when none overlap.
    """
    T_inv = np.linalg.inv(T_tgt_from_src)
    shares = []
    for kp, other_kp, other_cloud, T in ((src_kp, tgt_kp, tgt_cloud, T_tgt_from_src),
                                         (tgt_kp, src_kp, src_cloud, T_inv)):
        if len(kp) == 0 or len(other_kp) == 0:
            continue
        moved = _transform(kp, T)
        inside = cKDTree(other_cloud).query(moved)[0] <= overlap
        if not inside.any():
            continue
        d = cKDTree(other_kp).query(moved[inside])[0]
        shares.append(float((d <= eps).mean()))
    return float(np.mean(shares)) if shares else float("nan")


def inlier_ratio(src_xyz: np.ndarray, tgt_xyz: np.ndarray, corr: np.ndarray, T_tgt_from_src: np.ndarray,
                 tau1: float = TAU1) -> float:
    """Share of matches (src row, tgt row) whose points lie within ``tau1`` under the true motion."""
    if len(corr) == 0:
        return 0.0
    d = np.linalg.norm(_transform(src_xyz[corr[:, 0]], T_tgt_from_src) - tgt_xyz[corr[:, 1]], axis=1)
    return float((d < tau1).mean())


def registration_success(T_est: np.ndarray, T_gt: np.ndarray, max_rot_deg: float, max_trans: float) -> bool:
    """RE < ``max_rot_deg`` and TE < ``max_trans``."""
    from ukpgan_ros.registration import rotation_error_deg, translation_error

    return rotation_error_deg(T_est, T_gt) < max_rot_deg and translation_error(T_est, T_gt) < max_trans


# ------------------------------------------------------------------------------- data sources


@dataclass(frozen=True)
class Pair:
    dataset: str
    name: str
    src: str  # cloud keys
    tgt: str
    T: np.ndarray  # T_tgt_from_src
    gap: int = 0


def frame_pairs(num_frames: int, gaps: list[int], stride: int, max_pairs: int | None = None,
                frames: tuple[int, int] | None = None) -> list[tuple[int, int, int]]:
    """(gap, src index, tgt index) with src = tgt + gap, tgt on a ``stride`` grid, per gap; both
    frames inside ``frames`` = [start, end) when given."""
    if stride < 1 or any(g < 1 for g in gaps):
        raise ValueError("stride and gaps must be >= 1")
    start, end = frames if frames is not None else (0, num_frames)
    end = min(end, num_frames)
    if not 0 <= start < end:
        raise ValueError(f"empty frame range {frames} for {num_frames} frames")
    out = []
    for gap in gaps:
        pairs = [(gap, t + gap, t) for t in range(start, end - gap, stride)]
        out += pairs[:max_pairs] if max_pairs else pairs
    return out


def _sequence_name(spec: str) -> str:
    """'synthetic', or a folder's name up to its first dash ('7scenes-redkitchen' -> '7scenes')."""
    return "synthetic" if spec == "synthetic" else Path(spec).resolve().name.split("-")[0]


def _sequence_pairs(spec: str, gaps: list[int], stride: int, max_pairs: int | None,
                    frames: tuple[int, int] | None) -> tuple[list[Pair], dict[str, callable]]:
    """Frame pairs of a depth sequence: a 7-Scenes/TUM folder or 'synthetic' (io.open_sequence)."""
    from ukpgan_ros.io import open_sequence

    seq = open_sequence(spec)
    name = _sequence_name(spec)
    loaders, pairs = {}, []
    for gap, s, t in frame_pairs(len(seq), gaps, stride, max_pairs, frames):
        ps, pt = seq[s].pose, seq[t].pose
        if ps is None or pt is None:
            continue
        for i in (s, t):
            loaders.setdefault(f"frame{i}", lambda i=i: seq[i].points())
        pairs.append(Pair(name, f"{t}-{s}", f"frame{s}", f"frame{t}", np.linalg.inv(pt) @ ps, gap))
    return pairs, loaders


def _fragment_pairs(folder: Path) -> tuple[list[Pair], dict[str, callable]]:
    """Every ``gt_T_<i>_from_<j>.txt`` with ``cloud_bin_<i>.ply`` and ``cloud_bin_<j>.ply``."""
    from functools import lru_cache

    from ukpgan_ros.io import read_cloud, read_transform

    load = lru_cache(maxsize=8)(read_cloud)
    pairs, loaders = [], {}
    for gt in sorted(folder.glob("gt_T_*_from_*.txt")):
        i, j = gt.stem[len("gt_T_"):].split("_from_")
        a, b = folder / f"cloud_bin_{i}.ply", folder / f"cloud_bin_{j}.ply"
        if not (a.is_file() and b.is_file()):
            continue
        loaders[f"bin{i}"] = lambda a=a: load(a)
        loaders[f"bin{j}"] = lambda b=b: load(b)
        pairs.append(Pair("3dmatch", f"{i}-{j}", f"bin{j}", f"bin{i}", read_transform(gt)))
    if not pairs:
        raise ValueError(f"{folder}: no gt_T_<i>_from_<j>.txt with matching cloud_bin_<i>.ply files")
    return pairs, loaders


def crop_pairs(pairs: list[Pair], loaders: dict[str, callable], count: int, radius: float, seed: int,
               voxel: float) -> tuple[list[Pair], dict[str, callable]]:
    """``count`` partial sub-pairs per pair: balls of ``radius`` around a random point of the
    overlap in the target and around the same point, shifted by up to ``radius / 2`` in a random
    direction, in the source. One fragment pair thus yields many harder pairs (partial overlap,
    new borders) with the same ground truth."""
    from ukpgan_ros.cloud import voxel_downsample

    out, crop_loaders = [], {}
    for p_idx, pair in enumerate(pairs):
        src, tgt = loaders[pair.src](), loaders[pair.tgt]()
        tgt_v = voxel_downsample(tgt, 2 * voxel)
        src_in_tgt = _transform(voxel_downsample(src, 2 * voxel), pair.T)
        overlap = tgt_v[cKDTree(src_in_tgt).query(tgt_v)[0] <= 2 * voxel]
        if len(overlap) == 0:
            continue
        T_inv = np.linalg.inv(pair.T)
        for k in range(count):
            rng = np.random.default_rng([seed, p_idx, k])
            c_tgt = overlap[rng.integers(len(overlap))]
            shift = rng.normal(size=3)
            shift *= rng.uniform(0, radius / 2) / np.linalg.norm(shift)
            c_src = _transform((c_tgt + shift)[None], T_inv)[0]
            ks, kt = f"{pair.src}@{k}s", f"{pair.tgt}@{k}t"
            crop_loaders[ks] = lambda c=c_src, key=pair.src: _ball(loaders[key](), c, radius)
            crop_loaders[kt] = lambda c=c_tgt, key=pair.tgt: _ball(loaders[key](), c, radius)
            out.append(Pair(f"{pair.dataset}-crops", f"{pair.name}#{k}", ks, kt, pair.T))
    return out, crop_loaders


def _ball(points: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    return points[np.linalg.norm(points - center, axis=1) <= radius]


# ------------------------------------------------------------------------------------ per cloud


@dataclass
class CloudFeatures:
    points: np.ndarray
    keypoints: dict[str, np.ndarray]  # detector -> ranked indices (up to the largest budget)
    detect_time: dict[str, float]
    descriptors: dict[str, np.ndarray]  # kind -> (N, D) at every point
    describe_time: dict[str, float]


def _prepare_cloud(points: np.ndarray, voxel: float, detectors: dict, budget: int, descriptors: list[str],
                   device: str) -> CloudFeatures:
    from ukpgan_ros.cloud import WorkingCloud, make_working_cloud
    from ukpgan_ros.registration import compute_descriptors

    # normals face the origin: the sensor for depth frames and, for 3DMatch fragments, the first
    # camera of the fragment, whose frame they are stored in (FPFH inlier ratio 0.36 vs 0.33 with
    # PCA signs on the redkitchen pair)
    cloud = make_working_cloud(points, voxel)
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
        desc[kind] = compute_descriptors(kind, cloud, None, voxel, device)
        desc_t[kind] = time.perf_counter() - t0
    return CloudFeatures(cloud.points, kps, det_t, desc, desc_t)


# ------------------------------------------------------------------------------------- per pair


@dataclass(frozen=True)
class PairMetrics:
    dataset: str
    pair: str
    gap: int
    detector: str
    budget: int
    descriptor: str
    trial: int
    keypoints: int
    repeatability_5cm: float
    repeatability_10cm: float
    matches: int
    inlier_ratio: float
    feature_match_recall: float
    rotation_error_deg: float
    translation_error_m: float
    registered: float
    registered_strict: float
    detect_s: float
    describe_s: float
    ransac_s: float


def _pair_metrics(pair: Pair, src: CloudFeatures, tgt: CloudFeatures, detector: str, budget: int, kind: str,
                  trial: int, voxel: float, ransac_iterations: int, seed: int) -> PairMetrics:
    from ukpgan_ros.registration import (
        mutual_matches,
        ransac_from_correspondences,
        rotation_error_deg,
        translation_error,
    )

    if detector == FULL:
        si, ti = np.arange(len(src.points)), np.arange(len(tgt.points))
        rep5 = rep10 = float("nan")
        det_s = 0.0
    else:
        si, ti = src.keypoints[detector][:budget], tgt.keypoints[detector][:budget]
        args = (src.points[si], tgt.points[ti], src.points, tgt.points, pair.T)
        rep5 = relative_repeatability(*args, eps=0.05, overlap=2 * voxel)
        rep10 = relative_repeatability(*args, eps=0.10, overlap=2 * voxel)
        det_s = (src.detect_time[detector] + tgt.detect_time[detector]) / 2
    sx, tx = src.points[si], tgt.points[ti]
    corr = mutual_matches(src.descriptors[kind][si], tgt.descriptors[kind][ti])
    ir = inlier_ratio(sx, tx, corr, pair.T)
    t0 = time.perf_counter()
    T, _ = ransac_from_correspondences(sx, tx, corr, MATCH_DISTANCE_VOXELS * voxel, ransac_iterations, 0.999, seed)
    ransac_s = time.perf_counter() - t0
    return PairMetrics(
        pair.dataset, pair.name, pair.gap, detector, budget if detector != FULL else 0, kind, trial, len(si),
        rep5, rep10, len(corr), ir, float(ir > TAU2), rotation_error_deg(T, pair.T), translation_error(T, pair.T),
        float(registration_success(T, pair.T, *LOOSE)), float(registration_success(T, pair.T, *STRICT)),
        det_s, (src.describe_time[kind] + tgt.describe_time[kind]) / 2, ransac_s,
    )


# ------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class EvalOptions:
    detectors: tuple[str, ...] = ("ukpgan", "iss", "random", "fps")
    all_points: bool = True
    budgets: tuple[int, ...] = (50, 100, 250, 500)
    descriptors: tuple[str, ...] = ("fpfh",)
    gaps: tuple[int, ...] = (10, 20, 40, 60, 80)  # 60/80: recall at 10-40 saturates near 1.0
    stride: int = 10
    frames: tuple[int, int] | None = None
    max_pairs_per_gap: int | None = None
    trials: int = 3
    fragment_crops: int = 20
    crop_radius: float = 1.5
    voxel: float = 0.05
    nms_radius: float = 0.0  # 0: the pipeline's default, 1.5 x voxel
    model_path: str = ""
    device: str = "auto"
    ransac_iterations: int = 100000
    seed: int = 0


def _make_detectors(opts: EvalOptions, trial: int) -> dict:
    from ukpgan_ros.config import PipelineConfig
    from ukpgan_ros.detectors import make_detector

    out = {}
    for name in opts.detectors:
        cfg = PipelineConfig(detector=name, voxel_size=opts.voxel, nms_radius=opts.nms_radius,
                             model_path=opts.model_path, device=opts.device, seed=opts.seed + trial)
        out[name] = make_detector(cfg.validate())
    return out


def evaluate(opts: EvalOptions, sequence: str | Path | None, fragments: Path | None,
             progress: bool = True) -> list[PairMetrics]:
    """All metrics rows for the requested data sets (either may be None)."""
    if not opts.budgets or min(opts.budgets) < 1:
        raise ValueError("budgets must be positive")
    if sequence is None and fragments is None:
        raise ValueError("nothing to evaluate: give a sequence and/or a fragments folder")
    unknown = set(opts.descriptors) - {"fpfh", "shot"}
    if unknown:
        raise ValueError(f"unknown descriptor(s) {sorted(unknown)} (fpfh, shot)")
    jobs: list[tuple[list[Pair], dict]] = []
    if sequence is not None:
        pairs, loaders = _sequence_pairs(str(sequence), list(opts.gaps), opts.stride, opts.max_pairs_per_gap,
                                         opts.frames)
        jobs.append((pairs, loaders))
    if fragments is not None:
        pairs, loaders = _fragment_pairs(Path(fragments))
        jobs.append((pairs, loaders))
        if opts.fragment_crops > 0:
            crops, crop_loaders = crop_pairs(pairs, loaders, opts.fragment_crops, opts.crop_radius, opts.seed,
                                             opts.voxel)
            jobs.append((crops, crop_loaders))
    from tqdm import tqdm

    from ukpgan_ros.model.checkpoint import resolve_device

    device = str(resolve_device(opts.device))  # SHOT descriptors need a concrete device
    rows: list[PairMetrics] = []
    names = list(opts.detectors) + ([FULL] if opts.all_points else [])
    trials = opts.trials
    for pairs, loaders in jobs:
        for trial in range(trials):
            detectors = _make_detectors(opts, trial)
            cache: dict[str, CloudFeatures] = {}

            def feats(key: str) -> CloudFeatures:
                if key not in cache:
                    cache[key] = _prepare_cloud(loaders[key](), opts.voxel, detectors, max(opts.budgets),
                                                list(opts.descriptors), device)
                return cache[key]

            desc = f"{pairs[0].dataset} trial {trial + 1}/{trials}" if pairs else "pairs"
            for pair in tqdm(pairs, desc=desc, unit="pair", disable=not progress):
                src, tgt = feats(pair.src), feats(pair.tgt)
                for name in names:
                    for kind in opts.descriptors:
                        for budget in (opts.budgets if name != FULL else (0,)):
                            rows.append(_pair_metrics(pair, src, tgt, name, budget, kind, trial, opts.voxel,
                                                      opts.ransac_iterations, opts.seed + trial))
            for det in detectors.values():
                det.release()
    return rows


_METRICS = ("repeatability_5cm", "repeatability_10cm", "inlier_ratio", "feature_match_recall", "registered",
            "registered_strict", "matches", "detect_s", "ransac_s")


def summarize(rows: list[PairMetrics], by_gap: bool = False) -> list[dict]:
    """Means per (dataset, descriptor, detector, budget) over pairs and trials; with ``by_gap``
    also per frame gap (``gap`` 0 means all pairs)."""
    groups: dict[tuple, list[PairMetrics]] = {}
    for r in rows:
        for gap in ((0, r.gap) if by_gap and r.gap else (0,)):
            groups.setdefault((r.dataset, gap, r.descriptor, r.detector, r.budget), []).append(r)
    out = []
    for (ds, gap, kind, det, budget), rs in sorted(groups.items()):
        row = {"dataset": ds, "gap": gap, "descriptor": kind, "detector": det, "budget": budget,
               "pairs": len({r.pair for r in rs}), "runs": len(rs),
               "keypoints": float(np.mean([r.keypoints for r in rs]))}
        for m in _METRICS:
            vals = np.array([getattr(r, m) for r in rs], float)
            row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        out.append(row)
    return out


def paired_differences(rows: list[PairMetrics], reference: str = "iss", metrics: tuple[str, ...] = (
        "inlier_ratio", "registered", "registered_strict"), resamples: int = 4000, seed: int = 0) -> list[dict]:
    """Every detector against ``reference`` on the same pairs: the mean per-pair difference of
    each metric (pairs first averaged over their trials) with a 95 % bootstrap interval over
    pairs. Recall near 1.0 moves by one RANSAC outcome at a time; the interval says whether a
    gap in the means is more than that noise."""
    per: dict[tuple, dict[str, list[PairMetrics]]] = {}
    for r in rows:
        if r.detector != FULL:
            per.setdefault((r.dataset, r.descriptor, r.budget, r.detector), {}).setdefault(r.pair, []).append(r)
    rng = np.random.default_rng(seed)
    out = []
    for (ds, kind, budget, det), pairs in sorted(per.items()):
        ref = per.get((ds, kind, budget, reference))
        if det == reference or ref is None:
            continue
        names = sorted(set(pairs) & set(ref))
        if not names:
            continue
        diff = np.array([[np.mean([getattr(r, m) for r in pairs[n]]) - np.mean([getattr(r, m) for r in ref[n]])
                          for m in metrics] for n in names])
        boot = diff[rng.integers(len(names), size=(resamples, len(names)))].mean(axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        row = {"dataset": ds, "descriptor": kind, "budget": budget, "detector": det, "reference": reference,
               "pairs": len(names)}
        for i, m in enumerate(metrics):
            row[m] = {"mean": float(diff[:, i].mean()), "lo": float(lo[i]), "hi": float(hi[i])}
        out.append(row)
    return out


def _paired_markdown(diffs: list[dict]) -> str:
    if not diffs:
        return ""
    ref = diffs[0]["reference"]
    lines = ["", f"Paired differences to {ref} on the same pairs (mean, 95 % bootstrap interval over pairs; "
             "an interval that excludes 0 is a difference beyond RANSAC and pair-sampling noise):", "",
             "| data | desc | detector | budget | pairs | inlier ratio | RR | RR strict |", "|---|---|---|---|---|---|---|---|"]

    def cell(d: dict) -> str:
        return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"

    for d in diffs:
        lines.append(f"| {d['dataset']} | {d['descriptor']} | {d['detector']} | {d['budget']} | {d['pairs']} | "
                     f"{cell(d['inlier_ratio'])} | {cell(d['registered'])} | {cell(d['registered_strict'])} |")
    return "\n".join(lines) + "\n"


def _markdown(summary: list[dict], command: str) -> str:
    lines = ["# Keypoint evaluation", "", f"Command: `{command}`", "",
             f"Repeatability: nearest keypoint within 5/10 cm; inlier ratio: mutual matches within "
             f"{TAU1 * 100:.0f} cm; FMR: inlier ratio > {TAU2 * 100:.0f} %; RR: RANSAC with "
             f"RE < {LOOSE[0]:.0f}° & TE < {LOOSE[1] * 100:.0f} cm (strict: RE < {STRICT[0]:.0f}° & "
             f"TE < {STRICT[1] * 100:.0f} cm). Means over pairs and their repeats (--trials); keypoints: mean returned.", ""]
    head = ("| data | desc | detector | budget | keypoints | pairs | rep@5cm | rep@10cm | matches | inlier ratio "
            "| FMR | RR | RR strict | detect [s] | RANSAC [s] |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in (r for r in summary if r["gap"] == 0):
        budget = "all" if r["detector"] == FULL else str(r["budget"])
        lines.append(
            f"| {r['dataset']} | {r['descriptor']} | {r['detector']} | {budget} | {r['keypoints']:.0f} | "
            f"{r['pairs']} | {r['repeatability_5cm']:.3f} | {r['repeatability_10cm']:.3f} | {r['matches']:.0f} | "
            f"{r['inlier_ratio']:.3f} | {r['feature_match_recall']:.3f} | {r['registered']:.3f} | "
            f"{r['registered_strict']:.3f} | {r['detect_s']:.3f} | {r['ransac_s']:.3f} |")
    per_gap = [r for r in summary if r["gap"] > 0]
    if per_gap:
        head = "| data | gap | desc | detector | budget | pairs | rep@10cm | inlier ratio | RR | RR strict |"
        lines += ["", "By frame gap:", "", head, "|" + "---|" * (head.count("|") - 1)]
        for r in per_gap:
            budget = "all" if r["detector"] == FULL else str(r["budget"])
            lines.append(
                f"| {r['dataset']} | {r['gap']} | {r['descriptor']} | {r['detector']} | {budget} | {r['pairs']} | "
                f"{r['repeatability_10cm']:.3f} | {r['inlier_ratio']:.3f} | {r['registered']:.3f} | "
                f"{r['registered_strict']:.3f} |")
    return "\n".join(lines) + "\n"


def _probability_markdown(stats: dict[str, dict]) -> str:
    if not stats:
        return ""
    lines = ["", "UKPGAN keypoint probabilities over all voxels (histogram: probabilities.png):", "",
             "| clouds | points | mean | > 0.5 | < 0.1 | > 0.9 | in [0.1, 0.9] |", "|---|---|---|---|---|---|---|"]
    for g, st in stats.items():
        lines.append(f"| {g} | {st['points']} | {st['mean']:.3f} | {st['above_0.5']:.3f} | {st['below_0.1']:.3f} | "
                     f"{st['above_0.9']:.3f} | {st['between_0.1_0.9']:.3f} |")
    return "\n".join(lines) + "\n"


def _plots(summary: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    summary = [r for r in summary if r["gap"] == 0]
    for ds, kind in sorted({(r["dataset"], r["descriptor"]) for r in summary}):
        rs = [r for r in summary if r["dataset"] == ds and r["descriptor"] == kind]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for ax, metric, label in zip(axes, ("registered", "inlier_ratio", "repeatability_10cm"),
                                     ("registration recall", "inlier ratio", "relative repeatability @10 cm")):
            for det in sorted({r["detector"] for r in rs if r["detector"] != FULL}):
                pts = sorted((r["budget"], r[metric]) for r in rs if r["detector"] == det)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=det)
            full = [r for r in rs if r["detector"] == FULL]
            if full and metric != "repeatability_10cm":
                ax.axhline(full[0][metric], color="k", ls="--", lw=1, label="all points")
            ax.set_xscale("log")
            ax.set_xlabel("keypoints")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(f"{ds}, {kind.upper()} descriptors")
        fig.tight_layout()
        path = out / f"recall_{ds}_{kind}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def probability_stats(probs: np.ndarray) -> dict[str, float]:
    """How sparse and bimodal UKPGAN's probabilities are (the Beta prior asks for both)."""
    p = np.asarray(probs, np.float64)
    hist, _ = np.histogram(p, bins=10, range=(0.0, 1.0))
    return {"points": int(len(p)), "mean": float(p.mean()), "above_0.5": float((p > 0.5).mean()),
            "below_0.1": float((p < 0.1).mean()), "above_0.9": float((p > 0.9).mean()),
            "between_0.1_0.9": float(((p >= 0.1) & (p <= 0.9)).mean()),
            "histogram_10_bins": (hist / max(len(p), 1)).round(4).tolist()}


def probability_histogram(opts: EvalOptions, clouds: dict[str, np.ndarray], out: Path) -> dict[str, dict]:
    """UKPGAN probabilities of every voxel of ``clouds`` (name -> raw points): stats and a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ukpgan_ros.cloud import make_working_cloud
    from ukpgan_ros.detectors.ukpgan import UkpganDetector
    from ukpgan_ros.config import DEFAULT_MODEL_PATH

    det = UkpganDetector(opts.model_path or DEFAULT_MODEL_PATH, device=opts.device, voxel_size=opts.voxel)
    probs = {}
    for name, raw in clouds.items():
        wc = make_working_cloud(raw, opts.voxel)
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


def _histogram_clouds(sequence, fragments: Path | None) -> dict[str, np.ndarray]:
    out = {}
    if sequence is not None:
        from ukpgan_ros.io import open_sequence

        seq = open_sequence(str(sequence))
        name = _sequence_name(str(sequence))
        for i in np.linspace(0, len(seq) - 1, 4).round().astype(int):
            out[f"{name} {i}"] = seq[int(i)].points()
    if fragments is not None:
        from ukpgan_ros.io import read_cloud

        for f in sorted(Path(fragments).glob("cloud_bin_*.ply"))[:2]:
            out[f"3dmatch {f.stem}"] = read_cloud(f)
    return out


# ------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = EvalOptions()
    parser.add_argument("--sequence", default=str(DEFAULT_DATA / "7scenes-redkitchen"),
                        help="depth sequence with poses: 7-Scenes/TUM folder or 'synthetic' ('' to skip)")
    parser.add_argument("--frames", nargs=2, type=int, metavar=("START", "END"),
                        help="only pairs with both frames in [START, END)")
    parser.add_argument("--fragments", default=str(DEFAULT_DATA / "3dmatch-redkitchen"),
                        help="folder with cloud_bin_<i>.ply and gt_T_<i>_from_<j>.txt ('' to skip)")
    parser.add_argument("--detectors", nargs="+", default=list(d.detectors), choices=("ukpgan", "iss", "random", "fps"))
    parser.add_argument("--no-all-points", action="store_true",
                        help="skip the detector-free baseline (descriptors of every voxel)")
    parser.add_argument("--budgets", nargs="+", type=int, default=list(d.budgets))
    parser.add_argument("--descriptors", nargs="+", default=list(d.descriptors), choices=("fpfh", "shot"))
    parser.add_argument("--gaps", nargs="+", type=int, default=list(d.gaps), help="frame gaps of sequence pairs")
    parser.add_argument("--stride", type=int, default=d.stride, help="frames between pair starts")
    parser.add_argument("--max-pairs-per-gap", type=int, default=0, help="0: all")
    parser.add_argument("--trials", type=int, default=d.trials,
                        help="repeats of every pair with other RANSAC and random-sampling seeds (RANSAC is a "
                             "coin flip on pairs with few inliers; repeats make recall an expectation)")
    parser.add_argument("--fragment-crops", type=int, default=d.fragment_crops,
                        help="partial sub-pairs cut from each fragment pair (0: none)")
    parser.add_argument("--crop-radius", type=float, default=d.crop_radius, help="radius of those crops [m]")
    parser.add_argument("--voxel", type=float, default=d.voxel)
    parser.add_argument("--nms-radius", type=float, default=d.nms_radius,
                        help="NMS radius of ukpgan and iss [m] (0: the pipeline's 1.5 x voxel)")
    parser.add_argument("--model", default="", help="UKPGAN weights (default: the shipped model)")
    parser.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
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
        descriptors=tuple(args.descriptors), gaps=tuple(args.gaps), stride=args.stride,
        frames=tuple(args.frames) if args.frames else None,
        max_pairs_per_gap=args.max_pairs_per_gap or None, trials=args.trials,
        fragment_crops=args.fragment_crops, crop_radius=args.crop_radius, voxel=args.voxel,
        nms_radius=args.nms_radius,
        model_path=args.model, device=args.device, ransac_iterations=args.ransac_iterations, seed=args.seed)
    if args.quick:
        opts = EvalOptions(**{**asdict(opts), "budgets": tuple(b for b in opts.budgets if b <= 100) or (50,),
                              "gaps": opts.gaps[:1], "max_pairs_per_gap": 2, "trials": 1,
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
    sequence = args.sequence if args.sequence == "synthetic" else _existing(args.sequence, "sequence")
    fragments = _existing(args.fragments, "fragments")
    rows = evaluate(opts, sequence, fragments, progress=not args.no_progress)
    summary = summarize(rows, by_gap=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probs = probability_histogram(opts, _histogram_clouds(sequence, fragments), out) if "ukpgan" in opts.detectors else {}
    diffs = paired_differences(rows) if "iss" in opts.detectors else []
    command = "ukpgan eval " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["eval"] else sys.argv[1:])
    (out / "results.json").write_text(json.dumps(
        {"command": command, "options": asdict(opts), "seconds": time.perf_counter() - t0, "summary": summary,
         "ukpgan_probabilities": probs, "paired_to_iss": diffs,
         "rows": [asdict(r) for r in rows]}, indent=1, default=float) + "\n")
    text = _markdown(summary, command) + _paired_markdown(diffs) + _probability_markdown(probs)
    (out / "results.md").write_text(text)
    plots = _plots(summary, out)
    print(text)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {len(plots)} plot(s)", file=sys.stderr)
    return 0

