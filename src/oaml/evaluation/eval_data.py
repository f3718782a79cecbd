"""Evaluation inputs: identity folders, LFW-style pair lists and ``.bin`` verification files (SPEC §9).

- **Folder**: ``root/<identity>/.../<image>`` (images at any depth below the identity folder). Every pair i < j of
  images is scored; genuine when both share the identity folder, never i = j.
- **Pairs file** (LFW ``pairs.txt`` or a "path_a path_b label" list, :mod:`oaml.data.pairs`; paths relative to
  the folder): only the listed pairs are scored. In an LFW file, pairs that name absent images are skipped with a
  warning that lists the images, and counted; in a list, a missing file is an error naming its line.
- **``.bin``** (insightface): ``(2N encoded images, N bools)`` read with the restricted unpickler; pair k is
  images 2k and 2k + 1.

Images must already be aligned ``S x S`` crops (S = the model's input size, 112). Sizes are checked from the
file headers before any model work, so a wrong folder fails at once with the file, its size and the hint to run
``oaml align`` (or pass ``--resize``).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oaml.constants import ARCFACE_TEMPLATE, FACE_SIZE
from oaml.data.images import IMAGE_EXTENSIONS, decode_image, labelled_images
from oaml.data.landmarks import aligned_landmarks
from oaml.data.pairs import read_pairs, resolve_pair_list, resolve_pairs
from oaml.data.verification_sets import load_bin
from oaml.errors import DataError

__all__ = ["EvalImages", "EvalSet", "attach_landmarks", "bin_set", "check_image_sizes", "decode_face",
           "find_bad_images", "folder_set", "load_eval_set", "pairs_set"]

logger = logging.getLogger(__name__)

_SHOW = 10  # offending files named in one message
_SHOW_MISSING = 20  # missing images named in the warning (results.json lists all)


def decode_face(buf: bytes | np.ndarray, where: str, size: int = FACE_SIZE, resize: bool = False) -> np.ndarray:
    """Decode an encoded image to a uint8 BGR ``size x size x 3`` array (see :func:`oaml.data.datasets.decode_image`).

    Raises:
        DataError: If the bytes do not decode, or the image is not ``size x size`` and ``resize`` is False.
    """
    return decode_image(buf, where, resize, size)


@dataclass
class EvalImages:
    """Images addressed by index, read lazily (picklable, so DataLoader workers can read them).

    Exactly one of ``paths`` and ``blobs`` is set.

    Attributes:
        names: A display name per image (the path, or ``file.bin[k]``).
        paths: Image files.
        blobs: Encoded images held in memory (``.bin`` input).
        size: Required side in pixels.
        resize: Resize other sizes instead of raising.
        landmarks: ``N x 5 x 2`` landmarks of the images in their own pixels (from the folder's
            ``landmarks.tsv``, the template where an image has none), where occluders are placed; None: the
            template for every image.
    """

    names: list[str]
    paths: list[str] | None = None
    blobs: list[bytes] | None = None
    size: int = FACE_SIZE
    resize: bool = False
    landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 BGR ``size x size x 3``.

        Raises:
            DataError: If it cannot be read or decoded, or has the wrong size without ``resize``.
        """
        if self.blobs is not None:
            return decode_face(self.blobs[index], self.names[index], self.size, self.resize)
        path = self.paths[index]  # type: ignore[index]
        try:
            buf = np.fromfile(path, np.uint8)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc})") from exc
        return decode_face(buf, path, self.size, self.resize)


