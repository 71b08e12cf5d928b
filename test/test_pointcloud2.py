"""PointCloud2 / depth Image <-> NumPy, checked against a slow per-point ``struct`` reference."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from ukpgan_ros.depth import depth_to_metres, depth_to_points
from ukpgan_ros.pointcloud2 import (
    CloudFormatError,
    camera_info_to_K,
    depth_image_to_metres,
    depth_msgs_to_points,
    pointcloud2_fields,
    pointcloud2_to_xyz,
)
from ukpgan_ros.ros.cloud_msgs import camera_info_msg, depth_to_image_msg, xyz_to_pointcloud2

# PointField datatype -> struct format character (sizes as in sensor_msgs/PointField).
STRUCT = {1: "b", 2: "B", 3: "h", 4: "H", 5: "i", 6: "I", 7: "f", 8: "d"}
F32, F64, U8, U32 = 7, 8, 2, 6


def field(name: str, offset: int, datatype: int, count: int = 1) -> SimpleNamespace:
    return SimpleNamespace(name=name, offset=offset, datatype=datatype, count=count)


def pack_cloud(rows, fields, point_step, row_pad=0, bigendian=False, fill=0xAB):
    """A hand-made PointCloud2-like object; ``rows`` is [[{name: value}]]; padding bytes = ``fill``."""
    height, width = len(rows), len(rows[0])
    row_step = width * point_step + row_pad
    data = bytearray([fill]) * (row_step * height)
    e = ">" if bigendian else "<"
    for r, row in enumerate(rows):
        for c, point in enumerate(row):
            for f in fields:
                values = point[f.name] if f.count > 1 else [point[f.name]]
                struct.pack_into(e + STRUCT[f.datatype] * f.count, data, r * row_step + c * point_step + f.offset, *values)
    return SimpleNamespace(
        height=height, width=width, fields=fields, is_bigendian=bigendian,
        point_step=point_step, row_step=row_step, data=bytes(data), is_dense=False,
    )


def reference_read(msg, names, skip_nonfinite_xyz=False):
    """The slow, obviously-correct reader: one struct.unpack_from per point and field."""
    e = ">" if msg.is_bigendian else "<"
    by_name = {f.name: f for f in msg.fields}
    out = {n: [] for n in names}
    for r in range(msg.height):
        for c in range(msg.width):
            base = r * msg.row_step + c * msg.point_step
            values = {}
            for n in set(names) | ({"x", "y", "z"} if skip_nonfinite_xyz else set()):
                f = by_name[n]
                v = struct.unpack_from(e + STRUCT[f.datatype] * f.count, msg.data, base + f.offset)
                values[n] = v if f.count > 1 else v[0]
            if skip_nonfinite_xyz and not all(math.isfinite(values[a]) for a in "xyz"):
                continue
            if skip_nonfinite_xyz and all(values[a] == 0 for a in "xyz"):
                continue  # a return at the origin (zero range) is no point
            for n in names:
                out[n].append(values[n])
    return out


def reference_xyz(msg, skip_nonfinite=True):
    ref = reference_read(msg, ["x", "y", "z"], skip_nonfinite_xyz=skip_nonfinite)
    return np.array([ref["x"], ref["y"], ref["z"]], dtype=np.float64).T.reshape(-1, 3)


def random_rows(rng, height, width, nan_fraction=0.0):
    rows = []
    for _ in range(height):
        row = []
        for _ in range(width):
            x, y, z = (float(v) for v in rng.normal(size=3))
            if rng.random() < nan_fraction:
                x = [math.nan, math.inf, -math.inf][int(rng.integers(3))]
            row.append({"x": x, "y": y, "z": z, "rgb": int(rng.integers(0, 2**24)),
                        "intensity": float(rng.random()), "ring": int(rng.integers(0, 255)),
                        "normal": tuple(float(v) for v in rng.normal(size=3))})
        rows.append(row)
    return rows


def assert_matches_reference(msg, **kw):
    got = pointcloud2_to_xyz(msg, **kw)
    ref = reference_xyz(msg, kw.get("skip_nonfinite", True))
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref.astype(np.float32))
    return got


# ------------------------------------------------------------------------------ reading


def test_padded_rgb_layout_point_step_32_organized_with_nans():
    """RealSense/Azure style: x,y,z,<pad>,rgb,<pad> in 32-byte points, organized, with holes."""
    rng = np.random.default_rng(0)
    fields = [field("x", 0, F32), field("y", 4, F32), field("z", 8, F32), field("rgb", 16, U32)]
    msg = pack_cloud(random_rows(rng, 6, 7, nan_fraction=0.3), fields, point_step=32)
    got = assert_matches_reference(msg)
    assert 0 < got.shape[0] < 42  # some points dropped, not all
    assert_matches_reference(msg, skip_nonfinite=False)
    full = pointcloud2_to_xyz(msg, skip_nonfinite=False)
    assert full.shape == (42, 3) and not np.isfinite(full).all()


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("xyz_type", [F32, F64])
def test_float64_bigendian_and_row_padding(bigendian, xyz_type):
    size = 4 if xyz_type == F32 else 8
    fields = [field("intensity", 0, F32), field("x", 4, xyz_type), field("y", 4 + size, xyz_type),
              field("z", 4 + 2 * size, xyz_type), field("ring", 4 + 3 * size, U8)]
    point_step = 4 + 3 * size + 4
    msg = pack_cloud(random_rows(np.random.default_rng(1), 3, 5, 0.2), fields, point_step, row_pad=13,
                     bigendian=bigendian)
    assert msg.row_step > msg.width * msg.point_step
    assert_matches_reference(msg)
    assert_matches_reference(msg, skip_nonfinite=False)


def test_non_adjacent_and_reordered_xyz_offsets():
    """z, y, x stored in reverse order with gaps: the generic (per-field) path, not the packed one."""
    fields = [field("z", 0, F32), field("y", 8, F32), field("x", 16, F32), field("rgb", 20, U32)]
    msg = pack_cloud(random_rows(np.random.default_rng(11), 3, 4, 0.2), fields, point_step=24, row_pad=8)
    assert_matches_reference(msg)
    assert_matches_reference(msg, skip_nonfinite=False)


def test_fields_match_reference_and_stay_aligned_with_xyz():
    fields = [field("x", 0, F32), field("y", 4, F32), field("z", 8, F32), field("rgb", 12, U32),
              field("intensity", 16, F64), field("ring", 24, U8), field("normal", 28, F32, count=3)]
    msg = pack_cloud(random_rows(np.random.default_rng(2), 4, 6, 0.25), fields, point_step=40, row_pad=3,
                     bigendian=True)
    names = ["rgb", "intensity", "ring", "normal"]
    for skip in (False, True):
        got = pointcloud2_fields(msg, names, skip_nonfinite=skip)
        ref = reference_read(msg, names, skip_nonfinite_xyz=skip)
        assert got["rgb"].dtype == np.uint32 and got["ring"].dtype == np.uint8
        assert got["intensity"].dtype == np.float64 and got["intensity"].dtype.isnative
        assert got["normal"].shape == (len(ref["normal"]), 3)
        for n in names:
            np.testing.assert_array_equal(got[n], np.array(ref[n], dtype=got[n].dtype))
        assert got["rgb"].shape[0] == pointcloud2_to_xyz(msg, skip_nonfinite=skip).shape[0]


def test_round_trip_with_saliency_and_real_message():
    from sensor_msgs.msg import PointCloud2

    rng = np.random.default_rng(3)
    pts = rng.normal(size=(1000, 3)).astype(np.float32)
    sal = rng.random(1000).astype(np.float32)
    msg = xyz_to_pointcloud2(pts, extra_fields={"saliency": sal}, frame_id="camera_depth_optical_frame", stamp=12.25)
    assert isinstance(msg, PointCloud2)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 1000, 16, 16000)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "saliency"] and msg.is_dense and not msg.is_bigendian
    assert len(msg.data) == msg.row_step * msg.height
    assert msg.header.frame_id == "camera_depth_optical_frame"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 250_000_000)
    # the builder's bytes, read by the independent reference, are the input
    np.testing.assert_array_equal(reference_xyz(msg).astype(np.float32), pts)
    np.testing.assert_array_equal(np.array(reference_read(msg, ["saliency"])["saliency"], np.float32), sal)
    np.testing.assert_array_equal(pointcloud2_to_xyz(msg), pts)
    np.testing.assert_array_equal(pointcloud2_fields(msg, ["saliency"])["saliency"], sal)


def test_round_trip_through_serialization():
    """The bytes survive rclpy's CDR serialisation, as they will between processes."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2

    pts = np.random.default_rng(4).normal(size=(640 * 12, 3)).astype(np.float32)
    msg = deserialize_message(serialize_message(xyz_to_pointcloud2(pts, frame_id="f")), PointCloud2)
    np.testing.assert_array_equal(pointcloud2_to_xyz(msg), pts)


