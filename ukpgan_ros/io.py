"""Files the pipeline reads and writes: point clouds, rigid transforms and depth PNGs.

Every reader checks what it got, because Open3D returns an empty cloud or image on failure
instead of raising: a bad file raises FileNotFoundError or ValueError naming the path here,
not a shape error three modules later. Depth-frame sequences live in :mod:`ukpgan_ros.datasets`.

PLY and PCD headers are parsed here before Open3D sees the file: Open3D (RPly) fills the
points a truncated file lacks with zeros or garbage and only complains on stderr, and it
allocates whatever a header claims (a 240-byte PLY claiming 1e8 vertices took 24 s and 5.7 GB).
So a file must hold the data its header describes, and no more than ``max_bytes`` of it.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import numpy as np
import open3d as o3d

__all__ = [
    "read_cloud", "write_cloud", "read_transform", "read_depth_png", "read_intrinsics", "read_pose_or_none",
    "regular_file", "MAX_CLOUD_BYTES", "read_kitti_bin", "returns_only", "KITTI_POINT_BYTES",
]

_CLOUD_SUFFIXES = (".ply", ".pcd", ".npy", ".xyz", ".txt", ".bin")
KITTI_POINT_BYTES = 16  # a KITTI Velodyne .bin point: float32 x, y, z, reflectance

# Default cap on the bytes a cloud file may hold or its header may claim (PipelineConfig.max_cloud_bytes).
MAX_CLOUD_BYTES = 2 * 1024**3

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


def regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as a readable regular file, or a clear error saying which of those it is not.

    FileNotFoundError when nothing is there; ValueError for a directory, a device (``/dev/zero``),
    a FIFO (which would block a reader forever) or a socket, and for a file that cannot be
    opened for reading. Nothing is read: a FIFO is never opened.
    """
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {p}") from None
    except OSError as exc:
        raise ValueError(f"{p}: cannot examine this {what} ({exc.strerror})") from None
    for test, kind in _FILE_KINDS:
        if test(st.st_mode):
            raise ValueError(f"{p}: is {kind}, not a regular {what}")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{p}: not a regular {what}")
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as exc:
        raise ValueError(f"{p}: {what} is not readable ({exc.strerror})") from None
    os.close(fd)
    return p


def _existing_file(path: str | Path) -> Path:
    """Resolve ``path`` and raise early, before a library swallows the problem (see regular_file)."""
    return regular_file(path)


