"""The project's own exception types. Each message names the file, record or argument at fault.

An error raised inside a DataLoader worker reaches the main process re-created by torch from a message that
holds the worker's whole traceback ("Caught DataError in DataLoader worker process 0. Original Traceback ...").
:class:`OamlError` recognises that message and keeps only the original one-line message, naming the worker, so
that the command line prints one line whether the data was loaded in the main process or in a worker.
"""

from __future__ import annotations

import re

__all__ = ["CheckpointError", "ConfigError", "DataError", "NonFiniteLossError", "OamlError", "RecordIOError",
           "UnsafePickleError"]


_WORKER = re.compile(r"Caught \w+ in (DataLoader worker process \d+)\.\nOriginal Traceback")


def _unwrap_worker_message(cls: type, message: str) -> str:
    """The original message of an error that torch re-raised from a DataLoader worker, else ``message``."""
    match = _WORKER.match(message)
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    if match is None or marker not in message:
        return message
    return f"{message.rsplit(marker, 1)[1].strip()} (in {match.group(1)})"


class OamlError(Exception):
    """Base class of every error oaml raises for bad user input or bad files."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap_worker_message(type(self), args[0]),)
        super().__init__(*args)


class ConfigError(OamlError, ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""


class DataError(OamlError, ValueError):
    """A data file or image is unusable; the message names the file or record."""


class RecordIOError(DataError):
    """A .rec/.idx file is malformed; the message names the file, the key and the byte offset."""


class UnsafePickleError(DataError):
    """A pickle tried to load a global that the restricted unpickler does not allow."""


class CheckpointError(OamlError, ValueError):
    """A checkpoint cannot be loaded (unknown layout, key mismatch, or it needs unsafe unpickling)."""


class NonFiniteLossError(OamlError, RuntimeError):
    """Training produced non-finite losses for too many consecutive steps."""
