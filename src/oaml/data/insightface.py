"""Writer of the insightface training layout: ``train.rec`` + ``train.idx`` + ``property`` (SPEC §7).

The layout (that of MS1MV2's ``faces_emore``; see ``../shared/data/insightface_rec_lfw20/SOURCE.txt``)::

    key 0                 IRHeader(flag=2, label=(A, B)), no payload      A = 1 + number of images
    keys 1 .. A-1         IRHeader(flag=0, label=<class>, id=<key>) + encoded image, grouped by class
    keys A .. B-1         IRHeader(flag=2, label=(first key, last key + 1)) of class 0, 1, ..., no payload
    property              "<number of classes>,<height>,<width>\\n"

Used by ``oaml make-synthetic`` and ``oaml convert folder-to-rec``. Key 0 needs the image count before
the first image is written, so the caller states it up front and :meth:`InsightfaceWriter.close` checks it.
"""

from __future__ import annotations

import os
from pathlib import Path

from oaml.data.recordio import IRHeader, RecordWriter, pack_record
from oaml.errors import DataError
from oaml.fileio import atomic_write_bytes

__all__ = ["InsightfaceWriter"]

_MAX_FLOAT_KEY = 2**24  # keys and labels are stored as float32 in the header records


class InsightfaceWriter:
    """Write images, grouped by class in increasing order, into the insightface layout.

    Args:
        out_dir: folder of ``train.rec``, ``train.idx`` and ``property`` (created if missing).
        num_images: number of images that will be added.
        num_classes: number of classes; every class ``0 .. num_classes - 1`` must get at least one image.
        image_size: ``(height, width)`` written to ``property``.

    Raises:
        DataError: if the counts are not positive or the keys would not fit a float32 label.
    """

    def __init__(self, out_dir: str | os.PathLike[str], num_images: int, num_classes: int,
                 image_size: tuple[int, int] = (112, 112)) -> None:
        if num_images < 1 or num_classes < 1 or num_classes > num_images:
            raise DataError(f"insightface layout needs 1 <= classes <= images, got {num_classes} classes and "
                            f"{num_images} images")
        if num_images + num_classes + 1 >= _MAX_FLOAT_KEY:
            raise DataError(f"{num_images} images and {num_classes} classes need keys beyond 2**24, which the "
                            f"float32 header labels cannot hold exactly")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.num_images, self.num_classes, self.image_size = num_images, num_classes, image_size
        self._first_class_key = 1 + num_images
        self._writer = RecordWriter(self.out_dir / "train.rec")
        self._writer.write(0, pack_record(IRHeader(2, (float(self._first_class_key),
                                                       float(self._first_class_key + num_classes)))))
        self._starts: list[int] = []
        self._next_key = 1

    def add(self, label: int, payload: bytes) -> int:
        """Append one encoded image of class ``label`` and return its record key.

        Raises:
            DataError: if ``label`` goes backwards, skips a class, or more images than announced arrive.
        """
        current = len(self._starts) - 1
        if label == current + 1:
            self._starts.append(self._next_key)
        elif label != current:
            raise DataError(f"{self._writer.rec_path}: class {label} after class {current}; images must come "
                            f"grouped by class in the order 0, 1, 2, ...")
        if self._next_key > self.num_images:
            raise DataError(f"{self._writer.rec_path}: more than the announced {self.num_images} images")
        key = self._next_key
        self._writer.write(key, pack_record(IRHeader(0, float(label), key), payload))
        self._next_key += 1
        return key

    def close(self) -> None:
        """Write the per-class records and ``property``, then publish the files.

        Raises:
            DataError: if the image or class count differs from the announced one (nothing is published).
        """
        written, classes = self._next_key - 1, len(self._starts)
        if written != self.num_images or classes != self.num_classes:
            self.abort()
            raise DataError(f"{self._writer.rec_path}: announced {self.num_images} images of {self.num_classes} "
                            f"classes, got {written} images of {classes} classes")
        ends = self._starts[1:] + [self._next_key]
        for label, (start, end) in enumerate(zip(self._starts, ends)):
            self._writer.write(self._first_class_key + label, pack_record(IRHeader(2, (float(start), float(end)))))
        self._writer.close()
        height, width = self.image_size
        atomic_write_bytes(self.out_dir / "property", f"{self.num_classes},{height},{width}\n".encode("ascii"))

    def abort(self) -> None:
        """Discard everything written so far."""
        self._writer.abort()

    def __enter__(self) -> InsightfaceWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
