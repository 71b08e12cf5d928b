"""Property tests of the PointCloud2 / Image / CameraInfo parsers (hypothesis): thousands of
generated layouts, valid and broken. Every outcome is points (finite, float32, the right shape)
or the project's own CloudFormatError; never an IndexError, a NumPy error or a crash. Valid
layouts also agree with the slow per-point struct reader of test_pointcloud2."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -r requirements.txt)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_pointcloud2 import STRUCT, reference_xyz  # noqa: E402
from ukpgan_ros.pointcloud2 import (  # noqa: E402
    MAX_INTRINSIC_PX,
    CloudFormatError,
    camera_info_to_K,
    depth_image_to_metres,
    depth_msgs_to_points,
    pointcloud2_fields,
    pointcloud2_to_xyz,
)

# Deterministic in CI: the same examples every run, no example database on disk.
SETTINGS = settings(max_examples=2000, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 8: 8}

small = st.integers(min_value=0, max_value=6)
anything_int = st.one_of(st.integers(min_value=-3, max_value=80), st.just(2**40), st.none(), st.just(1.5),
                         st.just(True), st.just("7"))


@st.composite
def fields(draw, point_step: int, valid: bool):
    """x, y, z (sometimes missing or duplicated when not ``valid``) plus extra fields."""
    names = ["x", "y", "z"] + draw(st.lists(st.sampled_from(["rgb", "intensity", "ring", "normal"]), unique=True, max_size=3))
    if not valid:
        names = draw(st.lists(st.sampled_from(names + ["", "x"]), max_size=6))
    out = []
    for name in names:
        if valid:
            datatype = draw(st.sampled_from([7, 8])) if name in "xyz" else draw(st.integers(1, 8))
            count = 1 if name in "xyz" else draw(st.integers(1, 3))
            size = SIZES[datatype] * count
            offset = draw(st.integers(0, max(0, point_step - size)))
        else:
            datatype = draw(st.one_of(st.integers(-1, 10), st.none()))
            count = draw(anything_int)
            offset = draw(anything_int)
        out.append(SimpleNamespace(name=name if valid or draw(st.booleans()) else draw(st.sampled_from([None, 3, name])),
                                   offset=offset, datatype=datatype, count=count))
    return out


@st.composite
def data(draw, n: int):
    kind = draw(st.sampled_from(["bytes", "bytes", "bytes", "list", "floats", "str", "none", "bytearray"]))
    if kind == "none":
        return None
    if kind == "str":
        return "x" * n
    if kind == "floats":
        return [0.5] * n
    raw = draw(st.binary(min_size=n, max_size=n)) if n <= 4096 else bytes(n)
    return list(raw) if kind == "list" else bytearray(raw) if kind == "bytearray" else raw


@st.composite
def broken_clouds(draw):
    height, width = draw(st.one_of(small, anything_int)), draw(st.one_of(small, anything_int))
    point_step = draw(st.one_of(st.integers(0, 48), anything_int))
    ps = point_step if isinstance(point_step, int) and not isinstance(point_step, bool) and 0 <= point_step < 10**6 else 16
    row_step = draw(st.one_of(st.integers(0, 6 * ps + 8), anything_int))
    rows = height if isinstance(height, int) and not isinstance(height, bool) and 0 <= height <= 6 else 1
    rs = row_step if isinstance(row_step, int) and not isinstance(row_step, bool) and 0 <= row_step < 10**6 else 0
    n = draw(st.integers(0, rs * rows + 16))
    return SimpleNamespace(height=height, width=width, point_step=point_step, row_step=row_step,
                           fields=draw(fields(ps, valid=draw(st.booleans()))), is_bigendian=draw(st.booleans()),
                           data=draw(data(n)), is_dense=False)


@st.composite
def valid_clouds(draw):
    """Correct layouts of any shape, padding, field order, type and byte order, with NaN/inf."""
    height, width = draw(small), draw(small)
    order = draw(st.permutations(["x", "y", "z"]))
    xyz, offset = [], draw(st.integers(0, 4))
    for name in order:  # x, y, z in any order, with gaps, never overlapping
        datatype = draw(st.sampled_from([7, 8]))
        xyz.append(SimpleNamespace(name=name, offset=offset, datatype=datatype, count=1))
        offset += SIZES[datatype] + draw(st.integers(0, 4))
    point_step = offset + draw(st.integers(0, 8))
    extras = [f for f in draw(fields(point_step, valid=True))  # may overlap anything, within the point
              if f.name not in "xyz" and f.offset + SIZES[f.datatype] * f.count <= point_step]
    flds = draw(st.permutations(xyz + extras))
    row_step = width * point_step + draw(st.integers(0, 8))
    big = draw(st.booleans())
    buf = bytearray(draw(st.binary(min_size=row_step * height, max_size=row_step * height)))
    values = st.one_of(st.floats(width=32, allow_nan=True, allow_infinity=True), st.floats(-1e3, 1e3, width=32))
    for r in range(height):
        for c in range(width):
            for f in xyz:
                struct.pack_into((">" if big else "<") + STRUCT[f.datatype], buf, r * row_step + c * point_step + f.offset,
                                 draw(values))
    return SimpleNamespace(height=height, width=width, point_step=point_step, row_step=row_step, fields=flds,
                           is_bigendian=big, data=bytes(buf), is_dense=False)


def _points_or_format_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except CloudFormatError:
        return None


@SETTINGS
@given(broken_clouds())
def test_any_cloud_layout_gives_points_or_a_format_error(msg):
    xyz = _points_or_format_error(pointcloud2_to_xyz, msg)
    if xyz is not None:
        assert xyz.dtype == np.float32 and xyz.ndim == 2 and xyz.shape[1] == 3
        assert np.isfinite(xyz).all()
        assert xyz.shape[0] <= msg.height * msg.width
    raw = _points_or_format_error(pointcloud2_to_xyz, msg, skip_nonfinite=False)
    if raw is not None:
        assert raw.shape == (msg.height * msg.width, 3)
    extra = _points_or_format_error(pointcloud2_fields, msg, ["x", "intensity"])
    if extra is not None:
        assert all(len(v) == msg.height * msg.width for v in extra.values())


@settings(SETTINGS, max_examples=500)  # each example packs every point with struct: slower
@given(valid_clouds())
def test_valid_layouts_read_as_the_per_point_reference(msg):
    got = pointcloud2_to_xyz(msg)
    np.testing.assert_array_equal(got, reference_xyz(msg).astype(np.float32))


@st.composite
def depth_images(draw):
    encoding = draw(st.sampled_from(["16UC1", "mono16", "32FC1", "32FC1", "rgb8", "", None]))
    height, width = draw(st.one_of(small, anything_int)), draw(st.one_of(small, anything_int))
    w = width if isinstance(width, int) and not isinstance(width, bool) and 0 <= width <= 6 else 2
    h = height if isinstance(height, int) and not isinstance(height, bool) and 0 <= height <= 6 else 2
    step = draw(st.one_of(st.integers(0, 4 * w + 6), anything_int))
    s = step if isinstance(step, int) and not isinstance(step, bool) and 0 <= step < 10**6 else 0
    n = draw(st.one_of(st.integers(0, s * h + 8), st.just(s * h)))
    return SimpleNamespace(encoding=encoding, height=height, width=width, step=step, is_bigendian=draw(st.booleans()),
                           data=draw(data(n)))


@SETTINGS
@given(depth_images())
def test_any_depth_image_gives_metres_or_a_format_error(msg):
    depth = _points_or_format_error(depth_image_to_metres, msg)
    if depth is not None:
        assert depth.dtype == np.float32 and depth.shape == (msg.height, msg.width)
        assert np.isfinite(depth).all() and (depth >= 0).all()


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2000, 2000), st.just(1e-300),
                    st.just(0.0), st.just(1e39), st.integers(-5, 900))


@st.composite
def camera_infos(draw):
    k = draw(st.one_of(
        st.lists(numbers, min_size=9, max_size=9),
        st.lists(numbers, max_size=12),
        st.builds(lambda fx, fy, cx, cy: [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], numbers, numbers, numbers, numbers),
        st.just("not a matrix"), st.none()))
    return SimpleNamespace(k=k, width=draw(st.sampled_from([0, 4, 6])), height=draw(st.sampled_from([0, 3, 5])),
                           binning_x=0, binning_y=0, roi=None)


@SETTINGS
@given(camera_infos(), st.integers(1, 3), st.sampled_from(["16UC1", "32FC1"]), st.binary(min_size=120, max_size=120))
def test_any_camera_info_gives_points_or_a_format_error(info, stride, encoding, raw):
    K = _points_or_format_error(camera_info_to_K, info)
    if K is not None:
        assert K.shape == (3, 3) and np.isfinite(K).all()
        assert 0 < K[0, 0] <= MAX_INTRINSIC_PX and 0 < K[1, 1] <= MAX_INTRINSIC_PX
    bpp = 2 if encoding == "16UC1" else 4
    image = SimpleNamespace(encoding=encoding, height=5, width=6, step=6 * bpp, is_bigendian=False, data=raw[: 30 * bpp])
    pts = _points_or_format_error(depth_msgs_to_points, image, info, stride=stride)
    if pts is not None:
        assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 3 and np.isfinite(pts).all()
        assert K is not None, "points from intrinsics that camera_info_to_K refuses"
