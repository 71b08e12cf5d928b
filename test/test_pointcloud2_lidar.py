"""PointCloud2 of LiDAR drivers (Ouster, Velodyne, Hesai layouts) read like a slow per-point
``struct`` loop kept here, and like sensor_msgs_py's read_points where a ROS install has it:
x/y/z, zero-range and NaN returns dropped, intensity of any type, per-point time."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from test_pointcloud2 import STRUCT, field, pack_cloud
from ukpgan_ros.pointcloud2 import (
    CloudFormatError,
    normalize_point_times,
    pointcloud2_fields,
    pointcloud2_point_times,
    pointcloud2_to_xyz,
)

msg_mod = pytest.importorskip("sensor_msgs.msg", reason="the rclpy message packages build the test messages")
PointCloud2, PointField = msg_mod.PointCloud2, msg_mod.PointField

I8, U8, I16, U16, I32, U32, F32, F64 = 1, 2, 3, 4, 5, 6, 7, 8
STAMP_SEC, STAMP_NSEC = 1_700_000_000, 250_000_000
STAMP = STAMP_SEC + STAMP_NSEC * 1e-9

# name, offset, datatype: the point layouts the drivers publish (padding where they pad).
OUSTER = ([("x", 0, F32), ("y", 4, F32), ("z", 8, F32), ("intensity", 16, F32), ("t", 20, U32),
           ("reflectivity", 24, U16), ("ring", 26, U16), ("ambient", 28, U16), ("range", 32, U32)], 48)
VELODYNE = ([("x", 0, F32), ("y", 4, F32), ("z", 8, F32), ("intensity", 16, F32), ("ring", 20, U16),
             ("time", 24, F32)], 32)
VELODYNE_U8 = ([("x", 0, F32), ("y", 4, F32), ("z", 8, F32), ("intensity", 12, U8), ("ring", 13, U8),
                ("time", 16, F32)], 20)
HESAI = ([("x", 0, F32), ("y", 4, F32), ("z", 8, F32), ("intensity", 12, F32), ("timestamp", 16, F64),
          ("ring", 24, U16)], 32)
LIVOX_F64_XYZ = ([("intensity", 0, I16), ("x", 8, F64), ("y", 16, F64), ("z", 24, F64), ("t", 32, I32)], 40)


def make_cloud(layout, rows, bigendian=False, row_pad=0) -> PointCloud2:
    """A real sensor_msgs/PointCloud2 packed point by point with struct (test_pointcloud2's packer)."""
    spec, point_step = layout
    packed = pack_cloud(rows, [field(n, o, d) for n, o, d in spec], point_step, row_pad=row_pad, bigendian=bigendian,
                        fill=0xCD)
    msg = PointCloud2()
    msg.header.stamp.sec, msg.header.stamp.nanosec = STAMP_SEC, STAMP_NSEC
    msg.header.frame_id = "lidar"
    msg.height, msg.width, msg.point_step, msg.row_step = packed.height, packed.width, point_step, packed.row_step
    msg.is_bigendian, msg.is_dense = bigendian, False
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=1) for n, o, d in spec]
    msg.data = packed.data
    return msg


def lidar_rows(rng, beams, columns, time_field, zero_fraction=0.1, nan_fraction=0.1, int_intensity=False):
    """An organized scan: rows are beams, columns the azimuth sweep of 0.1 s; some beams return
    nothing (the origin or NaN, as drivers mark it)."""
    rows = []
    for b in range(beams):
        row = []
        for c in range(columns):
            rng_m = float(rng.uniform(2.0, 100.0))
            az, el = 2 * math.pi * c / columns, math.radians(2.0 - 26.8 * b / max(beams - 1, 1))
            x, y, z = (rng_m * math.cos(el) * math.cos(az), rng_m * math.cos(el) * math.sin(az), rng_m * math.sin(el))
            u = rng.random()
            if u < zero_fraction:
                x = y = z = 0.0
            elif u < zero_fraction + nan_fraction:
                x = y = z = math.nan
            offset = 0.1 * c / columns
            t = {"t": int(round(offset * 1e9)), "time": offset, "timestamp": STAMP + offset}[time_field]
            intensity = int(rng.integers(0, 255)) if int_intensity else float(rng.uniform(0, 255))
            row.append({"x": x, "y": y, "z": z, "intensity": intensity,
                        time_field: t, "ring": b, "reflectivity": int(rng.integers(0, 65535)),
                        "ambient": int(rng.integers(0, 65535)), "range": int(rng_m * 1000)})
        rows.append(row)
    return rows


