"""Training samples for self-supervised UKPGAN: fixed-size clouds with their local features.

A sample is ``num_points`` points of a voxelised cloud: their features (SHOT over the whole
voxelised cloud, after a random rigid pose, so features see what a sensor would), and the same
points in a normalised canonical frame as the reconstruction target. Sources:

* ``shapes:N`` — N procedural shapes (``shapes.py``), mirror-symmetric, so the symmetry loss
  applies; voxel size chosen per shape so it has about ``num_points`` voxels.
* ``synthetic:N`` — N frames of the built-in synthetic room camera, cropped to the
  ``num_points`` voxels nearest a random point (``crops`` crops per frame).
* ``synthetic_lidar:N`` — N scans of the built-in spinning LiDAR (``datasets.synthetic_lidar``)
  on streets of seeds 1000 + seed, 1001 + seed, ... (never the evaluation's street, seed 0), the
  three motions (walk, drive, fast_turn) in turn, voxelised at ``LIDAR_VOXEL`` (the LiDAR
  evaluation profile's 0.3 m) and cropped like camera frames. Features are in voxel units, so one
  encoder serves rooms at 5 cm and streets at 30 cm.
* ``PATH[:N]`` — a depth sequence folder (7-Scenes/TUM layout) or a folder of clouds
  (.ply/.pcd/.npy), N frames/files evenly spread over it (all when omitted).

Features are computed once per sample and cached in the run folder (float16, ~1.4 MB each).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from scipy.spatial import cKDTree

from ukpgan_ros.cloud import voxel_downsample
from ukpgan_ros.features import compute_descriptors
from ukpgan_ros.features.normals import estimate_normals
from ukpgan_ros.model.features import FeatureSpec
from ukpgan_ros.model.shapes import random_rotation, random_shape, sample_surface

__all__ = [
    "FeatureFn",
    "Sample",
    "SampleSet",
    "DataOptions",
    "parse_source",
    "shape_sample",
    "crop_sample",
    "iter_samples",
    "build_dataset",
]

FeatureFn = Callable[[np.ndarray, np.ndarray | None, float, np.ndarray], np.ndarray]
"""(points, normals, radius, query_idx) -> (Q, D) float32 features."""


def shot_features(points: np.ndarray, normals: np.ndarray, radius: float, query_idx: np.ndarray) -> np.ndarray:
    """The encoder's features (SHOT on the CPU, zero where a point has no valid frame)."""
    return compute_descriptors("shot", points, normals, query_idx, radius, "cpu")

_CLOUD_SUFFIXES = (".ply", ".pcd", ".npy")
BUILT_IN = ("shapes", "synthetic", "synthetic_lidar")
LIDAR_VOXEL = 0.3  # voxel of synthetic LiDAR scans [m], as evaluation.metrics.LIDAR.voxel
LIDAR_STREET_SEED = 1000  # training streets are seeds 1000 + seed + k; evaluation uses seed 0


@dataclass(frozen=True)
class Sample:
    target: np.ndarray  # (N, 3) float32, canonical frame, inside the unit ball
    features: np.ndarray  # (N, D) float32
    partner: np.ndarray | None  # (N,) int64 mirror partner of each point, None if not symmetric


@dataclass(frozen=True)
class DataOptions:
    num_points: int = 2048
    feature: FeatureSpec = FeatureSpec()
    scene_voxel: float = 0.05  # voxel of real/synthetic frames [m]; shapes get their own
    noise_voxels: float = 0.1  # Gaussian jitter of shape voxels, in voxels
    crops: int = 2  # crops per scene frame or cloud
    partial: float = 0.0  # share of shapes seen from a single viewpoint
    seed: int = 0

    def key(self) -> dict:
        return {"num_points": self.num_points, "feature": self.feature.to_dict(), "scene_voxel": self.scene_voxel,
                "noise_voxels": self.noise_voxels, "crops": self.crops, "partial": self.partial, "seed": self.seed}


@dataclass
class SampleSet:
    """All samples stacked as tensors (features kept in float16 to halve memory)."""

    target: torch.Tensor  # (S, N, 3) float32
    features: torch.Tensor  # (S, N, D) float16
    partner: torch.Tensor  # (S, N) int64, -1 where a sample has no symmetry
    sources: list[str]

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.target[idx].to(device), self.features[idx].to(device, torch.float32),
                self.partner[idx].to(device))


