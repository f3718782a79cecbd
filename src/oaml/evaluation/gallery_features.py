"""Features of gallery and probe images at storage precision (SPEC §9, §13.4).

:func:`stored_features` runs the model over the images in bounded chunks (image + mirror image, SPEC §9) and keeps
each chunk at storage precision at once: embeddings in the gallery dtype, norms float32, feature and visibility
maps float16, so the float32 maps of at most ``chunk`` images exist at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from oaml.errors import DataError
from oaml.evaluation.api import FaceRecognizer, ImageInput
from oaml.evaluation.embed import ImageOccluder, extract_features
from oaml.evaluation.eval_data import EvalImages
from oaml.evaluation.scoring import BatchFeatures

__all__ = ["StoredFeatures", "default_paths", "describe_model", "stored_features"]

_CHUNK = 4096  # images whose float32 features exist at once


class StoredFeatures(NamedTuple):
    """Features at storage precision (numpy; the fields of :class:`~oaml.evaluation.scoring.BatchFeatures`).

    Attributes:
        embedding: ``N x D`` flip-fused unit embeddings in the requested dtype.
        norm: ``N`` float32 mean norms of the image and its mirror.
        maps: ``N x C x H x W`` float16 feature maps of the images, or None.
        occlusion: ``N x 1 x H x W`` float16 visibility maps, or None.
        maps_flip: The feature maps of the mirror images, or None.
        occlusion_flip: The visibility maps of the mirror images, or None.
    """

    embedding: np.ndarray
    norm: np.ndarray
    maps: np.ndarray | None
    occlusion: np.ndarray | None
    maps_flip: np.ndarray | None
    occlusion_flip: np.ndarray | None


def describe_model(model: FaceRecognizer) -> dict[str, Any]:
    """What a gallery and ``identify``'s results.json record about a model: :meth:`ModelInfo.to_dict` plus
    ``uses_occlusion`` (``header.model`` of the gallery file)."""
    return {**model.info.to_dict(), "uses_occlusion": model.uses_occlusion}


def _iter_features(model: FaceRecognizer, images: ImageInput | EvalImages, indices: np.ndarray | None,
                   with_maps: bool, occluder: ImageOccluder | None, num_workers: int,
                   progress: bool) -> Iterator[BatchFeatures]:
    if isinstance(images, EvalImages):
        idx = np.arange(len(images)) if indices is None else np.asarray(indices, np.int64)
        for start in range(0, idx.shape[0], _CHUNK):
            yield extract_features(model, images, idx[start:start + _CHUNK], with_maps=with_maps, occluder=occluder,
                                   num_workers=num_workers, progress=progress, desc="features")
        return
    offset = 0
    for batch in model.iter_batches(images):
        if occluder is not None:
            batch = np.stack([occluder(image, offset + k)[0] for k, image in enumerate(batch)])
        offset += batch.shape[0]
        yield model.forward_batch(batch, flip=True, with_maps=with_maps)


def _compact(feats: BatchFeatures, dtype: str) -> StoredFeatures:
    def half(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.numpy().astype(np.float16)

    return StoredFeatures(feats.embedding.numpy().astype(dtype), feats.norm.numpy().astype(np.float32),
                          half(feats.maps), half(feats.occlusion), half(feats.maps_flip), half(feats.occlusion_flip))


def stored_features(model: FaceRecognizer, images: ImageInput | EvalImages, *, indices: np.ndarray | None = None,
                    with_maps: bool = False, dtype: str = "float16", occluder: ImageOccluder | None = None,
                    num_workers: int = 0, progress: bool = False) -> StoredFeatures:
    """Flip-fused embeddings (and both views' maps) of ``images`` at storage precision.

    Args:
        model: The model.
        images: Aligned faces, or an :class:`~oaml.evaluation.eval_data.EvalImages` (decoded in DataLoader
            workers, in chunks of 4096 images).
        indices: Which ``EvalImages`` to run, in order (all when None; ignored for other inputs).
        with_maps: Also keep the feature and visibility maps of the images and their mirror images.
        dtype: Embedding dtype, ``"float16"`` or ``"float32"``.
        occluder: Occlude each image first, called with the image and its index in ``images``
            (:data:`~oaml.evaluation.embed.ImageOccluder`); None for clean images.
        num_workers: DataLoader workers (``EvalImages`` only).
        progress: tqdm bars (``EvalImages`` only).

    Raises:
        DataError: On no images, an unreadable image or one of the wrong size.
    """
    features = _iter_features(model, images, indices, with_maps, occluder, num_workers, progress)
    parts = [_compact(f, dtype) for f in features]
    if not parts:
        raise DataError("no images given")
    return StoredFeatures(*(None if parts[0][k] is None else np.concatenate([p[k] for p in parts])
                            for k in range(len(StoredFeatures._fields))))


def default_paths(images: ImageInput | EvalImages) -> list[str]:
    """The path of each image as given ("" for arrays)."""
    if isinstance(images, EvalImages):
        return list(images.paths or images.names)
    if isinstance(images, np.ndarray):
        return [""] * len(images)
    return ["" if isinstance(item, np.ndarray) else os.fspath(item) for item in images]