def test_builder_header_nan_points_and_float64_input():
    from std_msgs.msg import Header
    from builtin_interfaces.msg import Time

    h = Header(frame_id="a", stamp=Time(sec=5, nanosec=7))
    pts = np.array([[1.0, 2.0, 3.0], [np.nan, 0.0, 1.0]], dtype=np.float64)
    msg = xyz_to_pointcloud2(pts, header=h)
    assert msg.header.frame_id == "a" and (msg.header.stamp.sec, msg.header.stamp.nanosec) == (5, 7)
    assert not msg.is_dense
    assert msg.header is not h  # the caller's header is not aliased
    np.testing.assert_array_equal(pointcloud2_to_xyz(msg), pts[:1].astype(np.float32))
    assert pointcloud2_to_xyz(msg, skip_nonfinite=False).shape == (2, 3)
    assert xyz_to_pointcloud2(pts, header=h, frame_id="b").header.frame_id == "b"


def test_empty_clouds():
    empty = xyz_to_pointcloud2(np.zeros((0, 3), np.float32))
    assert (empty.width, len(empty.data), empty.is_dense) == (0, 0, True)
    assert pointcloud2_to_xyz(empty).shape == (0, 3)
    assert pointcloud2_fields(empty, ["x"])["x"].shape == (0,)
    from sensor_msgs.msg import PointCloud2

    assert pointcloud2_to_xyz(PointCloud2()).shape == (0, 3)  # a default message: nothing to read