def parse_source(spec: str) -> tuple[str, int | None]:
    """'shapes:400' -> ('shapes', 400); '/data/seq:50' -> ('/data/seq', 50); '/data/seq' -> (.., None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit():
        name, count = head, int(tail)
        if count < 1:
            raise ValueError(f"{spec!r}: count must be >= 1")
    else:
        name, count = spec, None
    if name in BUILT_IN and count is None:
        raise ValueError(f"{spec!r}: give a count, e.g. {name}:100")
    if name not in BUILT_IN and not Path(name).exists():
        raise ValueError(f"training source {spec!r} is not shapes:N, synthetic:N, synthetic_lidar:N or an "
                         "existing folder")
    return name, count


def _mirror_partner(points: np.ndarray) -> np.ndarray:
    mirrored = points * np.array([-1.0, 1.0, 1.0], np.float32)
    return cKDTree(points).query(mirrored)[1].astype(np.int64)


def _normalise(points: np.ndarray, keep_x_plane: bool) -> np.ndarray:
    center = (points.max(0) + points.min(0)) / 2
    if keep_x_plane:
        center[0] = 0.0
    out = points - center
    return (out * (0.9 / max(float(np.linalg.norm(out, axis=1).max()), 1e-9))).astype(np.float32)


def _sorted_rows(points: np.ndarray) -> np.ndarray:
    """Row order of a lexicographic sort: Open3D's voxel grid returns voxels in a varying order."""
    return np.lexsort(points.T[::-1])


def _voxel_for_count(dense: np.ndarray, target: int) -> tuple[float, np.ndarray]:
    """A voxel size whose grid keeps between 1.1x and 1.6x ``target`` points, and that grid."""
    voxel = 0.05
    for _ in range(12):
        pts = voxel_downsample(dense, voxel)
        pts = pts[_sorted_rows(pts)]
        ratio = len(pts) / target
        if 1.1 <= ratio <= 1.6:
            break
        voxel *= float(np.sqrt(ratio / 1.3))
    if len(pts) < target:
        raise RuntimeError(f"could not voxelise a shape to {target} points (got {len(pts)})")
    return voxel, pts


