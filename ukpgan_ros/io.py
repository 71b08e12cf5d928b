"""Files the pipeline reads and writes: point clouds, rigid transforms and depth PNGs.

Every reader checks what it got, because Open3D returns an empty cloud or image on failure
instead of raising: a bad file raises FileNotFoundError or ValueError naming the path here,
not a shape error three modules later. Depth-frame sequences live in :mod:`ukpgan_ros.datasets`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d

__all__ = ["read_cloud", "write_cloud", "read_transform", "read_depth_png", "read_intrinsics", "read_pose_or_none"]

_CLOUD_SUFFIXES = (".ply", ".pcd", ".npy", ".xyz", ".txt")

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



def read_intrinsics(path: Path) -> np.ndarray:
    """Read a 3x3 pinhole K and check it looks like one (positive focal lengths, [0 0 1] last row)."""
    try:
        K = np.loadtxt(path, dtype=np.float64, comments="#", ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: not a numeric 3x3 intrinsics matrix ({exc})") from exc
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
        raise ValueError(f"{path}: not a pinhole intrinsics matrix: {K.tolist()}")
    return K


def read_pose_or_none(path: Path) -> np.ndarray | None:
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