def test_vga_cloud_with_real_message():
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(640 * 480, 3)).astype(np.float32)
    msg = xyz_to_pointcloud2(pts, extra_fields={"saliency": pts[:, 0] * 2})
    assert len(msg.data) == 640 * 480 * 16
    np.testing.assert_array_equal(pointcloud2_to_xyz(msg), pts)
    # spot-check rows against the struct reference
    for i in rng.integers(0, len(pts), 50):
        assert struct.unpack_from("<4f", msg.data, int(i) * 16) == tuple(float(v) for v in (*pts[i], pts[i, 0] * 2))


# ------------------------------------------------------------------------------ malformed


def good_cloud(**overrides):
    fields = [field("x", 0, F32), field("y", 4, F32), field("z", 8, F32)]
    msg = pack_cloud(random_rows(np.random.default_rng(6), 2, 3), fields, point_step=16)
    for k, v in overrides.items():
        setattr(msg, k, v)
    return msg


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"data": bytes(40)}, "data has 40 bytes"),
        ({"fields": [field("x", 0, F32), field("y", 4, F32)]}, r"no field\(s\) \['z'\]"),
        ({"fields": [field("x", 0, F32), field("y", 4, F32), field("z", 8, 9)]}, "unsupported datatype 9"),
        ({"fields": [field("x", 0, F32), field("y", 4, F32), field("z", 8, 0)]}, "unsupported datatype 0"),
        ({"fields": [field("x", 0, F32), field("y", 4, F32), field("z", 14, F32)]}, "beyond point_step"),
        ({"fields": [field("x", 0, F32), field("y", 4, F32), field("z", 8, F32), field("z", 12, F32)]}, "twice"),
        ({"fields": [field("x", 0, F32), field("y", 4, F32), field("z", 8, F32, count=0)]}, "invalid count"),
        ({"fields": [field("x", 0, F32), field("y", 4, F32), field("z", 8, U32)]}, "FLOAT32/FLOAT64"),
        ({"fields": [field("x", -4, F32), field("y", 4, F32), field("z", 8, F32)]}, "invalid offset"),
        ({"point_step": 0}, "point_step is 0"),
        ({"row_step": 20}, "row_step 20 < width 3"),
        ({"height": -1}, "non-negative"),
        ({"data": [1, 2, 300] * 32}, "bytes"),
        ({"data": None}, "no data"),
    ],
)
def test_malformed_clouds_raise_cloud_format_error(overrides, match):
    with pytest.raises(CloudFormatError, match=match):
        pointcloud2_to_xyz(good_cloud(**overrides))


