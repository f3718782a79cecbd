"""RecordIO: the MXNet-written fixture, writer/reader round trips with split records, and corrupt files."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oaml.data.recordio import MAGIC, IRHeader, RecordReader, RecordWriter, pack_record, read_idx
from oaml.errors import RecordIOError

MAGIC_BYTES = struct.pack("<I", MAGIC)


def _chunk_flags(rec: Path, offset: int) -> list[int]:
    """cflags of the chunks of the record at ``offset``, parsed independently of the reader."""
    data = rec.read_bytes()
    flags = []
    while True:
        magic, lrec = struct.unpack_from("<II", data, offset)
        assert magic == MAGIC
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        flags.append(cflag)
        offset += 8 + length + (-length % 4)
        if cflag in (0, 3):
            return flags


@pytest.mark.shared_data
def test_reads_the_mxnet_written_fixture(shared_data: Path) -> None:
    folder = shared_data / "insightface_rec_lfw20"
    reader = RecordReader(folder / "train.rec")
    assert reader.keys == list(range(31))
    meta = reader.read_header(0)
    assert meta.flag == 2 and meta.label == (21.0, 31.0)
    with open(folder / "labels.tsv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert len(rows) == 20
    for key, label, _name, aligned in rows:
        header, payload = reader.read_record(int(key))
        assert header.flag == 0 and header.label == float(label) and header.id == int(key)
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (112, 112, 3) and image.dtype == np.uint8
        # The JPEG was encoded from the aligned PNG (BGR in): decoding must give those pixels back, up to JPEG loss.
        png = cv2.imread(str(shared_data / "lfw_subset10_arcface112" / aligned), cv2.IMREAD_COLOR)
        assert np.abs(image.astype(int) - png.astype(int)).mean() < 3.0
    for key in range(21, 31):
        header = reader.read_header(key)
        first, end = header.label
        assert header.flag == 2 and end - first == 2
        assert {reader.read_header(k).label for k in range(int(first), int(end))} == {float(key - 21)}


PAYLOADS = {
    "plain": b"\xff\xd8jpeg",
    "empty": b"",
    "magic_middle": b"abc" + MAGIC_BYTES + b"defgh",
    "magic_three_times": b"x" + MAGIC_BYTES + b"yy" + MAGIC_BYTES + MAGIC_BYTES + b"z",
    "magic_at_start": MAGIC_BYTES + b"tail",
    "magic_at_end": b"head" + MAGIC_BYTES,
    "only_magic": MAGIC_BYTES,
}


def test_round_trip_with_split_records(tmp_path: Path) -> None:
    rec = tmp_path / "t.rec"
    headers = {name: IRHeader(0, float(i), i, 0) for i, name in enumerate(PAYLOADS)}
    headers["magic_middle"] = IRHeader(3, (4.0, 5.0, 6.0), 99, 7)
    with RecordWriter(rec) as writer:
        for key, name in enumerate(PAYLOADS):
            writer.write(key, pack_record(headers[name], PAYLOADS[name]))
    reader = RecordReader(rec)
    index = read_idx(rec.with_suffix(".idx"))
    for key, name in enumerate(PAYLOADS):
        header, payload = reader.read_record(key)
        assert payload == PAYLOADS[name]
        assert header == headers[name]
        assert reader.read_header(key) == headers[name]
        pieces = (pack_record(headers[name], PAYLOADS[name])).count(MAGIC_BYTES)
        expected = [0] if pieces == 0 else [1] + [2] * (pieces - 1) + [3]
        assert _chunk_flags(rec, index[key]) == expected, name
    assert not list(tmp_path.glob("*.tmp"))


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.binary(max_size=9), min_size=1, max_size=6), label=st.integers(0, 10_000))
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, parts: list[bytes], label: int) -> None:
    rec = tmp_path_factory.mktemp("prop") / "p.rec"
    payload = MAGIC_BYTES.join(parts)
    with RecordWriter(rec) as writer:
        writer.write(5, pack_record(IRHeader(0, float(label), 5), payload))
        writer.write(6, pack_record(IRHeader(0, 1.0, 6), b"next"))
    reader = RecordReader(rec)
    assert reader.read_record(5) == (IRHeader(0, float(label), 5, 0), payload)
    assert reader.read_record(6)[1] == b"next"


def _three_records(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    rec = tmp_path / "c.rec"
    with RecordWriter(rec) as writer:
        for key in range(3):
            writer.write(key, pack_record(IRHeader(0, float(key), key), bytes(range(200))))
    return rec, read_idx(rec.with_suffix(".idx"))


def test_truncated_rec_names_file_key_and_offset(tmp_path: Path) -> None:
    rec, index = _three_records(tmp_path)
    data = rec.read_bytes()
    rec.write_bytes(data[: index[2] + 50])  # the last record loses its tail
    with pytest.raises(RecordIOError) as info:
        RecordReader(rec)
    message = str(info.value)
    assert str(rec) in message and "key 2" in message and str(index[2] + 8) in message


def test_wrong_magic_names_file_key_and_offset(tmp_path: Path) -> None:
    rec, index = _three_records(tmp_path)
    data = bytearray(rec.read_bytes())
    data[index[1]:index[1] + 4] = b"\0\1\2\3"
    rec.write_bytes(bytes(data))
    reader = RecordReader(rec)  # only the first and last records are checked at open
    with pytest.raises(RecordIOError) as info:
        reader.read(1)
    message = str(info.value)
    assert str(rec) in message and "key 1" in message and f"offset {index[1]}" in message and "magic" in message
    with pytest.raises(RecordIOError, match="key 1"):
        reader.read_header(1)


def test_idx_pointing_past_the_end(tmp_path: Path) -> None:
    rec, _ = _three_records(tmp_path)
    size = rec.stat().st_size
    with open(rec.with_suffix(".idx"), "a", encoding="ascii") as handle:
        handle.write(f"3\t{size + 64}\n")
    with pytest.raises(RecordIOError) as info:
        RecordReader(rec)
    message = str(info.value)
    assert str(rec) in message and "key 3" in message and str(size + 64) in message
