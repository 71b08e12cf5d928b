"""Poses from described frames, without an initial guess: frame-to-frame odometry, keyframe
tracking with relocalisation, and localisation against a stored map.

Each tracker takes one :class:`~ukpgan_ros.registration.FrameFeatures` per frame (with dense
descriptors) and a ``register(src, tgt) -> RegistrationResult`` function (the pipeline's
RANSAC + ICP, no guess) and returns a :class:`TrackStep`: the pose ``odom_from_sensor`` or
None, its covariance, the motion since the last placed frame, and what happened.

- :class:`FrameToFrame` (``registration: consecutive``) chains each frame onto the previous one:
  the error grows with every frame.
- :class:`KeyframeTracker` (``registration: keyframe``) registers each frame against the current
  keyframe, so the error grows per keyframe. A frame becomes a keyframe when its overlap
  (fitness) or inliers with the keyframe fall below the policy's thresholds or it moved farther
  or turned more than the policy allows. A frame that fails against the keyframe is relocalised
  against every stored keyframe at once (descriptor votes pick candidates, RANSAC + ICP against
  each, verified by fitness); after ``lost_after`` failures in a row the state is LOST, no pose is
  given, and every new frame is relocalised until one succeeds.
- :class:`MapLocalizer` (``registration: reference``) places every frame on its own against a
  stored map (a saved keyframe map, or one reference cloud), with no tracking.

Each tracker builds itself from the configuration (:func:`make_tracker`) and takes what it
needs from a changed one (``configure``: thresholds, distances, the covariance's sigma floor
from the voxel); a pose from outside (``set_pose``) must be rigid, within
``MAX_TRANSLATION_M``, with a bounded covariance.

Registration direction: a keyframe's keypoint descriptors are matched against the live frame's
dense descriptors (``register(keyframe, frame)`` gives ``T_frame_from_keyframe``), so stored
keyframes keep only keypoint descriptors. A keyframe that kept dense descriptors (a single
reference cloud) is matched the other way, as the pipeline always did.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Protocol

import numpy as np

from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.loops import LoopCloser, LoopPolicy
from ukpgan_ros.maps import Keyframe, KeyframeMap, MapFormatError
from ukpgan_ros.posegraph import odometry_edge
from ukpgan_ros.transforms import MAX_TRANSLATION_M, check_covariance, check_rigid, moved_covariance, rotation_angle_deg
from ukpgan_ros.registration import FrameFeatures, RegistrationResult, registration_covariance

__all__ = [
    "TrackState", "TrackStep", "KeyframePolicy", "RelocalizationPolicy", "Tracker", "FrameToFrame",
    "KeyframeTracker", "MapLocalizer", "Register", "localize", "verified", "make_tracker", "map_meta",
    "gives_map_poses", "checked_pose", "SIGMA_FLOOR_VOXELS", "TRACKERS",
]

# Smallest residual a covariance assumes, in voxels: a perfect fit of voxel means is still no
# better than the grid.
SIGMA_FLOOR_VOXELS = 0.1

Register = Callable[[FrameFeatures, FrameFeatures], RegistrationResult]


class TrackState(str, enum.Enum):
    INITIALIZING = "initializing"  # no frame placed yet (or after reset)
    TRACKING = "tracking"  # the last frame was placed
    FAILING = "failing"  # fewer than lost_after failures in a row
    LOST = "lost"  # lost_after failures in a row: relocalising every frame


@dataclass(frozen=True)
class TrackStep:
    """What one frame produced."""

    state: TrackState
    pose: np.ndarray | None  # (4, 4) odom_from_sensor when the frame was placed
    covariance: np.ndarray | None  # (6, 6) of pose: x y z rx ry rz in odom, when placed
    motion: np.ndarray | None  # (4, 4) T_prev_from_curr: from the last placed frame, when placed
    registration: RegistrationResult | None  # the one that placed the frame (or the last failed try)
    keyframe_id: int | None = None  # the keyframe this frame is registered against
    new_keyframe: bool = False
    relocalized: bool = False  # placed by relocalisation, not by tracking
    candidates_tried: int = 0
    message: str = ""

    @property
    def placed(self) -> bool:
        return self.pose is not None


@dataclass(frozen=True)
class KeyframePolicy:
    """When a tracked frame becomes the new keyframe (any condition suffices)."""

    min_fitness: float = 0.6  # overlap with the keyframe below this
    min_inliers: int = 40  # RANSAC inlier matches below this
    max_distance: float = 0.3  # moved farther than this from the keyframe [m]
    max_angle_deg: float = 15.0  # turned more than this [deg]

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> "KeyframePolicy":
        return cls(cfg.keyframe_min_fitness, cfg.keyframe_min_inliers, cfg.keyframe_max_distance, cfg.keyframe_max_angle)

    def reason(self, T_kf_from_frame: np.ndarray, reg: RegistrationResult) -> str:
        """Why the frame should be a keyframe ('' when it should not)."""
        dist = float(np.linalg.norm(T_kf_from_frame[:3, 3]))
        angle = rotation_angle_deg(T_kf_from_frame[:3, :3])
        if reg.fitness < self.min_fitness:
            return f"overlap {reg.fitness:.2f} < {self.min_fitness}"
        if reg.num_inliers < self.min_inliers:
            return f"{reg.num_inliers} inliers < {self.min_inliers}"
        if dist > self.max_distance:
            return f"moved {dist:.2f} m > {self.max_distance}"
        if angle > self.max_angle_deg:
            return f"turned {angle:.1f} deg > {self.max_angle_deg}"
        return ""


@dataclass(frozen=True)
class RelocalizationPolicy:
    """Global relocalisation: how many voted keyframes to try, and what verifies a result."""

    candidates: int = 5
    min_fitness: float = 0.4  # overlap with the candidate keyframe a result needs
    lost_after: int = 3  # failures in a row before the state is LOST

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> "RelocalizationPolicy":
        return cls(cfg.relocalization_candidates, cfg.relocalization_min_fitness, cfg.lost_after)


def map_meta(cfg: PipelineConfig) -> dict:
    """What a map records of the configuration that made it (``save_map`` writes it; a stream
    localising against the map is checked against it)."""
    return {"voxel_size": cfg.voxel_size, "descriptor": cfg.descriptor, "detector": cfg.detector,
            "match_against": cfg.match_against, "frame_id": cfg.odom_frame}


def checked_pose(pose, covariance=None, what: str = "pose") -> tuple[np.ndarray, np.ndarray]:
    """A pose from outside (an initial pose) and its covariance (zero when None), as float64
    copies; ValueError naming ``what`` unless the pose is rigid with a translation within
    MAX_TRANSLATION_M and the covariance symmetric, finite, with a non-negative bounded diagonal."""
    T = check_rigid(pose, what, max_translation=MAX_TRANSLATION_M).copy()
    C = np.zeros((6, 6)) if covariance is None else check_covariance(covariance, f"{what} covariance").copy()
    return T, C


def _covariance_of(reg: RegistrationResult, src: FrameFeatures, tgt: FrameFeatures, distance: float,
                   odom_from_tgt: np.ndarray, sigma_floor: float) -> np.ndarray:
    """The registration's covariance moved into the odometry frame."""
    C = registration_covariance(src.cloud, tgt.cloud, reg.T_tgt_from_src, distance, sigma_floor, pairs=reg.pairs)
    return moved_covariance(odom_from_tgt, C, "registration covariance")


