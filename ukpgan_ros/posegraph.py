"""Pose graphs over keyframes: edges from odometry and loop closures, optimised with GTSAM.

A node is a keyframe's pose ``map_from_keyframe``; an edge is a measured relative pose
``T_i_from_j`` between keyframes ``i`` and ``j`` (``pose_j = pose_i @ T_i_from_j``) with its
6x6 covariance, in ROS order (x, y, z, rx, ry, rz), as a right perturbation in keyframe ``j``'s
frame (``T_true = T exp(e)``). Odometry edges (keyframe tracking) are trusted as Gaussian
measurements; loop edges get a robust (Geman-McClure) kernel on their covariance-weighted
residual, reached by graduated non-convexity, so a wrong loop that passed verification is
down-weighted instead of bending the map, while a true loop far from the drifted guess still
closes.

Why GTSAM (``gtsam==4.3.0``): a robust kernel on a covariance-weighted residual is what a loop
edge needs (and GNC makes it safe from a drifted start), and Levenberg-Marquardt on 200
keyframes takes milliseconds (``benchmarks/posegraph_speed.py`` prints both libraries on the
same graph). Open3D's ``global_optimization`` weights loop edges by a line process scaled by the
mean point count of the information matrices, which covariance-derived information does not fit.

Everything here is a pure function of poses, edges and covariances (metres, radians).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ukpgan_ros.transforms import adjoint

__all__ = ["Edge", "GraphResult", "odometry_edge", "loop_edge", "optimize", "INLIER_PROBABILITY", "ODOMETRY", "LOOP"]

ODOMETRY, LOOP = "odometry", "loop"
# The chi-square quantile (6 dof) of a loop edge's residual that the robust kernel still counts
# as an inlier.
INLIER_PROBABILITY = 0.99
# A loop edge whose final kernel weight is below this counts as rejected.
REJECTED_WEIGHT = 0.1
# Variances no edge goes below (m^2 and rad^2): a covariance of zero is no measurement model.
_MIN_VARIANCE = 1e-10
_ROS_TO_GTSAM = np.array([3, 4, 5, 0, 1, 2])  # (x y z rx ry rz) -> GTSAM's (rx ry rz x y z)


@dataclass(frozen=True, eq=False)  # compared by identity (its arrays have no truth value)
class Edge:
    """A relative pose measurement between keyframes ``i`` and ``j``."""

    i: int
    j: int
    T_i_from_j: np.ndarray  # (4, 4)
    covariance: np.ndarray  # (6, 6) x y z rx ry rz, right perturbation in j's frame
    kind: str = ODOMETRY  # ODOMETRY or LOOP
    fitness: float = 0.0  # of the registration that measured it (loops)


@dataclass(frozen=True)
class GraphResult:
    """Optimised poses, each loop edge's final kernel weight (1: fully trusted, ~0: rejected),
    and what it cost."""

    poses: dict[int, np.ndarray]
    loop_weights: dict[tuple[int, int], float]
    seconds: float
    iterations: int

    @property
    def rejected(self) -> list[tuple[int, int]]:
        return [k for k, w in self.loop_weights.items() if w < REJECTED_WEIGHT]


def odometry_edge(i: int, pose_i: np.ndarray, j: int, pose_j: np.ndarray, link_covariance: np.ndarray) -> Edge:
    """The edge tracking measured: ``pose_j`` was placed from ``pose_i`` with a link covariance
    ``link_covariance`` in the odometry frame (x y z rx ry rz, left perturbation of ``pose_j``,
    what the tracker adds to the keyframe's covariance)."""
    pose_i, pose_j = np.asarray(pose_i, np.float64), np.asarray(pose_j, np.float64)
    Ad = adjoint(np.linalg.inv(pose_j))  # world left perturbation -> j's right perturbation
    return Edge(i, j, np.linalg.inv(pose_i) @ pose_j, Ad @ np.asarray(link_covariance, np.float64) @ Ad.T, ODOMETRY)


def loop_edge(i: int, j: int, T_j_from_i: np.ndarray, registration_covariance: np.ndarray, fitness: float = 0.0) -> Edge:
    """The edge a registration of keyframe ``i`` onto keyframe ``j`` measured (``T_j_from_i``,
    the registration's ``T_tgt_from_src``, with its covariance: left perturbation in j's frame)."""
    # inv(exp(d) T) = inv(T) exp(-d): the same covariance, now a right perturbation in j's frame
    return Edge(i, j, np.linalg.inv(np.asarray(T_j_from_i, np.float64)),
                np.asarray(registration_covariance, np.float64).copy(), LOOP, float(fitness))


def _noise(cov: np.ndarray):
    import gtsam

    C = np.asarray(cov, np.float64)[np.ix_(_ROS_TO_GTSAM, _ROS_TO_GTSAM)]
    w, V = np.linalg.eigh(0.5 * (C + C.T))
    C = (V * np.maximum(w, _MIN_VARIANCE)) @ V.T  # positive definite, whatever rounding left
    return gtsam.noiseModel.Gaussian.Covariance(C)


def _anchors(ids: Sequence[int], edges: Sequence[Edge], fixed: int | None) -> list[int]:
    """One node per connected component whose pose stays: ``fixed`` in its own, the smallest id
    in every other (each component has its own gauge)."""
    parent = {n: n for n in ids}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for e in edges:
        a, b = find(e.i), find(e.j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    anchor = {}
    for n in sorted(ids):
        anchor.setdefault(find(n), n)
    if fixed is not None:
        anchor[find(fixed)] = fixed
    return sorted(anchor.values())


def optimize(poses: Mapping[int, np.ndarray], edges: Sequence[Edge], fixed: int | None = None,
             robust: bool = True, inlier_probability: float = INLIER_PROBABILITY,
             max_iterations: int = 100) -> GraphResult:
    """Optimise ``poses`` (id -> 4x4, the initial guess, e.g. odometry) under ``edges``.

    ``fixed`` (default: the smallest id) keeps its pose, as does the smallest id of every other
    connected component (a graph cut in two by a set_pose keeps both parts where they are).
    Edges naming an unknown pose are ValueError. With ``robust`` (and any loop edge), loop edges
    get a Geman-McClure kernel by graduated non-convexity (GTSAM's GncLMOptimizer: the kernel
    starts convex, so a true loop far from the odometry guess still pulls, and turns robust, so
    a loop that disagrees with the rest ends with a weight near 0); odometry edges and anchors
    are known inliers. ``inlier_probability`` sets the kernel's scale (the chi-square quantile
    of a 6-dof residual that still counts as an inlier).
    """
    import gtsam

    t0 = time.perf_counter()
    ids = sorted(poses)
    if not ids:
        return GraphResult({}, {}, 0.0, 0)
    for e in edges:
        if e.i not in poses or e.j not in poses:
            raise ValueError(f"edge {e.i} -> {e.j}: names a keyframe the graph does not hold")
    if fixed is not None and fixed not in poses:
        raise ValueError(f"fixed keyframe {fixed}: not in the graph")
    graph, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
    for k in ids:
        values.insert(k, gtsam.Pose3(np.asarray(poses[k], np.float64)))
    tight = gtsam.noiseModel.Isotropic.Sigma(6, 1e-6)
    known = []
    for a in _anchors(ids, edges, fixed):
        known.append(graph.size())
        graph.add(gtsam.PriorFactorPose3(a, gtsam.Pose3(np.asarray(poses[a], np.float64)), tight))
    loops = []
    for e in edges:
        (loops if e.kind == LOOP else known).append(graph.size())
        graph.add(gtsam.BetweenFactorPose3(e.i, e.j, gtsam.Pose3(np.asarray(e.T_i_from_j, np.float64)),
                                           _noise(e.covariance)))
    lm = gtsam.LevenbergMarquardtParams()
    lm.setMaxIterations(max_iterations)
    if robust and loops:
        params = gtsam.GncLMParams(lm)
        params.setLossType(gtsam.GncLossType.GM)
        params.setKnownInliers(known)
        opt = gtsam.GncLMOptimizer(graph, values, params)
        opt.setInlierCostThresholdsAtProbability(inlier_probability)
        result = opt.optimize()
        w = np.asarray(opt.getWeights(), np.float64)
        iterations = -1
    else:
        opt = gtsam.LevenbergMarquardtOptimizer(graph, values, lm)
        result = opt.optimize()
        w = np.ones(graph.size())
        iterations = int(opt.iterations())
    weights = {(e.i, e.j): float(w[idx]) for idx, e in zip(loops, [e for e in edges if e.kind == LOOP])}
    out = {k: result.atPose3(k).matrix() for k in ids}
    return GraphResult(out, weights, time.perf_counter() - t0, iterations)
