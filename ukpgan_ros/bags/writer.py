"""Writing ROS 2 bags (MCAP storage) with rosbags, without ROS: :class:`BagWriter`, and
:func:`copy_connections` for copying another bag's topics."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ukpgan_ros.bags.messages import MessageBuilder, kilted_typestore
from ukpgan_ros.datasets.mcap import BagError, fill_chunk_crcs

__all__ = ["BagWriter", "copy_connections"]


class BagWriter:
    """A ROS 2 bag in MCAP storage, zstd-compressed chunks unless ``compress`` is False.

    ``out`` ending in ``.mcap`` gives that single file (rosbags writes a folder; the file is moved
    out of a temporary one when the bag is closed); any other name gives a rosbag2 folder. An
    existing ``out`` is refused unless ``overwrite``. On an exception inside ``with`` nothing is
    left behind.
    """

    def __init__(self, out: str | Path, *, compress: bool = True, overwrite: bool = False,
                 typestore=None) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

        self.out = Path(out).expanduser()
        if self.out.exists() or self.out.is_symlink():
            if not overwrite:
                raise ValueError(f"{self.out} exists; choose another --out or pass --overwrite")
            if self.out.is_dir():
                shutil.rmtree(self.out)
            else:
                self.out.unlink()
        if not self.out.parent.is_dir():
            raise FileNotFoundError(f"{self.out}: the folder {self.out.parent} does not exist")
        self.single = self.out.suffix.lower() == ".mcap"
        self._tmp = None
        self._folder = self.out
        self._opened = False
        self.builder = MessageBuilder(typestore)
        self.ts = self.builder.ts
        self._conns: dict[tuple[str, str], Any] = {}
        self.counts: dict[str, int] = {}
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent)) if self.single else None
            # rosbags names the MCAP file after its folder: a folder named like the file's stem.
            self._folder = self._tmp / self.out.stem if self.single else self.out
            self._writer = Writer(self._folder, version=8, storage_plugin=StoragePlugin.MCAP)
            if compress:
                self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
            self._writer.open()
            self._opened = True
        except Exception as e:  # noqa: BLE001 - OSError, or rosbags' WriterError around one
            self.abort()
            raise self._error(e) from None

    def _error(self, e: BaseException) -> BagError:
        """One line: which bag could not be written, and why (no space, read-only, ...)."""
        cause = e if isinstance(e, OSError) else (e.__cause__ or e.__context__ or e)
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else " ".join(str(e).split())
        return BagError(f"{self.out}: cannot write the bag ({why}); nothing was kept")

    @property
    def writer(self):
        """The underlying rosbags Writer (for connections copied from another bag)."""
        return self._writer

    def connection(self, topic: str, msgtype: str) -> Any:
        key = (topic, msgtype)
        if key not in self._conns:
            existing = next((c for c in self._writer.connections if c.topic == topic and c.msgtype == msgtype), None)
            self._conns[key] = existing or self._writer.add_connection(topic, msgtype, typestore=self.ts)
        return self._conns[key]

    def write(self, topic: str, msg: Any, log_time_ns: int) -> None:
        """Serialise ``msg`` (a rosbags message) on ``topic`` at ``log_time_ns``."""
        conn = self.connection(topic, msg.__msgtype__)
        self.write_raw(conn, log_time_ns, self.ts.serialize_cdr(msg, msg.__msgtype__))

    def write_raw(self, conn: Any, log_time_ns: int, data: bytes | memoryview) -> None:
        if log_time_ns < 0:
            raise ValueError(f"{conn.topic}: negative log time {log_time_ns} ns cannot be recorded")
        try:
            self._writer.write(conn, int(log_time_ns), data)
        except Exception as e:  # noqa: BLE001 - a full disk surfaces when a chunk is flushed
            raise self._error(e) from None
        self.counts[conn.topic] = self.counts.get(conn.topic, 0) + 1

    def close(self) -> Path:
        """Finish the bag (chunk CRCs filled in, so a reader can tell a corrupt chunk) and move it
        into place; on any error nothing is left behind."""
        try:
            self._writer.close()
            self._opened = False
            mcap = self._folder / f"{self.out.stem}.mcap" if self.single else None
            for f in [mcap] if mcap is not None else sorted(self._folder.glob("*.mcap")):
                fill_chunk_crcs(f)
            if self.single:
                os.replace(mcap, self.out)
        except Exception as e:  # noqa: BLE001
            self.abort()
            raise e if isinstance(e, BagError) else self._error(e) from None
        if self.single:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        """Remove everything written so far."""
        if self._opened:
            self._opened = False
            with contextlib.suppress(Exception):
                self._writer.close()
        if self.single:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                if self.out.is_file():  # moved into place before a later step failed
                    self.out.unlink()
        else:
            shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def copy_connections(reader, writer: BagWriter, skip: set[str]) -> tuple[dict, dict]:
    """Output connections for the input's topics (``skip`` aside) and a converter per message type.

    ROS 2 input is copied byte for byte with its own message definitions; ROS 1 input is
    converted to ROS 2 types by rosbags (as ``rosbags-convert`` does).
    """
    conns = [c for c in reader.connections if c.topic not in skip]
    if not reader.is2:
        from rosbags.convert.converter import create_connections_converters

        with contextlib.redirect_stdout(io.StringIO()):  # it announces every migrated type
            connmap, convmap = create_connections_converters(conns, kilted_typestore(), reader, writer.writer)
        return {c.id: connmap[(c.id, c.owner)] for c in conns}, convmap
    from rosbags.interfaces import MessageDefinitionFormat

    out, convmap = {}, {}
    for c in conns:
        existing = next((o for o in writer.writer.connections if o.topic == c.topic and o.msgtype == c.msgtype), None)
        if existing is None:
            if c.msgdef.format != MessageDefinitionFormat.NONE and c.msgdef.data:
                digest = c.digest or reader.typestore.hash_rihs01(c.msgtype)
                existing = writer.writer.add_connection(
                    c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=digest,
                    serialization_format=c.ext.serialization_format, offered_qos_profiles=c.ext.offered_qos_profiles)
            else:
                existing = writer.writer.add_connection(c.topic, c.msgtype, typestore=reader.typestore,
                                                        serialization_format=c.ext.serialization_format)
        out[c.id] = existing
        convmap[c.msgtype] = bytes
    return out, convmap
