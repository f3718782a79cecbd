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
- :func:`bin_to_memfile`: a thin wrapper of :func:`oaml.data.verification_sets.convert_bin`.
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
from oaml.data.datasets import FolderDataset, RecordIndex
from oaml.data.images import decode_image
from oaml.data.insightface import InsightfaceWriter
from oaml.data.pairs import Pair, parse_pairs, resolve_pairs
from oaml.data.recordio import RecordReader
from oaml.data.verification_sets import convert_bin
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
        skipped: ``"<file>: <reason>"`` of the unreadable images left out (``skip_bad``).
    """

    rec_path: Path
    num_images: int
    num_classes: int
    copied: int
    reencoded: int
    image_size: tuple[int, int]
    skipped: tuple[str, ...] = ()


def _payload(path: Path, encode: str, jpeg_quality: int) -> tuple[bytes, bool]:
    """The bytes to store for ``path`` and whether they were re-encoded.

    Every image is decoded once, also those stored byte for byte: a truncated JPEG must not be packed for a
    reader to refuse later.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise DataError(f"{path}: not a decodable image ({len(data)} bytes; truncated or corrupt)")
    kind = image_kind(data)
    if kind == "jpeg" or (kind == "png" and encode == "keep"):
        return data, False
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


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists ({path.stat().st_size} bytes); pass --overwrite to replace it, or "
                          f"choose another output")


def folder_to_rec(src: str | os.PathLike[str], out_dir: str | os.PathLike[str], encode: str = "keep",
                  jpeg_quality: int = 95, progress: bool = True, overwrite: bool = False,
                  skip_bad: bool = False) -> FolderToRecSummary:
    """Pack identity folders into ``out_dir/train.rec``, ``train.idx``, ``property`` and ``labels.tsv``.

    Labels follow the sorted identity folders (as :class:`~oaml.data.datasets.FolderDataset` assigns them);
    record keys follow the labels, then the sorted relative paths. Payload handling: module docstring. The files
    are published atomically when everything is packed.

    Args:
        src: root with one folder per identity.
        out_dir: output folder (created).
        encode: ``"keep"`` or ``"jpeg"`` (see the module docstring).
        jpeg_quality: JPEG quality for ``encode="jpeg"``.
        progress: show a tqdm progress bar.
        overwrite: replace an existing ``out_dir/train.rec``; without it an existing one is an error.
        skip_bad: leave out images that cannot be read or decoded (listed in
            :attr:`FolderToRecSummary.skipped`) instead of stopping at the first one.

    Returns:
        A :class:`FolderToRecSummary`.

    Raises:
        FileNotFoundError: if ``src`` does not exist.
        ConfigError: for an invalid ``encode`` or ``jpeg_quality``, or an existing ``train.rec`` without
            ``overwrite``.
        DataError: if ``src`` has no images, or (without ``skip_bad``) an image cannot be read or decoded;
            nothing is published.
    """
    if encode not in ("keep", "jpeg"):
        raise ConfigError(f"encode = {encode!r} is invalid; expected 'keep' or 'jpeg'")
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality = {jpeg_quality!r} is invalid; expected 1..100")
    root, out = Path(src), Path(out_dir)
    _check_target(out / "train.rec", overwrite)
    dataset = FolderDataset(src)
    payloads, skipped = _read_payloads(root, [str(p) for p in dataset.paths], encode, jpeg_quality, progress,
                                       skip_bad)
    labels = [int(v) for k, v in enumerate(dataset.labels) if k in payloads]
    present = sorted(set(labels))  # identities whose images were all unreadable are dropped, labels stay dense
    relabel = {old: new for new, old in enumerate(present)}
    rows = ["key\tlabel\tidentity\tsource"]
    copied = reencoded = 0
    size = (FACE_SIZE, FACE_SIZE)
    with InsightfaceWriter(out, len(payloads), len(present)) as writer:
        for position, ((index, (data, changed)), label) in enumerate(zip(payloads.items(), labels)):
            rel = str(dataset.paths[index])
            if position == 0:
                size = _image_size(data, str(root / rel))
                writer.image_size = size
            key = writer.add(relabel[label], data)
            reencoded += changed
            copied += not changed
            rows.append(f"{key}\t{relabel[label]}\t{dataset.class_names[label]}\t{rel}")
    atomic_write_bytes(out / "labels.tsv", ("\n".join(rows) + "\n").encode("utf-8"))
    logger.info("packed %d images of %d identities into %s (%d copied byte for byte, %d re-encoded, %d skipped)",
                len(payloads), len(present), out / "train.rec", copied, reencoded, len(skipped))
    return FolderToRecSummary(out / "train.rec", len(payloads), len(present), copied, reencoded, size,
                              tuple(skipped))


