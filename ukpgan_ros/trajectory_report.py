"""The per-frame report of a tracked sequence, written the same way by ``ukpgan demo`` and
``ukpgan bag``: ``frames.csv`` (one row per processed frame, the union of the rows' keys as
sorted columns) and ``trajectory.png`` (top view of estimated and ground-truth positions)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["write_trajectory_report"]


def write_trajectory_report(out: str | Path, rows: list[dict], est: np.ndarray | None = None,
                            gt: np.ndarray | None = None, title: str = "") -> str:
    """Write ``out/frames.csv`` from ``rows`` and, when there are estimated positions ``est``
    (N, 3), ``out/trajectory.png`` with the ground-truth positions ``gt`` beside them; returns the
    line that says where they are."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "frames.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    line = f"per-frame table: {out / 'frames.csv'}"
    if est is not None and len(est):
        from ukpgan_ros.plots import plot_trajectory

        plot_trajectory(np.asarray(est), gt if gt is not None and len(gt) else None, out / "trajectory.png", title=title)
        line += f", trajectory plot: {out / 'trajectory.png'}"
    return line
