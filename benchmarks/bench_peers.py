"""Side by side with the peers a robot user would pick instead, on the same depth frames or LiDAR scans.

    python benchmarks/bench_peers.py [--data DIR|synthetic|synthetic_lidar] [--frames N] [--start 0]
        [--strides ...] [--voxel V | --voxels 0.05 0.025 0.015] [--thresholds auto|rgbd|lidar]
        [--max-range M] [--methods ukpgan iss open3d small_gicp kiss_icp kiss_matcher] [--max-pairs 40]
        [--threads 2] [--o3d-icp down|full] [--out out/bench_peers]

The sensor profile (``ukpgan_ros.evaluation.metrics``; auto: LiDAR for point-cloud scan
sequences such as a KITTI folder or synthetic_lidar, RGB-D for depth images) sets the success
thresholds and the defaults: RGB-D 5 cm voxel, 5 m range, strides 1 10 30 60, 400 frames; LiDAR
0.3 m voxel, 100 m range, strides 1 2 5 10 20, 60 frames.

Every method runs as a *stream* over the frames start, start+s, start+2s, ... (stride s): frame
k is registered to frame k-s, the way an odometry node sees them, all in one process on the same
clouds (read once; reading is not timed). The streams advance together, frame by frame in a
rotating order, so load from other processes on a shared machine hits every method alike and
the ratios stay comparable even when absolute times drift.

- ukpgan / iss: ``KeypointPipeline`` in consecutive mode; the time is ``process()`` (points in ->
  keypoints + transform out). After a failed registration the pipeline keeps its last good frame
  as the anchor, so the next pair is scored against that frame (``stale`` in the JSON counts them).
- open3d: Open3D's global-registration tutorial on the whole voxel cloud: voxel downsample,
  normals (2 x voxel, 30 nn), FPFH (5 x voxel, 100 nn), ``registration_ransac_based_on_feature_matching``
  (mutual filter, 1.5 x voxel, edge length 0.9 + distance checkers, 100 k iterations / 0.999),
  point-to-plane ICP at the tutorial's 0.4 x voxel. The tutorial refines on the original clouds;
  on a 640x480 depth frame that is ~275 k points (normals + ICP alone cost ~2 s/frame here), so by
  default ICP runs on the voxel clouds (``--o3d-icp full`` for the literal recipe). The previous
  frame's cloud and features are reused: a frame's time is its own preprocessing + matching.
- small_gicp: ``preprocess_points`` (voxel downsample + covariances, 10 nn) and ``align`` (GICP)
  against the previous frame's cloud and KD-tree, from a constant-velocity guess (the previous
  pair's transform); library defaults otherwise (1 m correspondence distance, 20 iterations).
- kiss_icp: its Python pipeline (``KissICP.register_frame``), max range as --max-range, voxel as
  given, no deskewing (a depth camera has no scan time; the KITTI scans carry no point times);
  pair transform = inv(pose_prev) @ pose_cur. It registers to its local map of all earlier frames,
  not only the previous one.
- kiss_matcher: KISS-Matcher's global registration (``KISSMatcher.estimate``: voxel sampling,
  Faster-PFH, graph-theoretic pruning, GNC-TLS solver) of the current cloud to the previous one,
  library defaults at the given voxel. Its API takes both clouds each call, so its time includes
  preprocessing the previous cloud again (the others reuse it).

Success of a pair: RE and TE below the profile's strict limits against ground truth (RGB-D:
5 deg / 10 cm; LiDAR: 5 deg / 0.6 m), and the method did not itself report failure (ukpgan_ros:
``registration.success``; small_gicp: ``converged``; kiss_matcher: ``valid``; Open3D's recipe
and KISS-ICP report none). The JSON also has the loose rate (RGB-D 15 deg / 30 cm; LiDAR KITTI's
5 deg / 2 m), and, per stride, how many pairs a zero-motion guess would pass (the strict
threshold is lenient at stride 1).
Writes results.json, results.md and time_vs_success.png under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALL_METHODS = ("ukpgan", "iss", "open3d", "small_gicp", "kiss_icp", "kiss_matcher")
BASELINE = "open3d"
PINNED = {"small_gicp": "1.0.1", "kiss-icp": "1.3.0", "kiss-matcher": "1.0.2"}  # setup.py extras_require["bench"]
PEER_MODULES = {"small_gicp": "small_gicp", "kiss_icp": "kiss_icp", "kiss_matcher": "kiss_matcher"}
KINECT_MAX_RANGE = 5.0  # m
LIDAR_MAX_RANGE = 100.0  # m (an HDL-64E reaches ~120 m; KITTI's scans end near 80 m)
# sensor -> (max range [m], strides, frames) defaults
SENSOR_DEFAULTS = {"rgbd": (KINECT_MAX_RANGE, (1, 10, 30, 60), 400), "lidar": (LIDAR_MAX_RANGE, (1, 2, 5, 10, 20), 60)}


def _profiles():
    from ukpgan_ros.evaluation.metrics import PROFILES, sensor_profile

    return PROFILES, sensor_profile


# The RGB-D thresholds under their old names: (max RE [deg], max TE [m])
STRICT, LOOSE = (5.0, 0.10), (15.0, 0.30)


def _open_sequence(spec, **kwargs):
    from ukpgan_ros.datasets import open_sequence

    return open_sequence(spec, **kwargs)


def _error_functions():
    from ukpgan_ros.transforms import rotation_error_deg, translation_error

    return rotation_error_deg, translation_error


# ----------------------------------------------------------------------------- methods


@dataclass
class Step:
    """One registered frame: T_prev_from_curr (p_prev = T @ p_curr) and what the method says."""

    T: np.ndarray
    ok: bool  # the method's own verdict (True where it gives none)
    working: int  # points the method registers for this frame
    back: int = 1  # stream steps between this frame and the frame it was registered to
    extra: dict = field(default_factory=dict)


class StreamMethod:
    """A method as a stream: ``first`` takes frame 0, ``next`` registers each later frame to an
    earlier one. Both take (N, 3) float32 points in the optical frame."""

    name = ""

    def first(self, points: np.ndarray) -> int:
        raise NotImplementedError

    def next(self, points: np.ndarray) -> Step:
        raise NotImplementedError

    def close(self) -> None:
        pass


class UkpganRos(StreamMethod):
    def __init__(self, detector: str, voxel: float, threads: int, max_range: float = KINECT_MAX_RANGE):
        from ukpgan_ros.config import PipelineConfig
        from ukpgan_ros.pipeline import KeypointPipeline

        self.name = detector
        self.pipe = KeypointPipeline(PipelineConfig(detector=detector, voxel_size=voxel, registration="consecutive",
                                                    max_range=max_range))
        self._pos = 0
        self._anchor_pos = 0

    def _became_anchor(self, r) -> bool:
        # consecutive mode: a placed frame is the next anchor (FrameToFrame also re-anchors on a
        # frame that fails lost_after times in a row, and then places nothing)
        anchor = getattr(self.pipe.tracker, "_anchor", None)
        if anchor is None:
            return r.registration is None or r.registration.success
        return anchor.keypoints is r.keypoints

    def first(self, points):
        self.pipe.reset()
        r = self.pipe.process(points)
        self._pos = self._anchor_pos = 0
        return r.working_points

    def next(self, points):
        self._pos += 1
        back = self._pos - self._anchor_pos
        r = self.pipe.process(points)
        if self._became_anchor(r):
            self._anchor_pos = self._pos
        reg = r.registration
        return Step(reg.T_tgt_from_src, bool(reg.success), r.working_points, back,
                    {"keypoints": len(r.keypoints), "matches": reg.num_correspondences, "inliers": reg.num_inliers,
                     "fitness": reg.fitness, "stages_ms": {k: 1e3 * v for k, v in r.timings.items()}})

    def close(self):
        self.pipe.release()


class Open3DTutorial(StreamMethod):
    name = "open3d"

    def __init__(self, voxel: float, threads: int, icp_on: str = "down", seed: int = 0):
        import open3d as o3d

        self.o3d, self.reg = o3d, o3d.pipelines.registration
        self.v, self.icp_on = float(voxel), icp_on
        self.prev = None
        o3d.utility.random.seed(seed)

    def _prep(self, points):
        o3d, v = self.o3d, self.v
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
        down = pcd.voxel_down_sample(v)
        down.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * v, max_nn=30))
        fpfh = self.reg.compute_fpfh_feature(down, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * v, max_nn=100))
        if self.icp_on == "full":
            pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * v, max_nn=30))
            return pcd, down, fpfh
        return down, down, fpfh

    def first(self, points):
        self.prev = self._prep(points)
        return len(self.prev[1].points)

    def next(self, points):
        reg, v = self.reg, self.v
        cur = self._prep(points)
        (src_icp, src, src_f), (tgt_icp, tgt, tgt_f) = cur, self.prev
        dist = 1.5 * v
        ransac = reg.registration_ransac_based_on_feature_matching(
            src, tgt, src_f, tgt_f, True, dist,
            reg.TransformationEstimationPointToPoint(False), 3,
            [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(dist)],
            reg.RANSACConvergenceCriteria(100000, 0.999))
        icp = reg.registration_icp(src_icp, tgt_icp, 0.4 * v, ransac.transformation,
                                   reg.TransformationEstimationPointToPlane())
        self.prev = cur
        return Step(np.asarray(icp.transformation).copy(), True, len(src.points),
                    extra={"icp_points": len(src_icp.points), "ransac_fitness": ransac.fitness,
                           "icp_fitness": icp.fitness})


class SmallGicp(StreamMethod):
    name = "small_gicp"

    def __init__(self, voxel: float, threads: int):
        import small_gicp

        self.sg, self.v, self.threads = small_gicp, float(voxel), int(threads)
        self.prev = None
        self.velocity = np.eye(4)

    def _prep(self, points):
        return self.sg.preprocess_points(points.astype(np.float64), downsampling_resolution=self.v,
                                         num_threads=self.threads)

    def first(self, points):
        self.prev = self._prep(points)
        self.velocity = np.eye(4)
        return self.prev[0].size()

    def next(self, points):
        source, source_tree = self._prep(points)
        target, target_tree = self.prev
        # T_target_source maps source (current) points into the target (previous) frame.
        res = self.sg.align(target, source, target_tree, init_T_target_source=self.velocity,
                            registration_type="GICP", num_threads=self.threads)
        T = np.asarray(res.T_target_source, np.float64).copy()
        self.prev, self.velocity = (source, source_tree), T
        return Step(T, bool(res.converged), source.size(),
                    extra={"iterations": int(res.iterations), "inliers": int(res.num_inliers)})


class KissIcp(StreamMethod):
    name = "kiss_icp"

    def __init__(self, voxel: float, threads: int, max_range: float = KINECT_MAX_RANGE):
        from kiss_icp.config import KISSConfig
        from kiss_icp.config.config import DataConfig, MappingConfig, RegistrationConfig
        from kiss_icp.kiss_icp import KissICP

        cfg = KISSConfig(
            data=DataConfig(max_range=max_range, min_range=0.0, deskew=False),
            mapping=MappingConfig(voxel_size=float(voxel)),
            registration=RegistrationConfig(max_num_threads=int(threads)),
        )
        self.odom = KissICP(cfg)
        self._no_stamps = np.zeros(0)

    def _register(self, points):
        _, source = self.odom.register_frame(points.astype(np.float64), self._no_stamps)
        return len(source)

    def first(self, points):
        return self._register(points)

    def next(self, points):
        prev = self.odom.last_pose.copy()
        n = self._register(points)
        # KISS-ICP poses map the sensor frame into the first frame's: T_prev_from_curr.
        return Step(np.linalg.inv(prev) @ self.odom.last_pose, True, n)


class KissMatcher(StreamMethod):
    name = "kiss_matcher"

    def __init__(self, voxel: float, threads: int):
        import kiss_matcher

        self.matcher = kiss_matcher.KISSMatcher(kiss_matcher.KISSMatcherConfig(float(voxel)))
        self.prev = None

    def first(self, points):
        self.prev = np.ascontiguousarray(points, np.float32)
        return len(self.prev)

    def next(self, points):
        cur = np.ascontiguousarray(points, np.float32)
        self.matcher.reset()
        sol = self.matcher.estimate(cur, self.prev)  # maps source (current) into target (previous)
        T = np.eye(4)
        T[:3, :3] = np.asarray(sol.rotation, np.float64)
        T[:3, 3] = np.asarray(sol.translation, np.float64).ravel()
        inliers = int(self.matcher.get_num_final_inliers())
        self.prev = cur
        return Step(T, bool(sol.valid), len(cur), extra={"inliers": inliers})


def method_factories(voxel: float, threads: int, o3d_icp: str = "down",
                     max_range: float = KINECT_MAX_RANGE) -> dict[str, Callable[[], StreamMethod]]:
    return {
        "ukpgan": lambda: UkpganRos("ukpgan", voxel, threads, max_range),
        "iss": lambda: UkpganRos("iss", voxel, threads, max_range),
        "open3d": lambda: Open3DTutorial(voxel, threads, o3d_icp),
        "small_gicp": lambda: SmallGicp(voxel, threads),
        "kiss_icp": lambda: KissIcp(voxel, threads, max_range),
        "kiss_matcher": lambda: KissMatcher(voxel, threads),
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def availability(methods: list[str]) -> tuple[list[str], dict[str, str]]:
    """(methods that can run, {skipped method: reason})."""
    import importlib

    ok, skipped = [], {}
    for m in methods:
        if m not in ALL_METHODS:
            skipped[m] = f"unknown method (one of {', '.join(ALL_METHODS)})"
            continue
        mod = PEER_MODULES.get(m)
        if mod is not None:
            try:
                importlib.import_module(mod)
            except ImportError as e:
                missing = isinstance(e, ModuleNotFoundError) and e.name == mod
                skipped[m] = "not installed (pip install .[bench])" if missing else f"import failed: {e}"
                continue
        if m == "ukpgan":
            from ukpgan_ros.config import PipelineConfig

            path = Path(PipelineConfig().resolved_model_path)
            if not path.is_file():
                skipped[m] = f"no model weights at {path}"
                continue
        ok.append(m)
    return ok, skipped


# ----------------------------------------------------------------------------- the run


@dataclass
class PairRecord:
    method: str
    voxel: float
    stride: int
    frame: int  # sequence index of the registered frame
    ref: int  # sequence index of the frame it was registered to
    ms: float
    re_deg: float
    te_m: float
    ok_self: bool
    working: int
    success: bool
    success_loose: bool
    extra: dict = field(default_factory=dict)


def stream_indices(n_seq: int, start: int, frames: int, stride: int, max_pairs: int) -> list[int]:
    """Sequence indices start, start+stride, ... within ``frames`` frames, at most max_pairs + 1."""
    last = min(start + frames, n_seq) - 1
    pairs = min(max_pairs, max(0, (last - start) // stride))
    return [start + k * stride for k in range(pairs + 1)]


def run_streams(factories: dict[str, Callable[[], StreamMethod]], clouds: dict, poses: dict, idx: list[int],
                voxel: float, stride: int, warmup: bool = True, strict: tuple[float, float] = STRICT,
                loose: tuple[float, float] = LOOSE) -> list[PairRecord]:
    """Run every method as its own stream over frames ``idx``, interleaved frame by frame (the
    order rotating), so that load from other processes hits them alike; time each frame after
    the first. Success: RE and TE below ``strict`` (and ``loose``): (max RE [deg], max TE [m])."""
    rot_err, trans_err = _error_functions()
    names = list(factories)
    if warmup and len(idx) > 1:  # first calls allocate, load models, spin up thread pools
        for name in names:
            m = factories[name]()
            try:
                m.first(clouds[idx[0]])
                m.next(clouds[idx[1]])
            finally:
                m.close()
    streams: dict[str, StreamMethod] = {}
    out = []
    try:
        for name in names:
            streams[name] = factories[name]()
            streams[name].first(clouds[idx[0]])
        for k in range(1, len(idx)):
            shift = k % len(names)
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                s = streams[name].next(clouds[idx[k]])
                ms = 1e3 * (time.perf_counter() - t0)
                i, j = idx[k], idx[k - s.back]
                T_gt = np.linalg.inv(poses[j]) @ poses[i]
                re, te = rot_err(s.T, T_gt), trans_err(s.T, T_gt)
                out.append(PairRecord(
                    name, voxel, stride, i, j, ms, re, te, s.ok, int(s.working),
                    bool(s.ok and re < strict[0] and te < strict[1]),
                    bool(s.ok and re < loose[0] and te < loose[1]), s.extra))
    finally:
        for m in streams.values():
            m.close()
    return out


def summarize(records: list[PairRecord]) -> list[dict]:
    """One row per (voxel, stride, method), with the ratio to Open3D's median time."""
    groups: dict[tuple, list[PairRecord]] = {}
    for r in records:
        groups.setdefault((r.voxel, r.stride, r.method), []).append(r)
    rows = []
    for (voxel, stride, method), rs in groups.items():
        ms = np.array([r.ms for r in rs])
        rows.append({
            "method": method, "voxel": voxel, "stride": stride, "pairs": len(rs),
            "frames": [rs[0].ref, rs[-1].frame],
            "ms_median": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90)),
            "success": float(np.mean([r.success for r in rs])),
            "success_loose": float(np.mean([r.success_loose for r in rs])),
            "self_failures": int(sum(not r.ok_self for r in rs)),
            "stale": int(sum(r.frame - r.ref != stride for r in rs)),
            "re_deg_median": float(np.median([r.re_deg for r in rs])),
            "te_cm_median": 100.0 * float(np.median([r.te_m for r in rs])),
            "working_points": float(np.median([r.working for r in rs])),
        })
    base = {(r["voxel"], r["stride"]): r["ms_median"] for r in rows if r["method"] == BASELINE}
    base_ms = {(r.voxel, r.stride, r.frame): r.ms for r in records if r.method == BASELINE}
    for r in rows:
        b = base.get((r["voxel"], r["stride"]))
        r["ratio_to_open3d"] = r["ms_median"] / b if b else None
        # Per frame against Open3D's time on the same frame, measured moments apart: steadier
        # than the ratio of medians when a neighbour's load comes and goes.
        paired = [x.ms / base_ms[(x.voxel, x.stride, x.frame)] for x in groups[(r["voxel"], r["stride"], r["method"])]
                  if (x.voxel, x.stride, x.frame) in base_ms]
        r["ratio_to_open3d_paired"] = float(np.median(paired)) if paired else None
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    rows.sort(key=lambda r: (r["voxel"], r["stride"], order.get(r["method"], 99)))
    return rows


