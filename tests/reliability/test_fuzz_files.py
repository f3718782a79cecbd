"""Fuzzing the file parsers with mutated REAL files from ../shared/data (hypothesis).

Inputs: the MXNet-written ``insightface_rec_lfw20/train.rec`` + ``train.idx``, LFW's official ``pairs.txt``, and a
small ``.bin`` pickled (Python 2 and 3 layouts) from aligned faces of ``lfw_subset10_arcface112``. Each example
applies one mutation (flip, insert, delete or truncate bytes; line-level edits for the text files), writes the
file to a temporary folder and runs the whole reader. The only allowed outcomes are a correct result or an
:class:`oaml.errors.OamlError`; anything else (``struct.error``, ``UnicodeDecodeError``, ``MemoryError``, a bare
``ValueError``, ``KeyError`` ...) fails the test. Example counts and per-example deadlines keep the module
within about a minute, and ``derandomize`` makes every run try the same inputs.

``OUTCOMES`` counts the outcome class per (file type, mutation); the tests print nothing.
"""

from __future__ import annotations

import pickle
import pickletools
import struct
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oaml.data.datasets import RecordIndex
from oaml.data.images import decode_image
from oaml.data.pairs import parse_pairs
from oaml.data.recordio import RecordReader, read_idx
from oaml.data.safe_pickle import safe_loads
from oaml.data.verification_sets import convert_bin, load_bin
from oaml.errors import OamlError

pytestmark = pytest.mark.shared_data

OUTCOMES: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
"""(file type, mutation) -> Counter of outcome class ("ok" or the OamlError subclass name)."""