def test_malformed_fields_requests():
    with pytest.raises(CloudFormatError, match="saliency"):
        pointcloud2_fields(good_cloud(), ["saliency"])
    with pytest.raises(CloudFormatError, match="sequence of field names"):
        pointcloud2_fields(good_cloud(), "x")
    assert isinstance(CloudFormatError("x"), ValueError)


def test_list_data_is_accepted():
    msg = good_cloud()
    ref = pointcloud2_to_xyz(msg)
    msg.data = list(msg.data)
    np.testing.assert_array_equal(pointcloud2_to_xyz(msg), ref)


@pytest.mark.parametrize(
    "points, extras, match",
    [
        (np.zeros((4, 2)), None, r"\(N, 3\)"),
        (np.zeros(3), None, r"\(N, 3\)"),
        (np.array([["a", "b", "c"]]), None, "numeric"),
        (np.zeros((4, 3)), {"saliency": np.zeros(3)}, "one number per point"),
        (np.zeros((4, 3)), {"z": np.zeros(4)}, "invalid or duplicate"),
        (np.zeros((4, 3)), {"": np.zeros(4)}, "invalid or duplicate"),
    ],
)
def test_builder_rejects_bad_input(points, extras, match):
    with pytest.raises(CloudFormatError, match=match):
        xyz_to_pointcloud2(points, extra_fields=extras)


def test_core_module_imports_no_ros():
    code = (
        "import sys, ukpgan_ros.pointcloud2 as p; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('rclpy', 'sensor_msgs', 'std_msgs', 'builtin_interfaces', 'rosidl_runtime_py')]; "
        "assert not bad, bad"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ------------------------------------------------------------------------------ depth images

K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])


def depth_image(encoding, values, step_pad=0, bigendian=False):
    """A hand-made Image packed per pixel with struct, with ``step_pad`` junk bytes per row."""
    fmt, bpp = {"16UC1": ("H", 2), "mono16": ("H", 2), "32FC1": ("f", 4)}[encoding]
    h, w = values.shape
    step = w * bpp + step_pad
    data = bytearray([0x7F]) * (step * h)
    for r in range(h):
        for c in range(w):
            struct.pack_into((">" if bigendian else "<") + fmt, data, r * step + c * bpp, values[r, c].item())
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=step, data=bytes(data))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("step_pad", [0, 6])
def test_depth_image_16uc1_padding_and_endianness(bigendian, step_pad):
    raw = np.random.default_rng(7).integers(0, 65536, size=(5, 9)).astype(np.uint16)
    raw[0, :3] = [0, 65535, 1]
    got = depth_image_to_metres(depth_image("16UC1", raw, step_pad, bigendian))
    assert got.dtype == np.float32 and got.shape == (5, 9)
    np.testing.assert_array_equal(got, depth_to_metres(raw, "16UC1"))
    assert got[0, 0] == 0 and got[0, 1] == 0 and got[0, 2] == np.float32(0.001)


@pytest.mark.parametrize("bigendian", [False, True])
def test_depth_image_32fc1(bigendian):
    vals = np.random.default_rng(8).uniform(0.2, 5, size=(4, 6)).astype(np.float32)
    vals[1, 1], vals[2, 2], vals[3, 3] = np.nan, -1.0, np.inf
    got = depth_image_to_metres(depth_image("32FC1", vals, step_pad=2, bigendian=bigendian))
    np.testing.assert_array_equal(got, depth_to_metres(vals, "32FC1"))
    assert got[1, 1] == 0 and got[2, 2] == 0 and got[3, 3] == 0


def test_depth_image_msg_round_trip():
    from sensor_msgs.msg import Image

    rng = np.random.default_rng(9)
    d = rng.uniform(0.3, 6.0, size=(48, 64))
    d[0, 0], d[1, 1], d[2, 2], d[3, 3] = np.nan, 0.0, -2.0, 70.0  # 70 m does not fit in uint16 mm
    msg16 = depth_to_image_msg(d, encoding="16UC1")
    assert isinstance(msg16, Image) and (msg16.step, len(msg16.data)) == (128, 128 * 48)
    back = depth_image_to_metres(msg16)
    expected = np.where(np.isfinite(d) & (d > 0) & (d < 65.535), d, 0.0)
    np.testing.assert_allclose(back, expected, atol=0.0005 + 1e-6)
    assert back[3, 3] == 0
    # bytes of the builder read back with struct
    assert struct.unpack_from("<H", msg16.data, (5 * 64 + 7) * 2)[0] == round(d[5, 7] * 1000)
    msg32 = depth_to_image_msg(d, encoding="32FC1")
    assert np.isnan(struct.unpack_from("<f", msg32.data, 0)[0])
    np.testing.assert_array_equal(depth_image_to_metres(msg32), depth_to_metres(d.astype(np.float32), "32FC1"))


