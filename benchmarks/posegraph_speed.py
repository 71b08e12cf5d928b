"""Pose-graph optimisation speed and accuracy: GTSAM (what ukpgan_ros.posegraph uses) against
Open3D's global_optimization, on the same keyframe graph.

The graph: ``--keyframes`` keyframes on a 4 x 3 m rectangle walked ``--laps`` times (so later
laps revisit earlier keyframes), odometry edges with 1 cm / 0.3 deg noise per edge and their
covariances, a loop edge from every keyframe of a later lap to the keyframe it revisits, and
``--wrong`` loop edges between unrelated keyframes (1-3 m off). Prints the time per optimisation
and the keyframes' position error (ATE) against the truth for: odometry alone, GTSAM (Cauchy),
Open3D (line process)::

    python benchmarks/posegraph_speed.py --keyframes 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ukpgan_ros.posegraph import LOOP, Edge, loop_edge, optimize


def _exp(xi: np.ndarray) -> np.ndarray:
    """4x4 of (x y z rx ry rz) with a rotation vector (small-angle accurate via Rodrigues)."""
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(xi[3:]).as_matrix()
    T[:3, 3] = xi[:3]
    return T


def make_graph(n: int, laps: int, wrong: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    per_lap = n // laps
    truth = {}
    for k in range(n):
        s = (k % per_lap) / per_lap * 14.0  # perimeter of 4 x 3
        x, y, yaw = ((s, 0.0, 0.0) if s < 4 else (4.0, s - 4, np.pi / 2) if s < 7 else
                     (4 - (s - 7), 3.0, np.pi) if s < 11 else (0.0, 3 - (s - 11), -np.pi / 2))
        truth[k] = _exp(np.array([x, y, 0.02 * (k // per_lap), 0, 0, yaw]))
    sig = np.array([0.01, 0.01, 0.01, np.radians(0.3), np.radians(0.3), np.radians(0.3)])
    cov = np.diag(sig ** 2)
    odom, edges = {0: truth[0]}, []
    for k in range(1, n):
        meas = np.linalg.inv(truth[k - 1]) @ truth[k] @ _exp(rng.normal(0, sig))
        odom[k] = odom[k - 1] @ meas
        edges.append(Edge(k - 1, k, meas, cov))
    lsig = sig / 2
    for k in range(per_lap, n):
        i = k - per_lap
        meas = np.linalg.inv(truth[k]) @ truth[i] @ _exp(rng.normal(0, lsig))  # T_k_from_i
        edges.append(loop_edge(i, k, meas, np.diag(lsig ** 2)))
    for _ in range(wrong):
        i, k = sorted(rng.choice(n, 2, replace=False))
        off = _exp(np.r_[rng.uniform(1, 3) * rng.choice([-1, 1], 3) / np.sqrt(3), 0, 0, rng.uniform(-0.5, 0.5)])
        meas = off @ np.linalg.inv(truth[k]) @ truth[i]
        edges.append(loop_edge(int(i), int(k), meas, np.diag(lsig ** 2)))
    return truth, odom, edges


def ate(poses, truth) -> float:
    return float(np.sqrt(np.mean([np.sum((poses[k][:3, 3] - truth[k][:3, 3]) ** 2) for k in truth])))


def open3d_optimize(odom, edges):
    import open3d as o3d

    reg = o3d.pipelines.registration
    perm = np.array([3, 4, 5, 0, 1, 2])
    g = reg.PoseGraph()
    for k in sorted(odom):
        g.nodes.append(reg.PoseGraphNode(odom[k]))
    for e in edges:  # Open3D: pose_source = pose_target @ T, source j, target i
        info = np.linalg.inv(e.covariance[np.ix_(perm, perm)])
        g.edges.append(reg.PoseGraphEdge(e.j, e.i, e.T_i_from_j, info, uncertain=e.kind == LOOP))
    opt = reg.GlobalOptimizationOption(max_correspondence_distance=0.05, edge_prune_threshold=0.25,
                                       preference_loop_closure=1.0, reference_node=0)
    t0 = time.perf_counter()
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        reg.global_optimization(g, reg.GlobalOptimizationLevenbergMarquardt(),
                                reg.GlobalOptimizationConvergenceCriteria(), opt)
    return {k: np.asarray(g.nodes[k].pose) for k in sorted(odom)}, time.perf_counter() - t0, len(g.edges)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keyframes", type=int, default=200)
    ap.add_argument("--laps", type=int, default=2)
    ap.add_argument("--wrong", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    truth, odom, edges = make_graph(args.keyframes, args.laps, args.wrong)
    n_loops = sum(e.kind == LOOP for e in edges)
    print(f"{args.keyframes} keyframes, {len(edges) - n_loops} odometry edges, {n_loops} loop edges "
          f"({args.wrong} wrong)")
    print(f"  odometry alone     ATE {100 * ate(odom, truth):6.2f} cm")
    times = []
    for _ in range(args.repeat):
        res = optimize(odom, edges, fixed=0)
        times.append(res.seconds)
    t_gtsam = float(np.median(times))
    print(f"  GTSAM (GNC-GM)    ATE {100 * ate(res.poses, truth):6.2f} cm, {1e3 * np.median(times):7.1f} ms median "
          f"of {args.repeat}, {res.iterations} iterations, {len(res.rejected)} loop edges rejected")
    times = []
    for _ in range(args.repeat):
        poses, dt, kept = open3d_optimize(odom, edges)
        times.append(dt)
    print(f"  Open3D (line proc) ATE {100 * ate(poses, truth):6.2f} cm, {1e3 * np.median(times):7.1f} ms median "
          f"of {args.repeat}, {len(edges) - kept} edges pruned")
    print(f"  Open3D / GTSAM time = {np.median(times) / max(t_gtsam, 1e-9):.1f}")


if __name__ == "__main__":
    main()