def _read_payloads(root: Path, paths: list[str], encode: str, jpeg_quality: int, progress: bool,
                   skip_bad: bool) -> tuple[dict[int, tuple[bytes, bool]], list[str]]:
    """Every image's payload by dataset index, and ``"<file>: <reason>"`` of those skipped."""
    from tqdm import tqdm

    payloads: dict[int, tuple[bytes, bool]] = {}
    skipped: list[str] = []
    for index, rel in enumerate(tqdm(paths, desc="folder-to-rec", unit="img", disable=not progress)):
        try:
            payloads[index] = _payload(root / rel, encode, jpeg_quality)
        except DataError as exc:
            if not skip_bad:
                raise DataError(f"{exc}; pass --skip-bad to leave such images out") from None
            skipped.append(str(exc))
            logger.warning("skipping %s", exc)
    if not payloads:
        raise DataError(f"{root}: none of the {len(paths)} images can be decoded")
    return payloads, skipped


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


def rec_to_folder(rec: str | os.PathLike[str], out_dir: str | os.PathLike[str], progress: bool = True,
                  overwrite: bool = False, skip_bad: bool = False) -> RecToFolderSummary:
    """Unpack a ``.rec`` into ``out_dir/<label>/<key>.<jpg|png|bmp>`` with the payload bytes unchanged.

    Labels (the stored class numbers) and keys are zero-padded, e.g. ``07/0123.jpg``. Every payload is decoded
    once, so that no truncated image is written out.

    Args:
        rec: the ``.rec`` file (its ``.idx`` next to it), or a folder holding ``train.rec``.
        out_dir: output folder (created); it must be empty unless ``overwrite``.
        progress: show a tqdm progress bar.
        overwrite: write into a non-empty ``out_dir`` (files of the same names are replaced).
        skip_bad: leave out image payloads that do not decode instead of stopping at the first one.

    Returns:
        A :class:`RecToFolderSummary`; records that hold no image (unknown payload) are always skipped, logged and
        listed, like the undecodable ones with ``skip_bad``.

    Raises:
        FileNotFoundError: if the ``.rec`` or ``.idx`` is missing.
        RecordIOError: if the file is malformed.
        ConfigError: if ``out_dir`` is not empty and ``overwrite`` is False.
        DataError: if an image payload does not decode and ``skip_bad`` is False.
    """
    from tqdm import tqdm

    rec_path = Path(rec) / "train.rec" if Path(rec).is_dir() else Path(rec)
    reader = RecordReader(rec_path)
    with tempfile.TemporaryDirectory() as cache:  # leave no label cache next to the user's data
        index = RecordIndex.load(rec_path, cache_dir=cache, reader=reader)
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; pass --overwrite to write into it, or choose another output folder")
    width = len(str(int(index.class_ids.max()))) if len(index.class_ids) else 1
    key_width = len(str(int(index.keys.max()))) if len(index.keys) else 1
    skipped: list[tuple[int, str]] = []
    written = 0
    for key, label in tqdm(list(zip(index.keys.tolist(), index.labels.tolist())), desc="rec-to-folder",
                           unit="img", disable=not progress):
        payload = reader.read_record(int(key))[1]
        kind = image_kind(payload)
        if kind is None or cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR) is None:
            reason = (f"payload of {len(payload)} bytes is not a JPEG, PNG or BMP image" if kind is None else
                      f"{kind.upper()} payload of {len(payload)} bytes does not decode (truncated or corrupt)")
            if kind is not None and not skip_bad:
                raise DataError(f"{rec_path} key {key}: {reason}; pass --skip-bad to leave such records out")
            skipped.append((int(key), reason))
            logger.warning("%s key %d: %s; skipped", rec_path, key, reason)
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
        num_images: distinct images read (a shared image is pickled once).
        skipped: ``"<file>: <reason>"`` of the unusable images whose pairs were dropped (``skip_bad``).
    """

    out_path: Path
    num_pairs: int
    num_genuine: int
    num_dropped: int
    num_images: int
    skipped: tuple[str, ...] = ()


def _read_aligned(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    decode_image(data, str(path))  # refuses undecodable and non-112x112 images
    return data


def _read_pair_images(pairs: list[Pair], skip_bad: bool) -> tuple[dict[str, bytes], dict[str, str]]:
    """The bytes of every image of ``pairs`` (read once), and path -> reason of the unusable ones (``skip_bad``)."""
    cache: dict[str, bytes] = {}
    bad: dict[str, str] = {}
    for path in dict.fromkeys(p for pair in pairs for p in (pair.path_a, pair.path_b)):
        try:
            cache[path] = _read_aligned(Path(path))
        except DataError as exc:
            if not skip_bad:
                raise DataError(f"{exc}; pass --skip-bad to drop the pairs that use it") from None
            bad[path] = str(exc).removeprefix(f"{path}: ")
            logger.warning("skipping the pairs of %s", exc)
    return cache, bad


def pairs_to_bin(aligned_dir: str | os.PathLike[str], pairs_txt: str | os.PathLike[str],
                 out_path: str | os.PathLike[str], skip_missing: bool = False, overwrite: bool = False,
                 skip_bad: bool = False) -> PairsToBinSummary:
    """Write a verification ``.bin`` from an aligned folder and an LFW-format pairs file.

    Image ``n`` of ``name`` is ``aligned_dir/name/name_%04d`` with the first suffix of
    :data:`oaml.data.images.IMAGE_EXTENSIONS` that exists. Image bytes are stored as they are on disk; every image
    must decode to 112 x 112.

    Args:
        aligned_dir: folder of aligned faces, one sub-folder per identity.
        pairs_txt: LFW ``pairs.txt`` format (:func:`oaml.data.pairs.parse_pairs`).
        out_path: the ``.bin`` to write (atomically). Name it after a set (``lfw.bin``) to use it in
            validation.
        skip_missing: drop the pairs whose images are missing (with a warning) instead of failing.
        overwrite: replace an existing ``out_path``; without it an existing file is an error.
        skip_bad: drop the pairs whose images cannot be decoded or are not 112 x 112 (listed in
            :attr:`PairsToBinSummary.skipped`) instead of failing.

    Returns:
        A :class:`PairsToBinSummary`.

    Raises:
        FileNotFoundError: if the folder or the pairs file is missing.
        DataError: if images are missing (and not skipped; the message lists them), an image is not a
            112 x 112 face, or no pair is left.
    """
    _check_target(Path(out_path), overwrite)
    pairs = parse_pairs(pairs_txt)
    try:
        resolved = resolve_pairs(pairs, aligned_dir, on_missing="skip" if skip_missing else "raise")
    except DataError as exc:
        raise DataError(f"{pairs_txt}: {exc}; pass --skip-missing (skip_missing=True) to drop the pairs that "
                        f"use them") from exc
    dropped = len(pairs) - len(resolved)
    if dropped:
        logger.warning("dropped %d of %d pairs of %s because of missing images", dropped, len(pairs), pairs_txt)
    if not resolved:
        raise DataError(f"{pairs_txt}: no pair left with both images under {aligned_dir}")
    cache, bad = _read_pair_images(resolved, skip_bad)
    kept = [p for p in resolved if p.path_a not in bad and p.path_b not in bad]
    if not kept:
        raise DataError(f"{pairs_txt}: every pair uses one of the {len(bad)} unreadable images")
    images = [cache[path] for pair in kept for path in (pair.path_a, pair.path_b)]
    issame = [bool(pair.same) for pair in kept]
    buffer = io.BytesIO()
    pickle.dump((images, issame), buffer, protocol=4)  # protocol >= 3 stores bytes natively
    atomic_write_bytes(out_path, buffer.getvalue())
    summary = PairsToBinSummary(Path(out_path), len(kept), sum(issame), dropped + len(resolved) - len(kept),
                                len(cache), tuple(f"{path}: {why}" for path, why in bad.items()))
    logger.info("wrote %s: %d pairs (%d genuine) from %d images", out_path, summary.num_pairs,
                summary.num_genuine, summary.num_images)
    return summary
