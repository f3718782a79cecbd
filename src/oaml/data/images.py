"""Image files: the extensions oaml reads, folder scanning and the one decoder of aligned faces.

Every reader of image folders (training folders, ``oaml eval``/``embed``, the study, ``oaml align``, the export
parity check, pairs files) lists files with :func:`list_images` or :func:`identity_images`, and every reader of
aligned faces decodes with :func:`decode_image`, so a file that one command accepts is accepted by all.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from oaml.constants import FACE_SIZE
from oaml.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "PHOTO_EXTENSIONS", "decode_image", "identity_images", "labelled_images",
           "list_images"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".pgm")
"""Suffixes of aligned face images (case-insensitive), in the order pairs files try them."""

PHOTO_EXTENSIONS: tuple[str, ...] = (*IMAGE_EXTENSIONS, ".ppm", ".tif", ".tiff", ".webp")
"""Suffixes of the photos ``oaml align`` reads (a superset: raw photos come in more formats)."""


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def list_images(root: str | os.PathLike[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                exclude: Path | None = None) -> list[Path]:
    """Image files under ``root`` at any depth, sorted by relative path; hidden files and folders are skipped.

    Args:
        root: the folder.
        extensions: accepted suffixes (case-insensitive).
        exclude: a folder under ``root`` to leave out (e.g. an output folder inside the input).

    Raises:
        FileNotFoundError: If ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    suffixes = {ext.lower() for ext in extensions}
    excluded = None if exclude is None else exclude.resolve()
    found = [p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
             and not _hidden(p.relative_to(root))
             and (excluded is None or excluded not in p.resolve().parents)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def identity_images(root: str | os.PathLike[str],
                    extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[tuple[str, list[Path]]]:
    """``(identity, image files)`` for every identity folder ``root/<identity>/`` (images at any depth below it),
    in sorted identity order; identity folders without images are included with an empty list.

    Raises:
        FileNotFoundError: If ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [(folder.name, list_images(folder, extensions)) for folder in folders]


def labelled_images(root: str | os.PathLike[str],
                    extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> tuple[list[Path], list[str]]:
    """Every image of ``root/<identity>/.../<image>`` and its identity (the first folder level), flattened in the
    order of :func:`identity_images` (identity folders may be symbolic links).

    Images directly in ``root`` have no identity and are skipped with a warning.

    Raises:
        FileNotFoundError: If ``root`` is not a folder.
        DataError: If no image lies in an identity folder.
    """
    root = Path(root)
    per_identity = identity_images(root, extensions)
    suffixes = {ext.lower() for ext in extensions}
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                   and not p.name.startswith("."))
    if loose:
        logger.warning("%d images directly in %s have no identity folder; skipped (e.g. %s)", len(loose), root,
                       loose[0])
    files = [path for _, paths in per_identity for path in paths]
    if not files:
        raise DataError(f"{root}: no images in identity folders (expected {root}/<identity>/<image> with "
                        f"extensions {', '.join(extensions)})")
    return files, [name for name, paths in per_identity for _ in paths]


def decode_image(buf: bytes | np.ndarray, where: str, resize: bool = False, size: int = FACE_SIZE) -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 ``size x size x 3`` array (grayscale becomes 3 channels).

    Args:
        buf: encoded JPEG/PNG/BMP/PGM bytes.
        where: the record key or file path, for error messages.
        resize: resize other sizes to ``size`` with ``cv2.INTER_AREA`` instead of raising.
        size: the expected side (112 for ArcFace-aligned crops).

    Raises:
        DataError: if the bytes do not decode, or the size is not ``size`` and ``resize`` is False.
    """
    # cv2.imdecode raises (instead of returning None) on an empty buffer, e.g. a record with no image bytes.
    image = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR) if len(buf) else None
    if image is None:
        raise DataError(f"{where}: cannot decode the image ({len(buf)} bytes); the file is corrupt or not an image")
    if image.shape[:2] != (size, size):
        if not resize:
            raise DataError(f"{where}: image is {image.shape[1]}x{image.shape[0]}, expected {size}x{size} aligned "
                            f"faces; align it with `oaml align`, or enable resizing (--resize) to resize with "
                            f"INTER_AREA")
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image