def _finite_points(points: np.ndarray, path: Path) -> np.ndarray:
    """Keep finite rows as float32 (N, 3); a cloud that ends up empty is an error, not a result."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        raise ValueError(f"{path}: the cloud holds no finite points")
    return np.ascontiguousarray(pts)


# ----------------------------------------------------------------------------- cloud headers

_HEADER_LIMIT = 1 << 16  # a PLY/PCD header longer than 64 KiB is not one
_PLY_SIZES = {"char": 1, "int8": 1, "uchar": 1, "uint8": 1, "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
              "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def _read_header(p: Path, end_marker: bytes) -> tuple[bytes, int]:
    """The header text up to and including the line starting with ``end_marker`` and its length."""
    with open(p, "rb") as fh:
        head = fh.read(_HEADER_LIMIT)
    pos = 0
    while True:
        nl = head.find(b"\n", pos)
        if nl < 0:
            raise ValueError(f"{p}: no {end_marker.decode()} line in the first {_HEADER_LIMIT} bytes: "
                             "not a valid header (or the file is truncated)")
        if head[pos:nl].lstrip().startswith(end_marker):
            return head[:nl + 1], nl + 1
        pos = nl + 1


def _header_lines(header: bytes, p: Path) -> list[list[str]]:
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{p}: the header is not ASCII text") from None
    return [ln.split() for ln in text.splitlines() if ln.strip()]


def _check_cap(p: Path, claimed: int, what: str, max_bytes: int) -> None:
    if claimed > max_bytes:
        raise ValueError(f"{p}: the header claims {what} = {claimed:,} bytes of data, over the "
                         f"{max_bytes:,}-byte cap (max_cloud_bytes); refusing to allocate it")


def _check_text_rows(p: Path, start: int, size: int, skip: int, rows: int, min_tokens: int, what: str) -> None:
    """ASCII bodies: after ``skip`` other rows, ``rows`` non-empty lines with at least ``min_tokens`` values each.

    Each such line takes at least 2 bytes per value, which refuses absurd counts without reading;
    otherwise the body is streamed line by line (nothing of its size is held in memory).
    """
    if rows * 2 * max(min_tokens, 1) > size - start:
        raise ValueError(f"{p}: truncated: the header claims {what} ({rows:,} lines of at least {min_tokens} values), "
                         f"more than the {size - start:,} bytes after the header can hold")
    seen = 0
    with open(p, "rb") as fh:
        fh.seek(start)
        for ln in fh:
            tokens = len(ln.split())
            if not tokens:
                continue
            if seen >= skip:
                if tokens < min_tokens:
                    raise ValueError(f"{p}: truncated or malformed: data line {seen + 1} has {tokens} values, "
                                     f"the header declares {min_tokens}")
                if seen + 1 >= skip + rows:
                    return
            seen += 1
    if seen < skip + rows:
        raise ValueError(f"{p}: truncated: the header claims {what} ({skip + rows:,} lines of data), the file holds {seen:,}")


def _check_ply(p: Path, size: int, max_bytes: int) -> None:
    """Raise ValueError unless the PLY holds at least the bytes (lines) its header claims."""
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic.rstrip(b"\r\n") != b"ply":
        raise ValueError(f"{p}: not a PLY file (it does not start with 'ply')")
    header, start = _read_header(p, b"end_header")
    fmt = None
    elements: list[list] = []  # [name, count, scalar bytes, list count bytes, has list, property names]
    for n, words in enumerate(_header_lines(header, p), 1):
        key = words[0]
        if key == "format":
            fmt = words[1] if len(words) > 1 else None
        elif key == "element":
            try:
                count = int(words[2])
            except (IndexError, ValueError):
                raise ValueError(f"{p}: header line {n}: expected 'element <name> <count>'") from None
            if count < 0:
                raise ValueError(f"{p}: header line {n}: negative element count {count}")
            elements.append([words[1], count, 0, 0, False, []])
        elif key == "property":
            if not elements:
                raise ValueError(f"{p}: header line {n}: property before any element")
            el = elements[-1]
            if len(words) >= 5 and words[1] == "list":
                if words[2] not in _PLY_SIZES or words[3] not in _PLY_SIZES:
                    raise ValueError(f"{p}: header line {n}: unknown list types {words[2]!r}/{words[3]!r}")
                el[3] += _PLY_SIZES[words[2]]
                el[4] = True
                el[5].append(words[4])
            elif len(words) == 3 and words[1] in _PLY_SIZES:
                el[2] += _PLY_SIZES[words[1]]
                el[5].append(words[2])
            else:
                raise ValueError(f"{p}: header line {n}: unknown property {' '.join(words[1:])!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{p}: unknown PLY format {fmt!r} (expected ascii or binary_little/big_endian)")
    vertex = next((el for el in elements if el[0] == "vertex"), None)
    if vertex is None or not {"x", "y", "z"} <= set(vertex[5]):
        raise ValueError(f"{p}: the PLY has no vertex element with x, y, z properties")
    body = size - start
    claim = f"{vertex[1]:,} vertices"
    if fmt == "ascii":
        before = 0
        for el in elements:  # rows of the elements stored before the vertices
            if el is vertex:
                break
            before += el[1]
        min_tokens = len(vertex[5]) if not vertex[4] else 3
        _check_text_rows(p, start, size, before, vertex[1], min_tokens, claim)
        return
    # Binary: every row holds its scalars and, per list, at least the item count.
    need = sum(el[1] * (el[2] + el[3]) for el in elements)
    exact = not any(el[4] for el in elements)
    _check_cap(p, vertex[1] * (vertex[2] + vertex[3]), f"{claim} x {vertex[2] + vertex[3]} bytes", max_bytes)
    if body < need:
        detail = " + ".join(f"{el[1]:,} {el[0]} x {el[2] + el[3]} bytes" for el in elements if el[1])
        raise ValueError(f"{p}: truncated PLY: the header claims {detail} = {need:,} bytes of data"
                         f"{'' if exact else ' at least'}, but the file holds {body:,} bytes after the header")


_PCD_TYPES = {("F", 4), ("F", 8), ("I", 1), ("I", 2), ("I", 4), ("I", 8), ("U", 1), ("U", 2), ("U", 4), ("U", 8)}


def _check_pcd(p: Path, size: int, max_bytes: int) -> None:
    """Raise ValueError unless the PCD holds the points its header claims."""
    header, start = _read_header(p, b"DATA")
    fields: dict[str, list[str]] = {}
    for words in _header_lines(header, p):
        if words[0].startswith("#"):
            continue
        fields[words[0].upper()] = words[1:]
    names = fields.get("FIELDS", [])
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"{p}: the PCD header has no FIELDS x y z (got {' '.join(names) or 'none'})")
    try:
        sizes = [int(s) for s in fields["SIZE"]]
        types = fields.get("TYPE", ["F"] * len(names))
        counts = [int(c) for c in fields.get("COUNT", ["1"] * len(names))]
        width, height = int(fields["WIDTH"][0]), int(fields.get("HEIGHT", ["1"])[0])
        points = int(fields["POINTS"][0]) if "POINTS" in fields else width * height
        data = fields["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{p}: incomplete or malformed PCD header ({exc!r})") from None
    if not len(names) == len(sizes) == len(types) == len(counts):
        raise ValueError(f"{p}: FIELDS, SIZE, TYPE and COUNT have different lengths in the PCD header")
    bad = [(t, s) for t, s in zip(types, sizes) if (t.upper(), s) not in _PCD_TYPES]
    if bad or min(counts) < 1 or min(width, height, points) < 0:
        raise ValueError(f"{p}: invalid PCD header (TYPE/SIZE {bad}, COUNT {counts}, WIDTH {width}, "
                         f"HEIGHT {height}, POINTS {points})")
    row = sum(s * c for s, c in zip(sizes, counts))
    claim = f"{points:,} points x {row} bytes"
    _check_cap(p, points * row, claim, max_bytes)
    body = size - start
    if data == "ascii":
        _check_text_rows(p, start, size, 0, points, sum(counts), f"{points:,} points")
    elif data == "binary":
        if body < points * row:
            raise ValueError(f"{p}: truncated PCD: the header claims {claim} = {points * row:,} bytes of data, "
                             f"but the file holds {body:,} bytes after the header")
    elif data == "binary_compressed":
        with open(p, "rb") as fh:
            fh.seek(start)
            sizes_raw = fh.read(8)
        if len(sizes_raw) < 8:
            raise ValueError(f"{p}: truncated PCD: binary_compressed data without its size record")
        compressed, uncompressed = struct.unpack("<II", sizes_raw)
        if uncompressed != points * row:
            raise ValueError(f"{p}: the compressed PCD data unpacks to {uncompressed:,} bytes, but the header "
                             f"claims {claim} = {points * row:,}")
        if uncompressed > 100 * compressed + 1024:  # an LZF back-reference (3 bytes) expands to 264 at most
            raise ValueError(f"{p}: {compressed:,} bytes of LZF data cannot unpack to the {uncompressed:,} the "
                             f"header claims ({claim}); the header is wrong")
        if body - 8 < compressed:
            raise ValueError(f"{p}: truncated PCD: {compressed:,} bytes of compressed data claimed, "
                             f"{body - 8:,} present")
    else:
        raise ValueError(f"{p}: unknown PCD DATA type {data!r} (expected ascii, binary or binary_compressed)")


def _check_npy(p: Path, size: int, max_bytes: int) -> None:
    """Raise ValueError unless the .npy header is valid and the file holds the array it describes."""
    try:
        with open(p, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            start = fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ValueError(f"{p}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise ValueError(f"{p}: a .npy of Python objects is not a cloud (dtype {dtype})")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    _check_cap(p, need, f"shape {shape} of {dtype}", max_bytes)
    if size - start < need:
        raise ValueError(f"{p}: truncated .npy: shape {shape} of {dtype} needs {need:,} bytes, "
                         f"the file holds {size - start:,} after the header")


# ----------------------------------------------------------------------------- point clouds

def returns_only(points: np.ndarray) -> np.ndarray:
    """The rows of (N, 3) ``points`` that are a return: finite and not at the origin (zero range:
    how drivers and KITTI-style files mark a beam without echo). float32, contiguous."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z) & ((x != 0) | (y != 0) | (z != 0))
    return np.ascontiguousarray(pts if keep.all() else pts[keep])


