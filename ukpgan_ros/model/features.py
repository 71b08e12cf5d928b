"""Which local features UKPGAN's encoder reads: SHOT at a radius tied to the cloud's voxel size.

Training and detection both compute them with :func:`ukpgan_ros.features.compute_descriptors`
from this spec, so the network sees the same numbers in both (zero rows where a point has no
valid local frame: "no structure", which is what such a point has); the radius is stored with the weights as a multiple of the voxel size, so a model trained
on 5 cm voxels applies at any voxel size with the same neighbourhood in points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping


__all__ = ["FeatureSpec"]


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