def _register_to(kf: Keyframe, frame: FrameFeatures, register: Register, distance: float,
                 sigma_floor: float) -> tuple[RegistrationResult, np.ndarray, np.ndarray | None]:
    """Register ``frame`` against keyframe ``kf``: (registration, T_kf_from_frame, covariance of
    the frame's pose in the map frame, excluding the keyframe's own, or None on failure)."""
    if kf.features.dense_descriptors is not None:  # frame keypoints -> keyframe (reference cloud)
        reg = register(frame, kf.features)
        T = reg.T_tgt_from_src
        cov = _covariance_of(reg, frame, kf.features, distance, kf.pose, sigma_floor) if reg.success else None
        return reg, T, cov
    reg = register(kf.features, frame)  # keyframe keypoints -> frame (dense)
    T = np.linalg.inv(reg.T_tgt_from_src)
    # the covariance is of T_frame_from_kf in the frame's coordinates: odom_from_frame = kf.pose @ T
    cov = _covariance_of(reg, kf.features, frame, distance, kf.pose @ T, sigma_floor) if reg.success else None
    return reg, T, cov


def localize(frame: FrameFeatures, kmap: KeyframeMap, register: Register, policy: RelocalizationPolicy,
             distance: float, sigma_floor: float = 0.0, exclude: tuple[int, ...] = (), *, newest_first: bool = False
             ) -> tuple[Keyframe | None, np.ndarray | None, RegistrationResult | None, np.ndarray | None, int]:
    """Place ``frame`` in ``kmap`` with no guess: the ``policy.candidates`` keyframes its keypoint
    descriptors vote for most, RANSAC + ICP against each, verified by ``policy.min_fitness``.

    By default every candidate is tried and the verified one with the highest fitness wins (a
    map). With ``newest_first`` the candidates are tried newest first and the first verified one
    wins (a tracker: the newest keyframe shares the most drift with the trajectory, so the pose
    does not jump by the drift accumulated since an old keyframe).

    Returns (keyframe, map_from_frame, registration, covariance in the map frame without the
    keyframe's own, candidates tried); all but the last are None when nothing verifies (the
    registration is then the best failed one).
    """
    cands = [kf for kf, _votes in kmap.candidates(frame.descriptors, policy.candidates, exclude)]
    if newest_first:
        cands.sort(key=lambda k: -k.id)
    best, last_failed, tried = None, None, 0
    for kf in cands:
        tried += 1
        reg, T_kf_from_frame, cov = _register_to(kf, frame, register, distance, sigma_floor)
        if verified(reg, policy):
            if best is None or reg.fitness > best[2].fitness:
                best = (kf, kf.pose @ T_kf_from_frame, reg, cov)
            if newest_first:
                break
        elif last_failed is None or reg.fitness > last_failed.fitness:
            last_failed = reg
    if best is None:
        return None, None, last_failed, None, tried
    return (*best, tried)


