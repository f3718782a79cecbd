"""The restricted unpickler: legitimate .bin content loads, anything else is refused before it runs."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from oaml.data.safe_pickle import safe_load, safe_loads
from oaml.errors import DataError, UnsafePickleError


def _call_global(module: str, name: str, *args: str) -> bytes:
    """A protocol-0 pickle that calls ``module.name(*args)`` (what ``__reduce__`` produces)."""
    body = "".join(f"V{arg}\n" for arg in args)
    return f"c{module}\n{name}\n({body}tR.".encode()


def _py2_bin(images: list[bytes], issame: list[bool]) -> bytes:
    """A pickle as Python 2 writes ``(list of str, list of bool)`` with protocol 2: BINSTRING for ``str``."""
    out = [b"\x80\x02]q\x00("]
    for image in images:
        out.append(b"T" + struct.pack("<I", len(image)) + image)
    out.append(b"e]q\x01(")
    out.extend(b"\x88" if flag else b"\x89" for flag in issame)
    out.append(b"e\x86q\x02.")
    return b"".join(out)


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "open"),
                                         ("__builtin__", "open"), ("builtins", "eval"), ("subprocess", "call"),
                                         ("numpy", "load"), ("builtins", "getattr")])
def test_dangerous_globals_are_refused_before_running(tmp_path: Path, module: str, name: str) -> None:
    marker = tmp_path / "pwned"
    payload = f"touch {marker}" if name in ("system", "call", "eval") else str(marker)
    if name == "open":
        data = _call_global(module, name, str(marker), "w")
    else:
        data = _call_global(module, name, payload)
    path = tmp_path / f"{module}_{name}.bin"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    assert str(path) in str(info.value) and f"{module}.{name}" in str(info.value)
    assert not marker.exists()


def test_reduce_payload_hidden_after_valid_data(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(([b"\xff\xd8", _System(f"touch {marker}")], [True]), protocol=2)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        safe_loads(data, "evil.bin")
    assert not marker.exists()


def test_python2_and_python3_bins_load() -> None:
    images, issame = [b"\xff\xd8\xffjpeg\x00", b"\x89PNG\r\n"], [True]
    assert safe_loads(_py2_bin(images, issame)) == (images, issame)
    for protocol in (0, 2, 4, 5):
        assert safe_loads(pickle.dumps((images, issame), protocol=protocol)) == (images, issame)


def test_numpy_uint8_and_bool_arrays_only() -> None:
    arrays = ([np.frombuffer(b"abc", np.uint8)], np.array([True, False]))
    loaded = safe_loads(pickle.dumps(arrays, protocol=2))
    assert loaded[0][0].tobytes() == b"abc" and loaded[1].tolist() == [True, False]
    with pytest.raises(DataError, match="f.bin.*'f4' is not allowed"):
        safe_loads(pickle.dumps(np.zeros(2, np.float32), protocol=2), "f.bin")
    with pytest.raises(DataError):
        safe_loads(pickle.dumps(np.zeros(2, object), protocol=2), "o.bin")


def test_codecs_encode_is_limited_to_latin1(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="latin1"):
        safe_loads(_call_global("_codecs", "encode", "abc", "rot13"), "c.bin")


def test_garbage_is_a_data_error() -> None:
    with pytest.raises(DataError, match="junk.bin"):
        safe_loads(b"\x80\x02not a pickle", "junk.bin")
