"""Keyframe maps: the bounded store a tracker keeps, its descriptor index, and the folder format.

A map is a set of keyframes, each a described frame (working cloud with normals, keypoints and
their descriptors) with its pose ``map_from_keyframe`` and that pose's covariance. The tracker
registers live frames against it and relocalises against it; ``save_map``/``load_map`` write
and read it as a folder, so a robot can localise later in a place it mapped before.

Folder format (version 1)::

    map.json                 format, version, created, voxel_size, descriptor, descriptor_dim,
                             detector, match_against, frame_id, origin (stamp / sequence index of
                             the first keyframe, when known), and per keyframe: id, file, pose
                             (4x4 row-major, map_from_keyframe), covariance (6x6, x y z rx ry rz,
                             in the map frame), stamp, index, points, keypoints
    keyframes/000042.npz     points, normals (M, 3) float32 (the working cloud, keyframe frame),
                             keypoint_xyz (K, 3) float32, keypoint_scores (K,) float32,
                             keypoint_indices (K,) int64 (rows of points), descriptors (K, D) float32
    cloud.ply                every keyframe's working cloud in the map frame (for viewing only)

Distances are metres; the map frame is the odometry frame the keyframes were tracked in.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ukpgan_ros.cloud import WorkingCloud
from ukpgan_ros.detectors.base import Keypoints
from ukpgan_ros.features.registry import descriptor
from ukpgan_ros.registration import FrameFeatures
from ukpgan_ros.transforms import adjoint

__all__ = ["Keyframe", "KeyframeMap", "MapFormatError", "MAP_FORMAT", "MAP_VERSION", "save_map", "load_map",
           "check_map_destination"]

MAP_FORMAT = "ukpgan_ros.keyframe_map"
MAP_VERSION = 1
_INDEX = "map.json"


class MapFormatError(ValueError):
    """A map folder is missing, incomplete, corrupt, or incompatible with the configuration."""



@dataclass(frozen=True)
class Keyframe:
    """One stored frame: its features (keypoint descriptors, no dense ones unless it is a single
    reference cloud) and where it is in the map."""

    id: int
    pose: np.ndarray  # (4, 4) map_from_keyframe
    features: FrameFeatures
    covariance: np.ndarray = field(default_factory=lambda: np.zeros((6, 6)))  # of pose, x y z rx ry rz, map frame
    stamp: float | None = None  # of the frame it was made from [s]
    index: int | None = None  # frame index in a recorded sequence, when known


@dataclass
class KeyframeMap:
    """A bounded keyframe store with a descriptor index over the keyframes' keypoint descriptors.

    Bound and policy: at most ``max_keyframes``. Adding one to a full store first removes the
    most redundant keyframe: the one closest to another keyframe, measured in keyframe spacings
    (translation / ``spacing_m`` + rotation / ``spacing_deg``), so the store keeps covering
    every place it has seen rather than only the latest ones; the keyframes named in
    ``protect`` (the one being tracked) are never removed, and ties go to the oldest.

    The index answers "which keyframes look like this frame": each query descriptor votes for
    the keyframe that owns its nearest stored descriptor (exact L2, brute force with BLAS; at
    200 keyframes x 250 keypoints that is one 250 x 50 k product per query frame).
    """

    max_keyframes: int = 200
    spacing_m: float = 0.3
    spacing_deg: float = 15.0
    meta: dict = field(default_factory=dict)  # voxel_size, descriptor, detector, ... (saved with the map)
    _frames: list[Keyframe] = field(default_factory=list)
    _next_id: int = 0
    _index: tuple[np.ndarray, np.ndarray] | None = None  # (stacked descriptors, owner row)

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Keyframe]:
        return iter(list(self._frames))

    def __bool__(self) -> bool:  # an empty map is still a map
        return True

    def get(self, kf_id: int) -> Keyframe | None:
        return next((k for k in self._frames if k.id == kf_id), None)

    def clear(self) -> None:
        self._frames, self._index = [], None

    def add(self, pose: np.ndarray, features: FrameFeatures, covariance: np.ndarray | None = None, *,
            stamp: float | None = None, index: int | None = None, protect: Iterable[int] = (),
            keep_dense: bool = False) -> tuple[Keyframe, list[int]]:
        """Store a keyframe (dense descriptors dropped unless ``keep_dense``); returns it and the
        ids removed to stay within the bound."""
        if not keep_dense and features.dense_descriptors is not None:
            features = replace(features, dense_descriptors=None)
        kf = Keyframe(self._next_id, np.asarray(pose, np.float64).copy(), features,
                      np.zeros((6, 6)) if covariance is None else np.asarray(covariance, np.float64).copy(),
                      stamp, index)
        self._next_id += 1
        removed = []
        protected = set(protect)
        while len(self._frames) >= self.max_keyframes:
            victim = self._most_redundant(protected)
            if victim is None:
                break
            removed.append(self._frames.pop(victim).id)
        self._frames.append(kf)
        self._index = None
        return kf, removed

    def _most_redundant(self, protected: set[int]) -> int | None:
        """Row of the keyframe nearest to another one (in keyframe spacings), oldest first on ties."""
        n = len(self._frames)
        rows = [i for i, k in enumerate(self._frames) if k.id not in protected]
        if not rows:
            return None
        if n < 2:
            return rows[0]
        poses = np.stack([k.pose for k in self._frames])
        t = poses[:, :3, 3]
        dt = np.linalg.norm(t[:, None] - t[None], axis=-1)
        R = poses[:, :3, :3]
        cos = (np.einsum("aij,bij->ab", R, R) - 1.0) / 2.0  # trace(Ra^T Rb) = sum Ra*Rb
        dang = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        d = dt / max(self.spacing_m, 1e-9) + dang / max(self.spacing_deg, 1e-9)
        np.fill_diagonal(d, np.inf)
        nearest = d.min(axis=1)
        return min(rows, key=lambda i: (round(float(nearest[i]), 9), self._frames[i].id))

    def transform_all(self, C: np.ndarray) -> None:
        """Move every keyframe by ``C`` (new_map_from_old_map), e.g. when the sensor is re-placed."""
        C = np.asarray(C, np.float64)
        Ad = adjoint(C)
        self._frames = [replace(k, pose=C @ k.pose, covariance=Ad @ k.covariance @ Ad.T) for k in self._frames]

    def candidates(self, descriptors: np.ndarray, count: int, exclude: Iterable[int] = ()) -> list[tuple[Keyframe, int]]:
        """Up to ``count`` keyframes with the most votes from ``descriptors`` (K, D), best first,
        as (keyframe, votes); keyframes without a vote are not candidates."""
        if not self._frames or len(descriptors) == 0:
            return []
        stacked, owner = self._descriptor_index()
        if stacked.shape[1] != descriptors.shape[1]:
            raise MapFormatError(f"descriptor dimension {descriptors.shape[1]} does not match the map's {stacked.shape[1]}")
        from ukpgan_ros.registration import nearest_rows

        nn = nearest_rows(descriptors, stacked)
        votes = np.bincount(owner[nn], minlength=len(self._frames))
        skip = set(exclude)
        order = np.argsort(-votes, kind="stable")
        out = [(self._frames[i], int(votes[i])) for i in order if votes[i] > 0 and self._frames[i].id not in skip]
        return out[:count]

    def _descriptor_index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            descs = [k.features.descriptors for k in self._frames]
            stacked = np.ascontiguousarray(np.concatenate(descs), dtype=np.float32)
            owner = np.concatenate([np.full(len(d), i, np.int64) for i, d in enumerate(descs)])
            self._index = (stacked, owner)
        return self._index



# ----------------------------------------------------------------------------- folder format


def check_map_destination(folder: str | Path) -> Path:
    """The resolved folder a map may be written to: absent, empty or an existing map (which is
    replaced); MapFormatError for anything else, so nobody's files are overwritten."""
    dest = Path(folder).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / _INDEX).is_file())):
        raise MapFormatError(f"{dest} exists and is not a map folder: refusing to overwrite it")
    return dest


