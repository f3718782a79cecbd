"""Batched feature extraction with flip fusion and optional synthetic masks; ``oaml embed`` (SPEC §9).

:func:`extract_features` decodes images in DataLoader workers, runs each batch together with its mirror images and
returns flip-fused AdaFace embeddings plus (optionally) the feature and visibility maps of both views, which is what
every score of the standalone evaluator needs. A tqdm bar on stderr shows the progress.

Occluders: an :data:`ImageOccluder` is any picklable callable ``(image, index) -> (occluded image, pixel
visibility)`` that is deterministic in the image index, so the same image is always occluded alike, independent of
the batch size, the worker count and the other images. An occluder *name* is short for :class:`SeededOccluder`:
image ``k`` gets :func:`oaml.data.occluders.seeded_occlusion` of ``(seed, k)`` (for ``mask`` exactly
``apply_medical_mask`` driven by ``numpy.random.default_rng((seed, k))``), placed on the image's own landmarks when
:attr:`~oaml.evaluation.eval_data.EvalImages.landmarks` holds them (validation's protocols do the same).
:func:`extract_occluded` also returns the 7x7 visible fractions of every occluded image.

:func:`embed_folder` writes ``embeddings.npy`` (N x 512 float32, flip-fused unit rows), ``index.csv`` (path relative to
the folder, identity = first folder level or empty, norm) and, with ``save_maps``, ``features.npz`` holding the
feature maps (float16, ``N x C x 7 x 7``) and the visibility maps (float16, ``N x 1 x 7 x 7``; absent for
backbone-only checkpoints), all of the unmirrored images and in ``index.csv`` order.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from oaml.constants import FEATURE_MAP_SIZE
from oaml.data.masks import visibility_grid
from oaml.data.occluders import build_occluder, seeded_occlusion
from oaml.evaluation.api import FaceRecognizer
from oaml.data.images import list_images
from oaml.evaluation.eval_data import EvalImages, check_image_sizes, find_bad_images
from oaml.errors import DataError
from oaml.evaluation.scoring import BatchFeatures
from oaml.fileio import atomic_write

__all__ = ["EmbedSummary", "ImageOccluder", "OccludedImages", "SeededOccluder", "embed_folder", "extract_features",
           "extract_occluded"]

logger = logging.getLogger(__name__)


ImageOccluder = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``(uint8 BGR S x S x 3 face, image index) -> (occluded face, S x S visibility)``, deterministic in the index and
picklable (DataLoader workers call it)."""


