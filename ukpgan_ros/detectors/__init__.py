"""Keypoint detector backends behind one interface, built from the pipeline config."""

from __future__ import annotations

from ukpgan_ros.config import DETECTORS, PipelineConfig
from ukpgan_ros.detectors.base import Detector, Keypoints

__all__ = ["Detector", "Keypoints", "make_detector"]


def make_detector(cfg: PipelineConfig) -> Detector:
    """Construct the configured backend; raises ValueError/FileNotFoundError with a clear message."""
    if cfg.detector == "ukpgan":
        from ukpgan_ros.detectors.ukpgan import UkpganDetector

        return UkpganDetector(
            model_path=cfg.resolved_model_path, device=cfg.device,
            voxel_size=cfg.voxel_size, nms_radius=cfg.effective_nms_radius,
        )
    from ukpgan_ros.detectors.classic import FpsDetector, IssDetector, RandomDetector

    if cfg.detector == "iss":
        return IssDetector(voxel_size=cfg.voxel_size, nms_radius=cfg.effective_nms_radius)
    if cfg.detector == "random":
        return RandomDetector(seed=cfg.seed)
    if cfg.detector == "fps":
        return FpsDetector()
    raise ValueError(f"unknown detector {cfg.detector!r}; choose one of {', '.join(DETECTORS)}")
