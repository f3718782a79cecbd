"""``oaml convert``: identity folders <-> insightface RecordIO, ``.bin`` -> memfile, pairs.txt -> ``.bin``.

SPEC §7 (RecordIO layout) and §9 (``.bin`` verification sets).

- :func:`folder_to_rec`: ``root/<identity>/<image>`` (any depth below the identity) -> ``train.rec`` +
  ``train.idx`` + ``property`` in the insightface layout (:class:`oaml.data.insightface.InsightfaceWriter`),
  plus ``labels.tsv`` (key, label, identity name, source file), which keeps the identity names the ``.rec``
  cannot hold. Payloads: JPEG and PNG files are stored **byte for byte** (no re-encoding, so no
  generation loss; OpenCV and mxnet decode both); any other format (BMP, PGM, TIFF, WebP, ...) is decoded
  and stored as lossless PNG, or as JPEG with ``encode="jpeg"`` for readers that accept JPEG only (then
  PNG sources are re-encoded too). The file type is read from the file's first bytes, not its suffix.
- :func:`rec_to_folder`: ``.rec`` -> ``OUT/<label>/<key>.jpg`` with the payload bytes as they are (``.png``
  for PNG payloads); labels and keys are zero-padded to one width each so that sorted names follow the
  numbers, and ``folder_to_rec`` on the result gives the same labels and record order back.
- :func:`bin_to_memfile`: a thin wrapper of :func:`oaml.data.validation.convert_bin`.
- :func:`pairs_to_bin`: an aligned folder and an LFW-format ``pairs.txt`` -> a ``.bin`` (pickle protocol 4 of
  ``(list of 2N image bytes, list of N bools)``, written atomically) that the validation loader reads like
  the released sets.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from oaml.constants import FACE_SIZE, ChannelOrder
from oaml.data.datasets import FolderDataset, RecordIndex, decode_image
from oaml.data.insightface import InsightfaceWriter
from oaml.data.pairs import parse_pairs, resolve_pairs
from oaml.data.recordio import RecordReader
from oaml.data.validation import convert_bin
from oaml.errors import ConfigError, DataError
from oaml.fileio import atomic_write_bytes

__all__ = [
    "FolderToRecSummary",
    "PairsToBinSummary",
    "RecToFolderSummary",
    "bin_to_memfile",
    "folder_to_rec",
    "image_kind",
    "pairs_to_bin",
    "rec_to_folder",
]

logger = logging.getLogger(__name__)

_SIGNATURES = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"BM", "bmp"))
_SUFFIX = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp"}
_PAIR_EXTENSIONS = (".jpg", ".png", ".jpeg", ".bmp")


def image_kind(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or ``"bmp"`` from the first bytes of an encoded image, else None."""
    return next((kind for magic, kind in _SIGNATURES if data.startswith(magic)), None)


@dataclass(frozen=True)
class FolderToRecSummary:
    """What :func:`folder_to_rec` wrote.

    Attributes:
        rec_path: the ``train.rec`` file.
        num_images: images stored.
        num_classes: identities (labels ``0 .. num_classes - 1`` in sorted folder order).
        copied: images stored byte for byte.
        reencoded: images decoded and re-encoded.
        image_size: ``(height, width)`` of the first image, written to ``property``.
    """

    rec_path: Path
    num_images: int
    num_classes: int
    copied: int
    reencoded: int
    image_size: tuple[int, int]