def reference_points(msg):
    """The slow reader: every point unpacked with struct; a return is finite and not at the origin.
    Returns xyz (float32) and per field the values of the kept points."""
    e = ">" if msg.is_bigendian else "<"
    fields = {f.name: f for f in msg.fields}
    xyz, extra, data = [], {n: [] for n in fields}, bytes(msg.data)
    for r in range(msg.height):
        for c in range(msg.width):
            base = r * msg.row_step + c * msg.point_step
            vals = {n: struct.unpack_from(e + STRUCT[f.datatype], data, base + f.offset)[0]
                    for n, f in fields.items()}
            p = (vals["x"], vals["y"], vals["z"])
            if not all(math.isfinite(v) for v in p) or all(v == 0 for v in p):
                continue
            xyz.append(p)
            for n in fields:
                extra[n].append(vals[n])
    return np.array(xyz, dtype=np.float64).reshape(-1, 3).astype(np.float32), extra


def reference_seconds(name, datatype, values):
    """Seconds after the stamp as the drivers document their time fields."""
    out = []
    for v in values:
        if datatype in (I8, U8, I16, U16, I32, U32):
            out.append(v * 1e-9)  # Ouster t, Livox offset: nanoseconds after the stamp
        elif name == "timestamp":
            out.append(v - STAMP)  # Hesai/Robosense: absolute seconds
        else:
            out.append(v)  # Velodyne time: seconds after the stamp
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("layout,time_field,bigendian", [
    (OUSTER, "t", False), (OUSTER, "t", True), (VELODYNE, "time", False), (VELODYNE_U8, "time", False),
    (HESAI, "timestamp", False), (LIVOX_F64_XYZ, "t", False),
])
def test_driver_layouts_match_the_per_point_reference(layout, time_field, bigendian):
    rng = np.random.default_rng(7)
    int_intensity = dict((n, d) for n, _, d in layout[0])["intensity"] not in (F32, F64)
    msg = make_cloud(layout, lidar_rows(rng, 8, 24, time_field, int_intensity=int_intensity), bigendian=bigendian, row_pad=5)
    ref_xyz, ref = reference_points(msg)
    got = pointcloud2_to_xyz(msg)
    assert 0 < len(got) < msg.height * msg.width  # zero and NaN returns were there and are gone
    np.testing.assert_array_equal(got, ref_xyz)
    assert not (got == 0).all(axis=1).any()
    # intensity, ring of whatever integer or float type, aligned row by row with the points
    names = [n for n in ("intensity", "ring") if n in ref]
    extra = pointcloud2_fields(msg, names, skip_nonfinite=True)
    for n in names:
        np.testing.assert_array_equal(extra[n], np.array(ref[n], dtype=extra[n].dtype))
    dt = dict((n, d) for n, _, d in layout[0])[time_field]
    times = pointcloud2_point_times(msg)
    np.testing.assert_allclose(times, reference_seconds(time_field, dt, ref[time_field]), atol=1e-6)
    assert times.shape == (len(got),) and times.min() >= -1e-6 and times.max() <= 0.1
    norm = pointcloud2_point_times(msg, normalize=True)
    ref_t = reference_seconds(time_field, dt, ref[time_field])
    np.testing.assert_allclose(norm, (ref_t - ref_t.min()) / (ref_t.max() - ref_t.min()), atol=1e-5)
    # unskipped: one entry per cell of the organized cloud, in the same order as the raw xyz
    assert pointcloud2_point_times(msg, skip_nonfinite=False).shape == (msg.height * msg.width,)
    assert pointcloud2_to_xyz(msg, skip_nonfinite=False).shape == (msg.height * msg.width, 3)


def test_organized_ouster_scan_with_all_returns_missing_in_a_row():
    """A whole beam without echo (all zeros), a column of NaN: nothing of them survives."""
    rng = np.random.default_rng(3)
    rows = lidar_rows(rng, 4, 16, "t", zero_fraction=0.0, nan_fraction=0.0)
    for p in rows[2]:
        p["x"] = p["y"] = p["z"] = 0.0
    for row in rows:
        row[5]["x"] = row[5]["y"] = row[5]["z"] = math.nan
    msg = make_cloud(OUSTER, rows)
    got = pointcloud2_to_xyz(msg)
    assert len(got) == 3 * 15
    np.testing.assert_array_equal(got, reference_points(msg)[0])
    ring = pointcloud2_fields(msg, ["ring"], skip_nonfinite=True)["ring"]
    assert set(ring.tolist()) == {0, 1, 3}


