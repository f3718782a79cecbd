"""The project's own exception types. Each message names the file, record or argument at fault."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "NonFiniteLossError", "OamlError", "RecordIOError",
           "UnsafePickleError"]


class OamlError(Exception):
    """Base class of every error oaml raises for bad user input or bad files."""


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
