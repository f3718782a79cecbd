"""Tensor conversion, normalisation, channel order, and the training/evaluation compositions (SPEC §1, §8).

Datasets yield uint8 **BGR** ``H x W x 3`` faces (the released AdaFace weights expect BGR). The tensor side is
``(x / 255 - 0.5) / 0.5`` in the model's channel order: :attr:`ChannelOrder.RGB` reverses the channels.

:class:`TrainTransform` runs flip (p 0.5) -> synthetic medical mask (p 0.5), or one occluder of a mixture
(:class:`oaml.data.occluders.OccluderMixture`, ``"mask:0.5,sunglasses:0.2"``) -> :class:`Augmenter` -> tensor,
carrying the per-pixel visibility map through every geometric step. The 7x7 occlusion target is pooled
from that map in the training objective (:func:`oaml.data.masks.visibility_grid`). Without a mixture the draws
are those of the medical mask alone, so default batches are what they always were; the mixture ``"mask:p"``
draws exactly as ``mask_prob=p``.

Randomness comes from a ``numpy.random.Generator`` owned by the transform, re-seeded in every DataLoader
worker by :func:`oaml.data.datamodule.seed_worker`; the global ``np.random`` is never used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from oaml.constants import ARCFACE_TEMPLATE, FACE_SIZE, NORM_MEAN, NORM_STD, ChannelOrder
from oaml.data.augment import Augmenter, hflip
from oaml.data.masks import apply_medical_mask
from oaml.data.occluders import OccluderMixture

__all__ = ["EvalTransform", "TrainTransform", "image_to_tensor", "normalise_batch", "tensor_to_image",
           "visibility_to_tensor"]

_SCALE = np.float32(1.0 / (255.0 * NORM_STD))
_OFFSET = np.float32(NORM_MEAN / NORM_STD)


def image_to_tensor(image: np.ndarray, channel_order: ChannelOrder = ChannelOrder.BGR) -> torch.Tensor:
    """uint8 BGR ``H x W x 3`` -> float32 ``3 x H x W`` tensor, ``(x/255 - 0.5)/0.5``, in ``channel_order``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got shape {image.shape}")
    chw = image.transpose(2, 0, 1)
    if ChannelOrder(channel_order) is ChannelOrder.RGB:
        chw = chw[::-1]
    out = np.ascontiguousarray(chw, dtype=np.float32)
    out *= _SCALE
    out -= _OFFSET
    return torch.from_numpy(out)


def normalise_batch(images: torch.Tensor, channel_order: ChannelOrder = ChannelOrder.BGR) -> torch.Tensor:
    """uint8 BGR ``B x H x W x 3`` (on any device) -> float32 ``B x 3 x H x W`` in ``channel_order``.

    The same float32 arithmetic as :func:`image_to_tensor` (``x * (1 / 127.5) - 1``), so that a face normalised
    on the device for inference is bit for bit the face a dataset normalised for validation.
    """
    if images.dim() != 4 or images.shape[3] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 B x H x W x 3 images, got {tuple(images.shape)} {images.dtype}")
    x = images.permute(0, 3, 1, 2)
    if ChannelOrder(channel_order) is ChannelOrder.RGB:
        x = x.flip(1)
    return x.contiguous().float().mul_(float(_SCALE)).sub_(float(_OFFSET))  # NCHW, as the datasets stack them


def tensor_to_image(tensor: torch.Tensor | np.ndarray, channel_order: ChannelOrder = ChannelOrder.BGR) -> np.ndarray:
    """Invert :func:`image_to_tensor`: ``3 x H x W`` normalised -> uint8 BGR ``H x W x 3``."""
    array = tensor.detach().cpu().float().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    if ChannelOrder(channel_order) is ChannelOrder.RGB:
        array = array[::-1]
    pixels = (array * NORM_STD + NORM_MEAN) * 255.0
    return np.ascontiguousarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0))