@dataclass(frozen=True)
class SeededOccluder:
    """Occluder ``name`` of image ``index``, seeded by ``(seed, index)`` and placed on ``landmarks[index]`` when
    given (:func:`~oaml.data.occluders.seeded_occlusion`).

    Attributes:
        name: An occluder name (:func:`oaml.data.occluders.occluder_names`).
        seed: The occluder seed.
        landmarks: ``N x 5 x 2`` landmarks of the images by index, or None for the template placement.

    Raises:
        ValueError: For an unknown occluder (listing the valid ones).
    """

    name: str = "mask"
    seed: int = 0
    landmarks: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        build_occluder(self.name)

    def __call__(self, image: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The occluded face and its pixel visibility (1 = visible)."""
        landmarks = None if self.landmarks is None else self.landmarks[index]
        return seeded_occlusion(image, self.name, self.seed, index, landmarks)


def as_occluder(occluder: str | ImageOccluder | None, seed: int, images: EvalImages) -> ImageOccluder | None:
    """``occluder`` as a callable: a name becomes :class:`SeededOccluder` on the images' landmarks."""
    if isinstance(occluder, str):
        return SeededOccluder(occluder, seed, images.landmarks)
    return occluder


class OccludedImages(Dataset):
    """``EvalImages`` restricted to ``indices``, optionally occluded; items are ``(image, grid)``: a uint8 BGR
    ``S x S x 3`` array and the ``7 x 7`` float32 visible fractions of its occluder (all ones when clean).

    Args:
        images: The image source.
        indices: Image indices to yield, in order.
        occluder: An occluder name (seeded by ``(seed, image index)``, on the images' landmarks) or an
            :data:`ImageOccluder` called with the image and its index in ``images``; None yields the images
            unchanged.
        seed: The seed of a named occluder.

    Raises:
        ValueError: For an unknown occluder name (listing the valid ones).
    """

    def __init__(self, images: EvalImages, indices: np.ndarray, occluder: str | ImageOccluder | None = None,
                 seed: int = 0) -> None:
        self.images, self.indices = images, np.asarray(indices, np.int64)
        self.occluder = as_occluder(occluder, seed, images)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(self.indices[position])
        image = self.images.read(index)
        if self.occluder is None:
            return image, _ALL_VISIBLE
        image, visibility = self.occluder(image, index)
        return image, visibility_grid(visibility)


_ALL_VISIBLE = np.ones((FEATURE_MAP_SIZE, FEATURE_MAP_SIZE), np.float32)


def _collate(batch: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, np.ndarray]:
    return torch.from_numpy(np.stack([image for image, _ in batch])), np.stack([grid for _, grid in batch])


def extract_occluded(recognizer: FaceRecognizer, images: EvalImages, indices: np.ndarray | None = None, *,
                     with_maps: bool = True, occluder: str | ImageOccluder | None = None, seed: int = 0,
                     num_workers: int = 0, progress: bool = True, desc: str = "features"
                     ) -> tuple[BatchFeatures, np.ndarray]:
    """Features of ``images[indices]`` (all images when None), in that order, on the CPU, and the true grids.

    Args:
        recognizer: The loaded model; its ``batch_size`` is used.
        images: The image source.
        indices: Which images, in order.
        with_maps: Also keep the feature and visibility maps of the images and of their mirror images.
        occluder: Occlude every image first: a name or an :data:`ImageOccluder` (see the module docstring);
            None for clean images.
        seed: The seed of a named occluder.
        num_workers: DataLoader workers that decode (and occlude) the images.
        progress: Show a tqdm bar on stderr.
        desc: The bar's label.

    Returns:
        ``(features, grids)``: stacked :class:`~oaml.evaluation.scoring.BatchFeatures` (maps are float32) and the
        ``N x 7 x 7`` true visible fractions of the images as scored.

    Raises:
        DataError: If an image cannot be read or has the wrong size.
        ValueError: For an unknown occluder (listing the valid ones).
    """
    idx = np.arange(len(images)) if indices is None else np.asarray(indices, np.int64)
    if idx.size == 0:
        raise DataError("no images to extract features from")
    loader = DataLoader(OccludedImages(images, idx, occluder, seed), batch_size=recognizer.batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=_collate, persistent_workers=False,
                        prefetch_factor=2 if num_workers > 0 else None)
    parts: list[BatchFeatures] = []
    grids: list[np.ndarray] = []
    with tqdm(total=int(idx.size), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch, grid in loader:
            parts.append(recognizer.forward_batch(batch, flip=True, with_maps=with_maps))
            grids.append(grid)
            bar.update(int(batch.shape[0]))
    return BatchFeatures.concatenate(parts), np.concatenate(grids)


def extract_features(recognizer: FaceRecognizer, images: EvalImages, indices: np.ndarray | None = None, *,
                     with_maps: bool = True, occluder: str | ImageOccluder | None = None, seed: int = 0,
                     num_workers: int = 0, progress: bool = True, desc: str = "features") -> BatchFeatures:
    """The features of :func:`extract_occluded` (same arguments) without the grids."""
    return extract_occluded(recognizer, images, indices, with_maps=with_maps, occluder=occluder, seed=seed,
                            num_workers=num_workers, progress=progress, desc=desc)[0]


@dataclass(frozen=True)
class EmbedSummary:
    """What :func:`embed_folder` wrote.

    Attributes:
        num_images: Rows written.
        embeddings: Path of ``embeddings.npy``.
        index: Path of ``index.csv``.
        features: Path of ``features.npz``, or None.
        skipped: ``"<image>: <reason>"`` of the unreadable images left out (``skip_bad``).
        skipped_list: Path of ``skipped.txt`` listing them, or None when nothing was skipped.
    """

    num_images: int
    embeddings: Path
    index: Path
    features: Path | None
    skipped: tuple[str, ...] = ()
    skipped_list: Path | None = None


def _usable_images(recognizer: FaceRecognizer, root: Path, skip_bad: bool
                   ) -> tuple[list[Path], EvalImages, tuple[str, ...]]:
    """The image files under ``root``, as :class:`EvalImages`, without the unreadable ones when ``skip_bad``."""
    files = list_images(root)
    if not files:
        raise DataError(f"{root}: no images found (extensions .jpg, .jpeg, .png, .bmp, .pgm at any depth)")

    def reader(paths: list[Path]) -> EvalImages:
        return EvalImages(names=[str(p) for p in paths], paths=[str(p) for p in paths],
                          size=recognizer.info.input_size, resize=recognizer.resize)

    bad = find_bad_images(reader(files)) if skip_bad else {}
    if not bad:
        return files, reader(files), ()
    kept = [p for k, p in enumerate(files) if k not in bad]
    if not kept:
        raise DataError(f"{root}: all {len(bad)} images are unreadable")
    logger.warning("skipped %d unreadable image(s) of %s (listed in skipped.txt)", len(bad), root)
    return kept, reader(kept), tuple(f"{files[k]}: {why}" for k, why in sorted(bad.items()))


def embed_folder(recognizer: FaceRecognizer, data_path: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                 *, save_maps: bool = False, num_workers: int = 0, progress: bool = True,
                 skip_bad: bool = False) -> EmbedSummary:
    """Embed every aligned face under ``data_path`` (any depth) and write the files of the module docstring.

    Args:
        recognizer: The loaded model (its ``resize`` flag decides what happens to non-112 images).
        data_path: Folder of aligned faces; the first folder level below it, if any, is the identity.
        output_dir: Where to write (created if needed); files are replaced atomically.
        save_maps: Also write ``features.npz``.
        num_workers: DataLoader workers.
        progress: Show a tqdm bar on stderr.
        skip_bad: Leave out unreadable images (listed in ``skipped.txt``) instead of stopping at the first one.

    Returns:
        An :class:`EmbedSummary`.

    Raises:
        FileNotFoundError: If ``data_path`` is not a folder.
        DataError: If it holds no images, or an image is unreadable or has the wrong size.
    """
    root = Path(data_path)
    files, images, skipped = _usable_images(recognizer, root, skip_bad)
    check_image_sizes(images)
    feats = extract_features(recognizer, images, with_maps=save_maps, num_workers=num_workers, progress=progress,
                             desc="embed")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    emb_path, index_path = out / "embeddings.npy", out / "index.csv"
    with atomic_write(emb_path, "wb") as handle:
        np.save(handle, feats.embedding.numpy().astype(np.float32))
    with atomic_write(index_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "norm"])
        for path, norm in zip(files, feats.norm.numpy()):
            rel = path.relative_to(root)
            writer.writerow([rel.as_posix(), rel.parts[0] if len(rel.parts) > 1 else "", f"{float(norm):.6g}"])
    features_path = None
    if save_maps:
        features_path = out / "features.npz"
        arrays = {"feature_maps": feats.maps.numpy().astype(np.float16)}  # type: ignore[union-attr]
        if feats.occlusion is not None:
            arrays["occlusion"] = feats.occlusion.numpy().astype(np.float16)
        with atomic_write(features_path, "wb") as handle:
            np.savez(handle, **arrays)
    skipped_path = None
    if skipped:
        skipped_path = out / "skipped.txt"
        with atomic_write(skipped_path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(skipped) + "\n")
    logger.info("embedded %d images from %s into %s", len(files), root, out)
    return EmbedSummary(len(files), emb_path, index_path, features_path, skipped, skipped_path)
