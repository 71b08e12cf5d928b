"""NumPy -> sensor_msgs PointCloud2 / Image / CameraInfo (the parsing side is
:mod:`ukpgan_ros.pointcloud2`, which imports no ROS).

Speed (640x480, see benchmarks/bench_cloud_transport.py): building fills an
``array.array('B')`` in place and hands it to a message created with ``check_fields=True``,
whose uint8[] setter then keeps it as is (~1-2 ms). Assigning bytes instead costs a copy, or
seconds of per-element Python validation when ROS_PYTHON_CHECK_FIELDS=1.
"""

from __future__ import annotations

import array
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ukpgan_ros.pointcloud2 import DEPTH_ENCODINGS, POINTFIELD_FLOAT32, CloudFormatError

__all__ = ["xyz_to_pointcloud2", "depth_to_image_msg", "camera_info_msg", "make_header"]

_XYZ = ("x", "y", "z")


def _zero_bytes(n: int) -> array.array:
    """A zeroed ``array.array('B')`` of n bytes, to be filled in place through a NumPy view."""
    return array.array("B", bytes(n))


def _new_msg(cls: type) -> Any:
    """A message whose uint8[] setter keeps an ``array.array('B')`` as is instead of copying it.

    rosidl_generator_py (Jazzy+) setters copy sequences unless ``check_fields`` is on, and with
    it on they validate anything but an ``array.array`` element by element in Python. Older
    generators (Humble) have no ``check_fields`` argument and never copy an array.array.
    """
    try:
        return cls(check_fields=True)
    except (AssertionError, TypeError):
        return cls()


def make_header(header: Any, frame_id: str | None, stamp: Any) -> Any:
    """A std_msgs Header from ``header`` with ``frame_id``/``stamp`` (Time or float seconds) overriding."""
    out = Header()
    if header is not None:
        out.frame_id = header.frame_id
        out.stamp = Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec)
    if frame_id is not None:
        out.frame_id = frame_id
    if stamp is not None:
        if isinstance(stamp, (int, float, np.floating, np.integer)):
            sec = math.floor(float(stamp))
            nanosec = int(round((float(stamp) - sec) * 1e9))
            if nanosec >= 1_000_000_000:
                sec, nanosec = sec + 1, nanosec - 1_000_000_000
            stamp = Time(sec=sec, nanosec=nanosec)
        out.stamp = stamp
    return out


def xyz_to_pointcloud2(
    points: np.ndarray,
    header: Any = None,
    extra_fields: Mapping[str, np.ndarray] | None = None,
    frame_id: str | None = None,
    stamp: Any = None,
) -> Any:
    """An unorganized little-endian PointCloud2 with float32 x, y, z and float32 ``extra_fields``.

    ``extra_fields`` maps a name (e.g. ``saliency``) to one value per point. ``frame_id`` and
    ``stamp`` (a builtin_interfaces Time or float seconds) override ``header``'s. ``is_dense`` is
    True unless a point has a NaN/inf coordinate.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise CloudFormatError(f"points must be (N, 3), got shape {pts.shape}")
    if pts.dtype.kind not in "fiu":
        raise CloudFormatError(f"points must be numeric, got dtype {pts.dtype}")
    n = pts.shape[0]
    extras: list[tuple[str, np.ndarray]] = []
    for name, values in (extra_fields or {}).items():
        if not isinstance(name, str) or not name or name in _XYZ or name in dict(extras):
            raise CloudFormatError(f"invalid or duplicate extra field name {name!r}")
        v = np.asarray(values)
        if v.dtype.kind not in "fiub" or v.shape not in ((n,), (n, 1)):
            raise CloudFormatError(f"extra field {name!r} needs one number per point ({n}), got shape {v.shape}")
        extras.append((name, v.reshape(n)))

    is_dense = bool(np.isfinite(pts).all()) if pts.dtype.kind == "f" else True
    columns = 3 + len(extras)
    point_step = 4 * columns
    data = _zero_bytes(n * point_step)
    if n:
        table = np.frombuffer(data, dtype="<f4").reshape(n, columns)  # writable view into data
        if columns == 3:
            table[:] = pts  # contiguous: a plain copy
        else:
            for i in range(3):  # column by column is ~1.5x faster than table[:, :3] = pts
                table[:, i] = pts[:, i]
        for i, (_, v) in enumerate(extras):
            table[:, 3 + i] = v
        del table  # release the buffer export before rclpy takes the array

    msg = _new_msg(PointCloud2)
    msg.header = make_header(header, frame_id, stamp)
    msg.height = 1
    msg.width = n
    msg.fields = [
        PointField(name=name, offset=4 * i, datatype=POINTFIELD_FLOAT32, count=1)
        for i, name in enumerate(list(_XYZ) + [name for name, _ in extras])
    ]
    msg.is_bigendian = False
    msg.point_step = point_step
    msg.row_step = point_step * n
    msg.data = data
    msg.is_dense = is_dense
    return msg


def depth_to_image_msg(depth_m: np.ndarray, header: Any = None, encoding: str = "16UC1", depth_scale: float = 1000.0) -> Any:
    """A depth Image from (H, W) metres: ``16UC1``/``mono16`` as rounded 1/depth_scale m, ``32FC1`` as m.

    Invalid depths (NaN, inf, <= 0) are written as the encoding's invalid value (0, or NaN for
    32FC1); depths that do not fit in uint16 become 0 too rather than silently saturating.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise CloudFormatError(f"unsupported depth encoding {encoding!r} (expected 16UC1, mono16 or 32FC1)")
    d = np.asarray(depth_m)
    if d.ndim != 2 or d.dtype.kind not in "fiu":
        raise CloudFormatError(f"depth must be a 2-D numeric array, got shape {d.shape} dtype {d.dtype}")
    d = d.astype(np.float64, copy=False)
    valid = np.isfinite(d) & (d > 0)
    kind, bpp = DEPTH_ENCODINGS[encoding]
    height, width = d.shape
    data = _zero_bytes(height * width * bpp)
    if d.size:
        out = np.frombuffer(data, dtype="<" + kind).reshape(height, width)
        if kind == "u2":
            raw = np.rint(np.where(valid, d, 0.0) * depth_scale)
            raw[~valid | (raw >= 65535) | (raw < 1)] = 0
            out[:] = raw
        else:
            out[:] = np.where(valid, d, np.nan)
        del out
    msg = _new_msg(Image)
    msg.header = make_header(header, None, None)
    msg.height, msg.width = height, width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = width * bpp
    msg.data = data
    return msg


def camera_info_msg(K: np.ndarray, width: int, height: int, header: Any = None) -> Any:
    """A plumb_bob CameraInfo with zero distortion, identity R and P = [K | 0] (a rectified pinhole)."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CloudFormatError(f"invalid intrinsics K: {K.tolist()}")
    if int(width) <= 0 or int(height) <= 0:
        raise CloudFormatError(f"image size must be positive, got {width}x{height}")
    msg = CameraInfo()
    msg.header = make_header(header, None, None)
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = K.reshape(-1)
    msg.r = np.eye(3).reshape(-1)
    P = np.zeros((3, 4))
    P[:, :3] = K
    msg.p = P.reshape(-1)
    return msg
