"""The descriptor registry: every fact about a descriptor kind, written once.

Each :class:`Descriptor` names its length, its support radius in voxels and the function that
computes it. The configuration's choices (``config.DESCRIPTORS``), the pipeline (radius, "is
densifying free"), the evaluation and the map reader all ask this table, so adding a
descriptor is one entry in ``_REGISTRY`` plus its compute function. The module is pure data:
the compute functions import their implementations (Open3D, numba, torch) when first called,
so that ``ukpgan_ros.config`` can import it cheaply.

Whether a detector's pass already provides a descriptor is the detector's fact (UKPGAN's
``feature.kind`` and ``feature_radius``, read from its weights), not the registry's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Descriptor", "DESCRIPTOR_NAMES", "descriptor", "registered"]

ComputeFn = Callable[["np.ndarray", "np.ndarray", "np.ndarray | None", float, str], "np.ndarray"]


@dataclass(frozen=True)
class Descriptor:
    """One descriptor kind.

    compute(points (N, 3), normals (N, 3), indices (Q,) or None for every point, radius [m],
    device) -> (Q, dim) float32, every point serving as support within ``radius``.
    ``dense_is_cheap``: computing it at every point costs about what the keypoints alone cost
    (FPFH: its per-point histograms are needed anyway), so ``match_against: dense`` always
    keeps the dense descriptors.
    """

    name: str
    dim: int
    radius_voxels: float  # support radius / voxel size of the working cloud
    compute: ComputeFn
    dense_is_cheap: bool = False

    def radius(self, voxel_size: float) -> float:
        """Support radius [m] on a working cloud of ``voxel_size`` [m] voxels."""
        return self.radius_voxels * voxel_size


def _fpfh(points, normals, indices, radius, device="cpu"):
    """FPFH through Open3D (CPU only; ``device`` is ignored)."""
    from ukpgan_ros.features.fpfh import compute_fpfh

    return compute_fpfh(points, normals, indices, radius)


def _shot(points, normals, indices, radius, device="cpu"):
    """SHOT on ``device``: "cpu" takes the compiled kernel (:mod:`~ukpgan_ros.features.shot_cpu`,
    ~9x faster than torch on CPU), any other torch device the torch code
    (:mod:`~ukpgan_ros.features.shot`); the tests hold both to PCL's numbers. Rows of points
    without a valid local frame are zero."""
    import numpy as np

    if str(device) == "cpu":
        from ukpgan_ros.features.shot_cpu import shot_cpu

        return shot_cpu(points, normals, radius, indices).descriptors
    from ukpgan_ros.features.shot import compute_shot

    desc, _, _ = compute_shot(points, radius, normals=normals, query_idx=indices, device=device)
    return np.asarray(desc, np.float32)


# Radii follow Open3D's registration examples (FPFH 5 voxels) and PCL (SHOT 0.3 m on 5 cm voxels).
_REGISTRY: dict[str, Descriptor] = {d.name: d for d in (
    Descriptor("fpfh", 33, 5.0, _fpfh, dense_is_cheap=True),
    Descriptor("shot", 352, 6.0, _shot),
)}

DESCRIPTOR_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def descriptor(name: str) -> Descriptor:
    """The registered kind ``name``; ValueError naming the known kinds otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown descriptor {name!r} (one of: {', '.join(DESCRIPTOR_NAMES)})") from None


def registered() -> tuple[Descriptor, ...]:
    """Every registered kind, in the order of ``DESCRIPTOR_NAMES``."""
    return tuple(_REGISTRY.values())
