"""mxnet-free reader and writer for insightface RecordIO files (``train.rec`` + ``train.idx``).

SPEC §7. A ``.rec`` file is a sequence of chunks::

    uint32 magic 0xCED7230A | uint32 lrec (cflag = lrec >> 29, length = lrec & (2**29 - 1)) | payload | pad to 4

cflag 0 is a whole record; 1/2/3 are the first/middle/last part of a record that the writer split where the
magic word occurred in the data, so joining the parts re-inserts the four magic bytes between them. The
payload starts with an ``IRHeader`` ``<IfQQ`` (flag, label, id, id2); when flag > 0, ``flag`` float32 labels
follow it, then the image bytes.

The ``.idx`` file is text, one ``key<TAB>offset`` per line. Reads are positional (``os.pread``), so one open
file descriptor can serve any number of threads; :class:`RecordReader` re-opens it lazily after a fork, which
gives each DataLoader worker its own handle.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from oaml.errors import RecordIOError
from oaml.fileio import publish, temporary_sibling

__all__ = [
    "IRHeader",
    "MAGIC",
    "RecordReader",
    "RecordWriter",
    "pack_record",
    "read_idx",
    "unpack_record",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_HEADER = struct.Struct("<IfQQ")
_CHUNK_HEAD = struct.Struct("<II")


@dataclass(frozen=True)
class IRHeader:
    """insightface image-record header.

    Attributes:
        flag: number of extra float32 labels after the header (0 = ``label`` is the class).
        label: the scalar label, or the tuple of ``flag`` extra labels when ``flag > 0``.
        id: record id.
        id2: secondary id.
    """

    flag: int
    label: float | tuple[float, ...]
    id: int = 0
    id2: int = 0


def pack_record(header: IRHeader, payload: bytes = b"") -> bytes:
    """Serialise a header and its payload (image bytes) into a record body.

    A tuple label is written as ``flag = len(label)`` extra float32 labels, as ``mx.recordio.pack`` does.
    """
    if isinstance(header.label, tuple):
        labels = header.label
        head = _HEADER.pack(len(labels), 0.0, header.id, header.id2)
        return head + struct.pack(f"<{len(labels)}f", *labels) + payload
    return _HEADER.pack(0, float(header.label), header.id, header.id2) + payload


def unpack_record(body: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record body into its header and payload.

    Args:
        body: the joined record bytes.
        where: a description of the record used in error messages (file and key).

    Raises:
        RecordIOError: if the body is shorter than its header says.
    """
    if len(body) < _HEADER.size:
        raise RecordIOError(f"{where}: record of {len(body)} bytes is shorter than the 24-byte IRHeader")
    flag, label, rec_id, rec_id2 = _HEADER.unpack_from(body)
    offset = _HEADER.size
    if flag > 0:
        end = offset + 4 * flag
        if end > len(body):
            raise RecordIOError(f"{where}: header announces {flag} extra labels but the record has "
                                f"{len(body) - offset} bytes after the header")
        labels = struct.unpack_from(f"<{flag}f", body, offset)
        return IRHeader(flag, tuple(labels), rec_id, rec_id2), body[end:]
    return IRHeader(0, label, rec_id, rec_id2), body[offset:]