@dataclass
class EvalSet:
    """Images plus the pairs to score.

    Attributes:
        images: The images.
        identities: Identity name per image ("" when unknown).
        mode: ``"all_pairs"`` (folder), ``"pairs_file"`` or ``"bin"``.
        source: The data path.
        pair_i: First image of each listed pair (None in all-pairs mode).
        pair_j: Second image of each listed pair.
        issame: Ground truth of each listed pair.
        labels: Identity index per image (all-pairs mode).
        missing_images: Images named by the pairs file but absent (relative paths without extension).
        skipped_pairs: Listed pairs dropped because an image is missing or unreadable.
        pairs_path: The pairs file, if any.
        bad_images: ``"<image>: <reason>"`` of the unreadable images left out (``--skip-bad``).
    """

    images: EvalImages
    identities: list[str]
    mode: str
    source: str
    pair_i: np.ndarray | None = None
    pair_j: np.ndarray | None = None
    issame: np.ndarray | None = None
    labels: np.ndarray | None = None
    missing_images: list[str] = field(default_factory=list)
    skipped_pairs: int = 0
    pairs_path: str | None = None
    bad_images: list[str] = field(default_factory=list)

    @property
    def num_identities(self) -> int:
        """Distinct known identities."""
        return len({name for name in self.identities if name})

    @property
    def num_pairs(self) -> int:
        """Pairs that are scored."""
        if self.pair_i is not None:
            return int(self.pair_i.shape[0])
        n = len(self.images)
        return n * (n - 1) // 2


    def without(self, bad: dict[int, str]) -> EvalSet:
        """A copy without the images ``bad`` (index -> reason) and without every listed pair that uses one.

        Raises:
            DataError: If no image or no pair is left.
        """
        keep = np.array([k for k in range(len(self.images)) if k not in bad], np.int64)
        if keep.size < 2:
            raise DataError(f"{self.source}: {len(bad)} of {len(self.images)} images are unreadable; fewer than 2 left")
        position = np.full(len(self.images), -1, np.int64)
        position[keep] = np.arange(keep.size)
        images = EvalImages(names=[self.images.names[k] for k in keep],
                            paths=None if self.images.paths is None else [self.images.paths[k] for k in keep],
                            blobs=None if self.images.blobs is None else [self.images.blobs[k] for k in keep],
                            size=self.images.size, resize=self.images.resize,
                            landmarks=None if self.images.landmarks is None else self.images.landmarks[keep])
        pairs: dict[str, np.ndarray | None] = {"pair_i": None, "pair_j": None, "issame": self.issame}
        dropped = 0
        if self.pair_i is not None and self.pair_j is not None:
            ok = (position[self.pair_i] >= 0) & (position[self.pair_j] >= 0)
            dropped = int(np.count_nonzero(~ok))
            pairs = {"pair_i": position[self.pair_i[ok]], "pair_j": position[self.pair_j[ok]],
                     "issame": None if self.issame is None else self.issame[ok]}
            if not ok.any():
                raise DataError(f"{self.source}: every pair uses one of the {len(bad)} unreadable images")
        return dataclasses.replace(
            self, images=images, identities=[self.identities[k] for k in keep],
            labels=None if self.labels is None else self.labels[keep], skipped_pairs=self.skipped_pairs + dropped,
            bad_images=[*self.bad_images, *(f"{self.images.names[k]}: {why}" for k, why in sorted(bad.items()))],
            **pairs)


def find_bad_images(images: EvalImages) -> dict[int, str]:
    """Decode every image once; index -> reason for those that cannot be used (unreadable, corrupt, wrong size)."""
    bad: dict[int, str] = {}
    for k in range(len(images)):
        try:
            images.read(k)
        except DataError as exc:
            bad[k] = str(exc).removeprefix(f"{images.names[k]}: ")
    return bad


def check_image_sizes(images: EvalImages) -> None:
    """Check every image's size from its header (no decoding) unless ``images.resize``.

    Raises:
        DataError: Naming the count, the first offending files with their sizes and the ``oaml align`` hint.
    """
    if images.resize:
        return
    from PIL import Image, UnidentifiedImageError

    bad: list[str] = []
    for k, name in enumerate(images.names):
        source = io.BytesIO(images.blobs[k]) if images.blobs is not None else images.paths[k]  # type: ignore[index]
        try:
            with Image.open(source) as handle:
                width, height = handle.size
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{name}: cannot read the image ({exc})") from exc
        if (width, height) != (images.size, images.size):
            bad.append(f"{name} ({width}x{height})")
    if bad:
        raise DataError(f"{len(bad)} of {len(images)} images are not aligned {images.size}x{images.size} faces: "
                        f"{', '.join(bad[:_SHOW])}{' ...' if len(bad) > _SHOW else ''}; run `oaml align` first, "
                        f"or pass --resize to resize them (INTER_AREA)")