def _visible(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``points`` seen from a random viewpoint above the horizon (hidden point removal)."""
    import open3d as o3d

    direction = rng.normal(size=3)
    direction[2] = abs(direction[2]) + 0.3
    eye = direction / np.linalg.norm(direction) * rng.uniform(2.5, 4.0)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    _, idx = pcd.hidden_point_removal(eye, 100.0 * float(np.linalg.norm(eye)))
    return np.sort(np.asarray(idx, np.int64))


def shape_sample(rng: np.random.Generator, opts: DataOptions, features: FeatureFn) -> Sample:
    """One procedural shape: voxelised, jittered, randomly posed for features, canonical target.

    With probability ``opts.partial`` only the surface seen from one random viewpoint is kept,
    as a depth camera sees objects (occlusion borders, one side); such samples are not symmetric.
    """
    shape = random_shape(rng)
    partial = rng.uniform() < opts.partial
    dense, dense_n = sample_surface(shape, (24 if partial else 12) * opts.num_points, rng)
    if partial:
        seen = _visible(dense, rng)
        dense, dense_n = dense[seen], dense_n[seen]
    voxel, pts = _voxel_for_count(dense, opts.num_points)
    pts = pts + rng.normal(0.0, opts.noise_voxels * voxel, pts.shape).astype(np.float32)
    normals = estimate_normals(pts, opts.feature.normal_radius_voxels * voxel, viewpoint=None)
    # outward like the analytic normal of the nearest surface sample (a sensor sees outsides)
    ref = dense_n[cKDTree(dense).query(pts)[1]]
    normals[np.einsum("ij,ij->i", normals, ref) < 0] *= -1.0
    query = np.sort(rng.choice(len(pts), opts.num_points, replace=False))
    rot = random_rotation(rng).astype(np.float32)
    shift = rng.uniform(-5, 5, 3).astype(np.float32)
    feats = features(pts @ rot.T + shift, normals @ rot.T, opts.feature.radius(voxel), query)
    target = pts[query]
    return Sample(target, feats, None if partial else _mirror_partner(target))


def crop_sample(points: np.ndarray, normals: np.ndarray, rng: np.random.Generator, opts: DataOptions,
                features: FeatureFn, voxel: float | None = None) -> Sample:
    """The ``num_points`` voxels nearest a random voxel of a metric cloud voxelised at ``voxel``
    (default ``opts.scene_voxel``).

    Features use the whole cloud as support, so crop borders are not artificial edges.
    """
    if len(points) < opts.num_points:
        raise ValueError(f"cloud has {len(points)} voxels, fewer than num_points={opts.num_points}")
    center = points[rng.integers(len(points))]
    query = np.sort(cKDTree(points).query(center, k=opts.num_points)[1]).astype(np.int64)
    rot = random_rotation(rng).astype(np.float32)
    feats = features(points @ rot.T, normals @ rot.T, opts.feature.radius(voxel or opts.scene_voxel), query)
    return Sample(_normalise(points[query], keep_x_plane=False), feats, None)


def _lidar_scans(count: int, seed: int) -> list[tuple[str, Callable[[], np.ndarray], tuple]]:
    from ukpgan_ros.datasets.synthetic_lidar import MOTIONS, SyntheticLidarSequence

    motions = sorted(MOTIONS)
    items = []
    for i in range(count):
        street, motion = LIDAR_STREET_SEED + seed + i // len(motions), motions[i % len(motions)]
        frame = (7 * i) % 50  # spread along the path: straights and corners

        def load(street=street, motion=motion, frame=frame):
            return SyntheticLidarSequence(num_frames=frame + 1, motion=motion, seed=street)[frame].points()

        items.append((f"synthetic_lidar#{street}/{motion}/{frame}", load, (0.0, 0.0, 0.0)))
    return items


def _scene_clouds(name: str, count: int | None,
                  opts: DataOptions) -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
    """Voxelised metric clouds with normals and their voxel from a synthetic camera, the synthetic
    LiDAR, a sequence or cloud files."""
    from ukpgan_ros.cloud import make_working_cloud

    voxel = opts.scene_voxel
    if name == "synthetic_lidar":
        items, voxel = _lidar_scans(count or 1, opts.seed), LIDAR_VOXEL
    elif name == "synthetic":
        from ukpgan_ros.datasets.synthetic import SyntheticSequence

        seq = SyntheticSequence(num_frames=max(count or 1, 1) * 10, seed=opts.seed)
        items = [(f"synthetic#{i}", lambda i=i: seq[i].points(), (0.0, 0.0, 0.0)) for i in range(0, len(seq), 10)]
    else:
        root = Path(name)
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in _CLOUD_SUFFIXES) if root.is_dir() else []
        if files:
            from ukpgan_ros.io import read_cloud

            items = [(str(f), lambda f=f: read_cloud(f), None) for f in files]
        else:
            from ukpgan_ros.datasets import open_sequence

            seq = open_sequence(str(root))
            items = [(f"{root}#{i}", lambda i=i: seq[i].points(), (0.0, 0.0, 0.0)) for i in range(len(seq))]
        if count is not None and count < len(items):
            items = [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]
    for label, load, viewpoint in items:
        cloud = make_working_cloud(load(), voxel, normal_radius=opts.feature.normal_radius_voxels * voxel,
                                   viewpoint=viewpoint)
        order = _sorted_rows(cloud.points)
        yield label, cloud.points[order], cloud.normals[order], voxel


def iter_samples(sources: list[str], opts: DataOptions, features: FeatureFn) -> Iterator[tuple[str, Sample]]:
    """Every sample of every source, each drawn from its own seeded generator (order-free)."""
    for s_idx, spec in enumerate(sources):
        name, count = parse_source(spec)
        if name == "shapes":
            for i in range(count):
                yield f"shape#{i}", shape_sample(np.random.default_rng([opts.seed, s_idx, i]), opts, features)
            continue
        for f_idx, (label, pts, nrm, voxel) in enumerate(_scene_clouds(name, count, opts)):
            if len(pts) < opts.num_points:
                continue  # a near-empty frame teaches nothing
            rng = np.random.default_rng([opts.seed, s_idx, f_idx])
            for c in range(opts.crops):
                yield f"{label}/crop{c}", crop_sample(pts, nrm, rng, opts, features, voxel)


def build_dataset(sources: list[str], opts: DataOptions, cache_dir: str | Path | None = None,
                  features: FeatureFn = shot_features, progress: bool = True) -> SampleSet:
    """Build (or load from ``cache_dir``) the stacked training set for ``sources``."""
    if not sources:
        raise ValueError("no training sources given")
    for s in sources:
        parse_source(s)
    cache = None
    if cache_dir is not None:
        key = json.dumps({"sources": list(sources), **opts.key()}, sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        cache = Path(cache_dir) / f"dataset-{digest}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return SampleSet(torch.from_numpy(z["target"]), torch.from_numpy(z["features"]),
                                 torch.from_numpy(z["partner"]), [str(s) for s in z["labels"]])
    from tqdm import tqdm

    labels, targets, feats, partners = [], [], [], []
    for label, s in tqdm(iter_samples(sources, opts, features), desc="features", unit="sample", disable=not progress):
        labels.append(label)
        targets.append(s.target)
        feats.append(s.features.astype(np.float16))
        partners.append(s.partner if s.partner is not None else np.full(opts.num_points, -1, np.int64))
    if not labels:
        raise ValueError(f"sources {sources} gave no samples of {opts.num_points} points")
    target, feat, partner = np.stack(targets), np.stack(feats), np.stack(partners)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, target=target, features=feat, partner=partner, labels=np.array(labels))
        tmp.replace(cache)
    return SampleSet(torch.from_numpy(target), torch.from_numpy(feat), torch.from_numpy(partner), labels)
