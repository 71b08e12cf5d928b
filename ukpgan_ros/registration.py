"""Mutual matching, RANSAC and ICP: one described frame pair -> a graded rigid transform.

Conventions: transforms are named by their frames, ``T_tgt_from_src`` maps source points into
the target frame (``p_tgt = T_tgt_from_src @ p_src``), as small_gicp's ``T_target_source``.
Functions take physical distances; the pipeline derives them from the configuration.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import open3d as o3d
from scipy.spatial.transform import Rotation

from ukpgan_ros.cloud import WorkingCloud, to_legacy
from ukpgan_ros.detectors.base import Keypoints

__all__ = [
    "FrameFeatures",
    "RegistrationResult",
    "mutual_matches",
    "ransac_from_correspondences",
    "refine_icp",
    "register_features",
    "count_inliers",
    "evaluate_overlap",
    "nearest_rows",
    "registration_covariance",
    "fit_pairs",
    "constraint_spectrum",
]

_reg = o3d.pipelines.registration
_blas = None


def _single_threaded_blas():
    """OpenBLAS threads turn a 0.5 ms keypoint x cloud product into 16 ms when other processes
    hold the cores (measured here with two busy neighbours); per-frame products are small, so
    they run on one thread."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class FrameFeatures:
    """One frame ready for matching: working cloud, keypoints (indices into it), descriptors."""

    cloud: WorkingCloud
    keypoints: Keypoints
    descriptors: np.ndarray  # (K, D) float32, row i describes keypoints.indices[i]
    dense_descriptors: np.ndarray | None = None  # (M, D) for every cloud point, when kept

    def match_side(self, dense: bool) -> tuple[np.ndarray, np.ndarray]:
        """(xyz, descriptors) this frame offers as a matching target."""
        if dense:
            if self.dense_descriptors is None:
                raise ValueError("dense matching needs the target frame's dense descriptors")
            return self.cloud.points, self.dense_descriptors
        return self.keypoints.xyz, self.descriptors


@dataclass(frozen=True)
class RegistrationResult:
    """A rigid estimate with the figures a robot needs to decide whether to trust it."""

    T_tgt_from_src: np.ndarray  # (4, 4) float64, p_tgt = T_tgt_from_src @ p_src
    fitness: float  # fraction of source points with a target point within the match distance
    inlier_rmse: float  # RMS distance of those pairs [m]
    num_correspondences: int  # mutual descriptor matches fed to RANSAC
    num_inliers: int  # of those, consistent with T within the match distance
    success: bool
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    message: str = ""
    # (P, 2) int64 (source, target) indices into the working clouds: the pairs within the match
    # distance under T that ICP (or the overlap evaluation) found; None when no fit was made
    pairs: np.ndarray | None = field(default=None, repr=False, compare=False)
    voxel_size: float = 0.0  # of the working clouds it was computed on [m] (0: not recorded)