def read_idx(path: str | os.PathLike[str]) -> dict[int, int]:
    """Parse a ``.idx`` file into ``{key: byte offset}``.

    Raises:
        RecordIOError: naming the file and line of a malformed entry.
    """
    index: dict[int, int] = {}
    with open(path, encoding="ascii", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise RecordIOError(f"{path}:{line_no}: expected 'key<TAB>offset', "
                                    f"found {line.strip()[:80]!r}") from None
            if offset < 0:
                raise RecordIOError(f"{path}:{line_no}: negative offset {offset} for key {key}")
            if not -(2**63) <= key < 2**63:  # keys become int64 arrays downstream
                raise RecordIOError(f"{path}:{line_no}: key {key} does not fit in 64 bits")
            index[key] = offset
    return index


class RecordReader:
    """Random-access reader of a ``.rec`` file through its ``.idx``.

    Args:
        rec_path: the ``.rec`` file.
        idx_path: the ``.idx`` file; defaults to ``rec_path`` with the suffix ``.idx``.

    Raises:
        FileNotFoundError: if either file is missing.
        RecordIOError: if an index entry points past the end of the ``.rec`` file, or the first record
            does not start with the magic word (checked at open time, so a truncated or foreign file fails
            before training starts).
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        for path in (self.rec_path, self.idx_path):
            if not path.is_file():
                raise FileNotFoundError(f"RecordIO file not found: {path}")
        self.index = read_idx(self.idx_path)
        self.keys = sorted(self.index)
        self.size = self.rec_path.stat().st_size
        self._fd: int | None = None
        self._pid = -1
        self._validate_offsets()

    def _validate_offsets(self) -> None:
        for key, offset in self.index.items():
            if offset + _CHUNK_HEAD.size > self.size:
                raise RecordIOError(f"{self.idx_path}: key {key} points to offset {offset}, past the end of "
                                    f"{self.rec_path} ({self.size} bytes); the .rec file is truncated or the "
                                    f"index belongs to another file")
        if self.keys:
            self.read(self.keys[0])
            last = max(self.index.values())
            self._read_body(last, f"{self.rec_path} key {max(self.index, key=self.index.__getitem__)}")

    @property
    def fd(self) -> int:
        """The file descriptor, opened lazily and re-opened in a forked child process."""
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def _pread(self, length: int, offset: int, where: str) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise RecordIOError(f"{where}: wanted {length} bytes at offset {offset}, the file ends after "
                                f"{len(data)} (truncated .rec?)")
        return data

    def _read_body(self, offset: int, where: str) -> bytes:
        parts: list[bytes] = []
        while True:
            magic, lrec = _CHUNK_HEAD.unpack(self._pread(_CHUNK_HEAD.size, offset, where))
            if magic != MAGIC:
                raise RecordIOError(f"{where}: bad magic 0x{magic:08X} at offset {offset} "
                                    f"(expected 0x{MAGIC:08X}); not a RecordIO file or a wrong .idx")
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if offset + _CHUNK_HEAD.size + length > self.size:  # checked before os.pread allocates `length` bytes
                raise RecordIOError(f"{where}: the chunk at offset {offset} announces {length} bytes at offset "
                                    f"{offset + _CHUNK_HEAD.size}, past the end of the {self.size}-byte file "
                                    f"(truncated or corrupt .rec)")
            parts.append(self._pread(length, offset + _CHUNK_HEAD.size, where))
            offset += _CHUNK_HEAD.size + length + (-length % 4)
            if cflag in (0, 3):
                if cflag == 0 and len(parts) > 1:
                    raise RecordIOError(f"{where}: whole-record chunk inside a multi-part record at {offset}")
                return _MAGIC_BYTES.join(parts)
            if cflag == 1 and len(parts) > 1:
                raise RecordIOError(f"{where}: a new multi-part record starts at offset {offset} before the "
                                    f"previous one ended")

    def read(self, key: int) -> bytes:
        """The raw body (header + payload) of record ``key``.

        Raises:
            KeyError: if the key is not in the index.
            RecordIOError: if the record is malformed.
        """
        if key not in self.index:
            raise KeyError(f"{self.rec_path}: no record with key {key}")
        return self._read_body(self.index[key], f"{self.rec_path} key {key}")

    def read_record(self, key: int) -> tuple[IRHeader, bytes]:
        """Header and payload of record ``key``."""
        return unpack_record(self.read(key), f"{self.rec_path} key {key}")

    def read_header(self, key: int) -> IRHeader:
        """Only the header of record ``key`` (reads the first chunk's first bytes, decodes no image)."""
        where = f"{self.rec_path} key {key}"
        offset = self.index[key]
        magic, lrec = _CHUNK_HEAD.unpack(self._pread(_CHUNK_HEAD.size, offset, where))
        if magic != MAGIC:
            raise RecordIOError(f"{where}: bad magic 0x{magic:08X} at offset {offset} (expected 0x{MAGIC:08X})")
        length = lrec & _LENGTH_MASK
        if length < _HEADER.size:
            return self.read_record(key)[0]
        head = self._pread(min(length, _HEADER.size + 4 * 64), offset + _CHUNK_HEAD.size, where)
        flag = _HEADER.unpack_from(head)[0]
        if flag > 64 or _HEADER.size + 4 * flag > len(head):
            return self.read_record(key)[0]
        return unpack_record(head, where)[0]

    def __iter__(self) -> Iterator[tuple[int, IRHeader, bytes]]:
        for key in self.keys:
            header, payload = self.read_record(key)
            yield key, header, payload

    def close(self) -> None:
        """Close the file descriptor (it is re-opened on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_fd"], state["_pid"] = None, -1
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


class RecordWriter:
    """Writer of ``.rec`` + ``.idx`` in the layout mxnet's ``MXIndexedRecordIO`` produces.

    Records whose body contains the magic word are split there into multi-part chunks (cflag 1/2/3), exactly
    as dmlc-core does, so the reader's re-insertion of the magic restores them. Write to temporary names
    and rename on :meth:`close`, so an interrupted write never leaves a half-written pair of files.

    Args:
        rec_path: the ``.rec`` file to create.
        idx_path: the ``.idx`` file; defaults to ``rec_path`` with the suffix ``.idx``.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self._tmp_rec, self._tmp_idx = temporary_sibling(self.rec_path), temporary_sibling(self.idx_path)
        self._rec = open(self._tmp_rec, "wb")
        self._idx = open(self._tmp_idx, "w", encoding="ascii")
        self._keys: set[int] = set()

    def _write_chunk(self, cflag: int, data: bytes) -> None:
        if len(data) > _LENGTH_MASK:
            raise RecordIOError(f"{self.rec_path}: a record part of {len(data)} bytes exceeds the 2**29-1 limit")
        self._rec.write(_CHUNK_HEAD.pack(MAGIC, (cflag << 29) | len(data)))
        self._rec.write(data)
        self._rec.write(b"\0" * (-len(data) % 4))

    def write(self, key: int, body: bytes) -> None:
        """Append record ``key`` (a body from :func:`pack_record`) and index it."""
        if key in self._keys:
            raise RecordIOError(f"{self.rec_path}: key {key} written twice")
        self._keys.add(key)
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        parts = body.split(_MAGIC_BYTES)
        if len(parts) == 1:
            self._write_chunk(0, body)
            return
        for position, part in enumerate(parts):
            cflag = 1 if position == 0 else 3 if position == len(parts) - 1 else 2
            self._write_chunk(cflag, part)

    def close(self) -> None:
        """Flush, fsync and move both files to their final names."""
        if self._rec.closed:
            return
        for handle in (self._rec, self._idx):
            handle.close()
        publish(self._tmp_rec, self.rec_path)
        publish(self._tmp_idx, self.idx_path)

    def abort(self) -> None:
        """Close and delete the temporary files without publishing them."""
        for handle in (self._rec, self._idx):
            handle.close()
        for path in (self._tmp_rec, self._tmp_idx):
            path.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
