"""sensor_msgs PointCloud2 / Image / CameraInfo -> NumPy without per-point Python loops.

Parsing works on any object with the message's attributes (a real rclpy message, a rosbags
message, a test double), so this module imports no ROS package: it reads fields, steps and
bytes. Building messages is ROS's side: :mod:`ukpgan_ros.ros.cloud_msgs`. Malformed messages
raise :class:`CloudFormatError` with what is wrong, instead of an IndexError deep inside NumPy.

Speed (640x480, see benchmarks/bench_cloud_transport.py): reading is a strided view over
``msg.data`` and one copy (~2 ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ukpgan_ros.depth import depth_to_metres, depth_to_points
from ukpgan_ros.transforms import stamp_seconds

__all__ = [
    "CloudFormatError",
    "pointcloud2_to_xyz",
    "pointcloud2_fields",
    "pointcloud2_point_times",
    "normalize_point_times",
    "TIME_FIELDS",
    "depth_image_to_metres",
    "camera_info_to_K",
    "depth_msgs_to_points",
    "POINTFIELD_FLOAT32",
    "DEPTH_ENCODINGS",
]

# sensor_msgs/PointField datatype constants -> little-endian NumPy type (same numbers as the .msg).
_POINTFIELD_DTYPES: dict[int, str] = {
    1: "i1",  # INT8
    2: "u1",  # UINT8
    3: "i2",  # INT16
    4: "u2",  # UINT16
    5: "i4",  # INT32
    6: "u4",  # UINT32
    7: "f4",  # FLOAT32
    8: "f8",  # FLOAT64
}
POINTFIELD_FLOAT32 = 7
_XYZ = ("x", "y", "z")

# Sane pinhole intrinsics in pixels: back-projection runs in float32, where fx = 1e-300 is 0 and
# |cx| = 1e39 is inf; within these bounds every back-projected coordinate is finite.
MIN_FOCAL_PX = 1e-3
MAX_INTRINSIC_PX = 1e8

# Depth encodings -> (NumPy type without byte order, bytes per pixel).
DEPTH_ENCODINGS: dict[str, tuple[str, int]] = {"16UC1": ("u2", 2), "mono16": ("u2", 2), "32FC1": ("f4", 4)}


class CloudFormatError(ValueError):
    """A PointCloud2 / Image / CameraInfo message (or the data to build one) is malformed."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _as_int(msg: Any, name: str) -> int:
    """Read a non-negative integer attribute, failing with the attribute's name."""
    try:
        value = getattr(msg, name)
    except AttributeError:
        raise CloudFormatError(f"message has no attribute {name!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise CloudFormatError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _data_bytes(msg: Any) -> np.ndarray:
    """``msg.data`` as a flat uint8 array, zero-copy for bytes-like data (array.array, bytes)."""
    data = getattr(msg, "data", None)
    if data is None:
        raise CloudFormatError("message has no data")
    try:
        buf = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        try:  # a plain list of ints (e.g. a hand-made or deserialised message)
            buf = np.asarray(data)
        except (TypeError, ValueError) as exc:
            raise CloudFormatError(f"data is not a byte sequence: {exc}") from None
        if buf.ndim != 1 or (buf.size and (buf.dtype.kind not in "iu" or buf.min() < 0 or buf.max() > 255)):
            raise CloudFormatError("data must be a flat sequence of bytes (ints in [0, 255])")
        buf = buf.astype(np.uint8)
    return buf


def _byte_order(msg: Any) -> str:
    return ">" if bool(getattr(msg, "is_bigendian", False)) else "<"


def _field_table(msg: Any, point_step: int) -> dict[str, tuple[int, int, int]]:
    """Validate ``msg.fields`` and return name -> (offset, datatype, count)."""
    table: dict[str, tuple[int, int, int]] = {}
    for i, f in enumerate(getattr(msg, "fields", None) or ()):
        name = getattr(f, "name", None)
        if not isinstance(name, str) or not name:
            raise CloudFormatError(f"field #{i} has no name")
        offset, datatype, count = (getattr(f, a, None) for a in ("offset", "datatype", "count"))
        if name in table:
            raise CloudFormatError(f"field {name!r} appears twice")
        if datatype not in _POINTFIELD_DTYPES:
            raise CloudFormatError(f"field {name!r} has unsupported datatype {datatype!r} (expected 1..8)")
        if not isinstance(offset, (int, np.integer)) or offset < 0:
            raise CloudFormatError(f"field {name!r} has invalid offset {offset!r}")
        if not isinstance(count, (int, np.integer)) or count < 1:
            raise CloudFormatError(f"field {name!r} has invalid count {count!r} (must be >= 1)")
        size = np.dtype(_POINTFIELD_DTYPES[datatype]).itemsize * int(count)
        if offset + size > point_step:
            raise CloudFormatError(
                f"field {name!r} (offset {offset}, {size} bytes) extends beyond point_step {point_step}"
            )
        table[name] = (int(offset), int(datatype), int(count))
    return table


@dataclass(frozen=True)
class _Layout:
    """A validated cloud: its bytes, shape, strides and fields (name -> offset, datatype, count)."""

    buf: np.ndarray  # flat uint8, at least row_step * height bytes (empty for empty clouds)
    height: int
    width: int
    point_step: int
    row_step: int
    order: str  # "<" or ">"
    fields: dict[str, tuple[int, int, int]]

    def field_dtype(self, name: str) -> np.dtype:
        _, datatype, count = self.fields[name]
        base = np.dtype(self.order + _POINTFIELD_DTYPES[datatype])
        return np.dtype((base, (count,))) if count > 1 else base

    def view(self, names: Sequence[str]) -> np.ndarray:
        """A zero-copy (height, width) structured view of ``names``; strides skip all padding."""
        dtype = np.dtype(
            {
                "names": list(names),
                "formats": [self.field_dtype(n) for n in names],
                "offsets": [self.fields[n][0] for n in names],
                "itemsize": self.point_step,
            }
        )
        if self.height * self.width == 0:
            return np.zeros((self.height, self.width), dtype=dtype)
        return np.ndarray((self.height, self.width), dtype=dtype, buffer=self.buf,
                          strides=(self.row_step, self.point_step))


def _layout(msg: Any, names: Sequence[str]) -> _Layout:
    """Validate the cloud's geometry and that it has fields ``names``, before touching any byte."""
    height, width = _as_int(msg, "height"), _as_int(msg, "width")
    point_step, row_step = _as_int(msg, "point_step"), _as_int(msg, "row_step")
    if point_step == 0:
        raise CloudFormatError("point_step is 0")
    fields = _field_table(msg, point_step)
    missing = [n for n in names if n not in fields]
    if missing:
        raise CloudFormatError(f"cloud has no field(s) {missing}; it has {sorted(fields)}")
    if height * width == 0:
        return _Layout(np.zeros(0, np.uint8), height, width, point_step, row_step, _byte_order(msg), fields)
    if row_step < width * point_step:
        raise CloudFormatError(f"row_step {row_step} < width {width} * point_step {point_step}")
    buf = _data_bytes(msg)
    if buf.size < row_step * height:
        raise CloudFormatError(
            f"data has {buf.size} bytes, expected row_step {row_step} * height {height} = {row_step * height}"
        )
    return _Layout(buf, height, width, point_step, row_step, _byte_order(msg), fields)


def _valid_rows(xyz: np.ndarray) -> np.ndarray:
    """Rows that are a return: three finite coordinates, not all zero (LiDAR drivers such as Ouster's
    mark "no return" with the origin, organized clouds with NaN). Column by column: ``.all(axis=1)``
    is ~50x slower."""
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    return np.isfinite(x) & np.isfinite(y) & np.isfinite(z) & ((x != 0) | (y != 0) | (z != 0))


def pointcloud2_to_xyz(msg: Any, *, skip_nonfinite: bool = True) -> np.ndarray:
    """x, y, z of a PointCloud2 as (N, 3) float32, organized clouds flattened row-major.

    x/y/z may be FLOAT32 or FLOAT64, in either byte order, inside any padded layout. With
    ``skip_nonfinite`` what is no return is dropped: points with a NaN/inf coordinate (holes of
    organized clouds) and points at the origin (zero range: how Ouster and other LiDAR drivers
    mark a beam without echo); without it N == height * width, aligned with
    :func:`pointcloud2_fields`. An empty cloud gives a (0, 3) array: whether that is an error is
    the caller's decision.
    """
    if _as_int(msg, "height") * _as_int(msg, "width") == 0:
        return np.zeros((0, 3), dtype=np.float32)
    lay = _layout(msg, _XYZ)
    for n in _XYZ:
        _, datatype, count = lay.fields[n]
        if datatype not in (7, 8) or count != 1:
            raise CloudFormatError(f"field {n!r} must be a single FLOAT32/FLOAT64, got datatype {datatype} count {count}")
    (ox, tx, _), (oy, ty, _), (oz, tz, _) = (lay.fields[n] for n in _XYZ)
    if tx == ty == tz == POINTFIELD_FLOAT32 and oy == ox + 4 and oz == ox + 8:
        # The usual layout (x, y, z adjacent): one strided (H, W, 3) view, one copy.
        packed = np.ndarray((lay.height, lay.width, 3), dtype=lay.order + "f4", buffer=lay.buf, offset=ox,
                            strides=(lay.row_step, lay.point_step, 4))
        xyz = packed.reshape(-1, 3).astype(np.float32)  # reshape copies (strided); astype fixes byte order
    else:
        flat = lay.view(_XYZ).reshape(-1)
        xyz = np.empty((flat.shape[0], 3), dtype=np.float32)
        for i, n in enumerate(_XYZ):
            xyz[:, i] = flat[n]  # converts byte order and float64 -> float32
    if skip_nonfinite:
        valid = _valid_rows(xyz)
        if not valid.all():  # dense clouds: one fast pass, no copy
            xyz = xyz[valid]
    return xyz


def pointcloud2_fields(msg: Any, names: Sequence[str], *, skip_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """Extra per-point fields (``saliency``, ``intensity``, ``rgb`` ...) as native-endian arrays.

    Each array is (N,) — or (N, count) for fields with count > 1 — in the field's own type
    (``rgb`` packed as FLOAT32 comes back float32; ``.view(np.uint32)`` unpacks it). Rows are in
    the order of ``pointcloud2_to_xyz(msg, skip_nonfinite=False)``; ``skip_nonfinite=True`` drops
    the same rows the default ``pointcloud2_to_xyz`` drops (non-finite or at the origin), so the
    two stay aligned.
    """
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise CloudFormatError("names must be a sequence of field names, e.g. ['saliency']")
    names = list(names)
    flat = _layout(msg, names).view(names).reshape(-1)
    out = {n: flat[n].astype(flat.dtype[n].base.newbyteorder("="), copy=True) for n in names}
    if skip_nonfinite and flat.size:
        valid = _valid_rows(pointcloud2_to_xyz(msg, skip_nonfinite=False))
        if not valid.all():
            out = {n: a[valid] for n, a in out.items()}
    return out


# Per-point time fields of LiDAR drivers, in the order they are preferred: offsets from the scan
# stamp (Ouster ``t``, uint32 ns; Velodyne ``time``, float32 s) before absolute ones (Hesai,
# Robosense ``timestamp``, float64 s). KISS-ICP accepts the same three names.
TIME_FIELDS = ("t", "time", "timestamp")
_ABSOLUTE_SECONDS = 1e6  # a time beyond ~11.6 days is an absolute (epoch) time, not an offset in a sweep
_ABSOLUTE_NANOSECONDS = 1e15


def normalize_point_times(times: np.ndarray) -> np.ndarray:
    """Times mapped to [0, 1] by their minimum and maximum, as KISS-ICP normalises them (float64);
    all zeros when they do not spread (one firing, or no time information)."""
    t = np.asarray(times, dtype=np.float64)
    if t.size == 0:
        return t.copy()
    lo, hi = float(t.min()), float(t.max())
    if not hi > lo:
        return np.zeros_like(t)
    return (t - lo) / (hi - lo)


def pointcloud2_point_times(
    msg: Any, *, skip_nonfinite: bool = True, stamp: float | None = None, normalize: bool = False
) -> np.ndarray | None:
    """Per-point time of a LiDAR cloud in seconds relative to its scan stamp (float64), or None
    when the cloud has no ``t``, ``time`` or ``timestamp`` field (see TIME_FIELDS).

    Integer fields are nanoseconds (Ouster ``t``), float fields seconds (Velodyne ``time``).
    Absolute times (beyond 1e6 s, or 1e15 for nanoseconds: Hesai/Robosense ``timestamp``) are
    made relative to ``stamp`` [s], by default ``msg.header.stamp``; without any stamp, to their
    earliest point. ``normalize=True`` maps them to [0, 1] as KISS-ICP does
    (:func:`normalize_point_times`), the form :func:`ukpgan_ros.deskew.deskew` takes without
    ``dt``. Rows are aligned with ``pointcloud2_to_xyz(msg, skip_nonfinite=skip_nonfinite)``.
    """
    if _as_int(msg, "height") * _as_int(msg, "width") == 0:
        fields = {getattr(f, "name", None) for f in getattr(msg, "fields", None) or ()}
        return np.zeros(0, np.float64) if any(n in fields for n in TIME_FIELDS) else None
    lay = _layout(msg, ())
    name = next((n for n in TIME_FIELDS if n in lay.fields), None)
    if name is None:
        return None
    _, datatype, count = lay.fields[name]
    if count != 1:
        raise CloudFormatError(f"time field {name!r} must hold one value per point, got count {count}")
    raw = lay.view([name]).reshape(-1)[name]
    integer = np.dtype(_POINTFIELD_DTYPES[datatype]).kind in "iu"
    t = raw.astype(np.float64) * (1e-9 if integer else 1.0)
    if skip_nonfinite:
        t = t[_valid_rows(pointcloud2_to_xyz(msg, skip_nonfinite=False))]
    if t.size and not np.isfinite(t).all():
        raise CloudFormatError(f"time field {name!r} holds NaN or inf")
    if t.size and not integer and float(np.abs(t).max()) > _ABSOLUTE_NANOSECONDS:
        t = t * 1e-9  # float nanoseconds since the epoch
    if t.size and float(np.abs(t).max()) > _ABSOLUTE_SECONDS:
        if stamp is None:
            header_stamp = getattr(getattr(msg, "header", None), "stamp", None)
            if hasattr(header_stamp, "sec") and hasattr(header_stamp, "nanosec"):
                stamp = stamp_seconds(header_stamp)
        ref = float(stamp) if stamp is not None and stamp > 0 else float(t.min())
        t = t - ref
    return normalize_point_times(t) if normalize else t


# --------------------------------------------------------------------------------------------
# Depth images and camera info
# --------------------------------------------------------------------------------------------


def depth_image_to_metres(msg: Any, depth_scale: float = 1000.0) -> np.ndarray:
    """A depth Image (``16UC1``/``mono16`` in 1/depth_scale m, or ``32FC1`` in m) as (H, W) float32 metres.

    Row padding (``step`` > width * bytes per pixel) and big-endian data are honoured; invalid
    pixels (0, 65535, NaN, inf, <= 0) become 0, as :func:`ukpgan_ros.depth.depth_to_metres`.
    """
    encoding = getattr(msg, "encoding", None)
    if encoding not in DEPTH_ENCODINGS:
        raise CloudFormatError(f"unsupported depth encoding {encoding!r} (expected 16UC1, mono16 or 32FC1)")
    kind, bpp = DEPTH_ENCODINGS[encoding]
    height, width, step = _as_int(msg, "height"), _as_int(msg, "width"), _as_int(msg, "step")
    if height * width == 0:
        return np.zeros((height, width), dtype=np.float32)
    if step < width * bpp:
        raise CloudFormatError(f"step {step} < width {width} * {bpp} bytes per pixel for {encoding}")
    buf = _data_bytes(msg)
    if buf.size < step * height:
        raise CloudFormatError(f"data has {buf.size} bytes, expected step {step} * height {height} = {step * height}")
    raw = np.ndarray((height, width), dtype=_byte_order(msg) + kind, buffer=buf, strides=(step, bpp))
    return depth_to_metres(raw, encoding, depth_scale)


def camera_info_to_K(msg: Any) -> np.ndarray:
    """The 3x3 intrinsic matrix of a CameraInfo (``k``, row-major), float64; fx, fy must be > 0."""
    k = getattr(msg, "k", None)
    if k is None:
        k = getattr(msg, "K", None)  # ROS 1 / rosbags spelling
    try:
        K = np.asarray(k, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError):
        raise CloudFormatError(f"CameraInfo k must hold 9 numbers, got {k!r}") from None
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CloudFormatError(f"invalid intrinsics (need finite k with fx, fy > 0): {K.tolist()}")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (MIN_FOCAL_PX <= fx <= MAX_INTRINSIC_PX and MIN_FOCAL_PX <= fy <= MAX_INTRINSIC_PX
            and abs(cx) <= MAX_INTRINSIC_PX and abs(cy) <= MAX_INTRINSIC_PX):
        raise CloudFormatError(
            f"invalid intrinsics fx={fx:g}, fy={fy:g}, cx={cx:g}, cy={cy:g}: a pinhole camera needs "
            f"{MIN_FOCAL_PX:g} <= fx, fy <= {MAX_INTRINSIC_PX:g} px and |cx|, |cy| <= {MAX_INTRINSIC_PX:g} px")
    return K


def depth_msgs_to_points(
    image: Any,
    info: Any,
    min_depth: float = 0.0,
    max_depth: float = np.inf,
    stride: int = 1,
    depth_scale: float = 1000.0,
) -> np.ndarray:
    """Back-project a depth Image with its CameraInfo to (N, 3) float32 in the optical frame."""
    depth = depth_image_to_metres(image, depth_scale)
    K = camera_info_to_K(info)
    iw, ih = getattr(info, "width", 0), getattr(info, "height", 0)
    binned = max(getattr(info, "binning_x", 0), getattr(info, "binning_y", 0)) > 1
    roi = getattr(info, "roi", None)
    has_roi = roi is not None and getattr(roi, "width", 0) > 0 and getattr(roi, "height", 0) > 0
    if iw and ih and not binned and not has_roi and (iw, ih) != (depth.shape[1], depth.shape[0]):
        raise CloudFormatError(f"CameraInfo is {iw}x{ih} but the depth image is {depth.shape[1]}x{depth.shape[0]}")
    return depth_to_points(depth, K, stride=stride, min_depth=min_depth, max_depth=max_depth)
