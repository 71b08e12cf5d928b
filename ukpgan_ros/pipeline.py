"""The per-frame pipeline: points -> working cloud -> keypoints -> descriptors -> transform -> pose.

Stateful only where a stream needs state: the tracker (:mod:`ukpgan_ros.tracking`: the previous
frame or the keyframes, the pose) and the loaded reference map; the node and the CLI drive it,
tests drive it without ROS.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ukpgan_ros.cloud import WorkingCloud, as_points, choose_voxel, crop_range, make_working_cloud
from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.detectors import Detector, Keypoints, make_detector
from ukpgan_ros.device import free_cached_memory, resolve_device
from ukpgan_ros.features import compute_descriptors
from ukpgan_ros.maps import KeyframeMap, MapFormatError, load_map, save_map
from ukpgan_ros.registration import FrameFeatures, RegistrationResult, register_features
from ukpgan_ros.tracking import Tracker, TrackState, TrackStep, make_tracker, map_meta

__all__ = ["FrameResult", "KeypointPipeline", "EmptyCloudError", "register_clouds"]


class EmptyCloudError(ValueError):
    """Too few points survive preprocessing to detect or register anything."""


@dataclass(frozen=True)
class FrameResult:
    """What one frame produced; ``registration`` is None for the first frame or mode ``none``."""

    keypoints: Keypoints  # in the input cloud's frame
    working_points: int
    input_points: int
    registration: RegistrationResult | None  # the one that placed the frame (or the last failed try)
    pose: np.ndarray  # (4, 4) odom_from_sensor (map_from_sensor in reference mode); held when not placed
    timings: dict[str, float] = field(default_factory=dict)
    voxel_size: float = 0.0  # of the working cloud [m] (the chosen one with working_points > 0)
    tracking: TrackStep | None = None  # state, covariance, motion, keyframe; None in mode none
    is_map_pose: bool = False  # pose is map_from_sensor found on its own in a fixed map (reference mode)
    # (4, 4) the map -> odom correction of loop closure (REP 105): map_from_odom @ pose is the
    # sensor in the map; None without loop closure
    map_from_odom: np.ndarray | None = None

    @property
    def total_time(self) -> float:
        return sum(self.timings.values())

    @property
    def placed(self) -> bool:
        """Whether this frame got a pose (publish it) or not (tracking failed, mode none)."""
        return self.tracking is not None and self.tracking.placed

    @property
    def frame_transform(self) -> np.ndarray | None:
        """What ``~/transform`` carries for this frame: with ``is_map_pose`` the pose itself
        (map_from_sensor, parent frame odom_frame), else the motion since the last placed frame
        (T_prev_from_curr, parent frame the sensor's own); None when the frame was not placed or
        is the first one."""
        if not self.placed:
            return None
        return self.pose if self.is_map_pose else self.tracking.motion


class KeypointPipeline:
    """Runs detection and registration on a stream of clouds in the sensor frame.

    Modes (``registration``), each a tracker of :mod:`ukpgan_ros.tracking`: ``consecutive``
    chains frame-to-frame transforms into ``pose`` (odometry); ``keyframe`` registers each frame
    against the current keyframe and relocalises against all stored keyframes when that fails;
    ``reference`` places each frame on its own in a saved map or a reference cloud; ``none``
    only detects. A frame that is not placed leaves the pose where it was.

    The two steps are public so one-shot tools use exactly the stream's code: :meth:`describe`
    (points -> working cloud -> keypoints -> descriptors) and :meth:`register` (two described
    frames -> transform). This class is the one place that reads the configuration and turns it
    into physical radii and distances for the functions below it.
    """

    MIN_POINTS = 16

    def __init__(self, cfg: PipelineConfig, detector: Detector | None = None,
                 reference_points: np.ndarray | None = None, *, tracking: bool = True) -> None:
        """``tracking`` False builds no tracker and loads no reference, whatever the mode (one-shot
        tools that only :meth:`describe` and :meth:`register`)."""
        self._cfg = cfg.validate()
        self.device = str(resolve_device(cfg.device))  # where SHOT descriptors run
        self._owns_detector = detector is None
        self.detector = detector if detector is not None else make_detector(cfg)
        self._voxel_chosen = not cfg.auto_voxel
        self._finest_voxel = cfg.voxel_size  # the configured voxel: the cap's floor at every (re)choice
        self._velocity: tuple[np.ndarray, float] | None = None  # last motion and its duration [s] (deskew)
        self._last_placed_stamp: float | None = None
        self._reference: KeyframeMap | None = None
        self.tracker: Tracker | None = None
        if tracking and cfg.registration == "reference":
            self._reference = self._load_reference(reference_points)
        if tracking:
            self.tracker = make_tracker(self._cfg, self._reference, register=self.register)

    # ------------------------------------------------------------------ configuration
    @property
    def cfg(self) -> PipelineConfig:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: PipelineConfig) -> None:
        """A changed configuration (live parameters) reaches the tracker's thresholds at once."""
        self._cfg = cfg
        self._configure_tracker()

    def _configure_tracker(self) -> None:
        if self.tracker is not None:  # None while __init__ loads the reference
            self.tracker.configure(self._cfg)

    @property
    def needs_descriptors(self) -> bool:
        """Whether :meth:`describe` computes descriptors by default: when there is a tracker to
        match them (``registration: none`` only detects)."""
        return self.tracker is not None

    def _load_reference(self, reference_points: np.ndarray | None) -> KeyframeMap:
        """``reference_cloud`` as a map: a saved map folder, or one cloud as a one-keyframe map
        at the origin (its dense descriptors kept: frames are matched against all its points)."""
        cfg = self._cfg
        if reference_points is None and Path(cfg.reference_cloud).expanduser().is_dir():
            kmap = load_map(cfg.reference_cloud)
            self._adopt_map(kmap)
            return kmap
        if reference_points is None:
            from ukpgan_ros.io import read_cloud

            reference_points = read_cloud(cfg.reference_cloud, max_bytes=cfg.max_cloud_bytes)
        self._choose_voxel(reference_points, crop=False)
        # FPFH needs consistent normal signs: like a recorded frame or a 3DMatch fragment, the
        # reference is taken to be seen from the origin of its own frame.
        feats = self.describe(reference_points, crop=False, dense=True, descriptors=True)
        kmap = KeyframeMap(max_keyframes=1, meta=map_meta(self._cfg))  # at the voxel chosen from it
        kmap.add(np.eye(4), feats, keep_dense=cfg.match_against == "dense")
        return kmap

    def _adopt_map(self, kmap: KeyframeMap) -> None:
        """Check a loaded map against the configuration; its voxel wins with working_points > 0, and
        with the max_working_points cap where it is coarser than voxel_size."""
        cfg = self._cfg
        map_voxel = float(kmap.meta.get("voxel_size", cfg.voxel_size))
        # working_points picks any voxel; the cap only coarser ones than voxel_size
        adopt = cfg.working_points > 0 or (cfg.max_working_points > 0 and map_voxel > cfg.voxel_size)
        voxel = kmap.check_compatible(cfg.descriptor, cfg.voxel_size, adopt, cfg.reference_cloud)
        if voxel != cfg.voxel_size:
            self._set_voxel(voxel)
        self._voxel_chosen = True

    def reset(self) -> None:
        """Forget the stream (trajectory, keyframes, previous frame); keep the model and the
        reference map (whose voxel, with working_points > 0, stays the stream's)."""
        if self.tracker is not None:
            self.tracker.reset()
        self._voxel_chosen = not self._cfg.auto_voxel or self._reference is not None
        self._velocity, self._last_placed_stamp = None, None

    @property
    def pose(self) -> np.ndarray:
        """odom_from_sensor of the last placed frame (identity before the first)."""
        return self.tracker.pose if self.tracker is not None else np.eye(4)

    @property
    def state(self) -> TrackState | None:
        return self.tracker.state if self.tracker is not None else None

    def set_pose(self, pose: np.ndarray, covariance: np.ndarray | None = None) -> str:
        """Place the sensor in the odometry frame (see the tracker's ``set_pose``); ValueError
        naming the field for a pose that is not rigid or beyond MAX_TRANSLATION_M, or a
        covariance that is not symmetric, finite, non-negative and bounded (the tracker checks
        them, :func:`ukpgan_ros.tracking.checked_pose`), and when the mode has no pose to set."""
        if self.tracker is None:
            raise ValueError("registration: none tracks no pose")
        return self.tracker.set_pose(pose, covariance)

    def save_map(self, folder: str | Path | None = None) -> tuple[Path, int]:
        """Write the keyframes (or the loaded reference map) to ``folder`` (default ``map_dir``);
        returns (folder, keyframes). MapFormatError when there is nothing to save or the folder
        cannot take a map."""
        if self.tracker is None:
            raise MapFormatError("registration: none keeps no keyframes; use registration: keyframe to build a map")
        kmap = self.tracker.map_for_saving()
        folder = Path(folder if folder is not None else self._cfg.map_dir)
        return save_map(kmap, folder), len(kmap)

    def _choose_voxel(self, points: np.ndarray, crop: bool = True) -> None:
        """With ``working_points`` > 0 or the ``max_working_points`` cap, pick the voxel for this
        stream from its first cloud, so every sensor and scene costs about the same; radii and the
        detector follow it."""
        if self._voxel_chosen:
            return
        cfg = self.cfg
        pts = as_points(points)
        if crop:
            pts = crop_range(pts, cfg.min_range, cfg.max_range)
        if len(pts) == 0:
            return  # decided on the next usable frame
        lo, hi = PipelineConfig.__dataclass_fields__["voxel_size"].metadata["range"]
        voxel = choose_voxel(pts, self._finest_voxel, cfg.working_points, cfg.max_working_points, lo, hi)
        self._voxel_chosen = True
        if voxel != cfg.voxel_size:
            self._set_voxel(voxel)

    def _set_voxel(self, voxel: float) -> None:
        new = dataclasses.replace(self._cfg, voxel_size=voxel).validate()
        if self._owns_detector:
            old, self.detector = self.detector, make_detector(new)
            old.release()
        self._cfg = new
        self._configure_tracker()  # distances follow the voxel

    def release(self) -> None:
        """Drop the model, the frames and the reference (and the device's cached memory)."""
        self.detector.release()
        self.tracker = None
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
        return self.cfg.descriptor_radius(kind)

    def _shares_features(self, radius: float) -> bool:
        """Whether the detector computes the configured descriptors anyway (UKPGAN reads its
        ``feature.kind``, SHOT, of every point at ``feature_radius``): then they are taken from its pass."""
        cfg = self.cfg
        return (hasattr(self.detector, "detect_with_features")
                and getattr(getattr(self.detector, "feature", None), "kind", None) == cfg.descriptor
                and abs(getattr(self.detector, "feature_radius", -1.0) - radius) <= 1e-9 * max(radius, 1.0))

    def describe(self, points: np.ndarray, *, crop: bool = True, dense: bool = False,
                 viewpoint=(0.0, 0.0, 0.0), timings: dict[str, float] | None = None,
                 descriptors: bool | None = None) -> FrameFeatures:
        """One frame ready for matching: working cloud, keypoints and their descriptors.

        ``descriptors`` (default :attr:`needs_descriptors`) False gives keypoints with empty
        (K, 0) descriptors. ``dense`` also keeps descriptors of every working point (a matching
        target in ``match_against: dense``). Raises EmptyCloudError when too few points survive.
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
        want = self.needs_descriptors if descriptors is None else descriptors
        shared = None
        if want and self._shares_features(radius):
            # one SHOT pass feeds the detector and the descriptors: SHOT of every point is free
            kps, shared = self.detector.detect_with_features(cloud.points, cloud.normals, cfg.max_keypoints)
        else:
            kps = self.detector.detect(cloud.points, cloud.normals, cfg.max_keypoints)
        timings["detect"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dense_desc = None
        if not want:
            desc = np.zeros((len(kps), 0), np.float32)
        elif shared is not None:
            dense_desc = shared if cfg.match_against == "dense" and dense else None
            desc = shared[kps.indices]
        elif cfg.match_against == "dense" and (dense or cfg.descriptor_spec.dense_is_cheap):
            # e.g. FPFH: its cost is mostly the per-point histograms it needs anyway, densify for free
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
            min_inliers=cfg.min_inliers, min_fitness=cfg.min_fitness, min_constraint=cfg.min_constraint,
            seed=cfg.seed,
            dense_target=cfg.match_against == "dense",
        )
        if timings is not None:
            timings.update(res.timings)
        return dataclasses.replace(res, voxel_size=cfg.voxel_size)

    def deskewed(self, points: np.ndarray, times: np.ndarray | None) -> np.ndarray:
        """``points`` moved to the sensor frame at the stamp (``times``: seconds after it, per
        point) with the motion of the last two placed frames, when ``deskew`` is on and both are
        known; otherwise the points as they are."""
        if not self._cfg.deskew or times is None or self._velocity is None:
            return points
        from ukpgan_ros.deskew import deskew

        motion, dt = self._velocity
        return deskew(points, times, motion, dt=dt)

    def _remember_velocity(self, step: TrackStep | None, stamp: float | None) -> None:
        """The motion since the last placed frame and the time it took (for deskewing the next)."""
        if step is None or not step.placed or stamp is None:
            return
        last = self._last_placed_stamp
        dt = None if last is None else stamp - last
        self._velocity = (step.motion, dt) if step.motion is not None and dt is not None and dt > 0 else None
        self._last_placed_stamp = stamp

    def process(self, points: np.ndarray, stamp: float | None = None, index: int | None = None,
                times: np.ndarray | None = None) -> FrameResult:
        """Process one cloud (N, 3) in the sensor frame (``stamp`` [s] and a sequence ``index``
        are kept with keyframes; ``times`` [s after the stamp] per point, for ``deskew``). Raises
        ValueError on unusable input; the state is then unchanged."""
        timings: dict[str, float] = {}
        if times is not None and self._cfg.deskew:
            t0 = time.perf_counter()
            points = self.deskewed(points, times)
            timings["deskew"] = time.perf_counter() - t0
        # Every tracker matches against the live frame's dense descriptors.
        feats = self.describe(points, dense=self.needs_descriptors, timings=timings)
        step = None
        if self.tracker is not None:
            reg_times: dict[str, float] = {}

            def register(src: FrameFeatures, tgt: FrameFeatures) -> RegistrationResult:
                res = self.register(src, tgt)
                for k, v in res.timings.items():
                    reg_times[k] = reg_times.get(k, 0.0) + v
                return res

            t0 = time.perf_counter()
            step = self.tracker.step(feats, register, stamp, index)
            # the tracker's own work (votes, covariance, bookkeeping) beside the summed registrations
            timings["track"] = max(0.0, time.perf_counter() - t0 - sum(reg_times.values()))
            timings.update(reg_times)
            self._remember_velocity(step, stamp)
        return FrameResult(feats.keypoints, len(feats.cloud), feats.cloud.raw_count,
                           step.registration if step is not None else None, self.pose, timings,
                           self._cfg.voxel_size, step, self.tracker is not None and self.tracker.map_poses,
                           self._map_from_odom())

    def _map_from_odom(self) -> np.ndarray | None:
        """The loop closer's map -> odom correction, when this stream closes loops."""
        if not self._cfg.loop_closure or self.tracker is None:
            return None
        correction = getattr(self.tracker, "map_from_odom", None)
        return None if correction is None else np.array(correction, np.float64)


def register_clouds(source: np.ndarray, target: np.ndarray, cfg: PipelineConfig,
                    detector: Detector | None = None) -> RegistrationResult:
    """One-shot ``T_target_from_source`` between two clouds (files, fragments, scans).

    Both are preprocessed alike (range crop, voxels, normals facing the origin of their own
    frame, where the sensor was); keypoint descriptors of the source are matched against the
    target's keypoints or all its points, as ``cfg.match_against`` says.
    """
    pipe = KeypointPipeline(cfg, detector, tracking=False)
    try:
        timings: dict[str, float] = {}
        src = pipe.describe(source, timings=timings, descriptors=True)
        tgt = pipe.describe(target, dense=cfg.match_against == "dense", descriptors=True)
        return dataclasses.replace(pipe.register(src, tgt, timings), timings=timings)
    finally:
        if detector is None:
            pipe.release()
