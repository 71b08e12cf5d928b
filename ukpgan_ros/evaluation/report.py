"""Evaluation reports: means per detector and budget, paired differences with bootstrap
intervals, Markdown tables and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ukpgan_ros.evaluation.metrics import RGBD, PairMetrics, Thresholds

__all__ = ["FULL", "summarize", "paired_differences", "markdown", "paired_markdown", "probability_markdown",
           "plots", "probability_stats"]

FULL = "all-points"  # the detector-free baseline: descriptors of every voxel


_METRICS = ("repeatability_tight", "repeatability_loose", "inlier_ratio", "feature_match_recall", "registered",
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


def paired_markdown(diffs: list[dict]) -> str:
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


def markdown(summary: list[dict], command: str, profiles: dict[str, Thresholds] | None = None) -> str:
    """The tables; ``profiles`` (data set -> its thresholds, default RGB-D) names the thresholds used."""
    profiles = profiles or {}
    used = {profiles.get(r["dataset"], RGBD).name: profiles.get(r["dataset"], RGBD) for r in summary} or {"rgbd": RGBD}
    lines = ["# Keypoint evaluation", "", f"Command: `{command}`", "", "Thresholds by sensor profile:", ""]
    for name, th in sorted(used.items()):
        sets = sorted({r["dataset"] for r in summary if profiles.get(r["dataset"], RGBD).name == name})
        lines.append(f"- {th.describe()} ({', '.join(sets)})")
    lines += ["", "rep tight/loose: repeatability at the profile's two radii. Means over pairs and their repeats "
              "(--trials); keypoints: mean returned.", ""]
    head = ("| data | desc | detector | budget | keypoints | pairs | rep tight | rep loose | matches | inlier ratio "
            "| FMR | RR | RR strict | detect [s] | RANSAC [s] |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in (r for r in summary if r["gap"] == 0):
        budget = "all" if r["detector"] == FULL else str(r["budget"])
        lines.append(
            f"| {r['dataset']} | {r['descriptor']} | {r['detector']} | {budget} | {r['keypoints']:.0f} | "
            f"{r['pairs']} | {r['repeatability_tight']:.3f} | {r['repeatability_loose']:.3f} | {r['matches']:.0f} | "
            f"{r['inlier_ratio']:.3f} | {r['feature_match_recall']:.3f} | {r['registered']:.3f} | "
            f"{r['registered_strict']:.3f} | {r['detect_s']:.3f} | {r['ransac_s']:.3f} |")
    per_gap = [r for r in summary if r["gap"] > 0]
    if per_gap:
        head = "| data | gap | desc | detector | budget | pairs | rep loose | inlier ratio | RR | RR strict |"
        lines += ["", "By frame gap:", "", head, "|" + "---|" * (head.count("|") - 1)]
        for r in per_gap:
            budget = "all" if r["detector"] == FULL else str(r["budget"])
            lines.append(
                f"| {r['dataset']} | {r['gap']} | {r['descriptor']} | {r['detector']} | {budget} | {r['pairs']} | "
                f"{r['repeatability_loose']:.3f} | {r['inlier_ratio']:.3f} | {r['registered']:.3f} | "
                f"{r['registered_strict']:.3f} |")
    return "\n".join(lines) + "\n"


def probability_markdown(stats: dict[str, dict]) -> str:
    if not stats:
        return ""
    lines = ["", "UKPGAN keypoint probabilities over all voxels (histogram: probabilities.png):", "",
             "| clouds | points | mean | > 0.5 | < 0.1 | > 0.9 | in [0.1, 0.9] |", "|---|---|---|---|---|---|---|"]
    for g, st in stats.items():
        lines.append(f"| {g} | {st['points']} | {st['mean']:.3f} | {st['above_0.5']:.3f} | {st['below_0.1']:.3f} | "
                     f"{st['above_0.9']:.3f} | {st['between_0.1_0.9']:.3f} |")
    return "\n".join(lines) + "\n"


def plots(summary: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    summary = [r for r in summary if r["gap"] == 0]
    for ds, kind in sorted({(r["dataset"], r["descriptor"]) for r in summary}):
        rs = [r for r in summary if r["dataset"] == ds and r["descriptor"] == kind]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for ax, metric, label in zip(axes, ("registered", "inlier_ratio", "repeatability_loose"),
                                     ("registration recall", "inlier ratio", "relative repeatability (loose radius)")):
            for det in sorted({r["detector"] for r in rs if r["detector"] != FULL}):
                pts = sorted((r["budget"], r[metric]) for r in rs if r["detector"] == det)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=det)
            full = [r for r in rs if r["detector"] == FULL]
            if full and metric != "repeatability_loose":
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
