"""Bags are checked before they are trusted: a corrupt, truncated or foreign bag, or an output
that cannot be written, ends `ukpgan bag` / `ukpgan record` with a one-line error, exit status 2
and no output left behind; the reader names the corrupt chunk."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ukpgan_ros.bags.record import record_sequence
from ukpgan_ros.cli import main
from ukpgan_ros.datasets.bag import BagError, BagSequence, open_bag
from ukpgan_ros.datasets.mcap import check_mcap
from ukpgan_ros.datasets.synthetic import SyntheticSequence

ROOT = Path(__file__).resolve().parents[1]


def _record(path: Path, compress: bool) -> Path:
    seq = SyntheticSequence(num_frames=6, width=320, height=240, fx=262.5, seed=3)
    record_sequence(seq, path, frames=6, stride=2, output="cloud", compress=compress, progress=False)
    return path


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("good")
    return {"zstd": _record(d / "z.mcap", True), "plain": _record(d / "p.mcap", False)}


def _chunks(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, content length, offset of the chunk's records) of every MCAP Chunk record,
    read independently of the package's parser."""
    out, pos = [], 8
    while True:
        op, length = struct.unpack_from("<BQ", data, pos)
        if op == 0x06:
            (clen,) = struct.unpack_from("<I", data, pos + 9 + 28)
            out.append((pos, length, pos + 9 + 32 + clen + 8))
        if op == 0x02:
            return out
        pos += 9 + length


def _damaged(src: Path, dst: Path, how: str) -> tuple[Path, int]:
    """A copy of ``src`` with the largest chunk's records damaged; returns it and that chunk's number."""
    data = bytearray(src.read_bytes())
    chunks = _chunks(bytes(data))
    n = max(range(len(chunks)), key=lambda k: chunks[k][1])
    pos, length, records = chunks[n]
    mid = records + (pos + 9 + length - records) // 2
    if how == "flip":
        for i in range(64):
            data[mid + i] ^= 0xFF
    else:
        data[mid:mid + 4096] = bytes(4096)
    dst.write_bytes(bytes(data))
    return dst, n + 1


def _bag(tmp_path: Path, bag: Path, capsys, *extra: str) -> tuple[int, str]:
    out = tmp_path / "out.mcap"
    rc = main(["bag", str(bag), "--out", str(out), "--quiet", "--device", "cpu", "--detector", "fps", *extra])
    err = capsys.readouterr().err.strip()
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.mcap")], \
        "no output (nor its temporary folder) may be left"
    return rc, err


def _one_line(err: str) -> None:
    assert err and "\n" not in err and "Traceback" not in err, err


def test_a_bag_written_here_carries_chunk_crcs(bags):
    for bag in bags.values():
        data = bag.read_bytes()
        crcs = [struct.unpack_from("<I", data, pos + 9 + 24)[0] for pos, _, _ in _chunks(data)]
        assert len(crcs) >= 2 and all(crcs), "every chunk's uncompressed_crc is filled"
        assert check_mcap(bag) != 0


@pytest.mark.parametrize("how", ["flip", "zero"])
def test_damaged_compressed_chunk(bags, tmp_path, capsys, how):
    bag, n = _damaged(bags["zstd"], tmp_path / f"{how}.mcap", how)
    rc, err = _bag(tmp_path, bag, capsys)
    assert rc == 2
    _one_line(err)
    assert err.startswith(f"ukpgan bag: {bag}: chunk {n} at byte "), err
    with pytest.raises(BagError, match=f"chunk {n} at byte"):
        open_bag(bag)


def test_flipped_bytes_in_an_uncompressed_chunk_fail_its_crc(bags, tmp_path, capsys):
    bag, n = _damaged(bags["plain"], tmp_path / "plain_flip.mcap", "flip")
    rc, err = _bag(tmp_path, bag, capsys)
    assert rc == 2
    _one_line(err)
    assert f"{bag}: chunk {n} at byte" in err and "CRC mismatch" in err
    # the player and `ukpgan record` read bags through the same reader
    with pytest.raises(BagError, match="CRC mismatch"):
        BagSequence(bag)
    assert main(["record", str(bag), "--out", str(tmp_path / "rec.mcap"), "--output", "cloud"]) == 2
    err = capsys.readouterr().err.strip()
    _one_line(err)
    assert "CRC mismatch" in err and not (tmp_path / "rec.mcap").exists()


def test_damaged_chunk_inside_a_rosbag2_folder(bags, tmp_path, capsys):
    folder = tmp_path / "folder_in"
    assert main(["record", "synthetic", "--frames", "3", "--output", "cloud", "--out", str(folder)]) == 0
    capsys.readouterr()
    (mcap,) = folder.glob("*.mcap")
    _damaged(mcap, mcap, "flip")
    rc, err = _bag(tmp_path, folder, capsys)
    assert rc == 2
    _one_line(err)
    assert f"{mcap}: chunk" in err


@pytest.mark.parametrize("content, word", [
    (b"\x89MCAP0\r\n", "no records after the magic"),
    (b"", "empty file"),
    (b"\x89MCAP0\r\n\x01\xff\xff\xff\xff\x00\x00\x00\x00", "runs past the end"),
])
def test_magic_only_empty_and_truncated_files(tmp_path, capsys, content, word):
    bag = tmp_path / "short.mcap"
    bag.write_bytes(content)
    rc, err = _bag(tmp_path, bag, capsys)
    assert rc == 2
    _one_line(err)
    assert word in err and str(bag) in err


def test_a_bag_cut_off_in_the_middle(bags, tmp_path, capsys):
    data = bags["zstd"].read_bytes()
    bag = tmp_path / "cut.mcap"
    bag.write_bytes(data[: len(data) // 2])
    rc, err = _bag(tmp_path, bag, capsys)
    assert rc == 2
    _one_line(err)
    assert "runs past the end" in err


_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from ukpgan_ros.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["bag", "record"])
def test_output_that_does_not_fit_leaves_nothing(bags, tmp_path, command):
    """A full disk, as a file-size limit: the writer fails halfway through the output."""
    src = bags["zstd"]
    limit = src.stat().st_size // 3
    out = tmp_path / "full.mcap"
    args = (["bag", str(src), "--out", str(out), "--quiet", "--device", "cpu", "--detector", "fps"]
            if command == "bag" else ["record", str(src), "--out", str(out), "--output", "cloud"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _LIMITED.format(limit=limit), *args], capture_output=True,
                       text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    _one_line(err)
    assert f"{out}: cannot write the bag" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no partial output"


def test_read_only_output_folder(bags, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user (root) can write into a read-only folder; the file-size test covers it")
        rc = main(["bag", str(bags["zstd"]), "--out", str(folder / "o.mcap"), "--quiet", "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert rc == 2
        _one_line(err)
        assert "cannot write the bag" in err and list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)

