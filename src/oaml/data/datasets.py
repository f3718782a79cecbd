"""Training datasets over insightface RecordIO files and identity folders (SPEC §7).

Both datasets yield :class:`~oaml.data.batches.TrainSample` records ``(image, label, visibility, skipped)``:
without a transform, a uint8 BGR ``112 x 112 x 3`` face, its contiguous int label and a float32 ``112 x 112``
map of ones; with a transform, the ``(image, visibility)`` it returns (e.g.
:class:`oaml.data.transforms.TrainTransform`). ``skipped`` reports the unreadable images replaced while loading
the item, so that the main process learns about the skips of every DataLoader worker.

Labels never require decoding an image: :class:`RecordIndex` reads them from the record headers once and
caches them in ``<stem>.labels.npz`` next to the data (or in a cache folder when the data folder is
read-only), keyed by the ``.idx`` size and mtime so that a changed file is re-indexed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from oaml.data.batches import TrainSample
from oaml.data.recordio import RecordReader
from oaml.errors import DataError, RecordIOError
from oaml.data.images import IMAGE_EXTENSIONS, decode_image, identity_images
from oaml.fileio import atomic_write, cache_root, is_writable_dir

__all__ = ["FolderDataset", "RecordDataset", "RecordIndex", "allowed_bad_images", "read_subset_file",
           "resolve_record_path"]

logger = logging.getLogger(__name__)

_CACHE_VERSION = 1
_MIN_SUBSET_IMAGES = 5


def allowed_bad_images(total: int, max_bad_fraction: float) -> int:
    """How many unreadable images a dataset of ``total`` images tolerates: ``max(1, floor(fraction x total))``.

    At least one, so that a single bad file never aborts training on a set under ``1 / max_bad_fraction`` images.
    """
    return max(1, math.floor(max_bad_fraction * total))


def resolve_record_path(path: str | os.PathLike[str]) -> Path:
    """A ``.rec`` file, or a folder holding ``train.rec``, as the ``.rec`` path."""
    path = Path(path)
    return path / "train.rec" if path.is_dir() else path


def read_subset_file(path: str | os.PathLike[str]) -> list[str]:
    """Entries of a subset index file: one record key or relative path per line (commas also separate)."""
    text = Path(path).read_text(encoding="utf-8")
    return [entry.strip() for line in text.splitlines() for entry in line.split(",") if entry.strip()]


@dataclass(frozen=True)
class RecordIndex:
    """Image keys and labels of a ``.rec`` file, read from the record headers only.

    Attributes:
        keys: int64 record keys of the images, in key order.
        labels: int64 contiguous labels ``0..C-1`` of those images.
        class_ids: int64 ``C`` labels as stored in the file (``class_ids[label]``).
        layout: ``"insightface"`` (record 0 is a meta record: flag > 0, labels ``[A, B]``, no image bytes;
            the images are keys ``1..A-1``) or
            ``"flat"`` (every key is an image).
    """

    keys: np.ndarray
    labels: np.ndarray
    class_ids: np.ndarray
    layout: str

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_ids)

    @classmethod
    def load(cls, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None,
             cache_dir: str | os.PathLike[str] | None = None, reader: RecordReader | None = None) -> RecordIndex:
        """Load the cached index, or build it from the headers and cache it.

        The cache is ``<stem>.labels.npz`` next to the ``.rec`` file, or, when that folder is not writable,
        ``<cache root>/labels`` (:func:`oaml.fileio.cache_root`); an explicit ``cache_dir`` is used instead of both.

        Raises:
            RecordIOError: if a header's class label is not a non-negative integer.
        """
        rec_path = Path(rec_path)
        idx_path = Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")
        stat = idx_path.stat()
        stamp = np.array([stat.st_size, stat.st_mtime_ns, _CACHE_VERSION], np.int64)
        candidates = cls._cache_candidates(rec_path, cache_dir)
        for candidate in candidates:
            cached = cls._read_cache(candidate, stamp)
            if cached is not None:
                return cls._from_raw(*cached)
        reader = reader or RecordReader(rec_path, idx_path)
        keys, raw, layout = cls._scan(reader)
        cls._write_cache(candidates, stamp, keys, raw, layout)
        return cls._from_raw(keys, raw, layout)

    @staticmethod
    def _cache_candidates(rec_path: Path, cache_dir: str | os.PathLike[str] | None) -> list[Path]:
        digest = hashlib.sha1(str(rec_path.resolve()).encode()).hexdigest()[:12]
        if cache_dir is not None:  # an explicit cache folder is the only location
            return [Path(cache_dir) / f"{rec_path.stem}-{digest}.labels.npz"]
        fallback = cache_root() / "labels" / f"{rec_path.stem}-{digest}.labels.npz"
        if not is_writable_dir(rec_path.parent):  # a read-only mount, or a folder read-only by intent
            return [fallback]
        return [rec_path.with_name(f"{rec_path.stem}.labels.npz"), fallback]

    @staticmethod
    def _read_cache(path: Path, stamp: np.ndarray) -> tuple[np.ndarray, np.ndarray, str] | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                if not np.array_equal(data["stamp"], stamp):
                    logger.info("label cache %s is stale; re-indexing", path)
                    return None
                return data["keys"], data["raw_labels"], str(data["layout"])
        except (OSError, KeyError, ValueError):
            return None

    @staticmethod
    def _write_cache(candidates: list[Path], stamp: np.ndarray, keys: np.ndarray, raw: np.ndarray,
                     layout: str) -> None:
        for path in candidates:
            try:
                with atomic_write(path, "wb") as handle:
                    np.savez(handle, stamp=stamp, keys=keys, raw_labels=raw, layout=np.array(layout))
                logger.info("cached %d labels in %s", len(keys), path)
                return
            except OSError as exc:  # read-only mount, full disk, no permission: try the next location
                logger.info("cannot write label cache %s (%s); trying the next location", path, exc)
        logger.warning("no writable location for the label cache; labels will be re-read next time")

    @staticmethod
    def _scan(reader: RecordReader) -> tuple[np.ndarray, np.ndarray, str]:
        keys, layout = reader.keys, "flat"
        if 0 in reader.index:
            head, payload = reader.read_record(0)
            # SPEC §7's meta record: flag > 0, labels [A, B] and no image bytes (an image record 0 with
            # extra labels is a flat layout).
            if head.flag > 0 and isinstance(head.label, tuple) and len(head.label) >= 2 and not payload:
                end = int(head.label[0])
                keys, layout = [k for k in reader.keys if 1 <= k < end], "insightface"
        raw = np.empty(len(keys), np.int64)
        for position, key in enumerate(keys):
            head = reader.read_header(key)
            value = head.label[0] if isinstance(head.label, tuple) else head.label
            if not math.isfinite(value) or not 0 <= value < 2**31 or value != int(value):
                raise RecordIOError(f"{reader.rec_path} key {key} offset {reader.index[key]}: class label "
                                    f"{value} is not a non-negative integer below 2**31")
            raw[position] = int(value)
        return np.asarray(keys, np.int64), raw, layout

    @classmethod
    def _from_raw(cls, keys: np.ndarray, raw: np.ndarray, layout: str) -> RecordIndex:
        class_ids, labels = np.unique(raw, return_inverse=True)
        return cls(keys.astype(np.int64), labels.astype(np.int64).reshape(-1), class_ids.astype(np.int64), layout)


class _FaceDataset(Dataset):
    """Common ``__getitem__``, subset selection and skip-and-replace logic of the two datasets."""

    labels: np.ndarray
    class_names: list[str]

    def __init__(self, transform: Callable[[np.ndarray], Any] | None, resize: bool, replace_on_error: bool,
                 max_bad_fraction: float) -> None:
        self.transform, self.resize = transform, resize
        self.replace_on_error, self.max_bad_fraction = replace_on_error, max_bad_fraction
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()
        self._reported: list[str] = []  # skips of the item being loaded, returned with it
        self._members: tuple[np.ndarray, np.ndarray] | None = None

    def _read(self, index: int) -> bytes | np.ndarray:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """The record key or file path of item ``index``, as used in messages."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of classes (identities)."""
        return len(self.class_names)

    @property
    def num_skipped(self) -> int:
        """How many unreadable items this process has skipped and replaced."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.labels)

    def _select(self, keep: np.ndarray, min_images: int) -> np.ndarray:
        """Restrict to positions ``keep``, drop classes with fewer than ``min_images``, relabel contiguously.

        Returns the kept positions (into the unrestricted item list).
        """
        counts = np.bincount(self.labels[keep], minlength=len(self.class_names))
        keep = keep[counts[self.labels[keep]] >= min_images]
        present, labels = np.unique(self.labels[keep], return_inverse=True)
        logger.info("subset keeps %d images of %d identities (dropped identities with < %d images)",
                    len(keep), len(present), min_images)
        self.labels = labels.astype(np.int64).reshape(-1)
        self.class_names = [self.class_names[c] for c in present]
        return keep

    def load_image(self, index: int) -> np.ndarray:
        """Decode item ``index`` to uint8 BGR ``112 x 112 x 3`` (no transform, no replacement)."""
        return decode_image(self._read(index), self.describe(index), self.resize)

    def _same_identity(self, index: int) -> np.ndarray:
        if self._members is None:
            order = np.argsort(self.labels, kind="stable")
            self._members = (order, np.searchsorted(self.labels[order], np.arange(self.num_classes + 1)))
        order, starts = self._members
        label = self.labels[index]
        return order[starts[label]:starts[label + 1]]

    def _skip(self, index: int, exc: Exception) -> None:
        if index in self._bad:
            return
        self._bad.add(index)
        self.skipped.append((self.describe(index), str(exc)))
        self._reported.append(str(exc))
        logger.warning("skipping unreadable item %s (%s)", self.describe(index), exc)
        allowed = allowed_bad_images(len(self), self.max_bad_fraction)
        if len(self._bad) > allowed:
            raise DataError(f"{len(self._bad)} of {len(self)} training images are unreadable, more than the "
                            f"{allowed} allowed (max(1, max_bad_fraction {self.max_bad_fraction:g} x {len(self)})); "
                            f"aborting. Last: {exc}. Fix or remove the files, or raise --max_bad_fraction") from None

    def _load_or_replace(self, index: int) -> np.ndarray:
        try:
            return self.load_image(index)
        except DataError as exc:
            if not self.replace_on_error:
                raise
            self._skip(index, exc)
        candidates = self._same_identity(index)
        rng = np.random.default_rng(index)
        for candidate in rng.permutation(candidates):
            if int(candidate) in self._bad:
                continue
            try:
                return self.load_image(int(candidate))
            except DataError as exc:
                self._skip(int(candidate), exc)
        raise DataError(f"{self.describe(index)}: unreadable, and so is every other image of identity "
                        f"{self.class_names[self.labels[index]]!r}")

    def __getitem__(self, index: int) -> TrainSample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        self._reported = []
        image = self._load_or_replace(index)
        label, skipped = int(self.labels[index]), tuple(self._reported)
        if self.transform is None:
            return TrainSample(image, label, np.ones(image.shape[:2], np.float32), skipped)
        tensor, visibility = self.transform(image)
        return TrainSample(tensor, label, visibility, skipped)


class RecordDataset(_FaceDataset):
    """Images of an insightface ``.rec``/``.idx`` pair (SPEC §7), read without mxnet.

    Args:
        rec_path: the ``.rec`` file, or a folder holding ``train.rec``/``train.idx``.
        transform: ``uint8 BGR image -> (image, visibility)``; ``None`` returns the decoded image.
        subset_index: a file listing record keys to keep (MS1MV2 subset); identities with fewer than 5
            kept images are dropped and labels are made contiguous again.
        idx_path: the ``.idx`` file; defaults to ``rec_path`` with the suffix ``.idx``.
        cache_dir: where to cache labels (default: next to the data, or ``<cache root>/labels`` when the
            data folder is read-only).
        resize: resize non-112 images with INTER_AREA instead of raising.
        replace_on_error: replace an undecodable image by another of the same identity (logged, counted).
        max_bad_fraction: abort when more than this fraction of the items were unreadable.
    """

    def __init__(self, rec_path: str | os.PathLike[str], transform: Callable[[np.ndarray], Any] | None = None,
                 subset_index: str | os.PathLike[str] | None = None, *, idx_path: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, resize: bool = False,
                 replace_on_error: bool = False, max_bad_fraction: float = 0.001) -> None:
        super().__init__(transform, resize, replace_on_error, max_bad_fraction)
        self.rec_path = resolve_record_path(rec_path)
        self.reader = RecordReader(self.rec_path, idx_path)
        self.index = RecordIndex.load(self.rec_path, self.reader.idx_path, cache_dir, self.reader)
        self.keys = self.index.keys
        self.labels = self.index.labels
        self.class_names = [str(c) for c in self.index.class_ids]
        if subset_index is not None:
            wanted = np.array([int(entry) for entry in read_subset_file(subset_index)], np.int64)
            keep = np.flatnonzero(np.isin(self.keys, wanted))
            if len(keep) < len(np.unique(wanted)):
                logger.warning("%d keys of %s are not images of %s", len(np.unique(wanted)) - len(keep),
                               subset_index, self.rec_path)
            self.keys = self.keys[self._select(keep, _MIN_SUBSET_IMAGES)]

    def _read(self, index: int) -> bytes:
        return self.reader.read_record(int(self.keys[index]))[1]

    def describe(self, index: int) -> str:
        """``<rec path> key <key>``."""
        return f"{self.rec_path} key {int(self.keys[index])}"


class FolderDataset(_FaceDataset):
    """Images in ``root/<identity>/<image>`` (any depth below the identity folder), labelled by sorted identity.

    Identity folders without images are skipped (with a warning), so labels stay contiguous.

    Args:
        root: the dataset root.
        transform: ``uint8 BGR image -> (image, visibility)``; ``None`` returns the decoded image.
        subset_index: a file listing paths (relative to ``root``) to keep; identities with fewer than 5 kept
            images are dropped and labels are made contiguous again.
        extensions: accepted file suffixes (case-insensitive).
        resize: resize non-112 images with INTER_AREA instead of raising.
        replace_on_error: replace an undecodable image by another of the same identity (logged, counted).
        max_bad_fraction: abort when more than this fraction of the items were unreadable.

    Raises:
        DataError: if ``root`` holds no identity folder with images.
    """

    def __init__(self, root: str | os.PathLike[str], transform: Callable[[np.ndarray], Any] | None = None,
                 subset_index: str | os.PathLike[str] | None = None, *,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, resize: bool = False,
                 replace_on_error: bool = False, max_bad_fraction: float = 0.001) -> None:
        super().__init__(transform, resize, replace_on_error, max_bad_fraction)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        paths: list[str] = []
        labels: list[int] = []
        self.class_names = []
        for name, files in identity_images(self.root, tuple(extensions)):
            if not files:
                logger.warning("identity folder %s has no images; skipping it", self.root / name)
                continue
            labels.extend([len(self.class_names)] * len(files))
            paths.extend(p.relative_to(self.root).as_posix() for p in files)
            self.class_names.append(name)
        if not paths:
            raise DataError(f"{self.root}: no identity folders with {sorted(extensions)} images")
        self.paths = np.array(paths, dtype=object)
        self.labels = np.array(labels, np.int64)
        if subset_index is not None:
            wanted = {Path(entry).as_posix() for entry in read_subset_file(subset_index)}
            keep = np.array([i for i, p in enumerate(paths) if p in wanted], np.int64)
            self.paths = self.paths[self._select(keep, _MIN_SUBSET_IMAGES)]

    def _read(self, index: int) -> np.ndarray:
        try:
            return np.fromfile(self.root / self.paths[index], np.uint8)
        except OSError as exc:
            raise DataError(f"{self.describe(index)}: cannot read ({exc})") from exc

    def describe(self, index: int) -> str:
        """The image path."""
        return str(self.root / self.paths[index])
