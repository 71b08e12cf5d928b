"""The per-frame pipeline: points -> working cloud -> keypoints -> descriptors -> transform -> pose.

Stateful only where a stream needs state (the previous frame, the accumulated pose, the loaded
reference); the node and the CLI drive it, tests drive it without ROS.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from ukpgan_ros.cloud import WorkingCloud, as_points, crop_range, make_working_cloud, voxel_for_budget
from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.detectors import Detector, Keypoints, make_detector
from ukpgan_ros.device import free_cached_memory, resolve_device
from ukpgan_ros.features import compute_descriptors
from ukpgan_ros.registration import FrameFeatures, RegistrationResult, register_features

__all__ = ["FrameResult", "KeypointPipeline", "EmptyCloudError", "register_clouds"]


class EmptyCloudError(ValueError):
    """Too few points survive preprocessing to detect or register anything."""


@dataclass(frozen=True)
class FrameResult:
    """What one frame produced; ``registration`` is None for the first frame or mode ``none``."""

    keypoints: Keypoints  # in the input cloud's frame
    working_points: int
    input_points: int
    registration: RegistrationResult | None
    pose: np.ndarray  # (4, 4) odom_from_sensor (reference_from_sensor in reference mode)
    timings: dict[str, float] = field(default_factory=dict)
    voxel_size: float = 0.0  # of the working cloud [m] (the chosen one with working_points > 0)

    @property
    def total_time(self) -> float:
        return sum(self.timings.values())


class KeypointPipeline:
    """Runs detection and registration on a stream of clouds in the sensor frame.

    Modes: ``consecutive`` estimates ``T_prev_from_curr`` and chains it into ``pose``
    (odometry); ``reference`` estimates ``T_ref_from_curr`` against a fixed cloud; ``none`` only
    detects. A failed registration leaves the pose where it was and keeps the last good frame as
    the anchor, so one bad frame does not corrupt the trajectory.

    The two steps are public so one-shot tools use exactly the stream's code: :meth:`describe`
    (points -> working cloud -> keypoints -> descriptors) and :meth:`register` (two described
    frames -> transform). This class is the one place that reads the configuration and turns it
    into physical radii and distances for the functions below it.
    """

    MIN_POINTS = 16
    MAX_ANCHOR_FAILURES = 3

    def __init__(self, cfg: PipelineConfig, detector: Detector | None = None,
                 reference_points: np.ndarray | None = None) -> None:
        self.cfg = cfg.validate()
        self.device = str(resolve_device(cfg.device))  # where SHOT descriptors run
        self._owns_detector = detector is None
        self.detector = detector if detector is not None else make_detector(cfg)
        self._voxel_chosen = cfg.working_points == 0
        self.pose = np.eye(4)
        self._anchor: FrameFeatures | None = None
        self._failures = 0
        self._reference: FrameFeatures | None = None
        if cfg.registration == "reference":
            if reference_points is None:
                from ukpgan_ros.io import read_cloud

                reference_points = read_cloud(cfg.reference_cloud, max_bytes=cfg.max_cloud_bytes)
            self._choose_voxel(reference_points, crop=False)
            # FPFH needs consistent normal signs: like a recorded frame or a 3DMatch fragment, the
            # reference is taken to be seen from the origin of its own frame.
            self._reference = self.describe(reference_points, crop=False, dense=True)

    def reset(self) -> None:
        """Forget the stream (previous frame and pose); keep the model and the reference (whose
        voxel, with working_points > 0, stays the stream's)."""
        self.pose = np.eye(4)
        self._anchor = None
        self._failures = 0
        self._voxel_chosen = self.cfg.working_points == 0 or self._reference is not None

    def _choose_voxel(self, points: np.ndarray, crop: bool = True) -> None:
        """With ``working_points`` > 0, pick the voxel for this stream from its first cloud, so
        close-range and room-sized scenes cost the same; radii and the detector follow it."""
        if self._voxel_chosen:
            return
        cfg = self.cfg
        pts = as_points(points)
        if crop:
            pts = crop_range(pts, cfg.min_range, cfg.max_range)
        if len(pts) == 0:
            return  # decided on the next usable frame
        lo, hi = PipelineConfig.__dataclass_fields__["voxel_size"].metadata["range"]
        voxel = voxel_for_budget(pts, cfg.working_points, cfg.voxel_size, lo, hi)
        self._voxel_chosen = True
        if voxel == cfg.voxel_size:
            return
        new = dataclasses.replace(cfg, voxel_size=voxel).validate()
        if self._owns_detector:
            old, self.detector = self.detector, make_detector(new)
            old.release()
        self.cfg = new

    def release(self) -> None:
        """Drop the model, the frames and the reference (and the device's cached memory)."""
        self.detector.release()
        self._anchor = None
        self._reference = None
        free_cached_memory()

    def free_cached_memory(self) -> None:
        """Give the device's cached blocks back while idle; the model stays loaded."""
        free_cached_memory()

    def working_cloud(self, points: np.ndarray, crop: bool = True,
                      viewpoint=(0.0, 0.0, 0.0)) -> WorkingCloud:
        """Range-crop (unless ``crop`` is False), voxelise and add normals facing ``viewpoint``."""
        cfg = self.cfg
        return make_working_cloud(
            points, cfg.voxel_size,
            cfg.min_range if crop else 0.0, cfg.max_range if crop else float("inf"),
            normal_radius=cfg.normal_radius, viewpoint=viewpoint,
        )

    def descriptor_radius(self, kind: str | None = None) -> float:
        """Support radius [m] of descriptor ``kind`` (default: the configured one)."""
        kind = kind or self.cfg.descriptor
        return self.cfg.shot_radius if kind == "shot" else self.cfg.fpfh_radius

    def _shares_features(self, radius: float) -> bool:
        """Whether the detector computes the configured descriptors anyway (UKPGAN reads SHOT of
        every point at the descriptor's radius): then they are taken from its pass."""
        cfg = self.cfg
        return (cfg.registration != "none" and cfg.descriptor == "shot"
                and hasattr(self.detector, "detect_with_features")
                and getattr(getattr(self.detector, "feature", None), "kind", None) == "shot"
                and abs(getattr(self.detector, "feature_radius", -1.0) - radius) <= 1e-9 * max(radius, 1.0))

    def describe(self, points: np.ndarray, *, crop: bool = True, dense: bool = False,
                 viewpoint=(0.0, 0.0, 0.0), timings: dict[str, float] | None = None) -> FrameFeatures:
        """One frame ready for matching: working cloud, keypoints and their descriptors.

        ``dense`` also keeps descriptors of every working point (a matching target in
        ``match_against: dense``). Raises EmptyCloudError when too few points survive.
        ``timings`` (if given) receives seconds for preprocess, detect and describe.
        """
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        self._choose_voxel(points, crop)
        cfg = self.cfg
        cloud = self.working_cloud(points, crop=crop, viewpoint=viewpoint)
        timings["preprocess"] = time.perf_counter() - t0
        if len(cloud) < self.MIN_POINTS:
            raise EmptyCloudError(
                f"{len(cloud)} points left after range crop [{cfg.min_range}, {cfg.max_range}] m and "
                f"{cfg.voxel_size} m voxels (of {cloud.raw_count} finite input points)")
        t0 = time.perf_counter()
        radius = self.descriptor_radius()
        shared = None
        if self._shares_features(radius):
            # one SHOT pass feeds the detector and the descriptors: SHOT of every point is free
            kps, shared = self.detector.detect_with_features(cloud.points, cloud.normals, cfg.max_keypoints)
        else:
            kps = self.detector.detect(cloud.points, cloud.normals, cfg.max_keypoints)
        timings["detect"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dense_desc = None
        if cfg.registration == "none":
            desc = np.zeros((len(kps), 0), np.float32)
        elif shared is not None:
            dense_desc = shared if cfg.match_against == "dense" and dense else None
            desc = shared[kps.indices]
        elif cfg.match_against == "dense" and (dense or cfg.descriptor == "fpfh"):
            # FPFH's cost is mostly the per-point histograms it needs anyway: densify for free.
            dense_desc = compute_descriptors(cfg.descriptor, cloud.points, cloud.normals, None, radius, self.device)
            desc = dense_desc[kps.indices]
        else:
            desc = compute_descriptors(cfg.descriptor, cloud.points, cloud.normals, kps.indices, radius, self.device)
        timings["describe"] = time.perf_counter() - t0
        return FrameFeatures(cloud, kps, desc, dense_desc)

    def register(self, src: FrameFeatures, tgt: FrameFeatures,
                 timings: dict[str, float] | None = None) -> RegistrationResult:
        """``T_tgt_from_src`` of two described frames, graded; stage times go to ``timings``."""
        cfg = self.cfg
        res = register_features(
            src, tgt, cfg.match_distance, max_iterations=cfg.ransac_max_iterations,
            confidence=cfg.ransac_confidence, icp_refine=cfg.icp_refine,
            min_inliers=cfg.min_inliers, min_fitness=cfg.min_fitness, seed=cfg.seed,
            dense_target=cfg.match_against == "dense",
        )
        if timings is not None:
            timings.update(res.timings)
        return res

    def process(self, points: np.ndarray) -> FrameResult:
        """Process one cloud (N, 3) in the sensor frame. Raises ValueError on unusable input;
        the pipeline state is then unchanged."""
        timings: dict[str, float] = {}
        # A consecutive-mode frame becomes the next frame's target: keep its dense descriptors.
        feats = self.describe(points, dense=self.cfg.registration == "consecutive", timings=timings)
        reg: RegistrationResult | None = None
        mode = self.cfg.registration
        if mode == "reference":
            assert self._reference is not None
            reg = self.register(feats, self._reference, timings)
            if reg.success:
                self.pose = reg.T_tgt_from_src.copy()
        elif mode == "consecutive":
            if self._anchor is None:
                self._anchor = feats
            else:
                reg = self.register(feats, self._anchor, timings)
                if reg.success:
                    # odom_from_curr = odom_from_prev @ T_prev_from_curr
                    self.pose = self.pose @ reg.T_tgt_from_src
                    self._anchor, self._failures = feats, 0
                else:
                    self._failures += 1
                    if self._failures >= self.MAX_ANCHOR_FAILURES:
                        # The anchor is stale; restart from here with the pose held.
                        self._anchor, self._failures = feats, 0
        return FrameResult(feats.keypoints, len(feats.cloud), feats.cloud.raw_count, reg, self.pose.copy(), timings,
                           self.cfg.voxel_size)


def register_clouds(source: np.ndarray, target: np.ndarray, cfg: PipelineConfig,
                    detector: Detector | None = None) -> RegistrationResult:
    """One-shot ``T_target_from_source`` between two clouds (files, fragments, scans).

    Both are preprocessed alike (range crop, voxels, normals facing the origin of their own
    frame, where the sensor was); keypoint descriptors of the source are matched against the
    target's keypoints or all its points, as ``cfg.match_against`` says.
    """
    pipe = KeypointPipeline(PipelineConfig.from_mapping({**cfg.to_dict(), "registration": "consecutive"}), detector)
    try:
        timings: dict[str, float] = {}
        src = pipe.describe(source, timings=timings)
        tgt = pipe.describe(target, dense=cfg.match_against == "dense")
        return dataclasses.replace(pipe.register(src, tgt, timings), timings=timings)
    finally:
        if detector is None:
            pipe.release()
