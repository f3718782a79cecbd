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

import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Union

import cv2
import numpy as np
import torch
from torch import Tensor

from oaml.constants import NORM_MEAN, NORM_STD, ChannelOrder
from oaml.devices import resolve_device
from oaml.errors import DataError
from oaml.evaluation.eval_data import EvalImages
from oaml.evaluation.loading import LoadedModel, ModelInfo, load_face_modules
from oaml.evaluation.verification import fuse_flip

__all__ = ["BatchFeatures", "FaceRecognizer", "ImageInput", "load_model"]

ImageInput = Union[np.ndarray, Sequence[Union[str, os.PathLike, np.ndarray]]]
"""Faces: one ``N x S x S x 3`` uint8 BGR array, or a sequence of paths and/or ``S x S x 3`` arrays."""

_QACONV_PAIRS_PER_CALL = 1024  # pairs handed to QAConv at once (it chunks further by memory)


class BatchFeatures(NamedTuple):
    """Features of one batch (CPU tensors, float32).

    Attributes:
        embedding: B x 512 flip-fused unit embeddings (the plain embedding when flip is off).
        norm: B mean of the image's and its mirror's embedding norms (the image's norm when flip is off).
        maps: B x C x H x W feature maps of the images, or None when not requested.
        occlusion: B x 1 x H x W visibility maps, or None (not requested, or no occlusion head).
        maps_flip: Feature maps of the mirrored images, or None.
        occlusion_flip: Visibility maps of the mirrored images, or None.
    """

    embedding: Tensor
    norm: Tensor
    maps: Tensor | None
    occlusion: Tensor | None
    maps_flip: Tensor | None
    occlusion_flip: Tensor | None


def _views(t: Tensor | None, batch: int, flip: bool) -> tuple[Tensor | None, Tensor | None]:
    """Split a (2B or B) x ... tensor into the originals' and the mirror images' parts."""
    if t is None:
        return None, None
    return (t[:batch], t[batch:]) if flip else (t, None)