def test_a_point_off_the_origin_in_one_coordinate_stays():
    rows = [[{"x": 0.0, "y": 0.0, "z": 0.5, "intensity": 1.0, "time": 0.0, "ring": 0},
             {"x": -0.0, "y": 0.0, "z": -0.0, "intensity": 1.0, "time": 0.05, "ring": 0},
             {"x": 1e-30, "y": 0.0, "z": 0.0, "intensity": 1.0, "time": 0.1, "ring": 0}]]
    msg = make_cloud(VELODYNE, rows)
    np.testing.assert_array_equal(pointcloud2_to_xyz(msg), np.array([[0, 0, 0.5], [1e-30, 0, 0]], np.float32))
    np.testing.assert_allclose(pointcloud2_point_times(msg), [0.0, 0.1], atol=1e-7)


def test_no_time_field_gives_none_and_bad_time_fields_are_errors():
    rows = [[{"x": 1.0, "y": 2.0, "z": 3.0, "intensity": 1.0, "ring": 0, "time": 0.0}]]
    msg = make_cloud(VELODYNE, rows)
    msg.fields = [f for f in msg.fields if f.name != "time"]
    assert pointcloud2_point_times(msg) is None
    msg = make_cloud(VELODYNE, [[dict(rows[0][0], time=math.nan)]])
    with pytest.raises(CloudFormatError, match="time field 'time' holds NaN"):
        pointcloud2_point_times(msg)
    msg = make_cloud(VELODYNE, rows)
    msg.fields[-1].count = 2
    with pytest.raises(CloudFormatError):
        pointcloud2_point_times(msg)
    empty = make_cloud(VELODYNE, rows)
    empty.width, empty.row_step, empty.data = 0, 0, b""
    assert pointcloud2_point_times(empty).shape == (0,)


def test_absolute_times_without_a_stamp_start_at_the_earliest_point():
    rows = lidar_rows(np.random.default_rng(1), 2, 10, "timestamp", 0.0, 0.0)
    msg = make_cloud(HESAI, rows)
    msg.header.stamp.sec = msg.header.stamp.nanosec = 0
    t = pointcloud2_point_times(msg)
    assert t.min() == 0.0 and abs(t.max() - 0.09) < 1e-6
    t2 = pointcloud2_point_times(msg, stamp=STAMP - 0.5)
    np.testing.assert_allclose(t2, t + 0.5, atol=1e-6)


def test_normalize_point_times_is_kiss_icps_min_max():
    np.testing.assert_allclose(normalize_point_times(np.array([0.02, 0.07, 0.12])), [0.0, 0.5, 1.0])
    assert (normalize_point_times(np.full(4, 0.3)) == 0).all()
    assert normalize_point_times(np.zeros(0)).shape == (0,)


def test_against_sensor_msgs_py_read_points():
    """Where a ROS install provides sensor_msgs_py, its read_points must agree on the same messages."""
    pc2 = pytest.importorskip("sensor_msgs_py.point_cloud2",
                              reason="sensor_msgs_py is part of a ROS 2 install, not of the PyPI wheels here")
    rng = np.random.default_rng(11)
    for layout, tf in ((OUSTER, "t"), (VELODYNE, "time"), (HESAI, "timestamp")):
        msg = make_cloud(layout, lidar_rows(rng, 6, 20, tf))
        arr = pc2.read_points(msg, field_names=("x", "y", "z", "intensity", tf), skip_nans=True)
        xyz = np.stack([arr["x"], arr["y"], arr["z"]], axis=1).astype(np.float32)
        keep = ~(xyz == 0).all(axis=1)  # read_points keeps zero-range returns; they are no point
        np.testing.assert_array_equal(pointcloud2_to_xyz(msg), xyz[keep])
        np.testing.assert_array_equal(pointcloud2_fields(msg, ["intensity"], skip_nonfinite=True)["intensity"],
                                      arr["intensity"][keep])
        dt = dict((n, d) for n, _, d in layout[0])[tf]
        np.testing.assert_allclose(pointcloud2_point_times(msg), reference_seconds(tf, dt, arr[tf][keep]), atol=1e-6)