def verified(reg: RegistrationResult, policy: RelocalizationPolicy) -> bool:
    """A registration good enough to place a frame without a guess."""
    return reg.success and reg.fitness >= policy.min_fitness


class Tracker(Protocol):
    """What the pipeline drives: one step per described frame."""

    state: TrackState
    # Whether a placed frame's pose is map_from_sensor, found on its own in a fixed map (each
    # pose stands alone), rather than odom_from_sensor chained from the frames before it.
    map_poses: ClassVar[bool]

    def configure(self, cfg: PipelineConfig) -> None:
        """Take thresholds and distances from ``cfg`` (a changed configuration, a new voxel)."""

    def map_for_saving(self) -> KeyframeMap:
        """The map ``save_map`` writes; MapFormatError when there is none (yet)."""

    def step(self, frame: FrameFeatures, register: Register, stamp: float | None = None,
             index: int | None = None) -> TrackStep: ...

    def reset(self) -> None: ...

    def set_pose(self, pose: np.ndarray, covariance: np.ndarray | None = None) -> str: ...

    @property
    def pose(self) -> np.ndarray: ...

    @property
    def map(self) -> KeyframeMap | None: ...


def _failure_state(failures: int, lost_after: int) -> TrackState:
    return TrackState.LOST if failures >= lost_after else TrackState.FAILING