class FaceRecognizer:
    """A loaded model ready for inference (see the module docstring).

    Args:
        loaded: Modules and their description from :func:`oaml.evaluation.loading.load_face_modules`.
        device: Torch device to run on.
        batch_size: Images per forward pass (each pass also runs the mirrored images).
        resize: Resize faces that are not ``S x S`` instead of raising.
    """

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu", batch_size: int = 64,
                 resize: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.info: ModelInfo = loaded.info
        self.device = resolve_device(device, "device")
        self.batch_size = batch_size
        self.resize = resize
        self.backbone = loaded.backbone.to(self.device).eval()
        self.occlusion_head = None if loaded.occlusion_head is None else loaded.occlusion_head.to(self.device).eval()
        self.qaconv = None if loaded.qaconv is None else loaded.qaconv.to(self.device).eval()
        self._reverse = self.info.channel_order is ChannelOrder.RGB

    @property
    def uses_occlusion(self) -> bool:
        """True when the predicted visibility maps weight the QAConv similarities."""
        return self.occlusion_head is not None and self.info.occlusion_method == "scaling"

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
        x = x.to(self.device).permute(0, 3, 1, 2)
        if self._reverse:
            x = x.flip(1)
        return (x.float() / 255.0 - NORM_MEAN) / NORM_STD

    @torch.inference_mode()
    def forward_batch(self, images: Tensor | np.ndarray, flip: bool = True, with_maps: bool = False) -> BatchFeatures:
        """Run one batch of uint8 ``B x S x S x 3`` BGR faces (and their mirror images when ``flip``).

        Returns:
            The batch's :class:`BatchFeatures` on the CPU.
        """
        x = self._prepare(images)
        batch = x.shape[0]
        views = torch.cat([x, x.flip(3)]) if flip else x
        embedding, norm, feature_map = self.backbone(views)
        occ = self.occlusion_head(feature_map) if with_maps and self.occlusion_head is not None else None
        emb, nrm = embedding.float().cpu(), norm.float().cpu()
        if flip:
            fused = fuse_flip(emb[:batch].numpy(), nrm[:batch].numpy(), emb[batch:].numpy(), nrm[batch:].numpy())
            emb, nrm = torch.from_numpy(np.asarray(fused, np.float32)), (nrm[:batch] + nrm[batch:]) / 2
        maps = feature_map.float().cpu() if with_maps else None
        occ = None if occ is None else occ.float().cpu()
        maps_o, maps_f = _views(maps, batch, flip)
        occ_o, occ_f = _views(occ, batch, flip)
        return BatchFeatures(emb, nrm.reshape(-1), maps_o, occ_o, maps_f, occ_f)

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
        parts = [self.forward_batch(batch, flip=flip, with_maps=with_maps) for batch in self.iter_batches(images)]
        return BatchFeatures(*(None if parts[0][k] is None else torch.cat([p[k] for p in parts])
                               for k in range(len(BatchFeatures._fields))))

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
        if self.qaconv is None:
            return (fa.embedding * fb.embedding).sum(dim=1).numpy()
        rows = torch.arange(fa.embedding.shape[0])
        return self.qaconv_paired(fa, fb, rows, rows).numpy()

    @torch.inference_mode()
    def match_all(self, a: ImageInput, b: ImageInput) -> np.ndarray:
        """Score every ``(a[p], b[g])``: a ``P x G`` float32 matrix whose diagonal equals :meth:`match` (P = G)."""
        fa = self._collect(a, flip=True, with_maps=self.qaconv is not None)
        fb = self._collect(b, flip=True, with_maps=self.qaconv is not None)
        if self.qaconv is None:
            return (fa.embedding @ fb.embedding.T).numpy()
        return self.qaconv_all(fa, fb).numpy()

    # ----------------------------------------------------------------------------------------------- QAConv
    def _occ(self, occ: Tensor | None) -> Tensor | None:
        return occ if self.uses_occlusion else None

    @torch.inference_mode()
    def qaconv_paired(self, fa: BatchFeatures, fb: BatchFeatures, rows_a: Tensor, rows_b: Tensor) -> Tensor:
        """Flip-averaged paired QAConv scores of ``(fa[rows_a[k]], fb[rows_b[k]])`` (N float32, CPU)."""
        if self.qaconv is None:
            raise RuntimeError("this checkpoint has no QAConv matcher")
        out = []
        for start in range(0, rows_a.shape[0], _QACONV_PAIRS_PER_CALL):
            ia, ib = rows_a[start:start + _QACONV_PAIRS_PER_CALL], rows_b[start:start + _QACONV_PAIRS_PER_CALL]
            total = 0.0
            for maps, occ in (("maps", "occlusion"), ("maps_flip", "occlusion_flip")):
                ma, mb = getattr(fa, maps)[ia].to(self.device), getattr(fb, maps)[ib].to(self.device)
                oa, ob = (None if getattr(f, occ) is None else getattr(f, occ)[i].to(self.device)
                          for f, i in ((fa, ia), (fb, ib)))
                total = total + self.qaconv.match_pairs(ma, mb, self._occ(oa), self._occ(ob)).float().cpu()
            out.append(total / 2)
        return torch.cat(out)

    @torch.inference_mode()
    def qaconv_all(self, probe: BatchFeatures, gallery: BatchFeatures, probe_rows: slice = slice(None),
                   gallery_rows: slice = slice(None)) -> Tensor:
        """Flip-averaged all-pairs QAConv scores of ``probe[probe_rows]`` x ``gallery[gallery_rows]`` (CPU float32).

        QAConv chunks the work so that its extra memory stays within ``qaconv.max_chunk_bytes``.
        """
        if self.qaconv is None:
            raise RuntimeError("this checkpoint has no QAConv matcher")
        total = None
        for maps, occ in (("maps", "occlusion"), ("maps_flip", "occlusion_flip")):
            mp, mg = getattr(probe, maps)[probe_rows].to(self.device), getattr(gallery, maps)[gallery_rows]
            op, og = getattr(probe, occ), getattr(gallery, occ)
            op = None if op is None else self._occ(op[probe_rows].to(self.device))
            og = None if og is None else self._occ(og[gallery_rows].to(self.device))
            scores = self.qaconv(mp, mg.to(self.device), op, og).float().cpu()
            total = scores if total is None else total + scores
        return total / 2  # type: ignore[operator]


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
    return FaceRecognizer(load_face_modules(path, arch=arch), device=device, batch_size=batch_size, resize=resize)
