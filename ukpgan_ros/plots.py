"""Pictures a person checks a result with: keypoints over a cloud, trajectories against ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["saliency_rgb", "plot_keypoints", "plot_trajectory"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def saliency_rgb(scores: np.ndarray) -> np.ndarray:
    """(K, 3) RGB in [0, 1] from scores, min-max scaled through matplotlib's viridis."""
    from matplotlib import colormaps

    s = np.asarray(scores, np.float64)
    span = float(s.max() - s.min()) if len(s) else 0.0
    t = (s - s.min()) / span if span > 0 else np.ones_like(s)
    return colormaps["viridis"](t)[:, :3]


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