def read_kitti_bin(path: str | Path, with_reflectance: bool = False) -> np.ndarray:
    """A KITTI ``.bin`` scan as float32 (N, 3) (or (N, 4) with reflectance), every row as stored.

    ValueError naming the file when its size is not a whole number of 16-byte points or a
    coordinate is NaN/inf (the point index is given).
    """
    p = regular_file(path, "KITTI scan")
    size = p.stat().st_size
    if size % KITTI_POINT_BYTES:
        raise ValueError(f"{p}: {size} bytes is not a whole number of {KITTI_POINT_BYTES}-byte points "
                         "(float32 x, y, z, reflectance): truncated or not a KITTI scan")
    scan = np.fromfile(p, dtype="<f4").reshape(-1, 4)
    bad = ~np.isfinite(scan).all(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{p}: point {k} (byte {k * KITTI_POINT_BYTES}) holds NaN or inf: {scan[k].tolist()} "
                         f"({int(bad.sum())} such points)")
    scan = scan.astype(np.float32)  # native byte order
    return scan if with_reflectance else np.ascontiguousarray(scan[:, :3])


def read_cloud(path: str | Path, max_bytes: int = MAX_CLOUD_BYTES) -> np.ndarray:
    """Read a PLY, PCD (ascii/binary/binary_compressed), NPY (N, 3), XYZ/TXT or KITTI Velodyne
    ``.bin`` cloud as float32 (N, 3).

    Non-finite points (organised PCDs mark holes with NaN) are dropped. XYZ/TXT take the first
    three whitespace- or comma-separated columns, so ``x y z nx ny nz`` files load too.
    A file larger than ``max_bytes``, or whose header claims more point data than that, is refused
    before anything is allocated; a PLY/PCD holding less data than its header claims (truncated)
    is refused too.
    """
    p = _existing_file(path)
    suffix = p.suffix.lower()
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{p}: {size:,} bytes, over the {max_bytes:,}-byte cap (max_cloud_bytes)")
    if suffix in (".ply", ".pcd"):
        (_check_ply if suffix == ".ply" else _check_pcd)(p, size, max_bytes)
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            pcd = o3d.io.read_point_cloud(str(p))
        if len(pcd.points) == 0:
            raise ValueError(f"{p}: Open3D could not read a point cloud from it (bad header, truncated or empty)")
        return _finite_points(np.asarray(pcd.points), p)
    if suffix == ".npy":
        _check_npy(p, size, max_bytes)
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
    if suffix == ".bin":
        return returns_only(read_kitti_bin(p))
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