def _payload(path: Path, encode: str, jpeg_quality: int) -> tuple[bytes, bool]:
    """The bytes to store for ``path`` and whether they were re-encoded."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    kind = image_kind(data)
    if kind == "jpeg" or (kind == "png" and encode == "keep"):
        return data, False
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: not a decodable image ({len(data)} bytes)")
    suffix, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]) if encode == "jpeg" else (".png", [])
    ok, buffer = cv2.imencode(suffix, image, params)
    if not ok:
        raise DataError(f"{path}: cv2.imencode({suffix}) failed")
    return buffer.tobytes(), True


def _image_size(data: bytes, where: str) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{where}: not a decodable image")
    if image.shape[:2] != (FACE_SIZE, FACE_SIZE):
        logger.warning("%s is %dx%d, not %dx%d: training expects aligned faces (run `oaml align` first)", where,
                       image.shape[1], image.shape[0], FACE_SIZE, FACE_SIZE)
    return int(image.shape[0]), int(image.shape[1])


def folder_to_rec(src: str | os.PathLike[str], out_dir: str | os.PathLike[str], encode: str = "keep",
                  jpeg_quality: int = 95, progress: bool = True) -> FolderToRecSummary:
    """Pack identity folders into ``out_dir/train.rec``, ``train.idx``, ``property`` and ``labels.tsv``.

    Labels follow the sorted identity folders (as :class:`~oaml.data.datasets.FolderDataset` assigns them);
    record keys follow the labels, then the sorted relative paths. Payload handling: module docstring.

    Args:
        src: root with one folder per identity.
        out_dir: output folder (created).
        encode: ``"keep"`` or ``"jpeg"`` (see the module docstring).
        jpeg_quality: JPEG quality for ``encode="jpeg"``.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`FolderToRecSummary`.

    Raises:
        FileNotFoundError: if ``src`` does not exist.
        ConfigError: for an invalid ``encode`` or ``jpeg_quality``.
        DataError: if ``src`` has no images, or an image cannot be read or decoded (nothing is published).
    """
    from tqdm import tqdm

    if encode not in ("keep", "jpeg"):
        raise ConfigError(f"encode = {encode!r} is invalid; expected 'keep' or 'jpeg'")
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality = {jpeg_quality!r} is invalid; expected 1..100")
    dataset = FolderDataset(src)
    root, out = Path(src), Path(out_dir)
    paths, labels = [str(p) for p in dataset.paths], [int(v) for v in dataset.labels]
    rows = ["key\tlabel\tidentity\tsource"]
    copied = reencoded = 0
    size = (FACE_SIZE, FACE_SIZE)
    with InsightfaceWriter(out, len(paths), dataset.num_classes) as writer:
        for position, (rel, label) in enumerate(tqdm(list(zip(paths, labels)), desc="folder-to-rec", unit="img",
                                                     disable=not progress)):
            data, changed = _payload(root / rel, encode, jpeg_quality)
            if position == 0:
                size = _image_size(data, str(root / rel))
                writer.image_size = size
            key = writer.add(label, data)
            reencoded += changed
            copied += not changed
            rows.append(f"{key}\t{label}\t{dataset.class_names[label]}\t{rel}")
    atomic_write_bytes(out / "labels.tsv", ("\n".join(rows) + "\n").encode("utf-8"))
    logger.info("packed %d images of %d identities into %s (%d copied byte for byte, %d re-encoded)",
                len(paths), dataset.num_classes, out / "train.rec", copied, reencoded)
    return FolderToRecSummary(out / "train.rec", len(paths), dataset.num_classes, copied, reencoded, size)


@dataclass(frozen=True)
class RecToFolderSummary:
    """What :func:`rec_to_folder` wrote.

    Attributes:
        out_dir: the output folder.
        num_images: image files written.
        num_classes: label folders.
        skipped: ``(key, reason)`` of records whose payload is not a JPEG, PNG or BMP image.
    """

    out_dir: Path
    num_images: int
    num_classes: int
    skipped: tuple[tuple[int, str], ...]


def rec_to_folder(rec: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                  progress: bool = True) -> RecToFolderSummary:
    """Unpack a ``.rec`` into ``out_dir/<label>/<key>.<jpg|png|bmp>`` with the payload bytes unchanged.

    Labels (the stored class numbers) and keys are zero-padded, e.g. ``07/0123.jpg``.

    Args:
        rec: the ``.rec`` file (its ``.idx`` next to it), or a folder holding ``train.rec``.
        out_dir: output folder (created).
        progress: show a tqdm progress bar.

    Returns:
        A :class:`RecToFolderSummary`; records with an unknown payload are skipped, logged and listed.

    Raises:
        FileNotFoundError: if the ``.rec`` or ``.idx`` is missing.
        RecordIOError: if the file is malformed.
    """
    from tqdm import tqdm

    rec_path = Path(rec) / "train.rec" if Path(rec).is_dir() else Path(rec)
    reader = RecordReader(rec_path)
    with tempfile.TemporaryDirectory() as cache:  # leave no label cache next to the user's data
        index = RecordIndex.load(rec_path, cache_dir=cache, reader=reader)
    out = Path(out_dir)
    width = len(str(int(index.class_ids.max()))) if len(index.class_ids) else 1
    key_width = len(str(int(index.keys.max()))) if len(index.keys) else 1
    skipped: list[tuple[int, str]] = []
    written = 0
    for key, label in tqdm(list(zip(index.keys.tolist(), index.labels.tolist())), desc="rec-to-folder",
                           unit="img", disable=not progress):
        payload = reader.read_record(int(key))[1]
        kind = image_kind(payload)
        if kind is None:
            skipped.append((int(key), f"payload of {len(payload)} bytes is not a JPEG, PNG or BMP image"))
            logger.warning("%s key %d: %s; skipped", rec_path, key, skipped[-1][1])
            continue
        folder = out / f"{int(index.class_ids[label]):0{width}d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{int(key):0{key_width}d}{_SUFFIX[kind]}").write_bytes(payload)
        written += 1
    reader.close()
    logger.info("wrote %d images of %d labels from %s to %s", written, index.num_classes, rec_path, out)
    return RecToFolderSummary(out, written, index.num_classes, tuple(skipped))


def bin_to_memfile(bin_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                   channel_order: ChannelOrder | str = ChannelOrder.BGR, name: str | None = None) -> Path:
    """Convert a verification ``.bin`` to the uint8 memfile the validation loader reads (see ``convert_bin``).

    Returns:
        The ``.u8`` memfile path (with ``<name>_issame.npy`` and ``<name>.json`` next to it).
    """
    try:
        order = ChannelOrder(str(getattr(channel_order, "value", channel_order)).lower())
    except ValueError as exc:
        raise ConfigError(f"channel_order = {channel_order!r} is invalid; expected 'bgr' or 'rgb'") from exc
    return convert_bin(bin_path, out_dir, order, name)


@dataclass(frozen=True)
class PairsToBinSummary:
    """What :func:`pairs_to_bin` wrote.

    Attributes:
        out_path: the ``.bin`` file.
        num_pairs: pairs written.
        num_genuine: same-identity pairs among them.
        num_dropped: pairs dropped because an image was missing (only with ``skip_missing``).
        num_images: distinct images stored (a shared image is pickled once).
    """

    out_path: Path
    num_pairs: int
    num_genuine: int
    num_dropped: int
    num_images: int


def _read_aligned(path: Path) -> bytes:
    data = path.read_bytes()
    decode_image(data, str(path))  # refuses undecodable and non-112x112 images
    return data


def pairs_to_bin(aligned_dir: str | os.PathLike[str], pairs_txt: str | os.PathLike[str],
                 out_path: str | os.PathLike[str], skip_missing: bool = False) -> PairsToBinSummary:
    """Write a verification ``.bin`` from an aligned folder and an LFW-format pairs file.

    Image ``n`` of ``name`` is ``aligned_dir/name/name_%04d`` with suffix .jpg, .png, .jpeg or .bmp (first
    found). Image bytes are stored as they are on disk; every image must decode to 112 x 112.

    Args:
        aligned_dir: folder of aligned faces, one sub-folder per identity.
        pairs_txt: LFW ``pairs.txt`` format (:func:`oaml.data.pairs.parse_pairs`).
        out_path: the ``.bin`` to write (atomically). Name it after a set (``lfw.bin``) to use it in
            validation.
        skip_missing: drop the pairs whose images are missing (with a warning) instead of failing.

    Returns:
        A :class:`PairsToBinSummary`.

    Raises:
        FileNotFoundError: if the folder or the pairs file is missing.
        DataError: if images are missing (and not skipped; the message lists them), an image is not a
            112 x 112 face, or no pair is left.
    """
    pairs = parse_pairs(pairs_txt)
    try:
        resolved = resolve_pairs(pairs, aligned_dir, extensions=_PAIR_EXTENSIONS,
                                 on_missing="skip" if skip_missing else "raise")
    except DataError as exc:
        raise DataError(f"{pairs_txt}: {exc}; pass --skip-missing (skip_missing=True) to drop the pairs that "
                        f"use them") from exc
    dropped = len(pairs) - len(resolved)
    if dropped:
        logger.warning("dropped %d of %d pairs of %s because of missing images", dropped, len(pairs), pairs_txt)
    if not resolved:
        raise DataError(f"{pairs_txt}: no pair left with both images under {aligned_dir}")
    cache: dict[str, bytes] = {}
    images: list[bytes] = []
    for pair in resolved:
        for path in (pair.path_a, pair.path_b):
            if path not in cache:
                cache[path] = _read_aligned(Path(path))
            images.append(cache[path])
    issame = [bool(pair.same) for pair in resolved]
    buffer = io.BytesIO()
    pickle.dump((images, issame), buffer, protocol=4)  # protocol >= 3 stores bytes natively
    atomic_write_bytes(out_path, buffer.getvalue())
    summary = PairsToBinSummary(Path(out_path), len(resolved), sum(issame), dropped, len(cache))
    logger.info("wrote %s: %d pairs (%d genuine) from %d images", out_path, summary.num_pairs,
                summary.num_genuine, summary.num_images)
    return summary
