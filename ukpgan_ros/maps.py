"""Keyframe maps: the bounded store a tracker keeps, its descriptor index, and the folder format.

A map is a set of keyframes, each a described frame (working cloud with normals, keypoints and
their descriptors) with its pose ``map_from_keyframe`` and that pose's covariance. The tracker
registers live frames against it and relocalises against it; ``save_map``/``load_map`` write
and read it as a folder, so a robot can localise later in a place it mapped before.

Folder format (version 2; version 1 maps, which have no edges and no odom_pose, still load)::

    map.json                 format, version, created, voxel_size, descriptor, descriptor_dim,
                             detector, match_against, frame_id, origin (stamp / sequence index of
                             the first keyframe, when known), and per keyframe: id, file, pose
                             (4x4 row-major, map_from_keyframe: optimised by loop closure when
                             there were loops), odom_pose (4x4, the odometry pose tracking gave
                             it; optional), covariance (6x6, x y z rx ry rz, in the map frame),
                             stamp, index, points, keypoints; and edges: the keyframe pose graph,
                             each {i, j, kind: odometry | loop, T_i_from_j (4x4, pose_j =
                             pose_i @ T_i_from_j), covariance (6x6, x y z rx ry rz, right
                             perturbation in j's frame), fitness (of a loop's registration)}
    keyframes/000042.npz     points, normals (M, 3) float32 (the working cloud, keyframe frame),
                             keypoint_xyz (K, 3) float32, keypoint_scores (K,) float32,
                             keypoint_indices (K,) int64 (rows of points), descriptors (K, D) float32
    cloud.ply                every keyframe's working cloud in the map frame (for viewing only)

Distances are metres; the map frame is the odometry frame the keyframes were tracked in.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ukpgan_ros.cloud import WorkingCloud
from ukpgan_ros.config import DESCRIPTORS, PipelineConfig
from ukpgan_ros.detectors.base import Keypoints
from ukpgan_ros.features.registry import descriptor
from ukpgan_ros.posegraph import LOOP, ODOMETRY, Edge
from ukpgan_ros.registration import FrameFeatures
from ukpgan_ros.transforms import MAX_TRANSLATION_M, check_covariance, check_rigid, moved_covariance

__all__ = ["Keyframe", "KeyframeMap", "MapFormatError", "MAP_FORMAT", "MAP_VERSION", "save_map", "load_map",
           "check_map_destination"]

MAP_FORMAT = "ukpgan_ros.keyframe_map"
MAP_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
    odom_pose: np.ndarray | None = None  # (4, 4) the odometry pose, when pose is an optimised one


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
    edges: list[Edge] = field(default_factory=list)  # the keyframe pose graph (odometry and loop edges)

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Keyframe]:
        return iter(list(self._frames))

    def __bool__(self) -> bool:  # an empty map is still a map
        return True

    def get(self, kf_id: int) -> Keyframe | None:
        return next((k for k in self._frames if k.id == kf_id), None)

    def clear(self) -> None:
        self._frames, self._index, self.edges = [], None, []

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
        """Move every keyframe by ``C`` (new_map_from_old_map), e.g. when the sensor is re-placed;
        ValueError (and the map unchanged) when a moved pose or covariance would not be finite."""
        C = np.asarray(C, np.float64)
        moved = []
        for k in self._frames:
            with np.errstate(over="ignore", invalid="ignore"):
                pose = C @ k.pose
            if not np.isfinite(pose).all():
                raise ValueError(f"keyframe {k.id} pose: moving it overflows; refused")
            moved.append(replace(k, pose=pose, covariance=moved_covariance(C, k.covariance, f"keyframe {k.id} covariance")))
        self._frames = moved

    def check_compatible(self, descriptor: str, voxel_size: float, adopt_voxel: bool, where: str = "") -> float:
        """The voxel [m] a stream localising against this map must use, which is the map's: its
        descriptors were computed at radii that follow it. MapFormatError when the map holds
        another descriptor, or was built at another voxel and ``adopt_voxel`` is False (the
        configuration fixes the voxel)."""
        where = f"{where}: " if where else ""
        meta = self.meta
        if meta.get("descriptor", descriptor) != descriptor:
            raise MapFormatError(f"{where}the map holds {meta['descriptor']} descriptors; set descriptor: "
                                 f"{meta['descriptor']} to localise against it")
        voxel = float(meta.get("voxel_size", voxel_size))
        if abs(voxel - voxel_size) > 1e-9:
            if not adopt_voxel:
                raise MapFormatError(f"{where}the map was built at {voxel} m voxels (descriptor radii follow the "
                                     f"voxel); set voxel_size: {voxel}")
            return voxel
        return voxel_size

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
    try:
        dest = Path(folder).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop, no home directory
        raise MapFormatError(f"{folder}: cannot be a map destination: the path does not resolve ({e})") from e
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
            if k.odom_pose is not None:
                entries[-1]["odom_pose"] = np.asarray(k.odom_pose, np.float64).tolist()
        ids = {k.id for k in frames}
        edges = [{"i": e.i, "j": e.j, "kind": e.kind, "T_i_from_j": np.asarray(e.T_i_from_j, np.float64).tolist(),
                  "covariance": np.asarray(e.covariance, np.float64).tolist(), "fitness": float(e.fitness)}
                 for e in kmap.edges if e.i in ids and e.j in ids]
        first = min(frames, key=lambda k: k.id)
        index = {
            "format": MAP_FORMAT, "version": MAP_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **kmap.meta, **(extra or {}),
            "descriptor_dim": int(frames[0].features.descriptors.shape[1]),
            "origin": {"stamp": first.stamp, "index": first.index},
            "keyframes": entries,
            "edges": edges,
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


_ARRAYS = ("points", "normals", "keypoint_xyz", "keypoint_scores", "keypoint_indices", "descriptors")
_META_STRINGS = ("descriptor", "detector", "match_against", "frame_id")


def _int(value, what: str, lo: int = 0) -> int:
    """A JSON integer >= ``lo`` (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{what}: expected an integer >= {lo}, got {value!r}")
    return value


def _number(value, what: str) -> float:
    """A finite JSON number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def _read_meta(index: dict) -> dict:
    """The map's description from its index, checked: voxel_size a finite number in the
    configuration's range, the names strings, the descriptor one this package computes."""
    meta = {}
    if "voxel_size" in index:
        lo, hi = PipelineConfig.__dataclass_fields__["voxel_size"].metadata["range"]
        voxel = _number(index["voxel_size"], "voxel_size")
        if not lo <= voxel <= hi:
            raise ValueError(f"voxel_size: {voxel} m is outside [{lo}, {hi}]")
        meta["voxel_size"] = voxel
    for key in _META_STRINGS:
        if key in index:
            if not isinstance(index[key], str):
                raise ValueError(f"{key}: expected a string, got {index[key]!r}")
            meta[key] = index[key]
    if meta.get("descriptor", DESCRIPTORS[0]) not in DESCRIPTORS:
        raise ValueError(f"descriptor: {meta['descriptor']!r} is none of {', '.join(DESCRIPTORS)}")
    return meta


def _keyframe_file(root: Path, file, what: str) -> Path:
    """``file`` as a path inside the map folder ``root`` (relative, no way out of it, also not
    through a symlink)."""
    if not isinstance(file, str) or not file:
        raise ValueError(f"{what}: expected a relative path, got {file!r}")
    rel = Path(file)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{what}: {file!r} is not a path inside the map folder")
    path = root / rel
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (RuntimeError, OSError) as e:
        raise ValueError(f"{what}: {file!r} does not resolve ({e})") from e
    if not inside:
        raise ValueError(f"{what}: {file!r} leads out of the map folder")
    return path


def _read_entry(root: Path, e) -> tuple[int, Path, np.ndarray, np.ndarray, float | None, int | None,
                                                         int | None, int | None]:
    """One keyframe entry of the index, checked; ValueError naming the field."""
    if not isinstance(e, dict):
        raise ValueError(f"keyframe entry: expected an object, got {type(e).__name__}")
    if "id" not in e:
        raise ValueError("keyframe entry: id is missing")
    kf_id = _int(e["id"], "keyframe id")
    what = f"keyframe {kf_id}"
    for key in ("file", "pose"):
        if key not in e:
            raise ValueError(f"{what} {key}: missing")
    path = _keyframe_file(root, e["file"], f"{what} file")
    pose = _rigid(e["pose"], f"{what} pose")
    cov = _covariance(e.get("covariance"), f"{what} covariance")
    odom_pose = None if e.get("odom_pose") is None else _rigid(e["odom_pose"], f"{what} odom_pose")
    stamp = None if e.get("stamp") is None else _number(e["stamp"], f"{what} stamp")
    index = None if e.get("index") is None else _int(e["index"], f"{what} index")
    points = None if e.get("points") is None else _int(e["points"], f"{what} points", 1)
    keypoints = None if e.get("keypoints") is None else _int(e["keypoints"], f"{what} keypoints")
    return kf_id, path, pose, cov, stamp, index, points, keypoints, odom_pose


def _rigid(value, what: str) -> np.ndarray:
    """A JSON 4x4 rigid transform within MAX_TRANSLATION_M; ValueError naming ``what``."""
    try:
        T = np.asarray(value, np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: not a matrix of numbers ({exc})") from exc
    return check_rigid(T, what, max_translation=MAX_TRANSLATION_M)


def _covariance(value, what: str) -> np.ndarray:
    """A JSON 6x6 covariance (None: zero), symmetric, finite, bounded; ValueError naming ``what``."""
    if value is None:
        return np.zeros((6, 6))
    try:
        C = np.asarray(value, np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: not a matrix of numbers ({exc})") from exc
    return check_covariance(C, what)


def _read_edge(e, n: int, ids: set[int]) -> Edge:
    """Pose-graph edge ``n`` of the index, checked; ValueError naming the field."""
    what = f"edge {n}"
    if not isinstance(e, dict):
        raise ValueError(f"{what}: expected an object, got {type(e).__name__}")
    for key in ("i", "j", "kind", "T_i_from_j", "covariance"):
        if key not in e:
            raise ValueError(f"{what} {key}: missing")
    i, j = _int(e["i"], f"{what} i"), _int(e["j"], f"{what} j")
    for end, kf in (("i", i), ("j", j)):
        if kf not in ids:
            raise ValueError(f"{what} {end}: keyframe {kf} is not in the map")
    if i == j:
        raise ValueError(f"{what}: joins keyframe {i} to itself")
    if e["kind"] not in (ODOMETRY, LOOP):
        raise ValueError(f"{what} kind: expected {ODOMETRY!r} or {LOOP!r}, got {e['kind']!r}")
    T = _rigid(e["T_i_from_j"], f"{what} T_i_from_j")
    C = _covariance(e["covariance"], f"{what} covariance")
    fitness = _number(e.get("fitness", 0.0), f"{what} fitness")
    if not 0.0 <= fitness <= 1.0:
        raise ValueError(f"{what} fitness: {fitness} is outside [0, 1]")
    return Edge(i, j, T, C, e["kind"], fitness)


def _check_array(a: np.ndarray, name: str, shape: tuple, integer: bool = False) -> None:
    """``a`` has ``shape`` (None: any length), a numeric dtype (an integer one with ``integer``)
    and only finite values."""
    kind = np.integer if integer else np.number
    if not np.issubdtype(a.dtype, kind) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected {'integers' if integer else 'numbers'}, got dtype {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {a.shape}")
    if not integer and not np.isfinite(a).all():
        raise ValueError(f"{name}: {int(np.count_nonzero(~np.isfinite(a)))} of {a.size} values are not finite")


def _read_keyframe_arrays(path: Path, dim: int | None, points: int | None, keypoints: int | None) -> FrameFeatures:
    """A keyframe file's arrays, checked against each other and the index; MapFormatError
    naming the file and the array."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _ARRAYS if k not in z.files]
            if missing:
                raise MapFormatError(f"{path}: {', '.join(missing)}: missing from the keyframe file")
            arrays = {k: z[k] for k in _ARRAYS}
    except FileNotFoundError as exc:
        raise MapFormatError(f"{path}: keyframe file missing") from exc
    except MapFormatError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise MapFormatError(f"{path}: corrupt keyframe file ({type(exc).__name__}: {exc})") from exc
    try:
        pts, idx = arrays["points"], arrays["keypoint_indices"]
        _check_array(pts, "points", (None, 3))
        n = len(pts)
        if n == 0:
            raise ValueError("points: the keyframe holds no points")
        _check_array(arrays["normals"], "normals", (n, 3))
        _check_array(idx, "keypoint_indices", (None,), integer=True)
        k = len(idx)
        if k and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"keypoint_indices: range [{idx.min()}, {idx.max()}] is outside the {n} points")
        _check_array(arrays["keypoint_xyz"], "keypoint_xyz", (k, 3))
        _check_array(arrays["keypoint_scores"], "keypoint_scores", (k,))
        _check_array(arrays["descriptors"], "descriptors", (k, dim))
        if points is not None and points != n:
            raise ValueError(f"points: the index says {points}, the file holds {n}")
        if keypoints is not None and keypoints != k:
            raise ValueError(f"keypoint_indices: the index says {keypoints} keypoints, the file holds {k}")
    except ValueError as exc:
        raise MapFormatError(f"{path}: {exc}") from exc
    return FrameFeatures(WorkingCloud(pts.astype(np.float32), arrays["normals"].astype(np.float32), n),
                         Keypoints(arrays["keypoint_xyz"].astype(np.float32), arrays["keypoint_scores"].astype(np.float32),
                                   idx.astype(np.int64)),
                         arrays["descriptors"].astype(np.float32))


def load_map(folder: str | Path, max_keyframes: int | None = None) -> KeyframeMap:
    """Read a map folder (version 1 or 2), checking everything it reads before it is trusted: the
    index's fields (format, version, voxel_size, descriptor names and dimension, keyframe ids
    unique, poses and odom_poses rigid and within MAX_TRANSLATION_M, covariances symmetric,
    finite, bounded, files inside the folder, counts; each edge's ends existing keyframes, its
    kind, transform, covariance and fitness) and each keyframe file (readable, every array of the right shape and
    finite, keypoint indices within the points, at least one point). MapFormatError names the
    file and the field."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MapFormatError(f"{root}: no such map folder")
    idx_path = root / _INDEX
    if not idx_path.is_file():
        raise MapFormatError(f"{root}: not a map folder ({_INDEX} is missing)")
    try:
        index = json.loads(idx_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MapFormatError(f"{idx_path}: unreadable ({e})") from e
    if not isinstance(index, dict) or index.get("format") != MAP_FORMAT:
        raise MapFormatError(f"{idx_path}: not a {MAP_FORMAT} index")
    version = index.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise MapFormatError(f"{idx_path}: map version {version!r}; this reader knows "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
    entries = index.get("keyframes")
    if not isinstance(entries, list) or not entries:
        raise MapFormatError(f"{idx_path}: keyframes: lists no keyframes")
    try:
        meta = _read_meta(index)
        dim = None if index.get("descriptor_dim") is None else _int(index["descriptor_dim"], "descriptor_dim", 1)
        if "descriptor" in meta:  # a known kind (checked above) of the registry's length
            spec = descriptor(meta["descriptor"])
            if dim is not None and dim != spec.dim:
                raise ValueError(f"descriptor_dim: {dim} but {spec.name} descriptors have {spec.dim}")
            dim = spec.dim
        origin = index.get("origin", {})
        if not isinstance(origin, dict):
            raise ValueError(f"origin: expected an object, got {origin!r}")
        rows = [_read_entry(root, e) for e in entries]
        ids = [r[0] for r in rows]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"keyframe id {dup[0]} appears more than once")
        raw_edges = index.get("edges", []) if version >= 2 else []
        if not isinstance(raw_edges, list):
            raise ValueError(f"edges: expected a list, got {type(raw_edges).__name__}")
        edges = [_read_edge(e, n, set(ids)) for n, e in enumerate(raw_edges)]
    except ValueError as exc:
        raise MapFormatError(f"{idx_path}: {exc}") from exc
    kmap = KeyframeMap(max_keyframes=max(max_keyframes or 0, len(entries)), meta=meta)
    for kf_id, path, pose, cov, stamp, frame_index, points, keypoints, odom_pose in rows:
        feats = _read_keyframe_arrays(path, dim, points, keypoints)
        if dim is None:
            dim = feats.descriptors.shape[1]  # every keyframe as the first one
        kmap._frames.append(Keyframe(kf_id, pose, feats, cov, stamp, frame_index, odom_pose))
    kmap._next_id = max(ids) + 1
    kmap.edges = edges
    kmap.meta["origin"] = origin
    return kmap
