"""Where the pipeline's data comes from: point-cloud, transform and depth-image files, and
depth-frame sequences (7-Scenes / 3DMatch-toolbox, TUM RGB-D, the built-in synthetic camera).

Every reader checks what it got, because Open3D returns an empty cloud or image on failure
instead of raising: a bad file raises FileNotFoundError or ValueError naming the path here,
not a shape error three modules later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np
import open3d as o3d
from scipy.spatial.transform import Rotation

from .depth import depth_to_metres, depth_to_points

__all__ = [
    "read_cloud",
    "write_cloud",
    "read_transform",
    "read_depth_png",
    "DepthFrame",
    "DepthSequence",
    "SevenScenesSequence",
    "TumSequence",
    "open_sequence",
    "SEVEN_SCENES_K",
    "TUM_INTRINSICS",
]

_CLOUD_SUFFIXES = (".ply", ".pcd", ".npy", ".xyz", ".txt")

# Kinect v1 depth intrinsics of 7-Scenes; its original download ships no camera-intrinsics.txt.
SEVEN_SCENES_K = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])

# fx, fy, cx, cy published with the TUM RGB-D benchmark; "default" is its ROS-default fallback.
TUM_INTRINSICS: dict[str, tuple[float, float, float, float]] = {
    "freiburg1": (517.3, 516.5, 318.6, 255.3),
    "freiburg2": (520.9, 521.0, 325.1, 249.7),
    "freiburg3": (535.4, 539.2, 320.1, 247.6),
    "default": (525.0, 525.0, 319.5, 239.5),
}


def _existing_file(path: str | Path) -> Path:
    """Resolve ``path`` and raise FileNotFoundError early, before a library swallows it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}" + (" (it is a directory)" if p.is_dir() else ""))
    return p