def motion_stats(poses: dict, idx: list[int], strict: tuple[float, float] = STRICT) -> dict:
    """Ground-truth motion of the stream's pairs (median deg, cm) and the share of pairs that a
    zero-motion guess passes at the strict threshold (it is lenient when the camera barely moves)."""
    rot_err, trans_err = _error_functions()
    re, te = [], []
    for a, b in zip(idx[:-1], idx[1:]):
        T = np.linalg.inv(poses[a]) @ poses[b]
        re.append(rot_err(np.eye(4), T))
        te.append(trans_err(np.eye(4), T))
    re, te = np.array(re), np.array(te)
    return {"motion_deg_median": float(np.median(re)), "motion_cm_median": 100.0 * float(np.median(te)),
            "zero_motion_success": float(np.mean((re < strict[0]) & (te < strict[1])))}


def run_benchmark(seq, *, methods=ALL_METHODS, voxels=(0.05,), strides=(1, 10, 30, 60), frames: int = 400,
                  start: int = 0, max_pairs: int = 40, threads: int = 2, o3d_icp: str = "down",
                  warmup: bool = True, log: Callable[[str], None] = print, thresholds=None,
                  max_range: float | None = None) -> dict:
    """The benchmark's core: every method as a stream over the same frames, per voxel and stride.
    ``thresholds``: a ``metrics.Thresholds`` (default: the sequence's sensor profile) for success;
    ``max_range``: range limit of ukpgan_ros and KISS-ICP [m] (default: the profile's sensor)."""
    th = thresholds or _profiles()[1](seq)
    max_range = max_range or SENSOR_DEFAULTS[th.name][0]
    runnable, skipped = availability(list(methods))
    for m, why in skipped.items():
        log(f"skipped {m}: {why}")
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    plans = {s: stream_indices(len(seq), start, frames, s, max_pairs) for s in strides}
    need = sorted({i for idx in plans.values() for i in idx})
    clouds, poses = {}, {}
    for i in need:
        f = seq[i]
        if f.pose is None:
            raise ValueError(f"frame {i} has no ground-truth pose")
        clouds[i], poses[i] = f.points(), np.asarray(f.pose, np.float64)
    log(f"data {getattr(seq, 'name', '?')}: {len(need)} frames read, "
        f"{np.median([len(c) for c in clouds.values()]):.0f} points per frame (median)")
    records: list[PairRecord] = []
    motion = {}
    for voxel in voxels:
        factories = method_factories(voxel, threads, o3d_icp, max_range)
        for stride in strides:
            idx = plans[stride]
            if len(idx) < 2:
                log(f"stride {stride}: fewer than 2 frames in range, skipped")
                continue
            motion[stride] = motion_stats(poses, idx, th.strict)
            t0 = time.perf_counter()
            recs = run_streams({m: factories[m] for m in runnable}, clouds, poses, idx, voxel, stride, warmup,
                               th.strict, th.loose)
            records += recs
            for m in runnable:
                rs = [r for r in recs if r.method == m]
                ms, ok = np.median([r.ms for r in rs]), 100 * np.mean([r.success for r in rs])
                ok_loose = 100 * np.mean([r.success_loose for r in rs])
                log(f"  voxel {voxel} stride {stride:>3} {m:<12} {len(rs)} pairs, {ms:7.1f} ms/frame, "
                    f"success {ok:5.1f}% (loose {ok_loose:5.1f}%)")
            log(f"  ({time.perf_counter() - t0:.0f} s, load average {_loadavg()})")
    return {
        "rows": summarize(records),
        "pairs": [asdict(r) for r in records],
        "skipped": skipped,
        "motion": {str(k): v for k, v in motion.items()},
        "frames": {str(s): [idx[0], idx[-1], len(idx) - 1] for s, idx in plans.items()},
        "sensor": th.name, "max_range": max_range,
        "thresholds": {"strict": th.strict, "loose": th.loose},
    }


