"""The learned UKPGAN detector: SHOT features -> encoder keypoint probability -> radius NMS.

The model file says at which radius (in voxels of the working cloud) its features were taken;
the detector scales that to its ``voxel_size``. Features and probabilities are computed in
blocks of points, so memory stays bounded on scene-sized clouds.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ukpgan_ros.detectors.base import Keypoints
from ukpgan_ros.detectors.nms import radius_nms
from ukpgan_ros.device import free_cached_memory, resolve_device
from ukpgan_ros.features import compute_descriptors
from ukpgan_ros.features.normals import estimate_normals
from ukpgan_ros.model.checkpoint import load_encoder
from ukpgan_ros.model.features import FeatureSpec

__all__ = ["UkpganDetector", "probe_cloud"]


@contextmanager
def _encoder_threads(device: torch.device):
    """The encoder on one torch thread on CPU: a block of 16 k points is a few small matrix
    products (~15 ms for 6 k points on one core), and torch's intra-op threads spin-wait when other
    processes hold the cores: with two threads on the shared 2-core machine it took 90-170 ms
    instead of 22-42 ms (measured in one run). The previous thread count is restored."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def probe_cloud(voxel_size: float) -> np.ndarray:
    """A fixed test scene in units of ``voxel_size``: the inside corner of a box (three 16-voxel
    walls) with a ball of radius 5 voxels in it, sampled on the voxel grid (961 points).
    Every SHOT neighbourhood in it is well populated, so a sound model gives finite
    probabilities in [0, 1] on every point."""
    g = np.arange(16, dtype=np.float32)
    a, b = (m.ravel() for m in np.meshgrid(g, g, indexing="ij"))
    z = np.zeros_like(a)
    walls = np.concatenate([np.stack(c, axis=1) for c in ((a, b, z), (a, z, b), (z, a, b))])
    n = 240  # Fibonacci sphere: near-uniform points, about one per voxel of surface
    k = np.arange(n, dtype=np.float64) + 0.5
    phi, theta = np.arccos(1 - 2 * k / n), np.pi * (1 + 5**0.5) * k
    ball = 5.0 * np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1) + 8.0
    pts = np.unique(np.concatenate([walls, ball.astype(np.float32)]), axis=0)
    return (pts * np.float32(voxel_size)).astype(np.float32)


class UkpganDetector:
    """UKPGAN keypoints (You et al., CVPR 2022) on a voxelised cloud.

    ``prob_threshold``: None ranks every point by probability, so the budget decides how many
    keypoints come back (greedy NMS visits points above any threshold first, so this only adds
    below-threshold points once the confident ones are used up); a value such as the paper's 0.5
    is a hard floor and may return fewer keypoints than asked for.
    """

    name = "ukpgan"

    def __init__(self, model_path: str | Path, device: str | torch.device = "auto", voxel_size: float = 0.05,
                 nms_radius: float = 0.1, prob_threshold: float | None = None, block: int = 16384) -> None:
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        if not nms_radius >= 0:
            raise ValueError(f"nms_radius must be >= 0, got {nms_radius}")
        if prob_threshold is not None and not 0.0 <= prob_threshold <= 1.0:
            raise ValueError(f"prob_threshold must be in [0, 1] or None, got {prob_threshold}")
        if block < 1:
            raise ValueError("block must be >= 1")
        self.device = resolve_device(device)
        self.encoder, self.metadata = load_encoder(model_path, self.device)
        self.feature = FeatureSpec.from_dict(self.metadata["feature"])
        self.voxel_size, self.nms_radius = float(voxel_size), float(nms_radius)
        self.prob_threshold, self.block = prob_threshold, int(block)
        self.model_path = str(model_path)
        self._probe()

    def _probe(self) -> None:
        """Run the model once on :func:`probe_cloud`: a model whose output is not a probability
        there (NaN, inf, outside [0, 1]) is broken, and must fail configure rather than have every
        frame dropped later as if the input were bad."""
        pts = probe_cloud(self.voxel_size)
        try:
            prob = self.probabilities(pts)
        except RuntimeError as exc:
            raise ValueError(f"{self.model_path}: {exc}") from None
        if not ((prob >= 0) & (prob <= 1)).all():
            raise ValueError(f"{self.model_path}: the model's keypoint probabilities on the built-in probe cloud "
                             f"leave [0, 1] (range {np.nanmin(prob):.3g} to {np.nanmax(prob):.3g}); it is broken")

    @property
    def feature_radius(self) -> float:
        return self.feature.radius(self.voxel_size)

    def probabilities(self, points: np.ndarray, normals: np.ndarray | None = None) -> np.ndarray:
        """(N,) float32 keypoint probability of every point of a cloud voxelised at ``voxel_size``."""
        return self._run(points, normals, keep_features=False)[0]

    def _run(self, points: np.ndarray, normals: np.ndarray | None,
             keep_features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities, and with ``keep_features`` the (N, D) features they were computed from."""
        if self.encoder is None:
            raise RuntimeError("detector was released")
        pts = np.ascontiguousarray(points, np.float32)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
        if normals is not None and np.shape(normals) != pts.shape:
            raise ValueError(f"normals must have shape {pts.shape}, got {np.shape(normals)}")
        if len(pts) == 0:
            return np.zeros(0, np.float32), (np.zeros((0, self.feature.dim), np.float32) if keep_features else None)
        if normals is None:
            normals = estimate_normals(pts, self.feature.normal_radius_voxels * self.voxel_size)
        out = np.empty(len(pts), np.float32)
        kept = np.empty((len(pts), self.feature.dim), np.float32) if keep_features else None
        dev = str(self.device)
        for s in range(0, len(pts), self.block):
            idx = np.arange(s, min(s + self.block, len(pts)))
            feats = compute_descriptors(self.feature.kind, pts, normals, idx, self.feature_radius, dev)
            with _encoder_threads(self.device):
                out[idx] = self.encoder.probabilities(torch.from_numpy(feats).to(self.device)).cpu().numpy()
            if kept is not None:
                kept[idx] = feats
        bad = int((~np.isfinite(out)).sum())
        if bad:
            # Input points are finite and SHOT is bounded: this is the model, not the frame.
            raise RuntimeError(f"the UKPGAN model gives non-finite keypoint probabilities for {bad} of {len(out)} "
                               "points; the model is broken (non-finite or overflowing weights)")
        return out, kept

    def detect(self, points: np.ndarray, normals: np.ndarray | None, max_keypoints: int) -> Keypoints:
        return self.detect_with_features(points, normals, max_keypoints, keep_features=False)[0]

    def detect_with_features(self, points: np.ndarray, normals: np.ndarray | None, max_keypoints: int,
                             keep_features: bool = True) -> tuple[Keypoints, np.ndarray | None]:
        """Keypoints and the (N, 352) SHOT features of every point (radius ``feature_radius``)
        that the encoder read: a free dense SHOT description of the cloud for matching."""
        if max_keypoints < 0:
            raise ValueError(f"max_keypoints must be >= 0, got {max_keypoints}")
        prob, feats = self._run(points, normals, keep_features)
        keep = radius_nms(np.asarray(points, np.float32), prob, self.nms_radius, max_keypoints, self.prob_threshold)
        return Keypoints.from_indices(np.asarray(points, np.float32), keep, prob[keep]), feats

    def release(self) -> None:
        """Drop the model; frees its GPU memory (and torch's cached blocks) when it was on CUDA."""
        self.encoder = None
        if self.device.type == "cuda":
            free_cached_memory()