class FrameToFrame:
    """``registration: consecutive``: each frame against the previous one; the pose is the chain.

    A failed frame leaves the pose and the anchor (the last good frame) alone; after
    ``lost_after`` failures in a row the state is LOST and the next frame becomes the anchor at
    the held pose (there is nothing to relocalise against).
    """

    map_poses: ClassVar[bool] = False

    def __init__(self, distance: float, lost_after: int = 3, sigma_floor: float = 0.0) -> None:
        self.distance, self.lost_after, self.sigma_floor = distance, lost_after, sigma_floor
        self.reset()

    @classmethod
    def from_config(cls, cfg: PipelineConfig, reference_map: KeyframeMap | None = None) -> "FrameToFrame":
        tracker = cls(cfg.match_distance)
        tracker.configure(cfg)
        return tracker

    def configure(self, cfg: PipelineConfig) -> None:
        self.distance, self.lost_after = cfg.match_distance, cfg.lost_after
        self.sigma_floor = SIGMA_FLOOR_VOXELS * cfg.voxel_size

    def map_for_saving(self) -> KeyframeMap:
        raise MapFormatError("registration: consecutive keeps no keyframes; use registration: keyframe to build a map")

    def reset(self) -> None:
        self.state = TrackState.INITIALIZING
        self._pose, self._cov = np.eye(4), np.zeros((6, 6))
        self._anchor: FrameFeatures | None = None
        self._failures = 0

    @property
    def pose(self) -> np.ndarray:
        return self._pose.copy()

    @property
    def map(self) -> KeyframeMap | None:
        return None

    def set_pose(self, pose: np.ndarray, covariance: np.ndarray | None = None) -> str:
        """Place the sensor at ``pose`` (see :func:`checked_pose`); the next frame chains from it."""
        self._pose, self._cov = checked_pose(pose, covariance)
        return "pose set; the next frame is chained from it"

    def step(self, frame: FrameFeatures, register: Register, stamp: float | None = None,
             index: int | None = None) -> TrackStep:
        if self._anchor is None:
            self._anchor, self.state = frame, TrackState.TRACKING
            return TrackStep(self.state, self.pose, self._cov.copy(), None, None, message="first frame")
        reg = register(frame, self._anchor)
        if reg.success:
            # odom_from_curr = odom_from_prev @ T_prev_from_curr
            cov = _covariance_of(reg, frame, self._anchor, self.distance, self._pose, self.sigma_floor)
            self._pose = self._pose @ reg.T_tgt_from_src
            self._cov = self._cov + cov
            self._anchor, self._failures, self.state = frame, 0, TrackState.TRACKING
            return TrackStep(self.state, self.pose, self._cov.copy(), reg.T_tgt_from_src.copy(), reg)
        self._failures += 1
        self.state = _failure_state(self._failures, self.lost_after)
        if self.state is TrackState.LOST:
            # The anchor is stale and there is nothing to relocalise against: restart here, pose held.
            self._anchor, self._failures = frame, 0
        return TrackStep(self.state, None, None, None, reg, message=reg.message)


@dataclass(frozen=True)
class _Placed:
    """The last placed frame: a relocalisation candidate that shares the trajectory's drift."""

    features: FrameFeatures  # keypoint descriptors only
    pose: np.ndarray
    covariance: np.ndarray
    stamp: float | None
    index: int | None
    keyframe_id: int | None  # when it is (or became) a keyframe
    ref: Keyframe | None = None  # the keyframe it was placed from (its odometry edge)


