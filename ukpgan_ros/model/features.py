"""The local features UKPGAN's encoder reads: SHOT at a radius tied to the cloud's voxel size.

Training and detection both call ``local_features`` so the network sees the same numbers in
both; the radius is stored with the weights as a multiple of the voxel size, so a model trained
on 5 cm voxels applies at any voxel size with the same neighbourhood in points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["FeatureSpec", "local_features"]


@dataclass(frozen=True)
class FeatureSpec:
    """How features are taken: SHOT radius and normal radius in voxels of the working cloud."""

    kind: str = "shot"
    radius_voxels: float = 6.0
    normal_radius_voxels: float = 2.0
    dim: int = 352

    def __post_init__(self) -> None:
        if self.kind != "shot":
            raise ValueError(f"feature kind must be 'shot', got {self.kind!r}")
        if not (self.radius_voxels > 0 and self.normal_radius_voxels > 0):
            raise ValueError("feature radii must be > 0")

    def radius(self, voxel_size: float) -> float:
        return self.radius_voxels * voxel_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FeatureSpec":
        return cls(**dict(values))


def local_features(points: np.ndarray, normals: np.ndarray | None, radius: float,
                   query_idx: np.ndarray | None = None, device: str = "cpu") -> np.ndarray:
    """(Q, 352) float32 SHOT at ``query_idx`` (all points when None) using every point as support.

    Points without a valid local frame (too few neighbours) get an all-zero feature: the encoder
    then sees "no structure", which is what such a point has.
    """
    from ukpgan_ros.shot import compute_shot

    if radius <= 0:
        raise ValueError(f"feature radius must be > 0, got {radius}")
    desc, _, valid = compute_shot(points, radius, normals=normals, query_idx=query_idx, device=device)
    desc = np.asarray(desc, np.float32)
    valid = np.asarray(valid, bool)
    desc = np.where(valid[:, None] & np.isfinite(desc), desc, 0.0).astype(np.float32)
    return desc