# ----------------------------------------------------------------------------- output


def _fmt(x, spec, none="-"):
    return none if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| method | voxel m | stride | pairs | ms/frame median | p90 | ratio to Open3D | paired "
        "| success % | loose % | RE deg | TE cm | working pts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['voxel']:g} | {r['stride']} | {r['pairs']} | {r['ms_median']:.1f} | {r['ms_p90']:.1f} "
            f"| {_fmt(r['ratio_to_open3d'], '.2f')} | {_fmt(r['ratio_to_open3d_paired'], '.2f')} "
            f"| {100 * r['success']:.0f} | {100 * r['success_loose']:.0f} | {r['re_deg_median']:.2f} | {r['te_cm_median']:.2f} | {r['working_points']:.0f} |")
    return "\n".join(lines)


def plot_time_vs_success(rows: list[dict], path: Path, strict: tuple[float, float] = STRICT) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    voxels = sorted({r["voxel"] for r in rows})
    fig, axes = plt.subplots(1, len(voxels), figsize=(6.5 * len(voxels), 4.8), squeeze=False)
    colors = dict(zip(ALL_METHODS, ("tab:red", "tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:brown")))
    markers = {1: "o", 2: "v", 5: "P", 10: "s", 20: "X", 30: "^", 60: "D"}
    for ax, voxel in zip(axes[0], voxels):
        for m in ALL_METHODS:
            rs = sorted((r for r in rows if r["voxel"] == voxel and r["method"] == m), key=lambda r: r["stride"])
            if not rs:
                continue
            x, y = [r["ms_median"] for r in rs], [100 * r["success"] for r in rs]
            ax.plot(x, y, "-", color=colors[m], alpha=0.5, label=m)
            for r, xi, yi in zip(rs, x, y):
                ax.plot(xi, yi, markers.get(r["stride"], "x"), color=colors[m])
                ax.annotate(f"{r['stride']}", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("ms per frame (median, log)")
        ax.set_ylabel(f"pair success % (RE < {strict[0]:g} deg, TE < {strict[1] * 100:g} cm)")
        ax.set_ylim(-3, 103)
        ax.set_title(f"voxel {voxel:g} m; labels: frame stride")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    default_data = Path(__file__).resolve().parents[2] / "shared/data/7scenes-redkitchen"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(default_data) if default_data.exists() else "synthetic",
                    help="sequence: 7-Scenes/TUM folder, KITTI Velodyne or PCD/PLY scan folder, bag, synthetic, "
                         "synthetic_lidar")
    ap.add_argument("--thresholds", default="auto", choices=("auto", "rgbd", "lidar"),
                    help="sensor profile for success and defaults (auto: from the data)")
    ap.add_argument("--frames", type=int, help="frames covered from --start (default: RGB-D 400, LiDAR 60)")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--strides", type=int, nargs="+", help="default: RGB-D 1 10 30 60, LiDAR 1 2 5 10 20")
    ap.add_argument("--voxel", type=float, help="default: the profile's (RGB-D 0.05, LiDAR 0.3)")
    ap.add_argument("--max-range", type=float, help="ukpgan_ros and KISS-ICP range limit [m] (RGB-D 5, LiDAR 100)")
    ap.add_argument("--voxels", type=float, nargs="+", help="several voxel sizes (overrides --voxel)")
    ap.add_argument("--methods", nargs="+", default=list(ALL_METHODS))
    ap.add_argument("--max-pairs", type=int, default=40, help="pairs per stride at most")
    ap.add_argument("--threads", type=int, default=2, help="threads for every method (OpenMP, torch, TBB)")
    ap.add_argument("--o3d-icp", choices=("down", "full"), default="down",
                    help="Open3D ICP on the voxel clouds (default) or, as the tutorial, the full clouds")
    ap.add_argument("--out", default="out/bench_peers")
    args = ap.parse_args(argv)
    # Open3D's OpenMP pool is sized when the library loads: set it before anything imports it.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    start_load = _loadavg()
    print(f"load average at start: {start_load} ({os.cpu_count()} cores)")
    import open3d

    versions = {"python": platform.python_version(), "numpy": np.__version__, "open3d": open3d.__version__,
                "torch": _version("torch"), **{dist: _version(dist) for dist in PINNED}}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    for dist, pin in PINNED.items():
        if versions[dist] and versions[dist] != pin:
            print(f"note: {dist} {versions[dist]} is installed, the bench extra pins {pin}")
    profiles, sensor_profile = _profiles()
    if args.data in ("synthetic", "synthetic_lidar"):
        th = profiles["lidar" if args.data == "synthetic_lidar" else "rgbd"]
        if args.thresholds != "auto":
            th = profiles[args.thresholds]
        max_range, strides, frames = SENSOR_DEFAULTS[th.name]
        seq = _open_sequence(args.data, num_frames=args.start + (args.frames or frames))
    else:
        seq = _open_sequence(args.data)
    th = profiles[args.thresholds] if args.thresholds != "auto" else sensor_profile(seq)
    max_range, strides, frames = SENSOR_DEFAULTS[th.name]
    args.max_range, args.strides = args.max_range or max_range, args.strides or list(strides)
    args.frames, args.voxel = args.frames or frames, args.voxel or th.voxel
    voxels = args.voxels or [args.voxel]
    print(f"sensor profile {th.name}: success RE < {th.strict[0]:g} deg & TE < {th.strict[1]:g} m "
          f"(loose {th.loose[0]:g} deg & {th.loose[1]:g} m); voxel {voxels}, max range {args.max_range:g} m")
    t0 = time.perf_counter()
    res = run_benchmark(seq, methods=args.methods, voxels=voxels, strides=args.strides, frames=args.frames,
                        start=args.start, max_pairs=args.max_pairs, threads=args.threads, o3d_icp=args.o3d_icp,
                        thresholds=th, max_range=args.max_range)
    wall = time.perf_counter() - t0
    end_load = _loadavg()

    table = markdown_table(res["rows"])
    notes = [
        f"data {args.data}; sensor profile {th.name} (success RE < {th.strict[0]:g} deg & TE < {th.strict[1]:g} m, "
        f"loose {th.loose[0]:g} deg & {th.loose[1]:g} m; max range {args.max_range:g} m); strides {args.strides}; frames (first, last, pairs) per stride: "
        + "; ".join(f"{s}: {v[0]}..{v[1]} ({v[2]})" for s, v in res["frames"].items()),
        "time = one frame in -> transform out, after the stream's first frame, methods interleaved frame by frame; "
        "the previous frame's cloud/features are reused (nothing recomputed per pair); ratio = method's median / open3d's median at the same "
        "voxel and stride; paired = median over frames of method / open3d on the same frame",
        f"open3d: tutorial recipe, point-to-plane ICP at 0.4 x voxel on the {'voxel' if args.o3d_icp == 'down' else 'full'} clouds",
        "working pts = cloud each method registers (ukpgan/iss/open3d: voxel cloud; small_gicp: its voxel cloud; "
        "kiss_icp: its 1.5 x voxel source cloud, registered to its local map; kiss_matcher: the raw cloud it is "
        "given, voxelised inside)",
        "ground-truth motion per pair (median) and share of pairs a zero-motion guess would pass: " + "; ".join(
            f"stride {s}: {v['motion_deg_median']:.1f} deg, {v['motion_cm_median']:.1f} cm, {100 * v['zero_motion_success']:.0f}%"
            for s, v in res["motion"].items()),
    ] + [f"skipped {m}: {why}" for m, why in res["skipped"].items()]
    print()
    print(table)
    print()
    for n in notes:
        print(f"- {n}")
    loads = f"load average at start {start_load}, at end {end_load} ({os.cpu_count()} cores); {wall:.0f} s"
    notes.append(loads)
    print(f"\n{loads}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "args": vars(args), "versions": versions, "wall_s": wall, "cores": os.cpu_count(),
            "notes": notes}
    (out / "results.json").write_text(json.dumps({**meta, **res}, indent=1, default=float))
    (out / "results.md").write_text(f"`{meta['command']}`\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    png = plot_time_vs_success(res["rows"], out / "time_vs_success.png", th.strict)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {png}")


if __name__ == "__main__":
    main()