class KeyframeTracker:
    """``registration: keyframe``: track against keyframes, relocalise when that fails.

    A frame that fails against the current keyframe is registered against, newest first: the
    last placed frame (it becomes a keyframe if it places the frame), then the keyframes its
    descriptors vote for; the first verified one places it (see :func:`localize`). Keyframes go
    to a bounded :class:`KeyframeMap` (its docstring has the removal policy), which ``save_map``
    writes and ``registration: reference`` reads.

    With a :class:`~ukpgan_ros.loops.LoopPolicy` (``loop_closure``) each new keyframe is enqueued
    to a :class:`~ukpgan_ros.loops.LoopCloser` (loops and the pose graph, off the frame path);
    odometry never moves: :attr:`map_from_odom` is the ``map -> odom`` correction.
    """

    map_poses: ClassVar[bool] = False
    # seconds map_for_saving waits for queued loop closure work before writing what it has
    SAVE_WAIT_S: ClassVar[float] = 30.0

    def __init__(self, policy: KeyframePolicy, reloc: RelocalizationPolicy, distance: float,
                 max_keyframes: int = 200, sigma_floor: float = 0.0, meta: dict | None = None,
                 loops: LoopPolicy | None = None) -> None:
        self.policy, self.reloc, self.distance, self.sigma_floor = policy, reloc, distance, sigma_floor
        self._map = KeyframeMap(max_keyframes, policy.max_distance, policy.max_angle_deg, dict(meta or {}))
        self.loops = LoopCloser(loops if loops is not None else LoopPolicy(enabled=False), distance, sigma_floor)
        # what the loop worker registers with (the pipeline's register; else each step's)
        self.background_register: Register | None = None
        self._register: Register | None = None
        self.reset()

    @classmethod
    def from_config(cls, cfg: PipelineConfig, reference_map: KeyframeMap | None = None) -> "KeyframeTracker":
        tracker = cls(KeyframePolicy.from_config(cfg), RelocalizationPolicy.from_config(cfg), cfg.match_distance,
                      cfg.max_keyframes, loops=LoopPolicy.from_config(cfg))
        tracker.configure(cfg)
        return tracker

    def configure(self, cfg: PipelineConfig) -> None:
        """Thresholds from the next frame on; the map records the configuration (its voxel,
        once chosen, is the one its keyframes were described at)."""
        self.policy, self.reloc = KeyframePolicy.from_config(cfg), RelocalizationPolicy.from_config(cfg)
        self._map.max_keyframes, self._map.spacing_m, self._map.spacing_deg = (
            cfg.max_keyframes, self.policy.max_distance, self.policy.max_angle_deg)
        self.distance, self.sigma_floor = cfg.match_distance, SIGMA_FLOOR_VOXELS * cfg.voxel_size
        self._map.meta.update(map_meta(cfg))
        self.loops.policy = LoopPolicy.from_config(cfg)
        self.loops.distance, self.loops.sigma_floor = self.distance, self.sigma_floor

    def map_for_saving(self) -> KeyframeMap:
        """The keyframes, the last placed frame made one (a map ends where the sensor stopped);
        with loop closure, once queued loop work is done (at most ``SAVE_WAIT_S``), a copy with
        the optimised poses (``odom_pose``: odometry's) and the pose graph's edges."""
        if len(self._map) == 0:
            raise MapFormatError("no keyframes yet: process some frames first")
        self.keyframe_last()
        if not self.loops.started:
            return self._map
        self.loops.wait(self.SAVE_WAIT_S)
        ids = {k.id for k in self._map}
        frames = [replace(k, pose=self.loops.map_pose(k.id, k.pose), odom_pose=k.pose) for k in self._map]
        edges = [e for e in self.loops.edges() if e.i in ids and e.j in ids]
        m = self._map
        return KeyframeMap(m.max_keyframes, m.spacing_m, m.spacing_deg, dict(m.meta), frames, m._next_id, edges=edges)

    @property
    def map_from_odom(self) -> np.ndarray:
        """``map_from_odom`` (4x4, the ``map -> odom`` transform): the current keyframe's optimised
        pose times the inverse of its odometry pose (identity until a loop closes);
        ``map_from_odom @ pose`` is the sensor in the map frame."""
        return self.loops.map_from_odom(self._current.id if self._current is not None else None)

    def reset(self) -> None:
        """Forget the trajectory, every keyframe and the pose graph."""
        self._map.clear()
        self.loops.reset()
        self.state = TrackState.INITIALIZING
        self._pose, self._cov = np.eye(4), np.zeros((6, 6))
        self._last: _Placed | None = None
        self._current: Keyframe | None = None
        self._failures = 0
        self._pending: tuple[np.ndarray, np.ndarray] | None = None  # a set_pose for the next frame

    @property
    def pose(self) -> np.ndarray:
        return self._pose.copy()

    @property
    def map(self) -> KeyframeMap:
        return self._map

    @property
    def current_keyframe(self) -> Keyframe | None:
        return self._current

    def keyframe_last(self) -> Keyframe | None:
        """Make the last placed frame a keyframe if it is not one (a map should end where the
        sensor stopped); tracking continues against the current keyframe."""
        last = self._last
        if last is None or last.keyframe_id is not None:
            return None
        kf = self._add_keyframe(last.pose, last.features, last.covariance, last.stamp, last.index, last.ref)
        self._last = replace(last, keyframe_id=kf.id)
        return kf

    def set_pose(self, pose: np.ndarray, covariance: np.ndarray | None = None) -> str:
        """Place the sensor at ``pose`` (odom_from_sensor). While tracking, every keyframe moves
        with it (the map stays consistent with the sensor); otherwise the next frame becomes a
        keyframe there, beside the stored ones. ValueError (nothing changed) for a pose or
        covariance :func:`checked_pose` refuses, or one that would move a keyframe beyond what a
        float holds."""
        pose, cov = checked_pose(pose, covariance)
        if self.state is TrackState.TRACKING and self._last is not None:
            C = pose @ np.linalg.inv(self._last.pose)
            self._map.transform_all(C)
            self.loops.transform_all(C)
            if self._current is not None:
                self._current = self._map.get(self._current.id)
            ref = self._last.ref and self._map.get(self._last.ref.id)
            self._last = replace(self._last, pose=pose, covariance=cov, ref=ref)
            self._pose, self._cov = pose, cov
            return f"sensor placed; {len(self._map)} keyframes moved with it"
        self._pending = (pose, cov)
        self._pose, self._cov = pose, cov
        return "sensor placed; the next frame becomes a keyframe there"

    def _add_keyframe(self, pose, features, cov, stamp, index, ref: Keyframe | None = None) -> Keyframe:
        """Store a keyframe placed from ``ref`` (None: without one); enqueue it for loop closure."""
        kf, _removed = self._map.add(pose, features, cov, stamp=stamp, index=index,
                                     protect=() if self._current is None else (self._current.id,))
        if self.loops.policy.enabled:
            edge = None
            if ref is not None and ref.id >= 0:
                edge = odometry_edge(ref.id, ref.pose, kf.id, kf.pose, kf.covariance - ref.covariance)
            register = self.background_register or self._register
            self.loops.add_keyframe(kf, edge, features, [k.id for k in self._map], register)
        return kf

    def _place(self, frame: FrameFeatures, pose: np.ndarray, cov: np.ndarray, reg: RegistrationResult | None,
               kf: Keyframe | None, stamp, index, *, relocalized: bool = False, tried: int = 0, note: str = ""
               ) -> TrackStep:
        """Take the frame's pose; it becomes a keyframe when it has none to refer to (``kf`` None)
        or the policy says so."""
        motion = None if self._last is None or reg is None else np.linalg.inv(self._last.pose) @ pose
        reason = "placed, not tracked" if kf is None else self.policy.reason(np.linalg.inv(kf.pose) @ pose, reg)
        self._current = kf
        if reason:
            self._current = self._add_keyframe(pose, frame, cov, stamp, index, kf)
        self._last = _Placed(replace(frame, dense_descriptors=None), pose.copy(), cov.copy(), stamp, index,
                             self._current.id if reason else None, kf)
        self._pose, self._cov = pose.copy(), cov.copy()
        self._failures, self.state = 0, TrackState.TRACKING
        msgs = [note] if note else []
        if reason:
            msgs.append(f"new keyframe {self._current.id}: {reason}")
        return TrackStep(self.state, pose.copy(), cov.copy(), motion, reg, self._current.id, bool(reason),
                         relocalized, tried, "; ".join(msgs))

    def step(self, frame: FrameFeatures, register: Register, stamp: float | None = None,
             index: int | None = None) -> TrackStep:
        self._register = register
        if self._pending is not None or self.state is TrackState.INITIALIZING:
            # The first frame (or the first after set_pose while not tracking) founds a keyframe.
            pose, cov = self._pending if self._pending is not None else (self._pose, self._cov)
            self._pending, self._last = None, None
            return self._place(frame, pose, cov, None, None, stamp, index)
        reg = None
        if self.state is not TrackState.LOST and self._current is not None:
            kf = self._current
            reg, T_kf_from_frame, link_cov = _register_to(kf, frame, register, self.distance, self.sigma_floor)
            if reg.success:
                return self._place(frame, kf.pose @ T_kf_from_frame, kf.covariance + link_cov, reg, kf, stamp, index)
        tried = 0
        # 1. the last placed frame, when it is not the keyframe that has just failed
        last = self._last
        if last is not None and (last.keyframe_id is None or reg is None or last.keyframe_id != self._current.id):
            probe = Keyframe(-1, last.pose, last.features, last.covariance, last.stamp, last.index)
            lreg, T_last_from_frame, link_cov = _register_to(probe, frame, register, self.distance, self.sigma_floor)
            tried += 1
            if verified(lreg, self.reloc):
                kf = self._map.get(last.keyframe_id) if last.keyframe_id is not None else None
                if kf is None:
                    kf = self._add_keyframe(last.pose, last.features, last.covariance, last.stamp, last.index,
                                            last.ref)
                return self._place(frame, last.pose @ T_last_from_frame, last.covariance + link_cov, lreg, kf,
                                   stamp, index, relocalized=True, tried=tried,
                                   note=f"relocalized against the last placed frame (keyframe {kf.id})")
        # 2. the keyframes the frame's descriptors vote for, newest first
        exclude = tuple(i for i in ((self._current.id if reg is not None and self._current is not None else None),
                                    last.keyframe_id if last is not None and tried else None) if i is not None)
        kf, pose, rreg, cov, n = localize(frame, self._map, register, self.reloc, self.distance, self.sigma_floor,
                                          exclude, newest_first=True)
        tried += n
        if kf is not None:
            return self._place(frame, pose, kf.covariance + cov, rreg, kf, stamp, index, relocalized=True, tried=tried,
                               note=f"relocalized against keyframe {kf.id}")
        self._failures += 1
        self.state = _failure_state(self._failures, self.reloc.lost_after)
        why = reg.message if reg is not None else "not tracking"
        return TrackStep(self.state, None, None, None, reg if reg is not None else rreg,
                         self._current.id if self._current is not None else None, False, False, tried,
                         f"{why}; relocalisation failed ({tried} candidates)")


