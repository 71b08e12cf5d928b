"""File I/O and depth sequences, checked against hand-parsed files and the real data sets."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from ukpgan_ros.datasets import (
    SEVEN_SCENES_K,
    DepthFrame,
    DepthSequence,
    SevenScenesSequence,
    TumSequence,
    open_sequence,
)
from ukpgan_ros.io import (
    read_cloud,
    read_depth_png,
    read_transform,
    write_cloud,
)

from conftest import DATA, need

BUNNY = DATA / "pcl-bunny"
MATCH = DATA / "3dmatch-redkitchen"
KITCHEN = DATA / "7scenes-redkitchen"


def parse_ply_xyz(path: Path) -> np.ndarray:
    """Independent reader for binary little-endian PLYs whose vertex has float x, y, z first."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode().splitlines()
    assert "format binary_little_endian 1.0" in header
    n = next(int(h.split()[2]) for h in header if h.startswith("element vertex"))
    vertex_props, in_vertex = [], False
    for h in header:
        if h.startswith("element"):
            in_vertex = h.startswith("element vertex")
        elif h.startswith("property") and in_vertex:
            vertex_props.append(h.split())
    sizes = {"float": 4, "float32": 4, "double": 8, "uchar": 1, "uint8": 1, "int": 4, "uint": 4, "short": 2, "ushort": 2}
    kinds = {"float": "<f4", "float32": "<f4", "double": "<f8", "uchar": "u1", "uint8": "u1", "int": "<i4", "uint": "<u4", "short": "<i2", "ushort": "<u2"}
    assert all(p[1] in sizes for p in vertex_props), vertex_props
    dtype = np.dtype([(p[2], kinds[p[1]]) for p in vertex_props])
    rec = np.frombuffer(raw, dtype=dtype, count=n, offset=end)
    return np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- clouds


def test_read_pcd_bunny_matches_hand_parsed_ascii():
    for name, n in (("bun0.pcd", 397), ("bun4.pcd", 361)):
        path = need(BUNNY / name)
        lines = path.read_text().splitlines()
        body = lines[next(i for i, ln in enumerate(lines) if ln.startswith("DATA ascii")) + 1 :]
        ref = np.array([ln.split()[:3] for ln in body if ln.strip()], dtype=np.float64)
        pts = read_cloud(path)
        assert pts.dtype == np.float32 and pts.shape == (n, 3)
        np.testing.assert_allclose(pts, ref, rtol=0, atol=1e-7)


def test_read_ply_3dmatch_matches_binary_parse():
    path = need(MATCH / "cloud_bin_0.ply")
    pts = read_cloud(path)
    ref = parse_ply_xyz(path)
    assert pts.shape == ref.shape and len(pts) > 250_000
    np.testing.assert_array_equal(pts, ref)


@pytest.mark.parametrize("ascii_, compressed, header", [(True, False, "DATA ascii"), (False, False, "DATA binary\n"), (False, True, "DATA binary_compressed")])
def test_pcd_round_trip_all_encodings(tmp_path, ascii_, compressed, header):
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(500, 3)).astype(np.float32)
    path = write_cloud(tmp_path / "c.pcd", pts, ascii=ascii_, compressed=compressed)
    assert header in path.read_bytes()[:400].decode("latin-1")
    np.testing.assert_allclose(read_cloud(path), pts, atol=1e-5 if ascii_ else 0)


def test_ply_round_trip_with_colors(tmp_path):
    rng = np.random.default_rng(2)
    pts = rng.uniform(-3, 3, size=(300, 3)).astype(np.float32)
    cols = rng.integers(0, 256, size=(300, 3), dtype=np.uint8)
    path = write_cloud(tmp_path / "c.ply", pts, cols)
    np.testing.assert_allclose(read_cloud(path), pts, atol=1e-6)
    back = np.asarray(o3d.io.read_point_cloud(str(path)).colors)
    np.testing.assert_allclose(back * 255.0, cols, atol=0.51)


