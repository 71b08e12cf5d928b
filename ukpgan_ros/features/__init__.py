"""Local features of a working cloud: neighbourhoods, normals, SHOT (LRF + histograms), FPFH.

``compute_descriptors`` is the one entry point the pipeline, the detector, training and the
evaluation call; it takes physical radii, never the configuration. The kinds, their lengths,
radii and compute functions are listed once, in :mod:`~ukpgan_ros.features.registry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ukpgan_ros.features.registry import descriptor

if TYPE_CHECKING:  # numpy is not imported here: ukpgan_ros.config imports the registry through this package
    import numpy as np

__all__ = ["compute_descriptors", "descriptor_dim"]


def descriptor_dim(kind: str) -> int:
    """Length of a ``kind`` descriptor (fpfh 33, shot 352)."""
    return descriptor(kind).dim


def compute_descriptors(kind: str, points: np.ndarray, normals: np.ndarray, indices: np.ndarray | None,
                        radius: float, device: str = "cpu") -> np.ndarray:
    """(Q, D) float32 descriptors of ``kind`` at ``indices`` (every point if None) of a cloud with
    its normals, every point serving as support within ``radius`` [m], computed on ``device``
    where the kind supports it (see the registry's compute functions). ValueError for an
    unknown kind."""
    return descriptor(kind).compute(points, normals, indices, radius, device)
