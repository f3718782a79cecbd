"""File helpers used everywhere: atomic writes, checksums, the cache folder and writability.

Atomic writes go to a temporary file in the same folder, which is fsynced, renamed into place, and the folder
fsynced, so an interrupted write (crash, SIGKILL, full disk) leaves either the old file or the new one, never a torn
one (SPEC §10). Checkpoints, converted datasets, caches and reports all use them; writers of several files at once
(``.rec`` + ``.idx``, memfiles) publish each with :func:`publish`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "cache_root", "fsync_dir", "is_writable_dir", "publish",
           "sha256_file", "temporary_sibling"]

_CACHE_ENV = "OAML_CACHE"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_root() -> Path:
    """oaml's cache folder: ``$OAML_CACHE``, else ``$XDG_CACHE_HOME/oaml``, else ``~/.cache/oaml``.

    It holds the label caches and converted verification sets of read-only data folders, and the demo's data.
    """
    if os.environ.get(_CACHE_ENV):
        return Path(os.environ[_CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "oaml"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_writable_dir(path: str | os.PathLike[str]) -> bool:
    """Whether oaml may write into the folder ``path``.

    False for a missing folder, a read-only mount (``os.access`` sees it) and a folder without write bits:
    a shared dataset folder made read-only on purpose stays untouched even for root, whom permissions do not stop.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(path, os.W_OK)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder so a rename inside it is durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary file next to ``path`` (same folder, so a rename onto ``path`` is atomic), with the
    permissions the umask gives ordinary files (``mkstemp`` alone makes 0600)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def publish(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """fsync the finished file ``tmp``, rename it to ``path`` and fsync the folder."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success publish it as ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    tmp = temporary_sibling(path)
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