def folder_set(root: str | os.PathLike[str], size: int = FACE_SIZE, resize: bool = False) -> EvalSet:
    """All-pairs evaluation of an identity-folder tree.

    Images directly in ``root`` have no identity and are skipped with a warning.

    Raises:
        FileNotFoundError: If ``root`` is not a folder.
        DataError: If there are fewer than 2 images with an identity.
    """
    files, identities = labelled_images(root)
    if len(files) < 2:
        raise DataError(f"{root}: found {len(files)} images in identity folders; expected "
                        f"root/<identity>/<image> with at least 2 images")
    names = sorted(set(identities))
    labels = np.searchsorted(np.array(names), np.array(identities)).astype(np.int64)
    images = EvalImages(names=[str(p) for p in files], paths=[str(p) for p in files], size=size, resize=resize)
    return EvalSet(images=images, identities=identities, mode="all_pairs", source=str(root), labels=labels)


def _exists(root: Path, rel: str) -> bool:
    stem = Path(rel).with_suffix("")
    return any((root / stem.with_suffix(ext)).is_file() for ext in IMAGE_EXTENSIONS)


def pairs_set(root: str | os.PathLike[str], pairs_path: str | os.PathLike[str], size: int = FACE_SIZE,
              resize: bool = False, pairs_format: str = "auto") -> EvalSet:
    """The pairs of a pairs file (LFW format or a "path_a path_b label" list), resolved under ``root``.

    Pairs of an LFW file with a missing image are skipped (with a warning); a list must name existing files.

    Raises:
        FileNotFoundError: If ``root`` or the pairs file does not exist.
        DataError: On a malformed pairs file, a missing file of a list, or when no pair has both images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    pairs, kind = read_pairs(pairs_path, pairs_format)
    missing: list[str] = []
    if kind == "list":
        resolved = resolve_pair_list(pairs, root, pairs_path)
        kept = pairs
    else:
        present = {rel: _exists(root, rel) for pair in pairs for rel in (pair.path_a, pair.path_b)}
        missing = sorted(str(Path(rel).with_suffix("")) for rel, ok in present.items() if not ok)
        kept = [p for p in pairs if present[p.path_a] and present[p.path_b]]
        if missing:
            shown = ", ".join(missing[:_SHOW_MISSING]) + (" ..." if len(missing) > _SHOW_MISSING else "")
            logger.warning("%s: %d images named by the pairs file are absent under %s: %s; skipped the %d pairs "
                           "that use them", pairs_path, len(missing), root, shown, len(pairs) - len(kept))
        if not kept:
            raise DataError(f"{pairs_path}: none of the {len(pairs)} pairs has both images under {root}")
        resolved = resolve_pairs(kept, root)
    index: dict[str, int] = {}
    for pair in resolved:
        for path in (pair.path_a, pair.path_b):
            index.setdefault(path, len(index))
    paths = list(index)
    images = EvalImages(names=paths, paths=paths, size=size, resize=resize)
    return EvalSet(images=images, identities=[_identity(root.resolve(), p) for p in paths], mode="pairs_file",
                   source=str(root), pair_i=np.array([index[p.path_a] for p in resolved], np.int64),
                   pair_j=np.array([index[p.path_b] for p in resolved], np.int64),
                   issame=np.array([p.same for p in resolved], bool), missing_images=missing,
                   skipped_pairs=len(pairs) - len(kept), pairs_path=str(pairs_path))


def _identity(root: Path, path: str) -> str:
    """The first folder level of ``path`` below ``root``, or "" for an image directly in it or outside it."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return ""
    return parts[0] if len(parts) > 1 else ""