class MapLocalizer:
    """``registration: reference``: every frame placed on its own against a fixed map (no
    tracking, no guess); LOST after ``lost_after`` failures in a row, as a signal only."""

    map_poses: ClassVar[bool] = True

    def __init__(self, kmap: KeyframeMap, reloc: RelocalizationPolicy, distance: float, sigma_floor: float = 0.0) -> None:
        self._map, self.reloc, self.distance, self.sigma_floor = kmap, reloc, distance, sigma_floor
        self.reset()

    @classmethod
    def from_config(cls, cfg: PipelineConfig, reference_map: KeyframeMap | None = None) -> "MapLocalizer":
        if reference_map is None:
            raise ValueError("registration: reference needs a map to localise against")
        tracker = cls(reference_map, RelocalizationPolicy.from_config(cfg), cfg.match_distance)
        tracker.configure(cfg)
        return tracker

    def configure(self, cfg: PipelineConfig) -> None:
        self.reloc, self.distance = RelocalizationPolicy.from_config(cfg), cfg.match_distance
        self.sigma_floor = SIGMA_FLOOR_VOXELS * cfg.voxel_size

    def map_for_saving(self) -> KeyframeMap:
        return self._map

    def reset(self) -> None:
        """Forget the last pose; the map stays."""
        self.state = TrackState.INITIALIZING
        self._pose = np.eye(4)
        self._last_pose: np.ndarray | None = None
        self._failures = 0

    @property
    def pose(self) -> np.ndarray:
        return self._pose.copy()

    @property
    def map(self) -> KeyframeMap:
        return self._map

    def set_pose(self, pose: np.ndarray, covariance: np.ndarray | None = None) -> str:
        checked_pose(pose, covariance)
        raise ValueError("registration: reference places every frame against the map; there is no pose to set")

    def step(self, frame: FrameFeatures, register: Register, stamp: float | None = None,
             index: int | None = None) -> TrackStep:
        kf, pose, reg, cov, tried = localize(frame, self._map, register, self.reloc, self.distance, self.sigma_floor)
        if kf is None:
            self._failures += 1
            self.state = _failure_state(self._failures, self.reloc.lost_after)
            msg = (reg.message if reg is not None and reg.message else "no candidate verified")
            return TrackStep(self.state, None, None, None, reg, None, False, False, tried,
                             f"{msg} ({tried} keyframes tried)")
        motion = None if self._last_pose is None else np.linalg.inv(self._last_pose) @ pose
        self._pose, self._last_pose, self._failures, self.state = pose.copy(), pose.copy(), 0, TrackState.TRACKING
        return TrackStep(self.state, pose.copy(), cov, motion, reg, kf.id, False, True, tried,
                         f"localized against keyframe {kf.id}")


TRACKERS: dict[str, type] = {"consecutive": FrameToFrame, "keyframe": KeyframeTracker, "reference": MapLocalizer}


def make_tracker(cfg: PipelineConfig, reference_map: KeyframeMap | None = None,
                 register: Register | None = None) -> Tracker | None:
    """The tracker of ``cfg.registration`` (None for ``none``, which only detects), configured;
    ``reference`` localises in ``reference_map``. ``register`` (the pipeline's, callable from
    any thread) is what loop closure registers with off the frame path."""
    if cfg.registration == "none":
        return None
    if cfg.registration not in TRACKERS:
        raise ValueError(f"registration: {cfg.registration!r} is none of none, {', '.join(TRACKERS)}")
    tracker = TRACKERS[cfg.registration].from_config(cfg, reference_map)
    if register is not None and isinstance(tracker, KeyframeTracker):
        tracker.background_register = register
    return tracker


def gives_map_poses(mode: str) -> bool:
    """Whether mode ``mode``'s poses are map_from_sensor, each found on its own in a fixed map
    (not odom_from_sensor chained from the frames before), as its tracker's ``map_poses`` says."""
    return bool(getattr(TRACKERS.get(mode), "map_poses", False))
