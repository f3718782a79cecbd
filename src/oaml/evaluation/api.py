"""Python API: ``oaml.load_model(path)`` returns a :class:`FaceRecognizer` that embeds, maps and matches faces.

Example::

    import oaml
    model = oaml.load_model("model.ckpt")            # ours or a released AdaFace .ckpt
    emb, norms = model.embed(["a.png", "b.png"])     # N x 512 unit rows (flip-fused), N norms
    scores = model.match(["a.png"], ["b.png"])       # paired scores, higher = more similar

Inputs are aligned ``S x S`` faces (S = 112): file paths, uint8 **BGR** arrays (``S x S x 3``) or one
``N x S x S x 3`` array. The channel order the checkpoint expects is applied internally. Everything runs in eval
mode under ``torch.inference_mode()``, in batches of ``batch_size`` images.

Scores (SPEC §9): the AdaFace embedding of a face is the flip-fused ``normalise(n1 e1 + n2 e2)`` of the image and
its mirror. ``match`` is QAConv with both images' predicted visibility maps, averaged over the originals and the
mirrored images (the validation protocol). For backbone-only checkpoints (released AdaFace weights) QAConv does
not exist and ``match`` returns the cosine similarity of the flip-fused embeddings instead
(:attr:`FaceRecognizer.match_method` says which).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch
from torch import Tensor

from oaml.constants import ChannelOrder
from oaml.data.transforms import normalise_batch
from oaml.devices import resolve_device
from oaml.errors import ConfigError, DataError
from oaml.evaluation.eval_data import EvalImages
from oaml.evaluation.scoring import BatchFeatures, cosine_paired, embed_views, qaconv_all, qaconv_paired
from oaml.fileio import sha256_file
from oaml.models import BACKBONES
from oaml.models.checkpoint import LoadedFaceModel, load_face_model

__all__ = ["FaceRecognizer", "ImageInput", "ModelInfo", "QACONV_UNAVAILABLE_REASON", "load_model"]

QACONV_UNAVAILABLE_REASON = ("the checkpoint holds only a backbone (e.g. a released AdaFace .ckpt): no QAConv "
                             "or occlusion-head weights, so only the AdaFace cosine score is evaluated")
"""Why QAConv scores are missing for backbone-only checkpoints (written to results.json and report.md)."""

logger = logging.getLogger(__name__)

ImageInput = Union[np.ndarray, Sequence[Union[str, os.PathLike, np.ndarray]]]
"""Faces: one ``N x S x S x 3`` uint8 BGR array, or a sequence of paths and/or ``S x S x 3`` arrays."""


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, for provenance (results.json, exports, galleries) and for the callers' decisions.

    Attributes:
        path: The checkpoint path.
        sha256: SHA-256 of the checkpoint file.
        kind: ``"oaml"`` (backbone + occlusion head + QAConv) or ``"backbone_only"``.
        source_layout: The layout of :class:`~oaml.models.checkpoint.LoadedFaceModel`.
        arch: Backbone name.
        width: Width multiplier.
        input_size: Side of the square input in pixels.
        channel_order: Channel order the backbone expects.
        occlusion_method: ``"scaling"`` or ``"normalised"`` (how visibility maps weight QAConv), ``"none"``, or
            ``"unavailable"``.
        embedding_gate: The predicted visibility gates the feature map before the embedding layer.
        qaconv_unavailable: Why QAConv is unavailable, or None when it is available.
        num_classes: Training class count recorded in the checkpoint, if any.
        checkpoint_version: oaml version that wrote the checkpoint, if recorded.
    """

    path: str
    sha256: str
    kind: str
    source_layout: str
    arch: str
    width: float
    input_size: int
    channel_order: ChannelOrder
    occlusion_method: str
    embedding_gate: bool
    qaconv_unavailable: str | None
    num_classes: int | None
    checkpoint_version: str | None

    @classmethod
    def of(cls, path: str | os.PathLike[str], loaded: LoadedFaceModel) -> ModelInfo:
        """The description of ``loaded``, read from ``path``."""
        meta, has_qaconv = loaded.meta, loaded.qaconv is not None
        return cls(path=str(Path(path).resolve()), sha256=sha256_file(path),
                   kind="oaml" if has_qaconv else "backbone_only", source_layout=loaded.layout,
                   arch=meta.arch, width=float(loaded.backbone.width),
                   input_size=int(loaded.backbone.input_size), channel_order=meta.channel_order,
                   occlusion_method=meta.occlusion_method, embedding_gate=meta.embedding_gate,
                   qaconv_unavailable=None if has_qaconv else QACONV_UNAVAILABLE_REASON,
                   num_classes=meta.num_classes, checkpoint_version=meta.version)

    @property
    def has_qaconv(self) -> bool:
        """True when the QAConv matcher was loaded."""
        return self.qaconv_unavailable is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the channel order as its value string)."""
        out = asdict(self)
        out["channel_order"] = self.channel_order.value
        return out


class FaceRecognizer:
    """A loaded model ready for inference (see the module docstring).

    Args:
        loaded: The modules of :func:`oaml.models.checkpoint.load_face_model`.
        info: Their description (:meth:`ModelInfo.of`).
        device: Torch device to run on.
        batch_size: Images per forward pass (each pass also runs the mirrored images).
        resize: Resize faces that are not ``S x S`` instead of raising.
    """

    def __init__(self, loaded: LoadedFaceModel, info: ModelInfo, device: str | torch.device = "cpu",
                 batch_size: int = 64, resize: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.info = info
        self.device = resolve_device(device, "device")
        self.batch_size = batch_size
        self.resize = resize
        self.backbone = loaded.backbone.to(self.device).eval()
        self.occlusion_head = None if loaded.occlusion_head is None else loaded.occlusion_head.to(self.device).eval()
        self.qaconv = None if loaded.qaconv is None else loaded.qaconv.to(self.device).eval()

    @property
    def uses_occlusion(self) -> bool:
        """True when the predicted visibility maps weight the QAConv similarities."""
        return self.occlusion_head is not None and self.info.occlusion_method in ("scaling", "normalised")

    @property
    def match_method(self) -> str:
        """``"qaconv"`` or ``"cosine"`` (backbone-only checkpoints): what :meth:`match` computes."""
        return "qaconv" if self.qaconv is not None else "cosine"

    # ----------------------------------------------------------------------------------------------- batches
    def _prepare(self, images: Tensor | np.ndarray) -> Tensor:
        """uint8 B x S x S x 3 BGR -> normalised float B x 3 x S x S on the device, in the model's channel order."""
        x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        size = self.info.input_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (size, size, 3) or x.dtype != torch.uint8:
            raise DataError(f"expected uint8 B x {size} x {size} x 3 BGR faces, got {tuple(x.shape)} {x.dtype}")
        return normalise_batch(x.to(self.device), self.info.channel_order)

    @torch.inference_mode()
    def forward_batch(self, images: Tensor | np.ndarray, flip: bool = True, with_maps: bool = False) -> BatchFeatures:
        """Run one batch of uint8 ``B x S x S x 3`` BGR faces (and their mirror images when ``flip``).

        Returns:
            The batch's :class:`~oaml.evaluation.scoring.BatchFeatures` on the CPU.
        """
        return embed_views(self.backbone, self.occlusion_head, self._prepare(images), with_maps, flip,
                           gate=self.info.embedding_gate).cpu()

    def iter_batches(self, images: ImageInput) -> Iterator[np.ndarray]:
        """Yield uint8 ``b x S x S x 3`` BGR batches of at most ``batch_size`` faces.

        Raises:
            DataError: On an unreadable file, or a face of the wrong size or dtype (without ``resize``).
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if images.shape[0] == 0:
                raise DataError("no images given")
            for start in range(0, images.shape[0], self.batch_size):
                yield np.stack([self._check(img, f"images[{start + k}]")
                                for k, img in enumerate(images[start:start + self.batch_size])])
            return
        items = list(images)
        if not items:
            raise DataError("no images given")
        for start in range(0, len(items), self.batch_size):
            yield np.stack([self._load(item, f"images[{start + k}]")
                            for k, item in enumerate(items[start:start + self.batch_size])])

    def _load(self, item: str | os.PathLike | np.ndarray, where: str) -> np.ndarray:
        if isinstance(item, np.ndarray):
            return self._check(item, where)
        path = os.fspath(item)
        reader = EvalImages(names=[path], paths=[path], size=self.info.input_size, resize=self.resize)
        return reader.read(0)

    def _check(self, image: np.ndarray, where: str) -> np.ndarray:
        size = self.info.input_size
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"{where}: expected a uint8 H x W x 3 BGR face, got {image.shape} {image.dtype}")
        if image.shape[:2] != (size, size):
            if not self.resize:
                raise DataError(f"{where}: face is {image.shape[1]}x{image.shape[0]}, expected aligned "
                                f"{size}x{size}; run `oaml align` first, or load the model with resize=True")
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        return image

    def _collect(self, images: ImageInput, flip: bool, with_maps: bool) -> BatchFeatures:
        return BatchFeatures.concatenate([self.forward_batch(batch, flip=flip, with_maps=with_maps)
                                          for batch in self.iter_batches(images)])

    # ----------------------------------------------------------------------------------------------- public
    def embed(self, images: ImageInput, flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """AdaFace embeddings.

        Args:
            images: Aligned faces (see :data:`ImageInput`).
            flip: Fuse each face with its mirror image (SPEC §9); False gives the plain embedding.

        Returns:
            ``(embeddings, norms)``: ``N x 512`` float32 unit rows and ``N`` float32 norms (the mean of the face's
            and its mirror's raw-embedding norms, so a face and its mirror get identical outputs).
        """
        feats = self._collect(images, flip=flip, with_maps=False)
        return feats.embedding.numpy(), feats.norm.numpy()

    def feature_maps(self, images: ImageInput) -> tuple[np.ndarray, np.ndarray | None]:
        """Backbone feature maps and predicted visibility maps (no flip).

        Returns:
            ``(maps, occlusion)``: ``N x C x H x W`` float32 and ``N x 1 x H x W`` float32 in [0, 1] (1 = visible),
            or None for a backbone-only checkpoint.
        """
        feats = self._collect(images, flip=False, with_maps=True)
        return feats.maps.numpy(), None if feats.occlusion is None else feats.occlusion.numpy()  # type: ignore

    @torch.inference_mode()
    def match(self, a: ImageInput, b: ImageInput) -> np.ndarray:
        """Score N pairs ``(a[k], b[k])``; higher means more similar.

        QAConv (paired mode, visibility-weighted, averaged over originals and mirror images) when available,
        otherwise the cosine similarity of the flip-fused embeddings (see :attr:`match_method`).

        Returns:
            ``N`` float32 scores.

        Raises:
            ValueError: If ``a`` and ``b`` hold different numbers of faces.
        """
        fa = self._collect(a, flip=True, with_maps=self.qaconv is not None)
        fb = self._collect(b, flip=True, with_maps=self.qaconv is not None)
        if fa.embedding.shape[0] != fb.embedding.shape[0]:
            raise ValueError(f"a has {fa.embedding.shape[0]} faces but b has {fb.embedding.shape[0]}")
        rows = np.arange(fa.embedding.shape[0])
        if self.qaconv is None:
            return cosine_paired(fa.embedding, fb.embedding, rows, rows).astype(np.float32)
        return qaconv_paired(self.qaconv, fa, fb, torch.from_numpy(rows), torch.from_numpy(rows),
                             self.uses_occlusion).numpy()

    @torch.inference_mode()
    def match_all(self, a: ImageInput, b: ImageInput) -> np.ndarray:
        """Score every ``(a[p], b[g])``: a ``P x G`` float32 matrix whose diagonal equals :meth:`match` (P = G)."""
        fa = self._collect(a, flip=True, with_maps=self.qaconv is not None)
        fb = self._collect(b, flip=True, with_maps=self.qaconv is not None)
        if self.qaconv is None:
            return (fa.embedding @ fb.embedding.T).numpy()
        return qaconv_all(self.qaconv, fa, fb, self.uses_occlusion).numpy()


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu", *, arch: str | None = None,
               batch_size: int = 64, resize: bool = False) -> FaceRecognizer:
    """Load a checkpoint for inference.

    Args:
        path: An oaml checkpoint, or a released AdaFace ``.ckpt`` (backbone only: no QAConv, BGR input).
        device: Torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
        arch: Backbone name; None reads it from the checkpoint (or infers it from the weights).
        batch_size: Images per forward pass.
        resize: Resize faces that are not aligned ``112 x 112`` crops instead of raising.

    Returns:
        A :class:`FaceRecognizer` in eval mode.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointError: If the file cannot be loaded safely and strictly.
        ConfigError: If ``device`` is unknown or absent on this machine.
    """
    resolve_device(device, "device")  # before reading a large checkpoint
    if arch is not None and arch not in BACKBONES:
        raise ConfigError(f"arch {arch!r} is not a known backbone; choose one of {', '.join(BACKBONES.names())}")
    loaded = load_face_model(path, arch=arch)
    info = ModelInfo.of(path, loaded)
    logger.info("loaded %s (%s, %s width %g, %s, QAConv %s)", path, loaded.layout, info.arch, info.width,
                info.channel_order.value, "available" if info.has_qaconv else "unavailable")
    return FaceRecognizer(loaded, info, device=device, batch_size=batch_size, resize=resize)