def bin_set(path: str | os.PathLike[str], size: int = FACE_SIZE, resize: bool = False) -> EvalSet:
    """The pairs of an insightface ``.bin`` verification file (restricted unpickler; no identities).

    Raises:
        FileNotFoundError: If the file does not exist.
        DataError: If the file is not a valid, safe ``.bin``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification file not found: {path}")
    blobs, issame = load_bin(path)
    n = len(issame)
    images = EvalImages(names=[f"{path}[{k}]" for k in range(2 * n)], blobs=blobs, size=size, resize=resize)
    return EvalSet(images=images, identities=[""] * (2 * n), mode="bin", source=str(path),
                   pair_i=np.arange(0, 2 * n, 2, dtype=np.int64), pair_j=np.arange(1, 2 * n, 2, dtype=np.int64),
                   issame=np.asarray(issame, bool))


def attach_landmarks(images: EvalImages, root: str | os.PathLike[str]) -> EvalImages:
    """``images`` with the landmarks of ``root/landmarks.tsv`` (``oaml align``'s), mapped into each crop, scaled
    to ``images.size``; the template for images the file does not list. Unchanged without the file or paths.

    Raises:
        DataError: On a malformed ``landmarks.tsv`` (naming the line).
    """
    root = Path(root)
    if images.paths is None or not (root / "landmarks.tsv").is_file():
        return images
    table = aligned_landmarks(root, images.size)
    template = ARCFACE_TEMPLATE.astype(np.float64) * (images.size / FACE_SIZE)
    base = root.resolve()
    points = np.stack([table.get(_relative(base, path), template) for path in images.paths])
    found = sum(_relative(base, path) in table for path in images.paths)
    logger.info("occluders follow %s/landmarks.tsv: %d of %d images listed (the template for the rest)", root,
                found, len(images))
    return dataclasses.replace(images, landmarks=points)


def _relative(root: Path, path: str) -> str:
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return ""


def load_eval_set(data_path: str | os.PathLike[str], pairs_path: str | os.PathLike[str] | None = None,
                  size: int = FACE_SIZE, resize: bool = False, skip_bad: bool = False,
                  pairs_format: str = "auto", landmarks: bool = True) -> EvalSet:
    """Dispatch on the input: a ``.bin`` file, a folder with a pairs file (``pairs_format``: see
    :data:`oaml.data.pairs.PAIRS_FORMATS`), or a folder (all pairs).

    The image sizes are checked up front (see :func:`check_image_sizes`). With ``skip_bad`` every image is decoded
    first, and those that cannot be used are left out with their pairs and listed in :attr:`EvalSet.bad_images`.
    With ``landmarks``, a folder's ``landmarks.tsv`` places the occluders (:func:`attach_landmarks`).

    Raises:
        FileNotFoundError: If a path does not exist.
        DataError: On unusable data (see the loaders).
    """
    data_path = Path(data_path)
    if data_path.suffix.lower() == ".bin":
        if pairs_path is not None:
            raise DataError(f"--pairs cannot be combined with a .bin file ({data_path}); it lists its own pairs")
        data = bin_set(data_path, size, resize)
    elif pairs_path is not None:
        data = pairs_set(data_path, pairs_path, size, resize, pairs_format)
    else:
        data = folder_set(data_path, size, resize)
    if landmarks and data.mode != "bin":
        data = dataclasses.replace(data, images=attach_landmarks(data.images, data_path))
    if skip_bad:
        bad = find_bad_images(data.images)
        if bad:
            listed = "; ".join(f"{data.images.names[k]}: {why}" for k, why in list(bad.items())[:_SHOW])
            logger.warning("skipping %d unreadable image(s) of %s and the pairs that use them: %s%s", len(bad),
                           data.source, listed, " ..." if len(bad) > _SHOW else "")
            data = data.without(bad)
    check_image_sizes(data.images)
    return data
