"""Pictures a person checks a result with: keypoints over a cloud, trajectories against ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["saliency_colors", "plot_keypoints", "plot_trajectory"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Viridis sampled at 17 evenly spaced points (matplotlib's values; linear interpolation stays
# within 0.021 of the full map): perceptually uniform and readable on RViz's dark background,
# without importing matplotlib in a node (matplotlib loads only for pictures).
_VIRIDIS = np.array(
    [
        [0.267004, 0.004874, 0.329415],
        [0.282327, 0.094955, 0.417331],
        [0.278826, 0.175490, 0.483397],
        [0.258965, 0.251537, 0.524736],
        [0.229739, 0.322361, 0.545706],
        [0.199430, 0.387607, 0.554642],
        [0.172719, 0.448791, 0.557885],
        [0.149039, 0.508051, 0.557250],
        [0.127568, 0.566949, 0.550556],
        [0.120638, 0.625828, 0.533488],
        [0.157851, 0.683765, 0.501686],
        [0.246070, 0.738910, 0.452024],
        [0.369214, 0.788888, 0.382914],
        [0.515992, 0.831158, 0.294279],
        [0.678489, 0.863742, 0.189503],
        [0.845561, 0.887322, 0.099702],
        [0.993248, 0.906157, 0.143936],
    ]
)


def saliency_colors(scores: np.ndarray, score_range: tuple[float, float] | None = None) -> np.ndarray:
    """Viridis RGB (K, 3) for scores; low = dark purple, high = yellow.

    ``score_range`` fixes the scale so colours compare across frames; None stretches this
    frame's min..max (all-equal scores map to the top colour).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        return np.zeros((0, 3))
    lo, hi = (float(np.min(s)), float(np.max(s))) if score_range is None else map(float, score_range)
    t = np.ones_like(s) if hi <= lo else np.clip((s - lo) / (hi - lo), 0.0, 1.0)
    t = np.nan_to_num(t, nan=0.0)
    grid = np.linspace(0.0, 1.0, len(_VIRIDIS))
    return np.stack([np.interp(t, grid, _VIRIDIS[:, c]) for c in range(3)], axis=1)


def plot_keypoints(points: np.ndarray, keypoints, path: str | Path, title: str = "") -> None:
    """Two orthogonal views (camera x-z from above, x-y from the front) of cloud and keypoints."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    sub = points[:: max(1, len(points) // 60000)]
    for ax, (a, b, la, lb) in zip(axes, ((0, 2, "x [m]", "z [m]"), (0, 1, "x [m]", "y [m]"))):
        ax.scatter(sub[:, a], sub[:, b], s=0.2, c="0.65", linewidths=0)
        sc = ax.scatter(keypoints.xyz[:, a], keypoints.xyz[:, b], s=14, c=keypoints.scores, cmap="viridis",
                        edgecolors="k", linewidths=0.3)
        ax.set_xlabel(la)
        ax.set_ylabel(lb)
        ax.set_aspect("equal", adjustable="datalim")
    axes[1].invert_yaxis()  # optical frame: y points down
    fig.colorbar(sc, ax=axes, label="saliency", shrink=0.8)
    fig.suptitle(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectory(est: np.ndarray, gt: np.ndarray | None, path: str | Path, title: str = "") -> None:
    """Top view (x-z of the first camera frame) of estimated and ground-truth camera positions."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    if gt is not None and len(gt):
        ax.plot(gt[:, 0], gt[:, 2], "-o", ms=2.5, color="0.3", label="ground truth")
    ax.plot(est[:, 0], est[:, 2], "-o", ms=2.5, color="tab:orange", label="ukpgan_ros")
    ax.plot(est[:1, 0], est[:1, 2], "k*", ms=12, label="start")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("z [m]")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
