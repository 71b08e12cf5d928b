"""Loop closure for keyframe tracking: find older keyframes a new keyframe sees again, verify them
by registration, and optimise the keyframe pose graph off the frame path.

The tracker calls :meth:`LoopCloser.add_keyframe` for every new keyframe (the stored keyframe,
the odometry edge to the keyframe it was placed from, the live frame's features and the ids the
tracker's store still holds); that only enqueues. One worker thread then, in order:

1. adds the node and the odometry edge to the graph, and the keyframe to its own descriptor
   index (a :class:`~ukpgan_ros.maps.KeyframeMap` only the worker touches, pruned to the ids the
   tracker keeps);
2. asks that index for the ``candidates`` keyframes the new keyframe's descriptors vote for,
   among those at least ``min_separation`` keyframes older (its neighbours are odometry);
   registers each onto the new keyframe (the pipeline's RANSAC + ICP, no guess) and keeps those
   with fitness >= ``min_fitness`` and >= ``min_inliers`` RANSAC inliers;
3. accepts a verified loop only if something independent agrees with it: another verified loop
   (from this keyframe or one of the last ``window`` keyframes, against another keyframe) that
   implies the same odometry drift ``D = pose_old @ T_old_from_new @ inv(pose_new)`` within
   ``agree_m`` / ``agree_deg``; or the graph as optimised so far, which predicts the loop's
   relative pose within those bounds; or odometry itself: the drift ``D`` is no larger than
   odometry can have gathered over the path between the two keyframes (``drift_per_m`` and
   ``drift_deg_per_m`` of it, plus ``agree_m`` / ``agree_deg``);
4. optimises the graph (:func:`ukpgan_ros.posegraph.optimize`, Cauchy kernel on loop edges) and
   swaps the optimised poses in as one immutable snapshot.

The correction a node publishes as ``map -> odom`` is :meth:`LoopCloser.map_from_odom`: the
optimised pose of a keyframe times the inverse of its odometry pose (identity until a loop
closes). Odometry itself never jumps: the tracker keeps tracking in the odometry frame.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.maps import Keyframe, KeyframeMap
from ukpgan_ros.posegraph import LOOP, Edge, GraphResult, loop_edge, optimize
from ukpgan_ros.registration import FrameFeatures, RegistrationResult, registration_covariance
from ukpgan_ros.transforms import moved_covariance, rotation_angle_deg

__all__ = ["LoopPolicy", "LoopCloser", "LoopSnapshot", "LoopStats", "MergeReport", "drift_of", "agree", "merge_maps",
           "chain_edges", "AGREE_VOXELS"]

Register = Callable[[FrameFeatures, FrameFeatures], RegistrationResult]

# The worker thread ends after this long without work (a dropped tracker leaves no thread behind);
# the next job starts a new one.
IDLE_EXIT_S = 30.0
# The worker runs at the lowest CPU priority (nice 19), so the frame path keeps its rate.
WORKER_NICE = 19

# Two loops agree on the drift within this many voxels (and agree_deg): the drift between two
# neighbouring keyframes changes by much less, a loop to the wrong place by much more.
AGREE_VOXELS = 3.0


@dataclass(frozen=True)
class LoopPolicy:
    """When a loop is looked for, what verifies it, and what it must agree with."""

    enabled: bool = True
    candidates: int = 3
    min_fitness: float = 0.5
    min_inliers: int = 30
    min_separation: int = 10  # keyframes between a new keyframe and a loop candidate
    agree_m: float = 0.15
    agree_deg: float = 3.0
    window: int = 3  # keyframes whose unconfirmed loops may confirm each other
    drift_per_m: float = 0.1  # odometry drift a lone loop may imply, per metre of path between its keyframes
    drift_deg_per_m: float = 2.0

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> "LoopPolicy":
        return cls(cfg.loop_closure, cfg.loop_candidates, cfg.loop_min_fitness, cfg.loop_min_inliers,
                   cfg.loop_min_separation, AGREE_VOXELS * cfg.voxel_size)


@dataclass(frozen=True)
class LoopSnapshot:
    """The latest optimisation, swapped in whole: optimised (map) and odometry poses per keyframe,
    the loop edges accepted so far, and the correction of the newest optimised keyframe."""

    map_poses: dict[int, np.ndarray] = field(default_factory=dict)
    odom_poses: dict[int, np.ndarray] = field(default_factory=dict)
    loops: tuple[Edge, ...] = ()
    latest_correction: np.ndarray = field(default_factory=lambda: np.eye(4))
    optimisations: int = 0


@dataclass
class LoopStats:
    queries: int = 0
    skipped: int = 0  # queries dropped because the worker was behind
    verified: int = 0
    accepted: int = 0
    rejected_by_agreement: int = 0  # verified loops nothing confirmed within the window
    rejected_by_kernel: int = 0  # accepted loops the last optimisation down-weighted below 0.1
    last_error: str = ""
    last_optimisation_s: float = 0.0


def drift_of(pose_old: np.ndarray, T_old_from_new: np.ndarray, pose_new: np.ndarray) -> np.ndarray:
    """The odometry drift a loop implies: where the old keyframe says the new one is, relative to
    where odometry put it (``pose_old @ T_old_from_new @ inv(pose_new)``)."""
    return pose_old @ T_old_from_new @ np.linalg.inv(pose_new)


def agree(A: np.ndarray, B: np.ndarray, max_m: float, max_deg: float) -> bool:
    """Whether two rigid transforms differ by at most ``max_m`` and ``max_deg``."""
    d = np.linalg.inv(A) @ B
    return float(np.linalg.norm(d[:3, 3])) <= max_m and rotation_angle_deg(d[:3, :3]) <= max_deg


@dataclass(frozen=True, eq=False)  # compared by identity (its arrays have no truth value)
class _Hypothesis:
    edge: Edge  # loop edge old -> new
    drift: np.ndarray


class LoopCloser:
    """The keyframe pose graph and its worker (see the module docstring). Thread-safe for one
    producer (the tracker) and any number of readers of :attr:`snapshot`."""

    def __init__(self, policy: LoopPolicy, distance: float, sigma_floor: float = 0.0, max_queued: int = 8) -> None:
        self.policy, self.distance, self.sigma_floor, self.max_queued = policy, distance, sigma_floor, max_queued
        self._jobs: queue.Queue = queue.Queue()
        self._pending_queries = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._started = False
        self._generation = 0  # bumped by reset: jobs of an older generation are dropped
        self.stats = LoopStats()
        self.snapshot = LoopSnapshot()
        self._clear_graph()

    # ------------------------------------------------------------------ producer side (tracker)
    @property
    def started(self) -> bool:
        """Whether any keyframe reached the loop closer."""
        return self._started

    def add_keyframe(self, kf: Keyframe, odometry: Edge | None, frame: FrameFeatures, live_ids: list[int],
                     register: Register | None) -> bool:
        """Enqueue a new keyframe ``kf`` (its pose the odometry pose): its node, its odometry edge
        (None when it was placed without a reference) and a loop query with ``frame`` (the live
        frame's features, dense descriptors included); ``live_ids``: the keyframes the tracker
        still stores. Returns whether the query was enqueued (False: the worker is behind by
        ``max_queued`` queries, or there is no register function; only the node goes in)."""
        query = self.policy.enabled and register is not None
        with self._lock:
            if query and self._pending_queries >= self.max_queued:
                query = False
                self.stats.skipped += 1
            if query:
                self._pending_queries += 1
        self._jobs.put(("keyframe", self._generation, kf, odometry, frame if query else None, list(live_ids), register))
        self._ensure_worker()
        return query

    def transform_all(self, C: np.ndarray) -> None:
        """Every keyframe moved by ``C`` (new_odom_from_old_odom; the tracker's set_pose)."""
        C = np.asarray(C, np.float64).copy()
        if not self._started:
            return  # nothing in the graph yet
        snap = self.snapshot
        self.snapshot = LoopSnapshot({k: C @ p for k, p in snap.map_poses.items()},
                                     {k: C @ p for k, p in snap.odom_poses.items()}, snap.loops,
                                     C @ snap.latest_correction @ np.linalg.inv(C), snap.optimisations)
        self._jobs.put(("transform", self._generation, C))
        self._ensure_worker()

    def reset(self) -> None:
        """Forget the graph (queued work of before is dropped)."""
        with self._lock:
            self._generation += 1
            self._pending_queries = 0
        self.snapshot = LoopSnapshot()
        if not self._started:
            self._clear_graph()
        else:
            self._jobs.put(("reset", self._generation))
            self._ensure_worker()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queued work is done (True) or ``timeout`` seconds pass (False)."""
        done = threading.Event()
        self._jobs.put(("signal", self._generation, done))
        self._ensure_worker()
        return done.wait(timeout)

    # ------------------------------------------------------------------ readers
    def map_from_odom(self, kf_id: int | None = None) -> np.ndarray:
        """The correction ``map_from_odom`` at keyframe ``kf_id``: its optimised pose times the
        inverse of its odometry pose; the newest optimised keyframe's when ``kf_id`` has not been
        optimised yet (or is None); identity before the first loop."""
        snap = self.snapshot
        if kf_id is not None and kf_id in snap.map_poses and kf_id in snap.odom_poses:
            return snap.map_poses[kf_id] @ np.linalg.inv(snap.odom_poses[kf_id])
        return snap.latest_correction.copy()

    def map_pose(self, kf_id: int, odom_pose: np.ndarray) -> np.ndarray:
        """Keyframe ``kf_id`` in the map frame (its optimised pose, or ``odom_pose`` corrected)."""
        snap = self.snapshot
        if kf_id in snap.map_poses:
            return snap.map_poses[kf_id].copy()
        return snap.latest_correction @ np.asarray(odom_pose, np.float64)

    def edges(self) -> list[Edge]:
        """Odometry and accepted loop edges so far (a copy)."""
        with self._lock:
            return list(self._edges)

    # ------------------------------------------------------------------ worker
    def _ensure_worker(self) -> None:
        """Start the worker unless it runs (call after putting a job: see ``_run``'s exit)."""
        with self._lock:
            if self._thread is None:
                self._started = True
                self._thread = threading.Thread(target=self._run, name="ukpgan-loop-closure", daemon=True)
                self._thread.start()

    def _clear_graph(self) -> None:
        with self._lock:
            self._odom: dict[int, np.ndarray] = {}
            self._edges: list[Edge] = []
        self._path: dict[int, float] = {}  # odometry path length from the graph's start to each keyframe [m]
        self._store = KeyframeMap(max_keyframes=1 << 30)  # the worker's keyframes (for descriptor votes)
        self._recent: collections.deque = collections.deque()  # (kf_id, [hypotheses])

    def _run(self) -> None:
        try:  # the frame path comes first: on Linux a thread has its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
        except (AttributeError, OSError):
            pass
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:  # a job put before this check is seen; one put after it starts a new worker
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            try:
                kind, gen = job[0], job[1]
                if kind == "signal":
                    job[2].set()
                elif kind == "reset":
                    self._clear_graph()
                elif gen != self._generation:
                    continue
                elif kind == "transform":
                    with self._lock:
                        self._odom = {k: job[2] @ p for k, p in self._odom.items()}
                    self._store._frames = [replace(k, pose=job[2] @ k.pose) for k in self._store._frames]
                elif kind == "keyframe":
                    self._keyframe(*job[2:])
            except Exception as e:  # a bad frame must not stop loop closure for the session
                self.stats.last_error = f"{type(e).__name__}: {e}"
            finally:
                if job[0] == "keyframe" and job[4] is not None:
                    with self._lock:
                        self._pending_queries = max(0, self._pending_queries - 1)

    def _keyframe(self, kf: Keyframe, odometry: Edge | None, frame: FrameFeatures | None, live_ids: list[int],
                  register: Register | None) -> None:
        kf_id, odom_pose = kf.id, kf.pose
        with self._lock:
            self._odom[kf_id] = odom_pose
            if odometry is not None and odometry.i in self._odom:
                self._edges.append(odometry)
        self._path[kf_id] = (self._path.get(odometry.i, 0.0) + float(np.linalg.norm(odometry.T_i_from_j[:3, 3]))
                             if odometry is not None else max(self._path.values(), default=0.0))
        live = set(live_ids)
        store = self._store
        store._frames = [k for k in store._frames if k.id in live] + [kf]
        store._index = None
        if frame is None:
            return
        self.stats.queries += 1
        p = self.policy
        # votes among the old keyframes only: the new one and its neighbours would take them all
        old = KeyframeMap(max_keyframes=1 << 30, _frames=[k for k in store._frames if k.id <= kf_id - p.min_separation])
        candidates = [k for k, _votes in old.candidates(frame.descriptors, p.candidates)]
        hyps = [h for h in (self._verify(c, kf_id, odom_pose, frame, register) for c in candidates) if h is not None]
        self.stats.verified += len(hyps)
        accepted = self._agreed(kf_id, hyps)
        self._recent.append((kf_id, [h for h in hyps if h not in accepted]))
        while len(self._recent) > self.policy.window:
            self.stats.rejected_by_agreement += len(self._recent.popleft()[1])  # never confirmed
        if accepted:
            with self._lock:
                self._edges.extend(h.edge for h in accepted)
            self.stats.accepted += len(accepted)
            self._optimise()

    def _verify(self, cand, kf_id: int, odom_pose: np.ndarray, frame: FrameFeatures, register: Register
                ) -> _Hypothesis | None:
        if cand.id not in self._odom:
            return None
        try:
            reg = register(cand.features, frame)  # T_new_from_old
        except ValueError:
            return None
        p = self.policy
        if not (reg.success and reg.fitness >= p.min_fitness and reg.num_inliers >= p.min_inliers):
            return None
        cov = registration_covariance(cand.features.cloud, frame.cloud, reg.T_tgt_from_src, self.distance,
                                      self.sigma_floor, pairs=reg.pairs)
        edge = loop_edge(cand.id, kf_id, reg.T_tgt_from_src, cov, reg.fitness)
        return _Hypothesis(edge, drift_of(self._odom[cand.id], edge.T_i_from_j, odom_pose))

    def _agreed(self, kf_id: int, hyps: list[_Hypothesis]) -> list[_Hypothesis]:
        """The hypotheses something independent agrees with (module docstring, step 3)."""
        p = self.policy
        snap = self.snapshot
        out = []
        others = [h for _k, hs in self._recent for h in hs]
        for h in hyps:
            e = h.edge
            if e.i in snap.map_poses and e.j in snap.map_poses:
                pred = np.linalg.inv(snap.map_poses[e.i]) @ snap.map_poses[e.j]
                ok = agree(pred, e.T_i_from_j, p.agree_m, p.agree_deg)
            else:
                ok = False
            if not ok:
                ok = any(o.edge.i != e.i and agree(o.drift, h.drift, p.agree_m, p.agree_deg)
                         for o in hyps + others if o is not h)
            if not ok:
                path = abs(self._path.get(e.j, 0.0) - self._path.get(e.i, 0.0))
                ok = agree(np.eye(4), h.drift, p.agree_m + p.drift_per_m * path, p.agree_deg + p.drift_deg_per_m * path)
            if ok:
                out.append(h)
        # a hypothesis from a previous keyframe that a new one confirms is accepted too
        confirmed = [o for o in others if any(agree(o.drift, h.drift, p.agree_m, p.agree_deg) and o.edge.i != h.edge.i
                                              for h in out)]
        if confirmed:
            for _k, hs in self._recent:
                hs[:] = [o for o in hs if o not in confirmed]
        return out + confirmed

    def _optimise(self) -> None:
        with self._lock:
            odom, edges = dict(self._odom), list(self._edges)
        snap = self.snapshot
        guess = {k: snap.map_poses[k] if k in snap.map_poses else snap.latest_correction @ p for k, p in odom.items()}
        res: GraphResult = optimize(guess, edges, fixed=min(odom))
        self.stats.last_optimisation_s = res.seconds
        self.stats.rejected_by_kernel = len(res.rejected)
        newest = max(res.poses)
        self.snapshot = LoopSnapshot(res.poses, odom, tuple(e for e in edges if e.kind == LOOP),
                                     res.poses[newest] @ np.linalg.inv(odom[newest]), snap.optimisations + 1)


# ----------------------------------------------------------------------------- merging maps


@dataclass(frozen=True)
class MergeReport:
    """How two maps were joined: the transform found, the keyframe pairs that agreed on it, and
    what the optimisation did."""

    T_a_from_b: np.ndarray  # (4, 4) map A from map B, before the joint optimisation
    pairs: tuple[tuple[int, int], ...]  # (keyframe id in A, keyframe id in B) of the agreeing pairs
    tried: int  # registrations run
    verified: int  # of those, verified
    id_offset: int  # B's keyframe k is k + id_offset in the merged map
    rejected_by_kernel: int
    seconds: float


def chain_edges(kmap: KeyframeMap, min_variance: float = 1e-6) -> list[Edge]:
    """Odometry-like edges between consecutive keyframes (by id) of a map that stores none (a
    version 1 map, or one built without loop closure): each measures the stored relative pose,
    with the growth of the stored covariance (at least ``min_variance`` per axis) as its
    uncertainty."""
    from ukpgan_ros.posegraph import odometry_edge

    frames = sorted(kmap, key=lambda k: k.id)
    out = []
    for a, b in zip(frames, frames[1:]):
        grow = b.covariance - a.covariance
        grow = 0.5 * (grow + grow.T)
        w, V = np.linalg.eigh(grow)
        grow = (V * np.maximum(w, min_variance)) @ V.T
        out.append(odometry_edge(a.id, a.pose, b.id, b.pose, grow))
    return out


def merge_maps(a: KeyframeMap, b: KeyframeMap, register: Register, distance: float, sigma_floor: float = 0.0,
               policy: LoopPolicy | None = None, min_pairs: int = 3) -> tuple[KeyframeMap, MergeReport]:
    """Join two saved maps of one place into one map in A's frame, with no guess.

    Each keyframe of B asks A's descriptor index for ``policy.candidates`` keyframes; each pair
    is registered (``register(kf_of_a, kf_of_b)``: the pipeline's RANSAC + ICP matching keypoint
    descriptors, as stored maps keep no dense ones) and verified (``policy.min_fitness``,
    ``policy.min_inliers``). Each verified pair implies a map-to-map transform ``T_a_from_b``;
    the largest set of pairs, from at least ``min_pairs`` different keyframes of B, that agree on
    it within ``policy.agree_m`` / ``agree_deg`` wins. Then B's keyframes (ids offset past A's)
    are moved into A's frame, the agreeing pairs become loop edges beside both maps' own edges
    (:func:`chain_edges` for a map without any) and the graph is optimised with A's first
    keyframe fixed. MapFormatError when the maps hold different descriptors or voxels, or when
    too few pairs agree (the maps may not overlap).
    """
    import time

    from ukpgan_ros.maps import MapFormatError
    from ukpgan_ros.posegraph import optimize

    t0 = time.perf_counter()
    policy = policy or LoopPolicy()
    for key in ("descriptor", "voxel_size"):
        if key in a.meta and key in b.meta and a.meta[key] != b.meta[key]:
            raise MapFormatError(f"the maps differ in {key} ({a.meta[key]} and {b.meta[key]}): they cannot be merged")
    hyps: list[tuple[Keyframe, Keyframe, RegistrationResult, np.ndarray]] = []
    tried = 0
    for kb in b:
        for ka, _votes in a.candidates(kb.features.descriptors, policy.candidates):
            tried += 1
            try:
                reg = register(ka.features, kb.features)  # T_kb_from_ka
            except ValueError:
                continue
            if reg.success and reg.fitness >= policy.min_fitness and reg.num_inliers >= policy.min_inliers:
                T_ab = ka.pose @ np.linalg.inv(reg.T_tgt_from_src) @ np.linalg.inv(kb.pose)
                hyps.append((ka, kb, reg, T_ab))
    best: list[int] = []
    for n, h in enumerate(hyps):
        group = [m for m, o in enumerate(hyps) if agree(h[3], o[3], policy.agree_m, policy.agree_deg)]
        if len({hyps[m][1].id for m in group}) > len({hyps[m][1].id for m in best}):
            best = group
    kbs = {hyps[m][1].id for m in best}
    if len(kbs) < min_pairs:
        raise MapFormatError(f"the maps do not overlap enough to merge: {len(hyps)} of {tried} keyframe pairs "
                             f"verified, at most {len(kbs)} keyframes of the second map agree on one transform "
                             f"(need {min_pairs})")
    # the transform of the agreeing pair with the highest fitness places B for the optimiser
    T_ab = max((hyps[m] for m in best), key=lambda h: h[2].fitness)[3]
    offset = max(max(k.id for k in a) + 1, a._next_id)
    a_edges = a.edges or chain_edges(a)
    b_edges = [replace(e, i=e.i + offset, j=e.j + offset) for e in (b.edges or chain_edges(b))]
    frames = list(a) + [replace(kb, id=kb.id + offset, pose=T_ab @ kb.pose, odom_pose=None,
                                covariance=moved_covariance(T_ab, kb.covariance, "keyframe covariance")) for kb in b]
    loops = []
    for m in best:
        ka, kb, reg, _T = hyps[m]
        cov = registration_covariance(ka.features.cloud, kb.features.cloud, reg.T_tgt_from_src, distance, sigma_floor,
                                     pairs=reg.pairs)
        loops.append(loop_edge(ka.id, kb.id + offset, reg.T_tgt_from_src, cov, reg.fitness))
    edges = a_edges + b_edges + loops
    res = optimize({k.id: k.pose for k in frames}, edges, fixed=min(k.id for k in a))
    frames = [replace(k, pose=res.poses[k.id]) for k in frames]
    merged = KeyframeMap(max(a.max_keyframes, len(frames)), a.spacing_m, a.spacing_deg, dict(a.meta), frames,
                         offset + b._next_id, edges=edges)
    merged.meta.pop("origin", None)
    report = MergeReport(T_ab, tuple((hyps[m][0].id, hyps[m][1].id) for m in best), tried, len(hyps), offset,
                         len(res.rejected), time.perf_counter() - t0)
    return merged, report
