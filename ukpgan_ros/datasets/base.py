"""Depth frames and the sequence interface every source implements (files, bags, the synthetic camera)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from ukpgan_ros.depth import depth_to_points

__all__ = ["DepthFrame", "DepthSequence", "IndexedSequence", "has_depth", "sequence_folder"]


@dataclass(frozen=True, eq=False)
class DepthFrame:
    """One depth image with its time, intrinsics and (if known) camera-to-world pose.

    ``pose`` maps optical-frame points (x right, y down, z forward) to the world
    (world <- camera), so ``T_i_from_j = inv(pose_i) @ pose_j``. Equality is identity:
    comparing frames element-wise is the caller's job.

    A frame of a point-cloud source (a bag's PointCloud2 topic) carries its points in ``cloud``
    instead: ``depth_m`` is then an empty (0, 0) image, ``K`` is NaN and ``has_depth`` is False.
    """

    index: int
    stamp: float
    depth_m: np.ndarray
    K: np.ndarray
    pose: np.ndarray | None = None
    cloud: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.depth_m.ndim != 2 or self.depth_m.dtype != np.float32:
            raise ValueError(f"frame {self.index}: depth_m must be float32 (H, W), got {self.depth_m.dtype} {self.depth_m.shape}")
        if np.shape(self.K) != (3, 3):
            raise ValueError(f"frame {self.index}: K must be 3x3, got shape {np.shape(self.K)}")
        if self.pose is not None and np.shape(self.pose) != (4, 4):
            raise ValueError(f"frame {self.index}: pose must be 4x4 or None, got shape {np.shape(self.pose)}")
        if self.cloud is not None and (self.cloud.ndim != 2 or self.cloud.shape[1] != 3 or self.cloud.dtype != np.float32):
            raise ValueError(f"frame {self.index}: cloud must be float32 (N, 3), got {self.cloud.dtype} {self.cloud.shape}")

    @classmethod
    def from_cloud(cls, index: int, stamp: float, points: np.ndarray, pose: np.ndarray | None = None) -> "DepthFrame":
        """A frame of a point-cloud source: (N, 3) points in the sensor frame, no depth image."""
        return cls(index=index, stamp=stamp, depth_m=np.zeros((0, 0), np.float32), K=np.full((3, 3), np.nan),
                   pose=pose, cloud=np.ascontiguousarray(points, dtype=np.float32))

    @property
    def has_depth(self) -> bool:
        """False for a point-cloud frame, which cannot be replayed as a depth image."""
        return self.cloud is None

    @property
    def height(self) -> int:
        return int(self.depth_m.shape[0])

    @property
    def width(self) -> int:
        return int(self.depth_m.shape[1])

    def points(self, stride: int = 1, min_depth: float = 0.0, max_depth: float = np.inf) -> np.ndarray:
        """Back-project the valid pixels to (N, 3) float32 in the optical frame (see depth_to_points).

        A point-cloud frame returns every ``stride``-th of its points whose z lies in
        [min_depth, max_depth] (z is the depth in an optical frame).
        """
        if self.cloud is None:
            return depth_to_points(self.depth_m, self.K, stride=stride, min_depth=min_depth, max_depth=max_depth)
        if stride < 1:
            raise ValueError("stride must be >= 1")
        pts = self.cloud[::stride]
        if min_depth > 0 or np.isfinite(max_depth):
            pts = pts[(pts[:, 2] >= min_depth) & (pts[:, 2] <= max_depth)]
        return pts


@runtime_checkable
class DepthSequence(Protocol):
    """A finite, randomly accessible stream of depth frames; frames are read when indexed."""

    name: str
    rate_hz: float
    K: np.ndarray
    width: int
    height: int

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> DepthFrame: ...


def has_depth(sequence: DepthSequence) -> bool:
    """Whether a sequence's frames carry depth images (False for a bag of PointCloud2 only)."""
    return bool(getattr(sequence, "has_depth", True))


def sequence_folder(folder: str | Path, what: str = "sequence folder") -> Path:
    """``folder`` (``~`` expanded) when it is a directory; FileNotFoundError naming it otherwise."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"no such {what}: {root}")
    return root


class IndexedSequence:
    """Shared index checking and iteration for the file-backed sequences."""

    def __len__(self) -> int:
        raise NotImplementedError

    def _index(self, i: int) -> int:
        """Normalise a possibly negative index; IndexError out of range (ends ``for`` loops)."""
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"frame index must be an int, got {type(i).__name__}")
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"frame index {i} out of range for {n} frames")
        return j

    def __iter__(self) -> Iterator[DepthFrame]:
        for i in range(len(self)):
            yield self[i]  # type: ignore[index]
