"""Evaluation pairs with ground truth: frames of a depth sequence at several gaps, 3DMatch-style
fragment pairs, and partial crops cut from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ukpgan_ros.evaluation.metrics import transform_points

__all__ = ["Pair", "frame_pairs", "sequence_name", "sequence_pairs", "fragment_pairs", "crop_pairs"]


@dataclass(frozen=True)
class Pair:
    dataset: str
    name: str
    src: str  # cloud keys
    tgt: str
    T: np.ndarray  # T_tgt_from_src
    gap: int = 0


def frame_pairs(num_frames: int, gaps: list[int], stride: int, max_pairs: int | None = None,
                frames: tuple[int, int] | None = None) -> list[tuple[int, int, int]]:
    """(gap, src index, tgt index) with src = tgt + gap, tgt on a ``stride`` grid, per gap; both
    frames inside ``frames`` = [start, end) when given."""
    if stride < 1 or any(g < 1 for g in gaps):
        raise ValueError("stride and gaps must be >= 1")
    start, end = frames if frames is not None else (0, num_frames)
    end = min(end, num_frames)
    if not 0 <= start < end:
        raise ValueError(f"empty frame range {frames} for {num_frames} frames")
    out = []
    for gap in gaps:
        pairs = [(gap, t + gap, t) for t in range(start, end - gap, stride)]
        out += pairs[:max_pairs] if max_pairs else pairs
    return out


def sequence_name(spec: str) -> str:
    """'synthetic', or a folder's name up to its first dash ('7scenes-redkitchen' -> '7scenes')."""
    from ukpgan_ros.datasets import is_synthetic

    return spec if is_synthetic(spec) else Path(spec).resolve().name.split("-")[0]


def sequence_pairs(spec: str, gaps: list[int], stride: int, max_pairs: int | None,
                    frames: tuple[int, int] | None) -> tuple[list[Pair], dict[str, callable]]:
    """Frame pairs of a depth sequence: a 7-Scenes/TUM folder or 'synthetic' (io.open_sequence)."""
    from ukpgan_ros.datasets import open_sequence

    seq = open_sequence(spec)
    name = sequence_name(spec)
    loaders, pairs = {}, []
    for gap, s, t in frame_pairs(len(seq), gaps, stride, max_pairs, frames):
        ps, pt = seq[s].pose, seq[t].pose
        if ps is None or pt is None:
            continue
        for i in (s, t):
            loaders.setdefault(f"frame{i}", lambda i=i: seq[i].points())
        pairs.append(Pair(name, f"{t}-{s}", f"frame{s}", f"frame{t}", np.linalg.inv(pt) @ ps, gap))
    return pairs, loaders


def fragment_pairs(folder: Path) -> tuple[list[Pair], dict[str, callable]]:
    """Every ``gt_T_<i>_from_<j>.txt`` with ``cloud_bin_<i>.ply`` and ``cloud_bin_<j>.ply``."""
    from functools import lru_cache

    from ukpgan_ros.io import read_cloud, read_transform

    load = lru_cache(maxsize=8)(read_cloud)
    pairs, loaders = [], {}
    for gt in sorted(folder.glob("gt_T_*_from_*.txt")):
        i, j = gt.stem[len("gt_T_"):].split("_from_")
        a, b = folder / f"cloud_bin_{i}.ply", folder / f"cloud_bin_{j}.ply"
        if not (a.is_file() and b.is_file()):
            continue
        loaders[f"bin{i}"] = lambda a=a: load(a)
        loaders[f"bin{j}"] = lambda b=b: load(b)
        pairs.append(Pair("3dmatch", f"{i}-{j}", f"bin{j}", f"bin{i}", read_transform(gt)))
    if not pairs:
        raise ValueError(f"{folder}: no gt_T_<i>_from_<j>.txt with matching cloud_bin_<i>.ply files")
    return pairs, loaders


def crop_pairs(pairs: list[Pair], loaders: dict[str, callable], count: int, radius: float, seed: int,
               voxel: float) -> tuple[list[Pair], dict[str, callable]]:
    """``count`` partial sub-pairs per pair: balls of ``radius`` around a random point of the
    overlap in the target and around the same point, shifted by up to ``radius / 2`` in a random
    direction, in the source. One fragment pair thus yields many harder pairs (partial overlap,
    new borders) with the same ground truth."""
    from ukpgan_ros.cloud import voxel_downsample

    out, crop_loaders = [], {}
    for p_idx, pair in enumerate(pairs):
        src, tgt = loaders[pair.src](), loaders[pair.tgt]()
        tgt_v = voxel_downsample(tgt, 2 * voxel)
        src_in_tgt = transform_points(voxel_downsample(src, 2 * voxel), pair.T)
        overlap = tgt_v[cKDTree(src_in_tgt).query(tgt_v)[0] <= 2 * voxel]
        if len(overlap) == 0:
            continue
        T_inv = np.linalg.inv(pair.T)
        for k in range(count):
            rng = np.random.default_rng([seed, p_idx, k])
            c_tgt = overlap[rng.integers(len(overlap))]
            shift = rng.normal(size=3)
            shift *= rng.uniform(0, radius / 2) / np.linalg.norm(shift)
            c_src = transform_points((c_tgt + shift)[None], T_inv)[0]
            ks, kt = f"{pair.src}@{k}s", f"{pair.tgt}@{k}t"
            crop_loaders[ks] = lambda c=c_src, key=pair.src: _ball(loaders[key](), c, radius)
            crop_loaders[kt] = lambda c=c_tgt, key=pair.tgt: _ball(loaders[key](), c, radius)
            out.append(Pair(f"{pair.dataset}-crops", f"{pair.name}#{k}", ks, kt, pair.T))
    return out, crop_loaders


def _ball(points: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    return points[np.linalg.norm(points - center, axis=1) <= radius]