def test_npy_and_text_clouds_drop_non_finite_rows(tmp_path):
    pts = np.array([[0, 0, 1], [np.nan, 0, 1], [1, 2, 3], [0, np.inf, 0]], dtype=np.float64)
    np.save(tmp_path / "a.npy", pts)
    np.testing.assert_array_equal(read_cloud(tmp_path / "a.npy"), [[0, 0, 1], [1, 2, 3]])
    (tmp_path / "a.xyz").write_text("# x y z nx ny nz\n0 0 1 0 0 1\nnan 0 1 0 0 1\n1 2 3 1 0 0\n")
    np.testing.assert_array_equal(read_cloud(tmp_path / "a.xyz"), [[0, 0, 1], [1, 2, 3]])
    (tmp_path / "a.txt").write_text("0.5,0.25,1\n1,2,3\n")
    np.testing.assert_array_equal(read_cloud(tmp_path / "a.txt"), [[0.5, 0.25, 1], [1, 2, 3]])
    write_cloud(tmp_path / "b.npy", np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), [[1, 2, 3]])


def test_pcd_with_nan_holes_is_filtered(tmp_path):
    body = "1 2 3\nnan nan nan\n4 5 6\n"
    header = "VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 3\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 3\nDATA ascii\n"
    (tmp_path / "holes.pcd").write_text(header + body)
    np.testing.assert_array_equal(read_cloud(tmp_path / "holes.pcd"), [[1, 2, 3], [4, 5, 6]])


def test_bad_cloud_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ply"):
        read_cloud(tmp_path / "nope.ply")
    (tmp_path / "junk.ply").write_text("this is not a ply")
    with pytest.raises(ValueError, match="junk.ply"):
        read_cloud(tmp_path / "junk.ply")
    (tmp_path / "junk.pcd").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="junk.pcd"):
        read_cloud(tmp_path / "junk.pcd")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(ValueError, match="empty.npy.*no finite points"):
        read_cloud(tmp_path / "empty.npy")
    np.save(tmp_path / "flat.npy", np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"flat.npy.*\(N, 3\)"):
        read_cloud(tmp_path / "flat.npy")
    np.save(tmp_path / "nan.npy", np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="nan.npy"):
        read_cloud(tmp_path / "nan.npy")
    (tmp_path / "words.xyz").write_text("a b c\n")
    with pytest.raises(ValueError, match="words.xyz"):
        read_cloud(tmp_path / "words.xyz")
    (tmp_path / "c.obj").write_text("v 0 0 0\n")
    with pytest.raises(ValueError, match="unsupported"):
        read_cloud(tmp_path / "c.obj")
    with pytest.raises(ValueError, match="is a directory"):
        read_cloud(tmp_path)


# ----------------------------------------------------------------------------- cloud files that lie


def _cloud(n: int = 1000) -> np.ndarray:
    return np.random.default_rng(7).normal(size=(n, 3)).astype(np.float32)


def _truncate(path: Path, keep: float = 0.5) -> Path:
    raw = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(raw[: int(len(raw) * keep)])
    return out


@pytest.mark.parametrize("name, kw, match", [
    ("b.ply", {}, r"truncated PLY: the header claims 1,000 vertex x 24 bytes = 24,000 bytes of data, but the file holds"),
    ("a.ply", {"ascii": True}, r"truncated: the header claims 1,000 vertices \(1,000 lines of data\), the file holds 4\d\d"),
    ("b.pcd", {}, r"truncated PCD: the header claims 1,000 points x 12 bytes = 12,000 bytes"),
    ("a.pcd", {"ascii": True}, r"truncated or malformed: data line \d+ has [12] values, the header declares 3"),
    ("c.pcd", {"compressed": True}, r"truncated PCD: [\d,]+ bytes of compressed data claimed"),
])
def test_truncated_cloud_files_are_refused(tmp_path, name, kw, match):
    full = write_cloud(tmp_path / name, _cloud(), **kw)
    np.testing.assert_allclose(read_cloud(full), _cloud(), atol=1e-5)
    with pytest.raises(ValueError, match=match):
        read_cloud(_truncate(full))