def nearest_rows(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Index of the nearest row of ``b`` for each row of ``a`` (L2), brute force in chunks."""
    with _single_threaded_blas():
        return _nearest(a, b, chunk)


def _nearest(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    b32 = np.ascontiguousarray(b, dtype=np.float32)
    bn = np.einsum("ij,ij->i", b32, b32)
    out = np.empty(len(a), np.int64)
    for s in range(0, len(a), chunk):
        blk = np.ascontiguousarray(a[s:s + chunk], dtype=np.float32)
        out[s:s + chunk] = np.argmin(bn[None, :] - 2.0 * (blk @ b32.T), axis=1)
    return out


def mutual_matches(desc_src: np.ndarray, desc_tgt: np.ndarray, max_matrix: int = 1 << 24) -> np.ndarray:
    """(M, 2) index pairs (src, tgt) that are each other's nearest neighbour in descriptor space.

    Keypoints against a dense cloud (250 x 11 k) fit one distance matrix, whose row and column
    minima give both directions from a single product; larger problems go in chunks.
    """
    if len(desc_src) == 0 or len(desc_tgt) == 0:
        return np.zeros((0, 2), np.int64)
    with _single_threaded_blas():
        return _mutual(desc_src, desc_tgt, max_matrix)


def _mutual(desc_src: np.ndarray, desc_tgt: np.ndarray, max_matrix: int) -> np.ndarray:
    if len(desc_src) * len(desc_tgt) <= max_matrix:
        a = np.ascontiguousarray(desc_src, dtype=np.float32)
        b = np.ascontiguousarray(desc_tgt, dtype=np.float32)
        ab = a @ b.T
        fwd = np.argmin(np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * ab, axis=1)
        bwd = np.argmin(np.einsum("ij,ij->i", a, a)[:, None] - 2.0 * ab, axis=0)
    else:
        fwd, bwd = _nearest(desc_src, desc_tgt), _nearest(desc_tgt, desc_src)
    src = np.nonzero(bwd[fwd] == np.arange(len(desc_src)))[0]
    return np.stack([src, fwd[src]], axis=1).astype(np.int64)


def ransac_from_correspondences(
    src_xyz: np.ndarray,
    tgt_xyz: np.ndarray,
    corr: np.ndarray,
    distance: float,
    max_iterations: int = 100000,
    confidence: float = 0.999,
    seed: int | None = 0,
    edge_similarity: float = 0.9,
) -> tuple[np.ndarray, int]:
    """Robust rigid fit to putative matches: 3-point samples with Open3D's edge-length and
    distance pre-checks, adaptive stopping at ``confidence``, a least-squares fit on the best
    hypothesis' inliers (compiled, :mod:`ukpgan_ros._ransac_kernel`: ~100x faster than Open3D's
    RANSAC here, and the same seed gives the same result in every process). Returns (T with
    p_tgt = T @ p_src, number of inlier matches)."""
    if len(corr) < 3:
        return np.eye(4), 0
    from ukpgan_ros._ransac_kernel import ransac_rigid

    corr = np.asarray(corr, np.int64)
    T, _ = ransac_rigid(src_xyz[corr[:, 0]], tgt_xyz[corr[:, 1]], distance, max_iterations, confidence,
                        0 if seed is None else seed, edge_similarity)
    return T, count_inliers(src_xyz, tgt_xyz, corr, T, distance)


def count_inliers(src_xyz: np.ndarray, tgt_xyz: np.ndarray, corr: np.ndarray, T: np.ndarray, distance: float) -> int:
    """Matches whose source point lands within ``distance`` of its target point under ``T``."""
    if len(corr) == 0:
        return 0
    moved = src_xyz[corr[:, 0]] @ T[:3, :3].T + T[:3, 3]
    return int((np.linalg.norm(moved - tgt_xyz[corr[:, 1]], axis=1) <= distance).sum())


def refine_icp(src: WorkingCloud, tgt: WorkingCloud, T_init: np.ndarray, distance: float,
               max_iterations: int = 30, polish_iterations: int = 5) -> tuple[np.ndarray, float, float, np.ndarray]:
    """Point-to-plane ICP on the working clouds from ``T_init`` (pairs within ``distance``), then a
    robust polish from there: the same ICP with Tukey weights that drop residuals beyond a sixth of
    ``distance`` (a quarter voxel at the pipeline's 1.5-voxel distance). Voxel means that differ
    between two scans (a LiDAR's sparse rings cross a coarse voxel differently from every pose)
    pull the plain fit by centimetres; the polish lets the surfaces both scans sample alike decide
    (KITTI at 0.8 m voxels: 1.3-4.3 cm -> 0.7-2.1 cm; 3DMatch at 5 cm: 1.70 -> 1.38 cm; five
    iterations do it, fifteen gain < 0.3 mm). Returns (T, fitness, inlier_rmse, (P, 2) index pairs
    (source, target) within ``distance`` under T)."""
    s, t = to_legacy(src.points, src.normals), to_legacy(tgt.points, tgt.normals)
    res = _reg.registration_icp(s, t, distance, T_init, _reg.TransformationEstimationPointToPlane(),
                                _reg.ICPConvergenceCriteria(max_iteration=max_iterations))
    if polish_iterations > 0:
        res = _reg.registration_icp(s, t, distance, res.transformation,
                                    _reg.TransformationEstimationPointToPlane(_reg.TukeyLoss(k=distance / 6.0)),
                                    _reg.ICPConvergenceCriteria(max_iteration=polish_iterations))
    return (np.asarray(res.transformation, np.float64), float(res.fitness), float(res.inlier_rmse),
            np.asarray(res.correspondence_set, np.int64).reshape(-1, 2))


def evaluate_overlap(src: WorkingCloud, tgt: WorkingCloud, T: np.ndarray,
                     distance: float) -> tuple[float, float, np.ndarray]:
    """(fitness, inlier_rmse, (P, 2) index pairs within ``distance``) of ``T``: the share of source
    points near the target after moving."""
    res = _reg.evaluate_registration(to_legacy(src.points), to_legacy(tgt.points), distance, T)
    return float(res.fitness), float(res.inlier_rmse), np.asarray(res.correspondence_set, np.int64).reshape(-1, 2)


def fit_pairs(src: WorkingCloud, tgt: WorkingCloud, T: np.ndarray, distance: float,
              pairs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs a fit rests on: (source points moved by ``T`` (P, 3), their nearest target
    points (P, 3), those points' normals (P, 3)), float64, for the source points within
    ``distance`` of the target; ``pairs`` ((P, 2) source, target indices, e.g. a result's, found
    under the same ``T`` and ``distance``) spares the nearest-neighbour search."""
    moved = src.points.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    if pairs is None:
        from scipy.spatial import cKDTree

        dist, j = cKDTree(tgt.points).query(moved, distance_upper_bound=distance)
        ok = np.isfinite(dist)
        i, j = np.nonzero(ok)[0], j[ok]
    else:
        i, j = pairs[:, 0], pairs[:, 1]
    return moved[i], tgt.points[j].astype(np.float64), tgt.normals[j].astype(np.float64)


def _constraint_eig(points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(eigenvalues ascending, eigenvectors as columns, centroid, scale) of the normalised
    point-to-plane Hessian of :func:`constraint_spectrum`."""
    c = points.mean(axis=0)
    q = points - c
    scale = float(np.sqrt(np.mean(np.einsum("ij,ij->i", q, q)))) or 1.0
    J = np.hstack([normals, np.cross(q, normals) / scale])
    w, V = np.linalg.eigh(J.T @ J / len(J))
    return w, V, c, scale


def constraint_spectrum(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending, 6) of the mean point-to-plane Hessian ``J^T J / P`` of pairs at
    ``points`` with target ``normals``, J = [n, (p - c) x n / l] about the pairs' centroid c, with
    l their RMS distance from it: translations and rotations in one scale, so each eigenvalue is
    the share of the pairs that faces one direction of motion squarely (they sum to about 1 + the
    rotation part; a generic scene gives every direction ~0.1 or more). A direction no pair's
    normal faces (sliding along a floor, down a corridor, turning about a pole's axis) gets ~0:
    the overlap does not constrain it, and nothing tells the fit from one moved along it."""
    if len(points) < 6:
        return np.zeros(6)
    return _constraint_eig(points, normals)[0]


def slides_back(src: WorkingCloud, tgt: WorkingCloud, T: np.ndarray, distance: float,
                points: np.ndarray, normals: np.ndarray, shift: float = 0.5, back: float = 0.25) -> bool:
    """Whether the fit ``T`` is pinned along its weakest direction after all: moved ``shift`` x
    ``distance`` along that direction (both ways), ICP brings it back within ``back`` x
    ``distance``. A weak direction can be constrained by few pairs (the poles, cars and window
    edges of a straight street, the door frames of a corridor): the fit slides back. A fit that
    nothing pins (a LiDAR's rings on the floor matched to themselves, a lone plane) stays where it
    was moved. ``points``/``normals``: the fit's pairs (source points moved by ``T``, target
    normals), in the target frame."""
    if len(points) < 6:
        return False
    w, V, c, scale = _constraint_eig(points, normals)
    v = V[:, 0]  # u = [t; scale * omega]: moves a pair at the RMS radius by about |u|
    for sign in (1.0, -1.0):
        u = sign * shift * distance * v / max(float(np.linalg.norm(v)), 1e-12)
        D = np.eye(4)
        R = Rotation.from_rotvec(u[3:] / scale).as_matrix()
        D[:3, :3], D[:3, 3] = R, c - R @ c + u[:3]  # rotate about the pairs' centroid, then translate
        back_move = refine_icp(src, tgt, D @ T, distance)[0] @ np.linalg.inv(T)  # where ICP took the fit
        moved = points @ back_move[:3, :3].T + back_move[:3, 3]
        if float(np.sqrt(np.mean(np.sum((moved - points) ** 2, axis=1)))) > back * distance:
            return False
    return True


def _sensors_coincide(T: np.ndarray, distance: float) -> bool:
    """Whether ``T_tgt_from_src`` puts the source sensor (its frame's origin) within ``distance``
    of the target sensor: where a sampling pattern fixed to the sensor (a spinning LiDAR's rings,
    symmetric about its axis) fits itself, whatever the turn about that axis."""
    return float(np.linalg.norm(np.asarray(T)[:3, 3])) < distance


def register_features(
    src: FrameFeatures,
    tgt: FrameFeatures,
    distance: float,
    *,
    max_iterations: int = 100000,
    confidence: float = 0.999,
    icp_refine: bool = True,
    min_inliers: int = 6,
    min_fitness: float = 0.2,
    min_constraint: float = 0.0,
    seed: int | None = 0,
    dense_target: bool = False,
    degenerate_retries: int = 1,
) -> RegistrationResult:
    """Match the source's keypoint descriptors mutually with the target's keypoints (or, with
    ``dense_target``, with all its points), RANSAC them with inlier ``distance`` [m], optionally
    refine with ICP (same distance), and grade: a success needs ``min_inliers`` inlier matches,
    ``min_fitness`` overlap and, with ``min_constraint`` > 0, a fit that pins all six degrees of
    freedom: the smallest eigenvalue of :func:`constraint_spectrum` of the final pairs at least
    that (a spinning LiDAR's rings on the floor, or a floor and walls along the motion, fit the
    sensor's own pattern at the identity with a high overlap and say nothing about the motion).
    A degenerate fit is not the end: the matches it explains (keypoints on the sensor's own
    pattern) are set aside and RANSAC runs again on the others, up to ``degenerate_retries``
    times; the first result stands when those fail too."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    src_kp = src.keypoints.xyz
    tgt_kp, tgt_desc = tgt.match_side(dense_target)
    corr = mutual_matches(src.descriptors, tgt_desc)
    timings["match"] = time.perf_counter() - t0

    candidates, first = corr, None
    for _ in range(1 + max(0, degenerate_retries)):  # degenerate: drop the matches it explains, solve the rest
        res, T_hyp = _fit(src, tgt, src_kp, tgt_kp, corr, candidates, distance, max_iterations, confidence, icp_refine,
                          min_inliers, min_fitness, min_constraint, seed, timings)
        if not res.message.startswith("degenerate fit"):
            break
        first = first or res
        moved = src_kp[candidates[:, 0]] @ T_hyp[:3, :3].T + T_hyp[:3, 3]
        candidates = candidates[np.linalg.norm(moved - tgt_kp[candidates[:, 1]], axis=1) > distance]
    res = res if first is None or res.success else first
    return dataclasses.replace(res, timings=timings)


def _fit(src: FrameFeatures, tgt: FrameFeatures, src_kp: np.ndarray, tgt_kp: np.ndarray, corr: np.ndarray,
         candidates: np.ndarray, distance: float, max_iterations: int, confidence: float, icp_refine: bool,
         min_inliers: int, min_fitness: float, min_constraint: float, seed: int | None,
         timings: dict[str, float]) -> tuple[RegistrationResult, np.ndarray]:
    """RANSAC over ``candidates`` (a subset of ``corr``), refine, grade; stage times add up in
    ``timings`` (the result's own are left empty). Returns (the graded result, RANSAC's hypothesis)."""
    def lap(stage: str, t0: float) -> None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0

    t0 = time.perf_counter()
    T, inliers = ransac_from_correspondences(src_kp, tgt_kp, candidates, distance, max_iterations, confidence, seed)
    T_hyp = T
    lap("ransac", t0)
    if inliers < min_inliers:
        msg = f"only {inliers} RANSAC inliers of {len(candidates)} matches (need {min_inliers})"
        return RegistrationResult(np.eye(4), 0.0, 0.0, len(corr), inliers, False, {}, msg), T_hyp
    t0 = time.perf_counter()
    if icp_refine:
        T, fitness, rmse, pairs = refine_icp(src.cloud, tgt.cloud, T, distance)
    else:
        fitness, rmse, pairs = evaluate_overlap(src.cloud, tgt.cloud, T, distance)
    inliers = count_inliers(src_kp, tgt_kp, corr, T, distance)
    lap("refine", t0)
    ok = fitness >= min_fitness
    msg = "" if ok else f"fitness {fitness:.3f} below {min_fitness}"
    if ok and min_constraint > 0:
        t0 = time.perf_counter()
        p, _, n = fit_pairs(src.cloud, tgt.cloud, T, distance, pairs)
        w = constraint_spectrum(p, n)
        # A weak direction is a degenerate fit where the pattern a sensor draws (rings, moving
        # with it) can pin it, with the two sensors at one place, or where nothing pins it: moved
        # along it, ICP stays where it was put.
        weak = w[0] < min_constraint and (_sensors_coincide(T, distance)
                                          or not slides_back(src.cloud, tgt.cloud, T, distance, p, n))
        lap("verify", t0)
        if weak:
            ok = False
            msg = (f"degenerate fit: its {len(pairs)} point pairs constrain {int((w >= min_constraint).sum())} of 6 "
                   f"degrees of freedom (weakest {w[0]:.3f} < {min_constraint})")
    return RegistrationResult(T, fitness, rmse, len(corr), inliers, ok, {}, msg, pairs), T_hyp


def registration_covariance(src: WorkingCloud, tgt: WorkingCloud, T: np.ndarray, distance: float,
                            sigma_floor: float = 0.0, max_variance: float = 1e4,
                            pairs: np.ndarray | None = None) -> np.ndarray:
    """6x6 covariance of ``T`` (``p_tgt = T p_src``) from the point-to-plane geometry of the fit.

    Order (x, y, z, rx, ry, rz), as ROS messages; a left perturbation in the target frame
    (``exp(d) T``). It is ``s^2 (J^T J)^-1`` over the source points within ``distance`` of their
    nearest target point, J = [n, p x n] per pair, ``s`` the RMS point-to-plane residual (at least
    ``sigma_floor``), times N / sqrt(N) for N pairs: neighbouring residuals of voxel clouds are
    not independent, and without that factor the figure is tens of times below the errors
    measured on 7-Scenes and the synthetic room. Directions the scene does not constrain (sliding
    along a lone plane) get large variances, capped at ``max_variance``. ``pairs``: the
    registration's own (``RegistrationResult.pairs``), which spares a nearest-neighbour search.
    """
    p, q, n = fit_pairs(src, tgt, T, distance, pairs)
    if len(p) < 6:
        return np.eye(6) * max_variance
    r = np.einsum("ij,ij->i", p - q, n)
    J = np.hstack([n, np.cross(p, n)])
    H = J.T @ J
    s2 = max(float(np.mean(r * r)), sigma_floor ** 2)
    w, V = np.linalg.eigh(H)
    w = np.maximum(w, s2 / max_variance)
    cov = (V / w) @ V.T * s2 * np.sqrt(len(r))
    return 0.5 * (cov + cov.T)