def test_depth_msgs_to_points_equals_depth_py():
    rng = np.random.default_rng(10)
    raw = rng.integers(0, 4000, size=(48, 64)).astype(np.uint16)
    raw[rng.random(raw.shape) < 0.2] = 0
    K_small = K.copy()
    K_small[0, 2], K_small[1, 2] = 31.5, 23.5
    info = camera_info_msg(K_small, 64, 48)
    image = depth_image("16UC1", raw, step_pad=4)
    got = depth_msgs_to_points(image, info, min_depth=0.5, max_depth=3.0, stride=2)
    ref = depth_to_points(depth_to_metres(raw), K_small, stride=2, min_depth=0.5, max_depth=3.0)
    assert got.shape[0] > 100
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(CloudFormatError, match="64x48"):
        depth_msgs_to_points(depth_image("16UC1", raw[:, :32]), info)


def test_camera_info_msg_and_K():
    from sensor_msgs.msg import CameraInfo

    info = camera_info_msg(K, 640, 480)
    assert isinstance(info, CameraInfo) and info.distortion_model == "plumb_bob"
    assert (info.width, info.height) == (640, 480) and list(info.d) == [0.0] * 5
    np.testing.assert_array_equal(np.asarray(info.p).reshape(3, 4), np.hstack([K, np.zeros((3, 1))]))
    np.testing.assert_array_equal(np.asarray(info.r).reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(camera_info_to_K(info), K)
    bad = CameraInfo()
    with pytest.raises(CloudFormatError, match="fx, fy > 0"):
        camera_info_to_K(bad)
    with pytest.raises(CloudFormatError, match="9 numbers"):
        camera_info_to_K(SimpleNamespace(k=[1.0, 2.0]))
    with pytest.raises(CloudFormatError):
        camera_info_msg(np.eye(2), 640, 480)


@pytest.mark.parametrize("fx, cx", [(1e-300, 319.5), (1e-5, 319.5), (1e12, 319.5), (525.0, 1e39), (525.0, -1e9)])
def test_absurd_intrinsics_are_refused_with_the_reason(fx, cx):
    """fx = 1e-300 is 0 in float32: it must be refused as intrinsics, not end as '0 points left
    after range crop' further down."""
    bad = K.copy()
    bad[0, 0], bad[0, 2] = fx, cx
    info = SimpleNamespace(k=bad.reshape(-1).tolist(), width=64, height=48)
    with pytest.raises(CloudFormatError, match="invalid intrinsics fx="):
        camera_info_to_K(info)
    with pytest.raises(CloudFormatError, match="invalid intrinsics"):
        depth_msgs_to_points(depth_image("16UC1", np.full((48, 64), 1000, np.uint16)), info)


def test_back_projection_never_overflows_to_inf():
    """32FC1 allows depths up to 3.4e38 m; a coordinate that overflows float32 is dropped."""
    d = np.full((4, 6), 1.0, np.float32)
    d[3, 5] = 3e38  # x = (5 - 0.32) * 3e38 / 0.525 overflows
    pts = depth_to_points(d, K / np.array([[1000.0], [1000.0], [1.0]]))
    assert np.isfinite(pts).all() and len(pts) == 23


@pytest.mark.parametrize(
    "change, match",
    [
        ({"encoding": "rgb8"}, "unsupported depth encoding 'rgb8'"),
        ({"step": 10}, "step 10 < width 9"),
        ({"data": bytes(20)}, "data has 20 bytes"),
        ({"width": -3}, "non-negative"),
    ],
)
def test_malformed_depth_images(change, match):
    msg = depth_image("16UC1", np.ones((5, 9), np.uint16))
    for k, v in change.items():
        setattr(msg, k, v)
    with pytest.raises(CloudFormatError, match=match):
        depth_image_to_metres(msg)
    with pytest.raises(CloudFormatError, match="encoding"):
        depth_to_image_msg(np.ones((2, 2)), encoding="8UC1")