def visibility_to_tensor(visibility: np.ndarray) -> torch.Tensor:
    """float ``H x W`` visibility map -> float32 ``1 x H x W`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(visibility, dtype=np.float32))[None]


class TrainTransform:
    """Flip -> medical mask or occluder mixture -> Augmenter -> tensor; returns ``(image 3x112x112, visibility
    1x112x112)``.

    Args:
        mask_prob: probability of a synthetic medical mask (unused when ``occluders`` is given).
        flip_prob: probability of a horizontal flip (image and visibility together).
        crop_prob: probability of the in-place random crop (cropped-away pixels become not visible).
        low_res_prob: probability of the low-resolution step.
        photometric_prob: probability of the brightness/contrast/saturation jitter.
        channel_order: channel order of the output tensor (input images are BGR).
        seed: seed of the transform's generator; workers re-seed it with :meth:`reseed`.
        occluders: an occluder mixture ``"name:probability,..."`` (:func:`oaml.data.occluders.parse_occluder_mixture`)
            drawn instead of the medical mask; empty keeps the medical mask with ``mask_prob``.

    Raises:
        ValueError: if a probability is outside [0, 1], or for a bad mixture (one line naming the entry).
    """

    def __init__(self, mask_prob: float = 0.5, flip_prob: float = 0.5, crop_prob: float = 0.0,
                 low_res_prob: float = 0.0, photometric_prob: float = 0.0,
                 channel_order: ChannelOrder = ChannelOrder.BGR, seed: int | None = None, occluders: str = "") -> None:
        for name, value in (("mask_prob", mask_prob), ("flip_prob", flip_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.mask_prob, self.flip_prob = mask_prob, flip_prob
        self.mixture = OccluderMixture.from_text(occluders) if occluders.strip() else None
        self.augmenter = Augmenter(crop_prob, low_res_prob, photometric_prob)
        self.channel_order = ChannelOrder(channel_order)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._pid = os.getpid()

    def reseed(self, seed: int | Sequence[int]) -> None:
        """Replace the generator (called once per DataLoader worker with a worker-specific seed)."""
        self.rng = np.random.default_rng(seed)
        self._pid = os.getpid()

    def _generator(self) -> np.random.Generator:
        if self._pid != os.getpid():
            # A forked worker that nobody re-seeded would repeat its siblings' draws; derive a distinct
            # stream from torch's per-worker seed instead.
            self.reseed([0 if self.seed is None else self.seed, torch.initial_seed() % 2 ** 32, os.getpid()])
        return self.rng

    def __call__(self, image: np.ndarray,
                 rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one uint8 BGR face.

        Args:
            image: ``H x W x 3`` uint8 BGR.
            rng: a generator to use instead of the transform's own.

        Returns:
            ``(image, visibility)``: float32 ``3 x H x W`` normalised, float32 ``1 x H x W`` (1 visible).
        """
        rng = self._generator() if rng is None else rng
        height, width = image.shape[:2]
        visibility = np.ones((height, width), np.float32)
        if rng.random() < self.flip_prob:
            image, visibility = hflip(image, visibility)
        landmarks = None
        if (height, width) != (FACE_SIZE, FACE_SIZE):
            landmarks = ARCFACE_TEMPLATE * np.array([width / FACE_SIZE, height / FACE_SIZE], np.float32)
        if self.mixture is not None:
            image, visibility = self.mixture(image, rng, landmarks)
        elif rng.random() < self.mask_prob:
            image, visibility = apply_medical_mask(image, rng, landmarks)
        image, visibility = self.augmenter(image, visibility, rng)
        return image_to_tensor(image, self.channel_order), visibility_to_tensor(visibility)

    def __repr__(self) -> str:
        occluders = f"occluders={self.mixture!r}" if self.mixture is not None else f"mask_prob={self.mask_prob}"
        return (f"TrainTransform({occluders}, flip_prob={self.flip_prob}, {self.augmenter!r}, "
                f"channel_order={self.channel_order.value}, seed={self.seed})")


class EvalTransform:
    """Tensor conversion only: ``(image 3xHxW, visibility of ones 1xHxW)``, the training output format.

    Args:
        channel_order: channel order of the output tensor (input images are BGR).
    """

    def __init__(self, channel_order: ChannelOrder = ChannelOrder.BGR) -> None:
        self.channel_order = ChannelOrder(channel_order)

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert one uint8 BGR face."""
        visibility = np.ones(image.shape[:2], np.float32)
        return image_to_tensor(image, self.channel_order), visibility_to_tensor(visibility)
