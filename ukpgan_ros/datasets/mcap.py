"""MCAP files checked before they are trusted: a small reader of the container's record
structure (https://mcap.dev/spec) that verifies every chunk, and fills the chunk CRCs that
rosbags' writer leaves at 0.

An MCAP file is the magic ``\\x89MCAP0\\r\\n``, records of (opcode u8, length u64 LE, content),
a Footer record and the magic again. A Chunk record (opcode 0x06) holds message_start_time u64,
message_end_time u64, uncompressed_size u64, uncompressed_crc u32 (CRC-32 of the decompressed
records, 0: none), compression (u32 length + name) and the records (u64 length + bytes). A
chunk whose data does not decompress, decompresses to another size, or whose CRC does not match
is named in a :class:`BagError` ("bag.mcap: chunk 3 at byte 12345: CRC mismatch").
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["BagError", "MAGIC", "check_mcap", "fill_chunk_crcs"]

MAGIC = b"\x89MCAP0\r\n"
_HEADER, _FOOTER, _CHUNK = 0x01, 0x02, 0x06
_CHUNK_FIXED = 8 + 8 + 8 + 4  # start, end, uncompressed size, crc
_CRC_OFFSET = 9 + 24  # from the chunk record's opcode byte to its uncompressed_crc


class BagError(ValueError):
    """A bag that cannot be read or written as it should (corrupt, truncated, no space): one line
    naming the file and what is wrong with it."""


def _decompressors() -> dict:
    from rosbags.rosbag2.storage_mcap import DECOMPRESSORS  # the decompressors the reader will use

    return DECOMPRESSORS


def _chunks(path: Path, f: BinaryIO, size: int) -> Iterator[tuple[int, int, bytes]]:
    """(chunk number from 1, byte offset, record content) of every Chunk, after checking that
    the records tile the file from the magic to the Footer and the closing magic."""
    if size == 0:
        raise BagError(f"{path}: not a readable bag (an empty file)")
    if f.read(8) != MAGIC:
        raise BagError(f"{path}: not a readable bag (no MCAP magic at its start)")
    pos, n, first = 8, 0, True
    while True:
        if pos + 9 > size:
            what = "no records after the magic" if first else f"truncated at byte {pos}: no footer"
            raise BagError(f"{path}: {what} (the recording was cut off or not closed)")
        f.seek(pos)
        op, length = struct.unpack("<BQ", f.read(9))
        if first and op != _HEADER:
            raise BagError(f"{path}: the first record is not an MCAP Header (opcode {op:#x} at byte {pos})")
        first = False
        end = pos + 9 + length
        if end > size:
            raise BagError(f"{path}: record {op:#x} at byte {pos} runs past the end of the file "
                           f"({length} bytes, {size - pos - 9} left): truncated or corrupt")
        if op == _CHUNK:
            n += 1
            yield n, pos, f.read(length)
        elif op == _FOOTER:
            f.seek(end)
            if f.read(8) != MAGIC or end + 8 != size:
                raise BagError(f"{path}: no closing magic after the footer at byte {pos}")
            return
        pos = end


def _chunk_records(path: Path, n: int, pos: int, content: bytes) -> tuple[int, bytes]:
    """(stored CRC, decompressed records) of one Chunk record; BagError naming the chunk."""
    where = f"{path}: chunk {n} at byte {pos}"
    try:
        _, _, usize, crc, clen = struct.unpack_from("<QQQII", content, 0)
        name = content[_CHUNK_FIXED + 4:_CHUNK_FIXED + 4 + clen].decode()
        (rlen,) = struct.unpack_from("<Q", content, _CHUNK_FIXED + 4 + clen)
    except (struct.error, UnicodeDecodeError):
        raise BagError(f"{where}: malformed chunk header") from None
    start = _CHUNK_FIXED + 4 + clen + 8
    if start + rlen != len(content):
        raise BagError(f"{where}: its records claim {rlen} bytes, the chunk holds {len(content) - start}")
    decompress = _decompressors().get(name)
    if decompress is None:
        raise BagError(f"{where}: unsupported compression {name!r}")
    try:
        raw = decompress(content[start:], usize)
    except Exception as e:  # noqa: BLE001 - zstd/lz4 raise their own error types
        raise BagError(f"{where}: cannot decompress ({name}: {type(e).__name__}: {e})") from None
    if len(raw) != usize:
        raise BagError(f"{where}: decompresses to {len(raw)} bytes, the chunk says {usize}")
    return crc, raw


def _check_records(path: Path, n: int, pos: int, raw: bytes) -> None:
    """The records inside a chunk tile it exactly."""
    i = 0
    while i < len(raw):
        if i + 9 > len(raw):
            raise BagError(f"{path}: chunk {n} at byte {pos}: a record is cut off at offset {i}")
        (length,) = struct.unpack_from("<Q", raw, i + 1)
        i += 9 + length
    if i != len(raw):
        raise BagError(f"{path}: chunk {n} at byte {pos}: a record runs past the chunk's end")


_checked: set[tuple[str, int, int]] = set()


def check_mcap(path: str | Path) -> int:
    """Verify an MCAP file's structure and every chunk (decompression, size, CRC where stored,
    record layout); returns the number of chunks. BagError on the first problem. A file already
    checked unchanged (same size and mtime) is not read again."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key in _checked:
            return -1
        count = 0
        with open(p, "rb") as f:
            for n, pos, content in _chunks(p, f, st.st_size):
                crc, raw = _chunk_records(p, n, pos, content)
                if crc and zlib.crc32(raw) != crc:
                    raise BagError(f"{p}: chunk {n} at byte {pos}: CRC mismatch (the chunk's data is corrupt)")
                _check_records(p, n, pos, raw)
                count = n
    except OSError as e:
        raise BagError(f"{p}: cannot read: {e.strerror or e}") from None
    _checked.add(key)
    return count


def fill_chunk_crcs(path: str | Path) -> int:
    """Write the CRC-32 of every chunk whose uncompressed_crc is 0 (rosbags' writer stores none),
    so a reader can tell a corrupt chunk; returns how many were filled."""
    p = Path(path)
    filled = 0
    with open(p, "r+b") as f:
        for n, pos, content in _chunks(p, f, p.stat().st_size):  # it seeks to each record itself
            crc, raw = _chunk_records(p, n, pos, content)
            if crc == 0:
                f.seek(pos + _CRC_OFFSET)
                f.write(struct.pack("<I", zlib.crc32(raw)))
                filled += 1
    return filled