def test_truncated_npy_and_object_npy_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", _cloud())
    with pytest.raises(ValueError, match=r"truncated .npy: shape \(1000, 3\) of float32 needs 12,000 bytes"):
        read_cloud(_truncate(tmp_path / "a.npy"))
    np.save(tmp_path / "o.npy", np.array([[1, 2, 3]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="o.npy"):
        read_cloud(tmp_path / "o.npy")


def _ply_header(n: int, fmt: str = "binary_little_endian", extra: str = "") -> bytes:
    return (f"ply\nformat {fmt} 1.0\nelement vertex {n}\nproperty float x\nproperty float y\n"
            f"property float z\n{extra}end_header\n").encode()


def test_absurd_headers_are_refused_before_allocating(tmp_path):
    import resource
    import time

    hdr = _ply_header(100_000_000)
    (tmp_path / "huge.ply").write_bytes(hdr + bytes(240 - len(hdr)))  # the 240-byte file
    (tmp_path / "huge_ascii.ply").write_bytes(_ply_header(100_000_000, "ascii") + b"0 0 0\n" * 20)
    pcd = ("VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 100000000\nHEIGHT 1\n"
           "VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 100000000\nDATA binary_compressed\n").encode()
    (tmp_path / "bomb.pcd").write_bytes(pcd + (1000).to_bytes(4, "little") + (1_200_000_000).to_bytes(4, "little")
                                        + bytes(1000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="huge.ply: truncated PLY: the header claims 100,000,000 vertex x 12 bytes"):
        read_cloud(tmp_path / "huge.ply")
    with pytest.raises(ValueError, match="huge_ascii.ply: truncated: the header claims 100,000,000 vertices"):
        read_cloud(tmp_path / "huge_ascii.ply")
    with pytest.raises(ValueError, match="bomb.pcd: 1,000 bytes of LZF data cannot unpack to the 1,200,000,000"):
        read_cloud(tmp_path / "bomb.pcd")
    assert time.perf_counter() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing claimed was allocated


def test_the_size_cap_refuses_big_files_and_big_claims(tmp_path):
    pts = _cloud(2000)
    path = write_cloud(tmp_path / "c.ply", pts)  # 2000 x 24 bytes of doubles
    assert read_cloud(path, max_bytes=10**6).shape == (2000, 3)
    with pytest.raises(ValueError, match=r"c.ply: [\d,]+ bytes, over the 10,000-byte cap \(max_cloud_bytes\)"):
        read_cloud(path, max_bytes=10_000)
    # A header claiming more than the cap is refused even when the file is smaller than the cap.
    hdr = _ply_header(10**6)
    (tmp_path / "claim.ply").write_bytes(hdr + bytes(64))
    with pytest.raises(ValueError, match=r"claims 1,000,000 vertices x 12 bytes = 12,000,000 bytes of data, over the"):
        read_cloud(tmp_path / "claim.ply", max_bytes=10**6)
    np.save(tmp_path / "big.npy", np.zeros((10_000, 3)))
    with pytest.raises(ValueError, match="over the 100,000-byte cap"):
        read_cloud(tmp_path / "big.npy", max_bytes=100_000)


def test_malformed_headers_name_the_problem(tmp_path):
    (tmp_path / "fmt.ply").write_bytes(_ply_header(1).replace(b"binary_little_endian", b"binary_middle_endian"))
    with pytest.raises(ValueError, match="unknown PLY format 'binary_middle_endian'"):
        read_cloud(tmp_path / "fmt.ply")
    (tmp_path / "noxyz.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n")
    with pytest.raises(ValueError, match="no vertex element with x, y, z"):
        read_cloud(tmp_path / "noxyz.ply")
    (tmp_path / "type.ply").write_bytes(_ply_header(1, extra="property float128 w\n") + bytes(28))
    with pytest.raises(ValueError, match="unknown property 'float128 w'"):
        read_cloud(tmp_path / "type.ply")
    (tmp_path / "noend.ply").write_bytes(b"ply\nformat ascii 1.0\n" + b"comment x\n" * 8000)
    with pytest.raises(ValueError, match="no end_header line in the first 65536 bytes"):
        read_cloud(tmp_path / "noend.ply")
    (tmp_path / "nofields.pcd").write_text("VERSION 0.7\nFIELDS a b\nSIZE 4 4\nTYPE F F\nWIDTH 1\nPOINTS 1\nDATA ascii\n1 2\n")
    with pytest.raises(ValueError, match="no FIELDS x y z"):
        read_cloud(tmp_path / "nofields.pcd")


def test_ply_with_faces_and_padding_properties_still_loads(tmp_path):
    """Lists (faces) only give a lower bound on the size; a complete mesh PLY must pass."""
    pts = _cloud(4)
    body = b"".join(struct.pack("<fffB", *p, 7) for p in pts) + struct.pack("<B3i", 3, 0, 1, 2) * 2
    hdr = (b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
           b"property float z\nproperty uchar flag\nelement face 2\nproperty list uchar int vertex_indices\nend_header\n")
    (tmp_path / "mesh.ply").write_bytes(hdr + body)
    np.testing.assert_array_equal(read_cloud(tmp_path / "mesh.ply"), pts)
    (tmp_path / "cut.ply").write_bytes(hdr + body[:40])
    with pytest.raises(ValueError, match="4 vertex x 13 bytes \\+ 2 face x 1 bytes = 54 bytes of data at least"):
        read_cloud(tmp_path / "cut.ply")


def test_special_files_are_named_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.ply")  # would block any reader forever
    with pytest.raises(ValueError, match="pipe.ply: is a FIFO"):
        read_cloud(tmp_path / "pipe.ply")
    if Path("/dev/zero").exists():
        with pytest.raises(ValueError, match="/dev/zero: is a character device, not a regular file"):
            read_cloud("/dev/zero")
    with pytest.raises(FileNotFoundError, match="file not found: .*absent.ply"):
        read_cloud(tmp_path / "absent.ply")


def test_failed_reads_leak_no_file_descriptors(tmp_path):
    import os

    full = write_cloud(tmp_path / "b.ply", _cloud())
    bad = [_truncate(full), _truncate(write_cloud(tmp_path / "a.ply", _cloud(), ascii=True)),
           _truncate(write_cloud(tmp_path / "c.pcd", _cloud(), compressed=True)), tmp_path / "junk.ply", tmp_path]
    (tmp_path / "junk.ply").write_text("ply\nformat ascii 1.0\nelement vertex x\nend_header\n")
    np.save(tmp_path / "t.npy", _cloud())
    bad.append(_truncate(tmp_path / "t.npy"))
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc/self/fd to count descriptors")
    before = fds()
    for _ in range(20):
        for path in bad:
            with pytest.raises(ValueError):
                read_cloud(path)
    assert fds() == before


def test_write_cloud_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        write_cloud(tmp_path / "e.ply", np.zeros((0, 3)))
    with pytest.raises(ValueError, match="NaN"):
        write_cloud(tmp_path / "n.ply", np.array([[0, 0, np.nan]]))
    with pytest.raises(ValueError, match="colors"):
        write_cloud(tmp_path / "c.ply", np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="points only"):
        write_cloud(tmp_path / "c.npy", np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unsupported"):
        write_cloud(tmp_path / "c.obj", np.zeros((2, 3)))
    with pytest.raises(FileNotFoundError):
        write_cloud(tmp_path / "missing" / "c.ply", np.zeros((2, 3)))


# ----------------------------------------------------------------------------- transforms


def test_read_transform_real_files():
    gt = read_transform(need(MATCH / "gt_T_0_from_1.txt"))
    rows = [ln.split() for ln in (MATCH / "gt_T_0_from_1.txt").read_text().splitlines() if not ln.startswith("#")]
    np.testing.assert_array_equal(gt, np.array(rows, dtype=np.float64))
    assert gt.dtype == np.float64 and gt.shape == (4, 4)
    pose = read_transform(need(KITCHEN / "frames" / "frame-000000.pose.txt"))
    assert pose[0, 0] == pytest.approx(0.9093129)


def test_read_transform_rejects_non_rigid(tmp_path):
    def write(name: str, M) -> Path:
        np.savetxt(tmp_path / name, np.asarray(M, dtype=np.float64))
        return tmp_path / name

    scaled = np.diag([2.0, 2.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="scaled.txt.*rotation"):
        read_transform(write("scaled.txt", scaled))
    mirror = np.diag([1.0, 1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="rotation"):
        read_transform(write("mirror.txt", mirror))
    bottom = np.eye(4)
    bottom[3, 0] = 0.5
    with pytest.raises(ValueError, match="last row"):
        read_transform(write("bottom.txt", bottom))
    nan = np.eye(4)
    nan[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        read_transform(write("nan.txt", nan))
    with pytest.raises(ValueError, match="4x4"):
        read_transform(write("small.txt", np.eye(3)))
    (tmp_path / "words.txt").write_text("a b c d\n" * 4)
    with pytest.raises(ValueError, match="words.txt"):
        read_transform(tmp_path / "words.txt")
    with pytest.raises(FileNotFoundError):
        read_transform(tmp_path / "absent.txt")


# ----------------------------------------------------------------------------- depth PNGs


def test_read_depth_png_matches_pillow():
    path = need(KITCHEN / "frames" / "frame-000000.depth.png")
    depth = read_depth_png(path)
    ref = np.asarray(Image.open(path))
    assert depth.dtype == np.uint16 and depth.shape == (480, 640)
    np.testing.assert_array_equal(depth, ref)


def test_read_depth_png_rejects_8bit_and_junk(tmp_path):
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "gray8.png")
    with pytest.raises(ValueError, match="gray8.png.*16-bit"):
        read_depth_png(tmp_path / "gray8.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="junk.png"):
        read_depth_png(tmp_path / "junk.png")
    with pytest.raises(FileNotFoundError):
        read_depth_png(tmp_path / "absent.png")


# ----------------------------------------------------------------------------- 7-Scenes


def to_world(frame: DepthFrame, stride: int = 2) -> np.ndarray:
    pts = frame.points(stride=stride).astype(np.float64)
    return pts @ frame.pose[:3, :3].T + frame.pose[:3, 3]


def overlap(a: np.ndarray, b: np.ndarray, radius: float, voxel: float = 0.01) -> float:
    """Fraction of (voxel-downsampled) points of b within ``radius`` of a."""
    def down(p):
        return np.asarray(o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p)).voxel_down_sample(voxel).points)

    d, _ = cKDTree(down(a)).query(down(b), distance_upper_bound=radius)
    return float(np.mean(d < radius))


def test_seven_scenes_sequence_reads_real_kitchen():
    seq = SevenScenesSequence(need(KITCHEN))
    assert isinstance(seq, DepthSequence)
    assert len(seq) == 400 and (seq.width, seq.height) == (640, 480) and seq.rate_hz == 30.0
    np.testing.assert_array_equal(seq.K, np.loadtxt(KITCHEN / "camera-intrinsics.txt"))
    f0, f30 = seq[0], seq[30]
    assert (f0.index, f30.index) == (0, 30) and f30.stamp == pytest.approx(1.0)
    raw = np.asarray(Image.open(KITCHEN / "frames" / "frame-000030.depth.png")).astype(np.float32)
    np.testing.assert_allclose(f30.depth_m, np.where(raw == 65535, 0, raw) / 1000.0, rtol=1e-6)
    np.testing.assert_array_equal(f30.pose, np.loadtxt(KITCHEN / "frames" / "frame-000030.pose.txt"))
    assert seq[-1].index == 399
    with pytest.raises(IndexError):
        seq[400]
    # The ground-truth poses align the two frames; without them they do not.
    w0, w30 = to_world(f0), to_world(f30)
    assert overlap(w0, w30, 0.03) >= 0.80
    assert overlap(f0.points(stride=2).astype(np.float64), f30.points(stride=2).astype(np.float64), 0.03) < 0.7


def test_seven_scenes_flat_layout_and_missing_pose(tmp_path):
    src = need(KITCHEN / "frames")
    for i in range(3):
        (tmp_path / f"frame-{i:06d}.depth.png").symlink_to(src / f"frame-{i:06d}.depth.png")
    (tmp_path / "frame-000000.pose.txt").symlink_to(src / "frame-000000.pose.txt")
    (tmp_path / "frame-000002.pose.txt").write_text("-inf -inf -inf -inf\n" * 3 + "0 0 0 1\n")
    seq = open_sequence(str(tmp_path))
    assert isinstance(seq, SevenScenesSequence) and len(seq) == 3
    np.testing.assert_array_equal(seq.K, SEVEN_SCENES_K)  # no camera-intrinsics.txt: 7-Scenes default
    assert seq[0].pose is not None and seq[1].pose is None and seq[2].pose is None
    assert [f.index for f in seq] == [0, 1, 2]


# ----------------------------------------------------------------------------- TUM


def quat_to_matrix(qx: float, qy: float, qz: float, qw: float) -> np.ndarray:
    """Textbook unit quaternion -> rotation matrix (Hamilton, scalar last as TUM writes it)."""
    return np.array([
        [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
        [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
        [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)],
    ])


def make_tum(root: Path) -> tuple[list[float], np.ndarray, list[np.ndarray]]:
    """A tiny TUM folder: 4 depth frames at ~30 Hz, ground truth at 100 Hz with a gap."""
    (root / "depth").mkdir(parents=True)
    t0 = 1305031102.16
    stamps = [t0 + k / 30.0 for k in range(4)]
    rng = np.random.default_rng(3)
    raws = []
    lines = ["# depth maps", "# file: 'rgbd_dataset_freiburg1_desk.bag'", "# timestamp filename"]
    for k, s in enumerate(stamps):
        raw = rng.integers(2500, 20000, size=(6, 8), dtype=np.uint16)
        raw[0, 0] = 0
        Image.fromarray(raw).save(root / "depth" / f"{s:.6f}.png")
        raws.append(raw)
        lines.append(f"{s:.6f} depth/{s:.6f}.png")
    (root / "depth.txt").write_text("\n".join(lines) + "\n")
    gt_t = np.arange(t0 - 0.05, t0 + 0.2, 0.01)
    gt_t = gt_t[np.abs(gt_t - stamps[3]) > 0.025]  # tracking gap: nearest is 30 ms from frame 3
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    gt = []
    for t in gt_t:
        ang = 0.4 + 2.0 * (t - t0)
        q = np.r_[axis * math.sin(ang / 2), math.cos(ang / 2)]
        gt.append([t, 1.0 + (t - t0), -0.5, 0.25 * (t - t0), *q])
    gt = np.array(gt)
    np.savetxt(root / "groundtruth.txt", gt, fmt="%.6f", header="timestamp tx ty tz qx qy qz qw")
    return stamps, gt, raws


def test_tum_sequence_association_and_quaternions(tmp_path):
    root = tmp_path / "rgbd_dataset_freiburg1_desk"
    stamps, gt, raws = make_tum(root)
    seq = open_sequence(str(root))
    assert isinstance(seq, TumSequence) and isinstance(seq, DepthSequence)
    assert len(seq) == 4 and (seq.width, seq.height) == (8, 6)
    assert seq.rate_hz == pytest.approx(30.0, rel=1e-3)
    np.testing.assert_allclose(seq.K, [[517.3, 0, 318.6], [0, 516.5, 255.3], [0, 0, 1]])
    for k in range(3):
        f = seq[k]
        assert f.stamp == pytest.approx(stamps[k], abs=1e-6)
        np.testing.assert_allclose(f.depth_m, raws[k] / 5000.0, rtol=1e-6)
        assert f.depth_m[0, 0] == 0.0
        j = int(np.argmin(np.abs(gt[:, 0] - stamps[k])))
        assert abs(gt[j, 0] - stamps[k]) <= 0.005
        np.testing.assert_allclose(f.pose[:3, :3], quat_to_matrix(*gt[j, 4:8]), atol=1e-5)
        np.testing.assert_allclose(f.pose[:3, 3], gt[j, 1:4], atol=2e-6)
        np.testing.assert_allclose(f.pose[3], [0, 0, 0, 1])
    assert seq[3].pose is None  # nearest ground truth is > 20 ms away


def test_tum_default_intrinsics_and_bad_lists(tmp_path):
    root = tmp_path / "my_recording"
    make_tum(root)
    seq = TumSequence(root)
    np.testing.assert_allclose(seq.K, [[525, 0, 319.5], [0, 525, 239.5], [0, 0, 1]])
    (root / "depth.txt").write_text("1305031102.16\n")
    with pytest.raises(ValueError, match="depth.txt:1"):
        TumSequence(root)
    (root / "depth.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no depth images"):
        TumSequence(root)


# ----------------------------------------------------------------------------- open_sequence and DepthFrame


def test_open_sequence_dispatch_and_errors(tmp_path):
    from ukpgan_ros.datasets.synthetic import SyntheticSequence

    seq = open_sequence("synthetic", num_frames=3, width=32, height=24, fx=26.0)
    assert isinstance(seq, SyntheticSequence) and isinstance(seq, DepthSequence) and len(seq) == 3
    with pytest.raises(FileNotFoundError, match="neither 'synthetic'"):
        open_sequence(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="unrecognised sequence layout"):
        open_sequence(str(tmp_path))
    (tmp_path / "f.ply").write_text("ply")
    with pytest.raises(ValueError, match="not a file"):
        open_sequence(str(tmp_path / "f.ply"))


def test_depth_frame_points_and_validation():
    K = np.array([[100.0, 0, 2.0], [0, 100.0, 1.0], [0, 0, 1]])
    depth = np.zeros((3, 5), np.float32)
    depth[1, 2], depth[2, 4] = 2.0, 4.0
    frame = DepthFrame(index=0, stamp=0.0, depth_m=depth, K=K)
    np.testing.assert_allclose(frame.points(), [[0, 0, 2.0], [0.08, 0.04, 4.0]], atol=1e-6)
    np.testing.assert_allclose(frame.points(max_depth=3.0), [[0, 0, 2.0]])
    with pytest.raises(ValueError, match="float32"):
        DepthFrame(index=0, stamp=0.0, depth_m=depth.astype(np.float64), K=K)
    with pytest.raises(ValueError, match="pose"):
        DepthFrame(index=0, stamp=0.0, depth_m=depth, K=K, pose=np.eye(3))
