"""Local features of a working cloud: neighbourhoods, normals, SHOT (LRF + histograms), FPFH.

``compute_descriptors`` is the one entry point the pipeline, the detector, training and the
evaluation call; it takes physical radii, never the configuration.
"""

from __future__ import annotations

import numpy as np

from ukpgan_ros.config import DESCRIPTORS

__all__ = ["compute_descriptors", "descriptor_dim"]


def descriptor_dim(kind: str) -> int:
    """Length of a ``kind`` descriptor (fpfh 33, shot 352)."""
    if kind == "fpfh":
        from ukpgan_ros.features.fpfh import FPFH_DIM

        return FPFH_DIM
    if kind == "shot":
        from ukpgan_ros.features.shot import SHOT_DIM

        return SHOT_DIM
    raise ValueError(f"unknown descriptor {kind!r} (one of: {', '.join(DESCRIPTORS)})")


def compute_descriptors(kind: str, points: np.ndarray, normals: np.ndarray, indices: np.ndarray | None,
                        radius: float, device: str = "cpu") -> np.ndarray:
    """(Q, D) float32 descriptors of ``kind`` at ``indices`` (every point if None) of a cloud with
    its normals, every point serving as support within ``radius`` [m]. SHOT rows of points
    without a valid local frame are zero. SHOT runs on ``device``: "cpu" takes the compiled
    kernel (:mod:`~ukpgan_ros.features.shot_cpu`), any other torch device the torch code
    (:mod:`~ukpgan_ros.features.shot`); the tests hold both to PCL's numbers."""
    if kind == "fpfh":
        from ukpgan_ros.features.fpfh import compute_fpfh

        return compute_fpfh(points, normals, indices, radius)
    if kind == "shot":
        if str(device) == "cpu":  # the compiled kernel: same numbers, ~9x faster than torch on CPU
            from ukpgan_ros.features.shot_cpu import shot_cpu

            return shot_cpu(points, normals, radius, indices).descriptors
        from ukpgan_ros.features.shot import compute_shot

        desc, _, _ = compute_shot(points, radius, normals=normals, query_idx=indices, device=device)
        return np.asarray(desc, np.float32)
    raise ValueError(f"unknown descriptor {kind!r} (one of: {', '.join(DESCRIPTORS)})")
