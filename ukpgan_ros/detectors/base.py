"""The detector interface every keypoint backend implements, and the keypoint result type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Keypoints", "Detector"]


@dataclass(frozen=True)
class Keypoints:
    """Keypoints of one cloud: positions, saliency scores (higher is better) and row indices.

    ``indices`` index the cloud the detector was given, so descriptors can be taken there.
    Rows are sorted by descending score.
    """

    xyz: np.ndarray  # (K, 3) float32
    scores: np.ndarray  # (K,) float32
    indices: np.ndarray  # (K,) int64

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @staticmethod
    def from_indices(points: np.ndarray, indices: np.ndarray, scores: np.ndarray) -> "Keypoints":
        indices = np.asarray(indices, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")
        indices, scores = indices[order], scores[order]
        return Keypoints(points[indices].astype(np.float32, copy=False), scores, indices)


@runtime_checkable
class Detector(Protocol):
    """Detects at most ``max_keypoints`` keypoints on a (voxel-downsampled) cloud.

    ``points`` is (N, 3) float32 in metres, ``normals`` (N, 3) unit normals or None (the
    detector then estimates what it needs). Implementations hold their resources (a model, GPU
    memory) from construction until ``release``.
    """

    name: str

    def detect(self, points: np.ndarray, normals: np.ndarray | None, max_keypoints: int) -> Keypoints: ...

    def release(self) -> None: ...