def _finite_points(points: np.ndarray, path: Path) -> np.ndarray:
    """Keep finite rows as float32 (N, 3); a cloud that ends up empty is an error, not a result."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        raise ValueError(f"{path}: the cloud holds no finite points")
    return np.ascontiguousarray(pts)


# ----------------------------------------------------------------------------- point clouds


def read_cloud(path: str | Path) -> np.ndarray:
    """Read a PLY, PCD (ascii/binary/binary_compressed), NPY (N, 3) or XYZ/TXT cloud as float32 (N, 3).

    Non-finite points (organised PCDs mark holes with NaN) are dropped. XYZ/TXT take the first
    three whitespace- or comma-separated columns, so ``x y z nx ny nz`` files load too.
    """
    p = _existing_file(path)
    suffix = p.suffix.lower()
    if suffix in (".ply", ".pcd"):
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            pcd = o3d.io.read_point_cloud(str(p))
        if len(pcd.points) == 0:
            raise ValueError(f"{p}: Open3D could not read a point cloud from it (bad header, truncated or empty)")
        return _finite_points(np.asarray(pcd.points), p)
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{p}: not a readable .npy array ({exc})") from exc
        if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{p}: expected a numeric (N, 3) array, got {arr.dtype} {arr.shape}")
        return _finite_points(arr, p)
    if suffix in (".xyz", ".txt"):
        try:
            text = p.read_text().replace(",", " ")
            rows = [ln.split()[:3] for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "//"))]
            arr = np.array(rows, dtype=np.float64)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{p}: not a whitespace-separated x y z text cloud ({exc})") from exc
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(f"{p}: expected at least 3 numeric columns per line, got shape {arr.shape}")
        return _finite_points(arr, p)
    raise ValueError(f"{p}: unsupported cloud format {suffix!r} (expected one of {', '.join(_CLOUD_SUFFIXES)})")


def write_cloud(
    path: str | Path,
    points: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    ascii: bool = False,
    compressed: bool = False,
) -> Path:
    """Write (N, 3) points, optionally with (N, 3) colours (floats in [0, 1] or uint8), to PLY/PCD/NPY.

    PLY and PCD are binary unless ``ascii``; ``compressed`` gives PCD ``binary_compressed``.
    NPY holds the float32 points only. Returns the path written.
    """
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f"{p}: points must be a non-empty (N, 3) array, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{p}: points contain NaN or inf; drop them before writing")
    if colors is not None:
        col = np.asarray(colors)
        if col.shape != pts.shape:
            raise ValueError(f"{p}: colors must have the shape of points {pts.shape}, got {col.shape}")
        col = col.astype(np.float64) / 255.0 if col.dtype == np.uint8 else col.astype(np.float64)
        if not (np.isfinite(col).all() and col.min() >= 0.0 and col.max() <= 1.0):
            raise ValueError(f"{p}: float colors must lie in [0, 1]")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"{p}: the folder {p.parent} does not exist")
    if suffix == ".npy":
        if colors is not None:
            raise ValueError(f"{p}: .npy stores points only; use .ply or .pcd to keep colors")
        np.save(p, pts.astype(np.float32))
        return p
    if suffix not in (".ply", ".pcd"):
        raise ValueError(f"{p}: unsupported output format {suffix!r} (expected .ply, .pcd or .npy)")
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
    if colors is not None:
        pcd.colors = o3d.utility.Vector3dVector(col)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        ok = o3d.io.write_point_cloud(str(p), pcd, write_ascii=ascii, compressed=compressed)
    if not ok:
        raise OSError(f"{p}: Open3D failed to write the cloud")
    return p


# ----------------------------------------------------------------------------- transforms


def read_transform(path: str | Path, tol: float = 1e-3) -> np.ndarray:
    """Read a whitespace 4x4 rigid transform (``#`` comments allowed) as float64.

    Rejects anything that is not finite, not 4x4, whose last row is not [0 0 0 1] or whose
    rotation block is off orthonormal/det +1 by more than ``tol`` (ground truths printed with
    ~7 digits pass; a scale or shear slipping in as a "pose" does not).
    """
    p = _existing_file(path)
    try:
        T = np.loadtxt(p, dtype=np.float64, comments="#", ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{p}: not a whitespace-separated numeric matrix ({exc})") from exc
    if T.shape != (4, 4):
        raise ValueError(f"{p}: expected a 4x4 matrix, got shape {T.shape}")
    _check_rigid(T, str(p), tol)
    return T


def _check_rigid(T: np.ndarray, where: str, tol: float) -> None:
    """Raise ValueError unless T is a finite homogeneous rigid transform within ``tol``."""
    if not np.isfinite(T).all():
        raise ValueError(f"{where}: transform contains NaN or inf")
    if np.abs(T[3] - [0.0, 0.0, 0.0, 1.0]).max() > tol:
        raise ValueError(f"{where}: last row is {T[3].tolist()}, expected [0, 0, 0, 1]")
    R = T[:3, :3]
    ortho = np.abs(R.T @ R - np.eye(3)).max()
    if ortho > tol or np.linalg.det(R) < 0:
        raise ValueError(f"{where}: rotation block is not a proper rotation (|RᵀR - I| = {ortho:.2e}, det = {np.linalg.det(R):.3f})")


# ----------------------------------------------------------------------------- depth images


def read_depth_png(path: str | Path) -> np.ndarray:
    """Read a single-channel 16-bit PNG (raw depth units, e.g. mm or 1/5000 m) as uint16 (H, W)."""
    p = _existing_file(path)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        img = o3d.io.read_image(str(p))
    arr = np.asarray(img)
    if arr.size == 0:
        raise ValueError(f"{p}: could not be decoded as an image")
    if arr.ndim != 2 or arr.dtype != np.uint16:
        raise ValueError(f"{p}: expected a single-channel 16-bit depth PNG, got {arr.dtype} with shape {arr.shape}")
    return np.array(arr, copy=True)


# ----------------------------------------------------------------------------- frames and sequences


@dataclass(frozen=True, eq=False)
class DepthFrame:
    """One depth image with its time, intrinsics and (if known) camera-to-world pose.

    ``pose`` maps optical-frame points (x right, y down, z forward) to the world
    (world <- camera), so ``T_i_from_j = inv(pose_i) @ pose_j``. Equality is identity:
    comparing frames element-wise is the caller's job.
    """

    index: int
    stamp: float
    depth_m: np.ndarray
    K: np.ndarray
    pose: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.depth_m.ndim != 2 or self.depth_m.dtype != np.float32:
            raise ValueError(f"frame {self.index}: depth_m must be float32 (H, W), got {self.depth_m.dtype} {self.depth_m.shape}")
        if np.shape(self.K) != (3, 3):
            raise ValueError(f"frame {self.index}: K must be 3x3, got shape {np.shape(self.K)}")
        if self.pose is not None and np.shape(self.pose) != (4, 4):
            raise ValueError(f"frame {self.index}: pose must be 4x4 or None, got shape {np.shape(self.pose)}")

    @property
    def height(self) -> int:
        return int(self.depth_m.shape[0])

    @property
    def width(self) -> int:
        return int(self.depth_m.shape[1])

    def points(self, stride: int = 1, min_depth: float = 0.0, max_depth: float = np.inf) -> np.ndarray:
        """Back-project the valid pixels to (N, 3) float32 in the optical frame (see depth_to_points)."""
        return depth_to_points(self.depth_m, self.K, stride=stride, min_depth=min_depth, max_depth=max_depth)


@runtime_checkable
class DepthSequence(Protocol):
    """A finite, randomly accessible stream of depth frames; frames are read when indexed."""

    name: str
    rate_hz: float
    K: np.ndarray
    width: int
    height: int

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> DepthFrame: ...


class _IndexedSequence:
    """Shared index checking and iteration for the file-backed sequences."""

    def __len__(self) -> int:
        raise NotImplementedError

    def _index(self, i: int) -> int:
        """Normalise a possibly negative index; IndexError out of range (ends ``for`` loops)."""
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"frame index must be an int, got {type(i).__name__}")
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"frame index {i} out of range for {n} frames")
        return j

    def __iter__(self) -> Iterator[DepthFrame]:
        for i in range(len(self)):
            yield self[i]  # type: ignore[index]


_FRAME_RE = re.compile(r"^frame-(\d+)\.depth\.png$")


def _seven_scenes_frame_dir(folder: Path) -> Path | None:
    """The folder holding ``frame-XXXXXX.depth.png``: ``folder/frames`` or ``folder`` itself."""
    for cand in (folder / "frames", folder):
        if cand.is_dir() and any(_FRAME_RE.match(f.name) for f in cand.glob("frame-*.depth.png")):
            return cand
    return None


class SevenScenesSequence(_IndexedSequence):
    """7-Scenes / 3DMatch-toolbox layout: ``camera-intrinsics.txt`` and ``frame-XXXXXX.{depth.png,pose.txt}``.

    Depth is Kinect millimetres (0 and 65535 invalid) at 30 Hz; a frame's stamp is index / rate.
    Without ``camera-intrinsics.txt`` (the original 7-Scenes download) ``K`` defaults to
    SEVEN_SCENES_K. A missing pose file, or one of non-finite numbers (tracking lost), gives
    ``pose=None``.
    """

    def __init__(self, folder: str | Path, K: np.ndarray | None = None, rate_hz: float = 30.0, depth_scale: float = 1000.0):
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"no such sequence folder: {root}")
        frame_dir = _seven_scenes_frame_dir(root)
        if frame_dir is None:
            raise ValueError(f"{root}: no frame-XXXXXX.depth.png in it or in {root / 'frames'}")
        self.folder, self.frame_dir = root, frame_dir
        self.name = root.name
        self.rate_hz = float(rate_hz)
        self.depth_scale = float(depth_scale)
        if K is None:
            kfile = next((d / "camera-intrinsics.txt" for d in (root, frame_dir) if (d / "camera-intrinsics.txt").is_file()), None)
            K = _read_intrinsics(kfile) if kfile is not None else SEVEN_SCENES_K
        self.K = np.array(K, dtype=np.float64).reshape(3, 3)
        found = sorted((int(m.group(1)), f) for f in frame_dir.glob("frame-*.depth.png") if (m := _FRAME_RE.match(f.name)))
        self._ids = [n for n, _ in found]
        self._depth_files = [f for _, f in found]
        first = read_depth_png(self._depth_files[0])
        self.height, self.width = (int(s) for s in first.shape)

    def __len__(self) -> int:
        return len(self._depth_files)

    def __getitem__(self, i: int) -> DepthFrame:
        j = self._index(i)
        dfile = self._depth_files[j]
        raw = read_depth_png(dfile)
        if raw.shape != (self.height, self.width):
            raise ValueError(f"{dfile}: size {raw.shape[::-1]} differs from the sequence's {self.width}x{self.height}")
        pose_file = dfile.with_name(dfile.name.replace(".depth.png", ".pose.txt"))
        return DepthFrame(
            index=j,
            stamp=self._ids[j] / self.rate_hz,
            depth_m=depth_to_metres(raw, "16UC1", self.depth_scale),
            K=self.K,
            pose=_read_pose_or_none(pose_file),
        )


def _read_intrinsics(path: Path) -> np.ndarray:
    """Read a 3x3 pinhole K and check it looks like one (positive focal lengths, [0 0 1] last row)."""
    try:
        K = np.loadtxt(path, dtype=np.float64, comments="#", ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: not a numeric 3x3 intrinsics matrix ({exc})") from exc
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
        raise ValueError(f"{path}: not a pinhole intrinsics matrix: {K.tolist()}")
    return K


def _read_pose_or_none(path: Path) -> np.ndarray | None:
    """A pose file, or None where there is none or it is all non-finite (lost tracking)."""
    if not path.is_file():
        return None
    try:
        T = np.loadtxt(path, dtype=np.float64, comments="#", ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: not a numeric 4x4 pose ({exc})") from exc
    if T.shape == (4, 4) and not np.isfinite(T[:3]).any():
        return None
    return read_transform(path)


class TumSequence(_IndexedSequence):
    """TUM RGB-D layout: ``depth.txt`` (``stamp depth/file.png``), 16-bit depth / 5000 m, ``groundtruth.txt``.

    Each depth stamp takes the ground-truth pose nearest in time when it is within ``max_dt``
    seconds (mocap runs at 100+ Hz, so 20 ms only rejects gaps), else ``pose=None``. Ground truth
    is ``t qx qy qz qw`` of the optical centre in the world, i.e. camera-to-world. Intrinsics
    follow the folder name (``freiburg1/2/3``), else TUM's default 525/319.5/239.5.
    """

    def __init__(self, folder: str | Path, K: np.ndarray | None = None, max_dt: float = 0.02, depth_scale: float = 5000.0):
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"no such sequence folder: {root}")
        list_file = root / "depth.txt"
        if not list_file.is_file():
            raise ValueError(f"{root}: not a TUM RGB-D folder (no depth.txt)")
        self.folder, self.name = root, root.name
        self.depth_scale = float(depth_scale)
        stamps, files = [], []
        for n, line in enumerate(list_file.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split()
            try:
                stamps.append(float(parts[0]))
                files.append(root / parts[1])
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{list_file}:{n}: expected 'timestamp filename', got {line!r}") from exc
        if not stamps:
            raise ValueError(f"{list_file}: lists no depth images")
        self.stamps = np.asarray(stamps, dtype=np.float64)
        self._files = files
        dts = np.diff(self.stamps)
        self.rate_hz = float(1.0 / np.median(dts)) if len(dts) and np.median(dts) > 0 else 30.0
        if K is None:
            m = re.search(r"freiburg([123])", root.name)
            fx, fy, cx, cy = TUM_INTRINSICS[f"freiburg{m.group(1)}" if m else "default"]
            K = [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]
        self.K = np.array(K, dtype=np.float64).reshape(3, 3)
        self._poses = self._associate(root / "groundtruth.txt", max_dt)
        first = read_depth_png(self._files[0])
        self.height, self.width = (int(s) for s in first.shape)

    def _associate(self, gt_file: Path, max_dt: float) -> list[np.ndarray | None]:
        """Pose per depth stamp from the nearest ground-truth stamp within ``max_dt`` seconds."""
        if not gt_file.is_file():
            return [None] * len(self.stamps)
        try:
            gt = np.loadtxt(gt_file, dtype=np.float64, comments="#", ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{gt_file}: expected lines 'timestamp tx ty tz qx qy qz qw' ({exc})") from exc
        if gt.size == 0:
            return [None] * len(self.stamps)
        if gt.shape[1] != 8 or not np.isfinite(gt).all():
            raise ValueError(f"{gt_file}: expected 8 finite columns 'timestamp tx ty tz qx qy qz qw', got shape {gt.shape}")
        gt = gt[np.argsort(gt[:, 0], kind="stable")]
        norms = np.linalg.norm(gt[:, 4:8], axis=1)
        if (np.abs(norms - 1.0) > 1e-2).any():
            raise ValueError(f"{gt_file}: quaternion not unit length on a line (norm {norms[np.argmax(np.abs(norms - 1))]:.4f})")
        t = gt[:, 0]
        right = np.clip(np.searchsorted(t, self.stamps), 1, len(t) - 1) if len(t) > 1 else np.zeros(len(self.stamps), int)
        left = np.maximum(right - 1, 0)
        nearest = np.where(np.abs(t[left] - self.stamps) <= np.abs(t[right] - self.stamps), left, right)
        poses: list[np.ndarray | None] = []
        for s, k in zip(self.stamps, nearest):
            if abs(t[k] - s) > max_dt:
                poses.append(None)
                continue
            T = np.eye(4)
            T[:3, :3] = Rotation.from_quat(gt[k, 4:8]).as_matrix()  # scipy's order is x, y, z, w like TUM
            T[:3, 3] = gt[k, 1:4]
            poses.append(T)
        return poses

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i: int) -> DepthFrame:
        j = self._index(i)
        raw = read_depth_png(self._files[j])
        if raw.shape != (self.height, self.width):
            raise ValueError(f"{self._files[j]}: size {raw.shape[::-1]} differs from the sequence's {self.width}x{self.height}")
        pose = self._poses[j]
        return DepthFrame(
            index=j,
            stamp=float(self.stamps[j]),
            depth_m=depth_to_metres(raw, "16UC1", self.depth_scale),
            K=self.K,
            pose=None if pose is None else pose.copy(),
        )


def open_sequence(spec: str, **kwargs) -> DepthSequence:
    """``"synthetic"`` -> the built-in camera (kwargs go to SyntheticSequence); a folder -> TUM or 7-Scenes."""
    if spec == "synthetic":
        from .synthetic import SyntheticSequence

        return SyntheticSequence(**kwargs)
    root = Path(spec).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"sequence {spec!r} is neither 'synthetic' nor an existing folder")
    if not root.is_dir():
        raise ValueError(f"{root}: a sequence is 'synthetic' or a folder (TUM RGB-D or 7-Scenes layout), not a file")
    if (root / "depth.txt").is_file():
        return TumSequence(root, **kwargs)
    if _seven_scenes_frame_dir(root) is not None:
        return SevenScenesSequence(root, **kwargs)
    raise ValueError(
        f"{root}: unrecognised sequence layout; expected TUM RGB-D (depth.txt + depth/*.png) "
        "or 7-Scenes (frame-XXXXXX.depth.png, directly or under frames/)"
    )
