"""The 1:N gallery: enrolled faces' embeddings (and optionally QAConv maps), one file, top-k search (SPEC §13.4).

Example::

    import oaml
    model = oaml.load_model("model.ckpt")
    gallery = oaml.Gallery.build(model, ["a1.png", "a2.png", "b1.png"], ["anna", "anna", "ben"])
    gallery = oaml.Gallery.from_folder(model, "enrol/", with_maps=True)    # identity = first folder level
    gallery.save("gallery.npz")
    gallery = oaml.Gallery.load("gallery.npz", model=model)                  # refuses another model
    top = gallery.search(["probe.png"], k=10)
    top.names()[0], top.scores[0]                                            # best identities of the probe

A gallery remembers the model it was built or loaded with (:attr:`Gallery.recognizer`, never saved), so
:meth:`Gallery.search` can embed images; QAConv re-ranking is :func:`oaml.evaluation.rerank.rerank`.

**Content.** Per image: the flip-fused unit embedding (SPEC §9, float16 or float32), the mean norm of the image's
and its mirror's raw embeddings, the identity and the image path; optionally the QAConv feature maps (float16) of
the image and of its mirror image and, for models with an occlusion head, both views' visibility maps (float16), so
that re-ranking (:mod:`oaml.evaluation.rerank`) is flip-averaged like verification. Plus the SHA-256 and a
description of the model that built it: a gallery is never searched with another model (:meth:`Gallery.check_model`).

**File format** (version 1, :mod:`oaml.evaluation.gallery_file`): one uncompressed ``.npz`` readable with
``numpy.load(path, allow_pickle=False)``, written atomically: a JSON ``header`` (format, version, identities, the
model's SHA-256 and description), the JSON ``paths``, ``embeddings``, ``norms``, ``labels`` and optionally ``maps``,
``maps_flip``, ``occlusion``, ``occlusion_flip``. A truncated or foreign file is refused with one line naming it.

**Search.** See :mod:`oaml.evaluation.gallery_search`: per-identity score = best image cosine (``"max"``) or the
cosine to the identity's template, the normalised mean of its stored embeddings (``"mean"``); exact (torch, blocked
so memory stays bounded for 1M rows) or faiss (flat inner-product index, the same results).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oaml.data.images import labelled_images
from oaml.errors import DataError
from oaml.evaluation.api import FaceRecognizer, ImageInput
from oaml.evaluation.eval_data import EvalImages, check_image_sizes
from oaml.evaluation.gallery_features import default_paths, describe_model, stored_features
from oaml.evaluation.gallery_file import (GALLERY_FORMAT, GALLERY_VERSION, first_line, read_gallery_file,
                                          write_gallery_file)
from oaml.evaluation.gallery_search import (RowIndex, SearchResult, build_faiss_index, exact_search,
                                            faiss_search, identity_templates)
from oaml.evaluation.options import PER_IDENTITY, SEARCH_BACKENDS

__all__ = ["GALLERY_FORMAT", "GALLERY_VERSION", "Gallery", "describe_model"]

logger = logging.getLogger(__name__)

_DTYPES = ("float16", "float32")
_MAP_FIELDS = ("maps", "maps_flip", "occlusion", "occlusion_flip")


def _check_maps(name: str, arr: np.ndarray | None, n: int, channels: int | None) -> None:
    if arr is None:
        return
    if arr.ndim != 4 or arr.shape[0] != n or arr.dtype != np.float16 or (channels is not None
                                                                         and arr.shape[1] != channels):
        raise ValueError(f"{name} must be float16 {n} x {'C' if channels is None else channels} x H x W, got "
                         f"{arr.dtype} {arr.shape}")


@dataclass(eq=False)
class Gallery:
    """Enrolled images of known identities (see the module docstring). Treat the arrays as read-only.

    Attributes:
        embeddings: ``N x D`` float16 or float32 flip-fused unit embeddings.
        norms: ``N`` float32 mean raw-embedding norms (image and mirror).
        labels: ``N`` int32 index of each image's identity in ``identity_names``.
        identity_names: The ``I`` distinct identities, sorted; each has at least one image.
        paths: ``N`` image paths ("" where an image was given as an array).
        model_info: Description of the model that built the gallery (:func:`describe_model`).
        maps: ``N x C x H x W`` float16 QAConv feature maps of the images, or None.
        maps_flip: The same of the mirror images, or None.
        occlusion: ``N x 1 x H x W`` float16 visibility maps of the images, or None.
        occlusion_flip: The same of the mirror images, or None.
        source: The file it was loaded from or last saved to, if any.
        recognizer: The model the gallery was built or loaded with (not saved; :meth:`search` embeds images
            with it), or None.
    """

    embeddings: np.ndarray
    norms: np.ndarray
    labels: np.ndarray
    identity_names: tuple[str, ...]
    paths: tuple[str, ...]
    model_info: dict[str, Any]
    maps: np.ndarray | None = None
    maps_flip: np.ndarray | None = None
    occlusion: np.ndarray | None = None
    occlusion_flip: np.ndarray | None = None
    source: str | None = None
    recognizer: FaceRecognizer | None = field(default=None, init=False, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        emb = self.embeddings
        if emb.ndim != 2 or emb.shape[0] == 0 or emb.dtype.name not in _DTYPES:
            raise ValueError(f"gallery embeddings must be a non-empty N x D float16/float32 array, got {emb.dtype} "
                             f"{emb.shape}" + (" (empty gallery: no images)" if emb.ndim == 2 else ""))
        n = emb.shape[0]
        if self.norms.shape != (n,) or self.labels.shape != (n,) or len(self.paths) != n:
            raise ValueError(f"gallery has {n} embeddings but {self.norms.shape[0]} norms, {self.labels.shape[0]} "
                             f"labels and {len(self.paths)} paths")
        if self.labels.dtype.kind not in "iu":
            raise ValueError(f"gallery labels must be integers, got {self.labels.dtype}")
        if list(self.identity_names) != sorted(set(self.identity_names)):
            raise ValueError("gallery identity names must be distinct and sorted")
        self._cache["rows"] = RowIndex.from_labels(self.labels, len(self.identity_names))
        if (self.maps is None) != (self.maps_flip is None) or (self.occlusion is None) != (self.occlusion_flip
                                                                                           is None):
            raise ValueError("maps/maps_flip and occlusion/occlusion_flip must be given together")
        if self.occlusion is not None and self.maps is None:
            raise ValueError("gallery visibility maps need feature maps")
        channels = None if self.maps is None else self.maps.shape[1]
        for name in _MAP_FIELDS:
            _check_maps(name, getattr(self, name), n, 1 if name.startswith("occlusion") else channels)

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_arrays(cls, embeddings: np.ndarray, names: Sequence[str], *, paths: Sequence[str] | None = None,
                    norms: np.ndarray | None = None, model: dict[str, Any] | None = None,
                    maps: tuple[np.ndarray, np.ndarray] | None = None,
                    occlusion: tuple[np.ndarray, np.ndarray] | None = None, dtype: str = "float16") -> Gallery:
        """A gallery of precomputed unit embeddings with one identity name per row.

        Args:
            embeddings: ``N x D`` unit rows.
            names: ``N`` identity names (non-empty strings).
            paths: ``N`` image paths (default "").
            norms: ``N`` norms (default 1).
            model: Model description (default: unknown model, which :meth:`check_model` always refuses).
            maps: ``(maps, maps_flip)``, each ``N x C x H x W`` (stored as float16).
            occlusion: ``(occlusion, occlusion_flip)``, each ``N x 1 x H x W`` (stored as float16).
            dtype: Storage of the embeddings, ``"float16"`` or ``"float32"``.

        Raises:
            ValueError: On an empty gallery, a length mismatch, an empty identity name or an unknown dtype.
        """
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"empty gallery: embeddings must be a non-empty N x D array, got shape {emb.shape}")
        length = np.linalg.norm(emb.astype(np.float32), axis=1)
        if not np.all(np.abs(length - 1.0) < 1e-2):  # float16 rounding stays far below this
            raise ValueError(f"embeddings must be unit rows (cosine search); row norms range over "
                             f"[{length.min():.4g}, {length.max():.4g}]: normalise them first")
        names = [str(n) for n in names]
        if len(names) != emb.shape[0] or not all(names):
            raise ValueError(f"names must hold {emb.shape[0]} non-empty identity names, got {len(names)}")
        identity_names, labels = np.unique(np.asarray(names, dtype=object).astype(str), return_inverse=True)
        half = {"maps": None, "maps_flip": None, "occlusion": None, "occlusion_flip": None}
        for key, pair in (("maps", maps), ("occlusion", occlusion)):
            if pair is not None:
                half[key], half[f"{key}_flip"] = (np.asarray(a, np.float16) for a in pair)
        return cls(embeddings=emb.astype(dtype), labels=labels.astype(np.int32).reshape(-1),
                   norms=np.ones(emb.shape[0], np.float32) if norms is None else np.asarray(norms, np.float32),
                   identity_names=tuple(str(n) for n in identity_names),
                   paths=tuple("" for _ in names) if paths is None else tuple(str(p) for p in paths),
                   model_info=dict(model or {"path": None, "sha256": ""}), **half)

    @classmethod
    def build(cls, model: FaceRecognizer, images: ImageInput | EvalImages, names: Sequence[str],
              paths: Sequence[str] | None = None, with_maps: bool = False, dtype: str = "float16", *,
              num_workers: int = 0, progress: bool = False) -> Gallery:
        """Embed ``images`` with ``model`` (flip-fused, SPEC §9) and enrol them under ``names``; the gallery keeps
        ``model`` as its :attr:`recognizer`.

        Args:
            model: The model; its SHA-256 and description are recorded.
            images: Aligned faces (:data:`~oaml.evaluation.api.ImageInput`) or an
                :class:`~oaml.evaluation.eval_data.EvalImages` (decoded in DataLoader workers).
            names: Identity name of each image.
            paths: Path of each image (default: the paths given in ``images``, "" for arrays).
            with_maps: Also store both views' QAConv feature maps (and visibility maps) for re-ranking.
            dtype: Storage of the embeddings, ``"float16"`` or ``"float32"``.
            num_workers: DataLoader workers (``EvalImages`` input only).
            progress: Show a tqdm bar (``EvalImages`` input only).

        Raises:
            ValueError: On no images, a names/paths length mismatch, or ``with_maps`` without a QAConv matcher.
            DataError: On an unreadable image or one of the wrong size.
        """
        if with_maps and model.qaconv is None:
            raise ValueError(f"with_maps needs a model with a QAConv matcher; {model.info.path} has none "
                             f"({model.info.qaconv_unavailable})")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        count = len(images)
        if count == 0:
            raise ValueError("empty gallery: no images given")
        if len(names) != count or (paths is not None and len(paths) != count):
            raise ValueError(f"{count} images but {len(names)} names and {count if paths is None else len(paths)} "
                             f"paths")
        feats = stored_features(model, images, with_maps=with_maps, dtype=dtype, num_workers=num_workers,
                                progress=progress)
        if paths is None:
            paths = default_paths(images)
        maps = None if feats.maps is None else (feats.maps, feats.maps_flip)
        occ = None if feats.occlusion is None or feats.maps is None else (feats.occlusion, feats.occlusion_flip)
        gallery = cls.from_arrays(feats.embedding, names, paths=paths, norms=feats.norm, model=describe_model(model),
                                  maps=maps, occlusion=occ, dtype=dtype)
        gallery.recognizer = model
        logger.info("built a gallery of %d images of %d identities (%s%s)", gallery.num_images,
                    gallery.num_identities, dtype, ", with maps" if gallery.has_maps else "")
        return gallery

    @classmethod
    def from_folder(cls, model: FaceRecognizer, folder: str | os.PathLike[str], with_maps: bool = False,
                    dtype: str = "float16", *, num_workers: int = 0, progress: bool = False) -> Gallery:
        """Enrol every aligned face of ``folder/<identity>/.../<image>`` (:meth:`build`); identity = the first
        folder level.

        Images directly in ``folder`` have no identity and are skipped with a warning. Sizes are checked from the
        file headers first (:func:`~oaml.evaluation.eval_data.check_image_sizes`).

        Raises:
            FileNotFoundError: If ``folder`` is not a folder.
            DataError: If it holds no image in an identity folder, or an image is unreadable or of the wrong size.
        """
        files, names = labelled_images(folder)
        images = EvalImages(names=[str(p) for p in files], paths=[str(p) for p in files],
                            size=model.info.input_size, resize=model.resize)
        check_image_sizes(images)
        return cls.build(model, images, names, with_maps=with_maps, dtype=dtype, num_workers=num_workers,
                         progress=progress)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def num_images(self) -> int:
        """N."""
        return int(self.embeddings.shape[0])

    @property
    def num_identities(self) -> int:
        """I."""
        return len(self.identity_names)

    @property
    def dim(self) -> int:
        """D."""
        return int(self.embeddings.shape[1])

    @property
    def has_maps(self) -> bool:
        """True when the QAConv maps needed for re-ranking are stored."""
        return self.maps is not None

    @property
    def row_index(self) -> RowIndex:
        """The images grouped by identity."""
        return self._cache["rows"]

    def identities(self) -> list[str]:
        """Identity name of every image."""
        names = self.identity_names
        return [names[k] for k in self.labels.tolist()]

    def describe(self) -> dict[str, Any]:
        """Provenance for reports: source file, sizes, storage and the model description."""
        return {"source": self.source, "format": GALLERY_FORMAT, "version": GALLERY_VERSION,
                "num_images": self.num_images, "num_identities": self.num_identities, "dim": self.dim,
                "dtype": self.embeddings.dtype.name, "has_maps": self.has_maps,
                "has_occlusion": self.occlusion is not None, "model": dict(self.model_info)}

    def check_model(self, model: FaceRecognizer) -> None:
        """Refuse a model other than the one that built the gallery (compared by checkpoint SHA-256).

        Raises:
            DataError: Naming the gallery file and both model files.
        """
        mine, theirs = str(self.model_info.get("sha256") or ""), model.info.sha256
        if mine and mine == theirs:
            return
        raise DataError(f"gallery {self.source or '(not saved)'} was built with model {self.model_info.get('path')} "
                        f"(sha256 {mine[:16] or 'unknown'}), not with {model.info.path} (sha256 "
                        f"{theirs[:16] or 'unknown'}); rebuild the gallery with this model")

    # ----------------------------------------------------------------------------------------------- file format
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the gallery file atomically (:mod:`oaml.evaluation.gallery_file`); sets :attr:`source`.

        Returns:
            ``path``.
        """
        from oaml import __version__

        header = {"oaml_version": __version__,
                  "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "num_images": self.num_images, "dim": self.dim, "dtype": self.embeddings.dtype.name,
                  "identities": list(self.identity_names), "has_maps": self.has_maps,
                  "has_occlusion": self.occlusion is not None, "model": self.model_info}
        arrays = {"embeddings": self.embeddings, "norms": self.norms.astype(np.float32),
                  "labels": self.labels.astype(np.int32)}
        arrays.update({name: getattr(self, name) for name in _MAP_FIELDS if getattr(self, name) is not None})
        path = write_gallery_file(path, header, list(self.paths), arrays)
        self.source = str(path)
        logger.info("wrote gallery %s (%d images, %d identities)", path, self.num_images, self.num_identities)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: FaceRecognizer | None = None) -> Gallery:
        """Read a gallery file (no pickle).

        Args:
            path: The gallery file.
            model: The model that built it (checked with :meth:`check_model`, kept as :attr:`recognizer`), or None.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            DataError: One line naming ``path`` if it is truncated, foreign, of a newer version or inconsistent, or
                if ``model`` is not the model that built it.
        """
        header, paths, arrays = read_gallery_file(path)
        try:
            gallery = cls(embeddings=arrays["embeddings"], norms=arrays["norms"], labels=arrays["labels"],
                          identity_names=tuple(header["identities"]), paths=tuple(paths), model_info=header["model"],
                          **{name: arrays.get(name) for name in _MAP_FIELDS}, source=str(path))
        except (KeyError, ValueError, TypeError) as error:
            raise DataError(f"{path}: not a valid oaml gallery file ({first_line(error)})") from error
        if model is not None:
            gallery.check_model(model)
            gallery.recognizer = model
        logger.info("loaded gallery %s (%d images, %d identities)", path, gallery.num_images, gallery.num_identities)
        return gallery

    # ----------------------------------------------------------------------------------------------- search
    def templates(self) -> np.ndarray:
        """``I x D`` identity templates: the normalised mean of each identity's embeddings, in the storage dtype."""
        if "templates" not in self._cache:
            self._cache["templates"] = identity_templates(self.embeddings, self.row_index)
            self._cache["template_rows"] = RowIndex.from_labels(np.arange(self.num_identities), self.num_identities)
        return self._cache["templates"]

    def rows_of(self, name: str) -> np.ndarray:
        """Indices of the images of identity ``name``.

        Raises:
            ValueError: If ``name`` is not enrolled (unknown identity name).
        """
        position = int(np.searchsorted(self.identity_names, name))
        if position == self.num_identities or self.identity_names[position] != name:
            raise ValueError(f"unknown identity name {name!r}: not among the gallery's {self.num_identities} "
                             f"identities")
        return self.row_index.rows_of(position)

    def search(self, probes: np.ndarray | torch.Tensor | ImageInput, k: int = 10, per_identity: str = "max",
               backend: str = "exact", *, model: FaceRecognizer | None = None, probe_chunk: int = 256,
               max_block_bytes: int = 128 * 2**20) -> SearchResult:
        """Top-k identities of each probe.

        Args:
            probes: ``P x D`` float embeddings (normalised here), or aligned faces
                (:data:`~oaml.evaluation.api.ImageInput`, embedded by ``model`` or else :attr:`recognizer`).
            k: List length (capped at the number of identities).
            per_identity: ``"max"`` (best image's cosine) or ``"mean"`` (cosine to the identity template).
            backend: ``"exact"`` (torch) or ``"faiss"`` (optional extra; flat index, same results).
            model: The gallery's model (checked with :meth:`check_model`); None uses :attr:`recognizer`.
            probe_chunk: Probes scored at once (exact backend).
            max_block_bytes: Memory budget of one block (exact backend, see :mod:`.gallery_search`).

        Raises:
            ValueError: On bad arguments, empty probes or a dimension mismatch.
            DataError: If ``model`` is not the gallery's model.
            ImportError: For ``backend="faiss"`` without faiss installed.
        """
        if k < 1 or per_identity not in PER_IDENTITY or backend not in SEARCH_BACKENDS:
            raise ValueError(f"need k >= 1, per_identity in {PER_IDENTITY} and backend in {SEARCH_BACKENDS}; got "
                             f"k={k}, per_identity={per_identity!r}, backend={backend!r}")
        emb = self._probe_embeddings(probes, model)
        if per_identity == "max":
            rows, index, labels = self.embeddings, self.row_index, self.labels
        else:
            rows = self.templates()
            index, labels = self._cache["template_rows"], np.arange(self.num_identities)
        if backend == "exact":
            found = exact_search(rows, index, torch.from_numpy(emb), k, probe_chunk=probe_chunk,
                                 max_block_bytes=max_block_bytes)
        else:
            key = f"faiss_{per_identity}"
            if key not in self._cache:
                self._cache[key] = build_faiss_index(rows)
            found = faiss_search(self._cache[key], labels, index.max_rows, self.num_identities, emb, k)
        return SearchResult(indices=found[0], scores=found[1], identity_names=self.identity_names,
                            per_identity=per_identity, backend=backend)

    def _probe_embeddings(self, probes: Any, model: FaceRecognizer | None) -> np.ndarray:
        if model is not None:
            self.check_model(model)
        model = self.recognizer if model is None else model
        arr = probes.detach().cpu().numpy() if isinstance(probes, torch.Tensor) else probes
        if isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.dtype.kind == "f":
            emb = arr.astype(np.float32)
        elif model is None:
            raise ValueError("probes must be a P x D float embedding array, or images with a model: pass model=, or "
                             "build or load the gallery with one")
        else:
            emb = model.embed(probes)[0]
        if emb.shape[0] == 0 or emb.shape[1] != self.dim or not np.isfinite(emb).all():
            raise ValueError(f"probe embeddings must be a non-empty finite P x {self.dim} array, got {emb.shape}")
        length = np.linalg.norm(emb, axis=1, keepdims=True)
        if (length == 0).any():
            raise ValueError(f"probe embeddings have norm 0 at rows {np.flatnonzero(length[:, 0] == 0)[:5].tolist()}")
        return np.ascontiguousarray(emb / length, dtype=np.float32)