FUZZ = settings(deadline=3000, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
# Examples per test, sized so the module takes about 30 s on one busy core; a one-off run of 4000 random
# (not derandomized) examples per test found nothing beyond what these settings cover.
EXAMPLES = {"rec": 500, "idx": 300, "pairs": 250, "bin": 500}
MUTATIONS = ("flip", "insert", "delete", "truncate")


# ------------------------------------------------------------------------------------------------ mutations
Mutation = tuple[str, int, Any]
"""``(kind, position, argument)``: small, so a failing example prints readably; :func:`apply` edits the bytes."""


@st.composite
def mutation(draw: st.DrawFn, size: int, hot_spots: tuple[int, ...] = ()) -> Mutation:
    """One byte-level mutation of a ``size``-byte file; half the positions fall within 40 bytes after a hot
    spot (chunk headers, opcodes), where the structure lives."""
    kind = draw(st.sampled_from(MUTATIONS))
    anywhere = st.integers(0, size - 1)
    if hot_spots:
        near = st.builds(lambda base, delta: min(base + delta, size - 1), st.sampled_from(hot_spots),
                         st.integers(0, 40))
        position = draw(st.one_of(anywhere, near))
    else:
        position = draw(anywhere)
    if kind == "flip":
        return kind, position, draw(st.binary(min_size=1, max_size=4).filter(any))  # XOR masks
    if kind == "insert":
        return kind, position, draw(st.binary(min_size=1, max_size=16))
    if kind == "delete":
        return kind, position, draw(st.integers(1, 64))
    return kind, position, None


class Edited(NamedTuple):
    """An edited text file; its repr names the edit, not the (large) content."""

    kind: str
    content: bytes
    note: str = ""

    def __repr__(self) -> str:
        return f"Edited({self.kind!r}, {self.note!r})"


def apply(data: bytes, change: Mutation) -> bytes:
    kind, position, argument = change
    if kind == "flip":
        chunk = bytes(a ^ b for a, b in zip(data[position:position + len(argument)], argument))
        return data[:position] + chunk + data[position + len(chunk):]
    if kind == "insert":
        return data[:position] + argument + data[position:]
    if kind == "delete":
        return data[:position] + data[position + argument:]
    return data[:position]


def _run(file_type: str, mutation: str, check: Callable[[], Any]) -> None:
    """Run ``check``; count a correct result or an OamlError, let anything else fail the test."""
    try:
        check()
    except OamlError as exc:
        OUTCOMES[file_type, mutation][type(exc).__name__] += 1
        assert str(exc), "an error without a message"
        return
    OUTCOMES[file_type, mutation]["ok"] += 1


class Original(NamedTuple):
    """A real file's content and its structural offsets; its repr (printed by a failing example) is short."""

    name: str
    content: bytes
    hot_spots: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"Original({self.name!r}, {len(self.content)} bytes)"


# ------------------------------------------------------------------------------------------------ RecordIO
@pytest.fixture
def rec_files(shared_data: Path) -> tuple[Original, Original]:
    folder = shared_data / "insightface_rec_lfw20"
    offsets = tuple(sorted(read_idx(folder / "train.idx").values()))
    return (Original("train.rec", (folder / "train.rec").read_bytes(), offsets),
            Original("train.idx", (folder / "train.idx").read_bytes()))


def _read_everything(rec: Path, idx: Path) -> None:
    reader = RecordReader(rec, idx)
    try:
        for key in reader.keys:
            header, payload = reader.read_record(key)
            assert reader.read_header(key) == header
            if header.flag == 0:  # image records (meta records carry no image)
                image = decode_image(payload, f"{rec} key {key}", resize=True)
                assert image.shape == (112, 112, 3) and image.dtype == np.uint8
        RecordIndex._scan(reader)
    finally:
        reader.close()


@settings(FUZZ, max_examples=EXAMPLES["rec"])
@given(data=st.data())
def test_fuzz_recordio_rec(rec_files: tuple[Original, Original], tmp_path: Path, data: st.DataObject) -> None:
    original, index = rec_files
    change = data.draw(mutation(len(original.content), original.hot_spots), label="mutation")
    kind, content = change[0], apply(original.content, change)
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    rec.write_bytes(content)
    idx.write_bytes(index.content)
    _run("train.rec", kind, lambda: _read_everything(rec, idx))


@st.composite
def mutated_idx(draw: st.DrawFn, text: bytes) -> Edited:
    """Byte-level mutations, or line-level edits: huge/negative/non-ASCII numbers, swapped fields, duplicates."""
    if draw(st.booleans()):
        change = draw(mutation(len(text)))
        return Edited(change[0], apply(text, change), repr(change))
    lines = text.decode().splitlines()
    row = draw(st.integers(0, len(lines) - 1))
    key, offset = lines[row].split("\t")
    field = draw(st.sampled_from([
        "9" * 30, "-8", "1e3", "0x10", "١٢", "²", "", "\x00", "nan", str(2**63), str(2**64 + 7), "4 2 1"]))
    edit = draw(st.sampled_from(["key", "offset", "swap", "duplicate", "drop tab"]))
    if edit == "key":
        lines[row] = f"{field}\t{offset}"
    elif edit == "offset":
        lines[row] = f"{key}\t{field}"
    elif edit == "swap":
        lines[row] = f"{offset}\t{key}"
    elif edit == "duplicate":
        lines.insert(row, f"{key}\t{int(offset) + draw(st.integers(-16, 16))}")
    else:
        lines[row] = key + offset
    return Edited(f"lines: {edit}", ("\n".join(lines) + "\n").encode("utf-8"), f"line {row}: {lines[row]!r}")


@settings(FUZZ, max_examples=EXAMPLES["idx"])
@given(data=st.data())
def test_fuzz_recordio_idx(rec_files: tuple[Original, Original], tmp_path: Path, data: st.DataObject) -> None:
    original, index = rec_files
    kind, content, _ = data.draw(mutated_idx(index.content), label="edited .idx")
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    rec.write_bytes(original.content)
    idx.write_bytes(content)
    _run("train.idx", kind, lambda: (read_idx(idx), _read_everything(rec, idx)))


# ------------------------------------------------------------------------------------------------ pairs.txt
class Lines(list):  # type: ignore[type-arg]
    """The lines of a text file; short repr."""

    def __repr__(self) -> str:
        return f"<{len(self)} lines>"


@pytest.fixture
def pairs_lines(shared_data: Path) -> list[str]:
    return Lines((shared_data / "lfw_pairs_official" / "pairs.txt").read_text(encoding="utf-8").splitlines())


@st.composite
def mutated_pairs(draw: st.DrawFn, lines: list[str]) -> Edited:
    """Line-level edits of pairs.txt (the header is line 0), or byte-level mutations of a slice of it."""
    lines = list(lines)
    kind = draw(st.sampled_from(["drop field", "duplicate field", "replace field", "insert line", "header",
                                 "separators", "bytes"]))
    row = draw(st.integers(1, len(lines) - 1))
    fields = lines[row].split("\t")
    junk = st.one_of(st.text(max_size=12), st.sampled_from(["0", "-1", "²", "١", "9" * 5000, "0001", " ", "#"]))
    if kind == "drop field":
        del fields[draw(st.integers(0, len(fields) - 1))]
    elif kind == "duplicate field":
        fields.insert(draw(st.integers(0, len(fields))), draw(st.sampled_from(fields)))
    elif kind == "replace field":
        fields[draw(st.integers(0, len(fields) - 1))] = draw(junk)
    elif kind == "insert line":
        lines.insert(row, draw(st.text(max_size=40)))
    elif kind == "header":
        lines[0] = draw(st.sampled_from(["10 300", "10", "0 0", "3 2000", "10\t300\t1", "", "²"])) + draw(junk)
    elif kind == "separators":
        fields = [" ".join(fields)] if draw(st.booleans()) else ["\t\t".join(fields)]
    if kind != "bytes":
        lines[row] = "\t".join(fields)
        note = f"line 0: {lines[0][:80]!r}, line {row}: {lines[row][:80]!r}"
        return Edited(kind, ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"), note)
    # Byte mutations of a few pair lines around `row`, without the header (whose pair count they would break).
    part = ("\n".join(lines[row:row + 8]) + "\n").encode()
    change = draw(mutation(len(part)))
    return Edited(kind, apply(part, change), f"lines {row}-{row + 7}, {change!r}")


@settings(FUZZ, max_examples=EXAMPLES["pairs"])
@given(data=st.data())
def test_fuzz_pairs_parser(pairs_lines: list[str], tmp_path: Path, data: st.DataObject) -> None:
    kind, content, _ = data.draw(mutated_pairs(pairs_lines), label="edited pairs.txt")
    path = tmp_path / "pairs.txt"
    path.write_bytes(content)

    def check() -> None:
        pairs = parse_pairs(path)
        assert pairs and all(p.path_a.endswith(".jpg") and isinstance(p.same, bool) for p in pairs)

    _run("pairs.txt", kind, check)


# ------------------------------------------------------------------------------------------------ .bin pickles
def _py2_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """``(list of str, list of bool)`` as Python 2's cPickle writes it with protocol 2 (BINSTRING, BINPUT)."""
    out, memo = [b"\x80\x02(]q\x00("], 1
    for image in images:
        out.append(b"T" + struct.pack("<I", len(image)) + image + b"q" + bytes([memo]))
        memo += 1
    out.append(b"e]q" + bytes([memo]) + b"(")
    out.extend(b"\x88" if flag else b"\x89" for flag in issame)
    out.append(b"et.")
    return b"".join(out)


@pytest.fixture
def bin_variants(shared_data: Path) -> dict[str, Original]:
    """A 4-pair .bin of real aligned faces (JPEG, as insightface stores them) in three pickle layouts."""
    root = shared_data / "lfw_subset10_arcface112"
    files = sorted(root.glob("*/*.png"))[:8]
    images = [cv2.imencode(".jpg", cv2.imread(str(f)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in files]
    issame = [True, False, True, False]
    variants = {"python2 protocol 2": _py2_pickle(images, issame),
                "python3 protocol 2": pickle.dumps((images, issame), protocol=2),
                "python3 protocol 4": pickle.dumps((images, issame), protocol=4)}
    return {name: Original(name, data, _opcode_positions(data)) for name, data in variants.items()}


def _opcode_positions(data: bytes) -> tuple[int, ...]:
    return tuple(position for _, _, position in pickletools.genops(data))


@settings(FUZZ, max_examples=EXAMPLES["bin"])
@given(data=st.data())
def test_fuzz_restricted_unpickler(bin_variants: dict[str, Original], tmp_path: Path, data: st.DataObject) -> None:
    layout = data.draw(st.sampled_from(sorted(bin_variants)), label="layout")
    original = bin_variants[layout]
    change = data.draw(mutation(len(original.content), original.hot_spots), label="mutation")
    kind, content = change[0], apply(original.content, change)
    path = tmp_path / "lfw.bin"
    path.write_bytes(content)

    def check() -> None:
        safe_loads(content, "fuzz.bin")
        images, issame = load_bin(path)
        assert len(images) == 2 * len(issame) and all(isinstance(i, bytes) for i in images)
        memfile = convert_bin(path, tmp_path / "memfiles")
        assert memfile.stat().st_size == len(images) * 112 * 112 * 3

    _run(f".bin ({layout})", kind, check)