def save_map(kmap: KeyframeMap, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``kmap`` to ``folder`` (format in the module docstring) and return its path.

    The folder is written beside the target and renamed into place, so a reader never sees half a
    map; an existing map folder is replaced, any other non-empty folder is refused.
    """
    if len(kmap) == 0:
        raise MapFormatError("the map has no keyframes to save")
    dest = check_map_destination(folder)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / "keyframes").mkdir()
        frames = list(kmap)
        entries = []
        for k in frames:
            f = k.features
            name = f"keyframes/{k.id:06d}.npz"
            np.savez_compressed(
                tmp / name, points=f.cloud.points.astype(np.float32), normals=f.cloud.normals.astype(np.float32),
                keypoint_xyz=f.keypoints.xyz.astype(np.float32), keypoint_scores=f.keypoints.scores.astype(np.float32),
                keypoint_indices=f.keypoints.indices.astype(np.int64), descriptors=f.descriptors.astype(np.float32))
            entries.append({"id": k.id, "file": name, "pose": k.pose.tolist(), "covariance": k.covariance.tolist(),
                            "stamp": k.stamp, "index": k.index, "points": len(f.cloud), "keypoints": len(f.keypoints)})
        first = min(frames, key=lambda k: k.id)
        index = {
            "format": MAP_FORMAT, "version": MAP_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **kmap.meta, **(extra or {}),
            "descriptor_dim": int(frames[0].features.descriptors.shape[1]),
            "origin": {"stamp": first.stamp, "index": first.index},
            "keyframes": entries,
        }
        (tmp / _INDEX).write_text(json.dumps(index, indent=1))
        _write_overview_cloud(tmp / "cloud.ply", frames, float(kmap.meta.get("voxel_size", 0.05)))
        os.chmod(tmp, 0o755)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write_overview_cloud(path: Path, frames: list[Keyframe], voxel: float) -> None:
    """All keyframe clouds in the map frame, merged on the working voxel (for viewers)."""
    from ukpgan_ros.cloud import voxel_downsample
    from ukpgan_ros.io import write_cloud

    pts = np.concatenate([k.features.cloud.points @ k.pose[:3, :3].T.astype(np.float32) + k.pose[:3, 3].astype(np.float32)
                          for k in frames])
    write_cloud(path, voxel_downsample(pts, voxel))


def load_map(folder: str | Path, max_keyframes: int | None = None) -> KeyframeMap:
    """Read a map folder; MapFormatError names the file and what is wrong with it."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MapFormatError(f"{root}: no such map folder")
    idx_path = root / _INDEX
    if not idx_path.is_file():
        raise MapFormatError(f"{root}: not a map folder ({_INDEX} is missing)")
    try:
        index = json.loads(idx_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MapFormatError(f"{idx_path}: unreadable ({e})") from e
    if not isinstance(index, dict) or index.get("format") != MAP_FORMAT:
        raise MapFormatError(f"{idx_path}: not a {MAP_FORMAT} index")
    if index.get("version") != MAP_VERSION:
        raise MapFormatError(f"{idx_path}: map version {index.get('version')!r}; this reader knows {MAP_VERSION}")
    entries = index.get("keyframes")
    if not isinstance(entries, list) or not entries:
        raise MapFormatError(f"{idx_path}: lists no keyframes")
    meta = {k: index[k] for k in ("voxel_size", "descriptor", "detector", "match_against", "frame_id") if k in index}
    kmap = KeyframeMap(max_keyframes=max(max_keyframes or 0, len(entries)), meta=meta)
    dim = index.get("descriptor_dim")
    if "descriptor" in index:  # a known kind of the declared length (the registry's)
        try:
            spec = descriptor(index["descriptor"])
        except ValueError as exc:
            raise MapFormatError(f"{idx_path}: {exc}") from exc
        if dim is not None and dim != spec.dim:
            raise MapFormatError(f"{idx_path}: descriptor_dim {dim!r} but {spec.name} descriptors have {spec.dim}")
        dim = spec.dim
    for e in entries:
        try:
            kf_id, file = int(e["id"]), str(e["file"])
            pose = np.asarray(e["pose"], np.float64)
            cov = np.asarray(e.get("covariance", np.zeros((6, 6))), np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise MapFormatError(f"{idx_path}: bad keyframe entry {e!r} ({exc})") from exc
        if pose.shape != (4, 4) or not np.isfinite(pose).all() or cov.shape != (6, 6):
            raise MapFormatError(f"{idx_path}: keyframe {kf_id} has a bad pose or covariance")
        path = root / file
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("points", "normals", "keypoint_xyz", "keypoint_scores",
                                            "keypoint_indices", "descriptors")}
        except FileNotFoundError as exc:
            raise MapFormatError(f"{path}: keyframe file missing") from exc
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise MapFormatError(f"{path}: corrupt keyframe file ({type(exc).__name__}: {exc})") from exc
        pts, kp_idx, desc = arrays["points"], arrays["keypoint_indices"], arrays["descriptors"]
        if (pts.ndim != 2 or pts.shape[1] != 3 or arrays["normals"].shape != pts.shape or desc.ndim != 2
                or len(desc) != len(kp_idx) or (dim is not None and desc.shape[1] != dim)
                or (len(kp_idx) and (kp_idx.min() < 0 or kp_idx.max() >= len(pts)))):
            raise MapFormatError(f"{path}: inconsistent arrays (points {pts.shape}, descriptors {desc.shape}, "
                                 f"{len(kp_idx)} keypoint indices)")
        feats = FrameFeatures(WorkingCloud(pts.astype(np.float32), arrays["normals"].astype(np.float32), len(pts)),
                              Keypoints(arrays["keypoint_xyz"].astype(np.float32),
                                        arrays["keypoint_scores"].astype(np.float32), kp_idx.astype(np.int64)),
                              desc.astype(np.float32))
        stamp = e.get("stamp")
        kmap._frames.append(Keyframe(kf_id, pose, feats, cov, None if stamp is None else float(stamp),
                                     None if e.get("index") is None else int(e["index"])))
    kmap._next_id = max(k.id for k in kmap._frames) + 1
    kmap.meta["origin"] = index.get("origin", {})
    return kmap
