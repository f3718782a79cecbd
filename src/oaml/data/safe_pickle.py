"""A restricted unpickler for untrusted verification-set ``.bin`` files (SPEC §9).

The insightface ``.bin`` files are Python-2 pickles of ``(list of 2N encoded images, list of N bools)``. A
pickle can call any importable function while it loads, so these files are opened with an unpickler whose
``find_class`` allows only what such a file needs:

- the builtin containers (``set``, ``frozenset``, ``bytearray`` of bytes or a latin-1 ``str`` only; lists, tuples and
  dicts need no global);
- ``_codecs.encode`` restricted to ``(str, "latin1")``, which Python 3 emits for ``bytes`` under protocol 2;
- numpy arrays of ``uint8`` or ``bool`` (``_reconstruct`` with ``ndarray`` as the class, ``dtype`` of those two
  kinds only), because some tools write the encoded images as uint8 arrays.

Every other global raises :class:`~oaml.errors.UnsafePickleError` naming the file and the global *before*
anything is called, so a malicious file executes nothing. Python-2 ``str`` objects load as ``bytes``
(``encoding="bytes"``), as insightface itself loads them.

Before unpickling, the opcode stream is scanned once (:func:`pickletools.genops`, which executes nothing): every
length-prefixed argument must fit in the data and every memo index must stay below the number of opcodes seen so
far. CPython's C unpickler allocates a ``BINBYTES`` length or grows its memo to twice a ``PUT`` index *before*
reading, so without this check a few crafted bytes ask for gigabytes.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import pickletools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from oaml.errors import DataError, UnsafePickleError

__all__ = ["RestrictedUnpickler", "safe_load", "safe_loads"]

logger = logging.getLogger(__name__)

_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED_DTYPES = frozenset({np.dtype(np.uint8).str, np.dtype(np.bool_).str})


def _latin1_encode(text: object, encoding: object = "latin1", errors: object = "strict") -> bytes:
    """``_codecs.encode`` limited to what protocol-2 pickles of ``bytes`` use: ``str`` to latin-1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed as (str, 'latin1'), got "
                                     f"({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _bytearray(data: object = b"", encoding: object = None) -> bytearray:
    """``bytearray`` limited to a copy of bytes or a latin-1 ``str`` (never ``bytearray(n)``, which allocates n)."""
    if isinstance(data, (bytes, bytearray)) and encoding is None:
        return bytearray(data)
    if isinstance(data, str) and encoding in ("latin1", "latin-1"):
        return bytearray(data, "latin1")
    raise pickle.UnpicklingError(f"bytearray is only allowed from bytes or (str, 'latin1'), got "
                                 f"({type(data).__name__}, {encoding!r})")


def _reconstruct(cls: object, shape: object, dtype_code: object) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` limited to plain ``ndarray`` (no subclasses, no object arrays)."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"numpy _reconstruct is only allowed for numpy.ndarray, got {cls!r}")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
    """``numpy.dtype`` limited to ``uint8`` and ``bool``."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii")
    if spec not in ("u1", "b1", "|u1", "|b1", "uint8", "bool"):
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not allowed (only uint8 and bool)")
    dtype = np.dtype(spec)
    if dtype.str not in _ALLOWED_DTYPES:
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not allowed (only uint8 and bool)")
    return dtype


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): _bytearray,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "bytearray"): _bytearray,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    **{(module, "_reconstruct"): _reconstruct for module in _NUMPY_MODULES},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a verification ``.bin`` needs.

    Args:
        file: a binary file object.
        source: the file name, used in error messages.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, source: str) -> None:
        super().__init__(file, encoding="bytes", fix_imports=True)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global, or raise before anything is called.

        Raises:
            UnsafePickleError: naming the file and ``module.name`` of a global that is not allowed.
        """
        if isinstance(module, bytes):
            module = module.decode("ascii", "replace")
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafePickleError(f"{self.source}: the pickle tries to load the global {module}.{name}, which "
                                    f"is not allowed in a verification .bin (only builtin containers, bytes, bool "
                                    f"and numpy uint8/bool arrays are); refusing to load the file")
        return found

    def persistent_load(self, pid: object) -> Any:
        """Persistent ids never occur in ``.bin`` files; refuse them."""
        raise UnsafePickleError(f"{self.source}: the pickle uses a persistent id ({pid!r}); refusing to load it")


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_opcodes(data: bytes, source: str) -> None:
    """Walk the opcodes without executing them; refuse oversized lengths and far-away memo indices.

    Raises:
        DataError: naming ``source``, the byte position and the problem.
    """
    try:
        for count, (opcode, arg, position) in enumerate(pickletools.genops(data)):
            if opcode.name in _MEMO_PUTS and not 0 <= int(arg) <= count:
                raise DataError(f"{source}: memo index {arg} at byte {position} is beyond the {count} opcodes "
                                f"read so far; not a pickle a pickler writes")
    except DataError:
        raise
    except Exception as exc:  # genops raises ValueError for truncated arguments and unknown opcodes
        raise DataError(f"{source}: not a valid verification pickle ({type(exc).__name__}: {exc})") from exc


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    Args:
        data: the pickle bytes.
        source: a name for error messages.

    Raises:
        UnsafePickleError: if the pickle references a global that is not allowed.
        DataError: if the bytes are not a valid pickle.
    """
    _check_opcodes(data, source)
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # untrusted bytes: whatever the unpickler raises (MemoryError too) means "bad file"
        raise DataError(f"{source}: not a valid verification pickle ({type(exc).__name__}: {exc})") from exc


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Read and unpickle a file with :class:`RestrictedUnpickler`.

    Raises:
        FileNotFoundError: if the file does not exist.
        UnsafePickleError: if the pickle references a global that is not allowed.
        DataError: if the file is not a valid pickle.
    """
    path = Path(path)
    logger.debug("loading %s with the restricted unpickler", path)
    return safe_loads(path.read_bytes(), str(path))
