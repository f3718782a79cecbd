"""The gallery file format (version 1): one ``.npz`` readable without pickle, written atomically (SPEC §13.4).

One uncompressed NumPy ``.npz`` (a zip of ``.npy`` members), readable with ``numpy.load(path, allow_pickle=False)``;
no pickle anywhere. It is written atomically (temporary file in the same folder, fsync, rename), so a reader sees
the old file or the new one, never a torn one. Members (N images, D = 512, C x H x W = the QAConv maps):

- ``header``: uint8, a UTF-8 JSON object: ``format`` (``"oaml.gallery"``), ``version`` (1), ``oaml_version``,
  ``created`` (ISO 8601, UTC), ``num_images``, ``dim``, ``dtype`` (``"float16"`` or ``"float32"``), ``identities``
  (the I distinct identity names, sorted), ``has_maps``, ``has_occlusion`` and ``model``, the model that built the
  gallery (:func:`oaml.evaluation.gallery_features.describe_model`: ``path``, ``sha256`` of the checkpoint file,
  ``arch``, ``width``, ``channel_order``, ``occlusion_method``, ... and ``uses_occlusion``);
- ``paths``: uint8, a UTF-8 JSON list of the N image paths (as given when the gallery was built);
- ``embeddings``: N x D float16 or float32 flip-fused unit rows; ``norms``: N float32 (mean raw norm of the image
  and its mirror); ``labels``: N int32 index of each image's identity in ``header.identities``;
- with maps only: ``maps`` and ``maps_flip``: N x C x H x W float16 (the image, its mirror image);
- with maps of a model with an occlusion head only: ``occlusion`` and ``occlusion_flip``: N x 1 x H x W float16
  visibility in [0, 1] (1 = visible).

A reader refuses, with one line naming the file, a file that is not a zip of ``.npy`` members, has no ``header``,
names another format, has a newer version, or whose members disagree in shape. ``docs/formats.md`` documents the
format for readers outside oaml.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from oaml.errors import DataError
from oaml.fileio import atomic_write

__all__ = ["GALLERY_FORMAT", "GALLERY_VERSION", "first_line", "read_gallery_file", "write_gallery_file"]

logger = logging.getLogger(__name__)

GALLERY_FORMAT = "oaml.gallery"
GALLERY_VERSION = 1


def first_line(error: BaseException) -> str:
    """``"Type: first line of the message"``, for one-line errors that wrap another."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def write_gallery_file(path: str | os.PathLike[str], header: dict[str, Any], paths: list[str],
                       arrays: dict[str, np.ndarray]) -> Path:
    """Write ``header`` (``format`` and ``version`` are set here), ``paths`` and the arrays atomically.

    Returns:
        ``path``.
    """
    members = {"header": _json_bytes({"format": GALLERY_FORMAT, "version": GALLERY_VERSION, **header}),
               "paths": _json_bytes(paths), **arrays}
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **members)
    return path


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every member of an ``.npz`` file, read eagerly, or a one-line DataError naming the file."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with data:
            if "header" not in data.files:
                raise ValueError("no 'header' member")
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: not a readable oaml gallery file, truncated or foreign "
                        f"({first_line(error)})") from error


def read_gallery_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[str], dict[str, np.ndarray]]:
    """Read and check a gallery file's header, paths and arrays (the shapes are checked by the caller).

    Returns:
        ``(header, paths, arrays)``; ``arrays`` holds every member but ``header`` and ``paths``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: One line naming ``path``: not an ``.npz``, truncated, no header, another format or a newer version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gallery file not found: {path}")
    arrays = _read_npz(path)
    try:
        header = json.loads(bytes(arrays.pop("header")).decode("utf-8"))
        paths = json.loads(bytes(arrays.pop("paths")).decode("utf-8"))
        if not isinstance(header, dict) or header.get("format") != GALLERY_FORMAT:
            raise ValueError(f"format is {header.get('format') if isinstance(header, dict) else None!r}, expected "
                             f"{GALLERY_FORMAT!r}")
        if not isinstance(header.get("version"), int) or header["version"] > GALLERY_VERSION:
            raise ValueError(f"version {header.get('version')!r} is not supported (this oaml reads <= "
                             f"{GALLERY_VERSION}); upgrade oaml")
        if not isinstance(paths, list):
            raise ValueError("'paths' is not a JSON list")
    except (KeyError, ValueError) as error:
        raise DataError(f"{path}: not a valid oaml gallery file ({first_line(error)})") from error
    return header, paths, arrays
