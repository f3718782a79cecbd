"""Training augmentations on uint8 BGR faces and their visibility maps (SPEC §8), numpy/OpenCV only.

Each function takes the ``numpy.random.Generator`` that drives it, so a pipeline is reproducible given its
seed and never touches the global ``np.random`` state. Geometric steps (flip, crop) transform the
visibility map with the image; pixels the crop blacks out become not visible (SPEC §4).

The :class:`Augmenter` follows AdaFace's (crop, then low resolution, then photometric, each with its own
probability, all 0 by default).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["Augmenter", "INTERPOLATIONS", "crop_in_place", "hflip", "low_resolution", "photometric",
           "random_crop", "random_resized_crop_box"]

INTERPOLATIONS: tuple[int, ...] = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC,
                                   cv2.INTER_LANCZOS4)
"""The interpolations the low-resolution step draws from (down and up independently)."""

def hflip(image: np.ndarray, visibility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an ``H x W x C`` image and its ``H x W`` visibility map left-right."""
    return cv2.flip(image, 1), cv2.flip(visibility, 1)  # ~30x faster than a numpy copy of a reversed view


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.2, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Box parameters of torchvision's ``RandomResizedCrop.get_params``: ``(top, left, h, w)``.

    Ten attempts at a box of area fraction U(scale) and log-uniform aspect ratio, then a central crop
    with the aspect ratio clamped into ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_in_place(image: np.ndarray, visibility: np.ndarray,
                  box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Keep the pixels of ``box = (top, left, h, w)`` where they are, on a black canvas; the rest is occluded."""
    top, left, h, w = box
    out_image = np.zeros_like(image)
    out_vis = np.zeros_like(visibility)
    out_image[top:top + h, left:left + w] = image[top:top + h, left:left + w]
    out_vis[top:top + h, left:left + w] = visibility[top:top + h, left:left + w]
    return out_image, out_vis


def random_crop(image: np.ndarray, visibility: np.ndarray, rng: np.random.Generator,
                scale: tuple[float, float] = (0.2, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[np.ndarray, np.ndarray]:
    """:func:`crop_in_place` with a :func:`random_resized_crop_box` box (no resize, SPEC §8)."""
    box = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale, ratio)
    return crop_in_place(image, visibility, box)


def low_resolution(image: np.ndarray, rng: np.random.Generator,
                   ratio: tuple[float, float] = (0.2, 1.0)) -> np.ndarray:
    """Down-sample to a side of ``U(ratio) * H`` and back, each way with a random interpolation."""
    height, width = image.shape[:2]
    side = max(1, int(rng.uniform(*ratio) * height))
    down, up = (INTERPOLATIONS[int(i)] for i in rng.integers(0, len(INTERPOLATIONS), size=2))
    small = cv2.resize(image, (side, side), interpolation=down)
    return cv2.resize(small, (width, height), interpolation=up)


def photometric(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.5, contrast: float = 0.5,
                saturation: float = 0.5) -> np.ndarray:
    """ColorJitter semantics on a uint8 BGR image: each factor U(1-x, 1+x), applied in a random order.

    Brightness scales the pixels, contrast blends with the mean luma, saturation blends with the per-pixel
    luma (BT.601). Every step rounds and saturates to uint8, as torchvision's jitter of a PIL image does.
    """
    factors = [rng.uniform(max(0.0, 1 - x), 1 + x) for x in (brightness, contrast, saturation)]
    order = rng.permutation(3)
    out = image
    for step in order:
        factor = float(factors[step])
        if step == 0:
            out = cv2.addWeighted(out, factor, out, 0.0, 0.0)
        elif step == 1:
            mean = cv2.mean(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY))[0]
            out = cv2.addWeighted(out, factor, out, 0.0, (1.0 - factor) * mean)
        else:
            gray = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
            out = cv2.addWeighted(out, factor, gray, 1.0 - factor, 0.0)
    return out if out is not image else image.copy()


class Augmenter:
    """AdaFace-style augmentation: crop, low resolution and photometric, each with its own probability.

    Args:
        crop_prob: probability of :func:`random_crop` (scale 0.2-1, ratio 3/4-4/3).
        low_res_prob: probability of :func:`low_resolution` (side ratio U(0.2, 1)).
        photometric_prob: probability of :func:`photometric` (0.5 each).

    Raises:
        ValueError: if a probability is outside [0, 1].
    """

    def __init__(self, crop_prob: float = 0.0, low_res_prob: float = 0.0, photometric_prob: float = 0.0) -> None:
        for name, value in (("crop_prob", crop_prob), ("low_res_prob", low_res_prob),
                            ("photometric_prob", photometric_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.crop_prob, self.low_res_prob, self.photometric_prob = crop_prob, low_res_prob, photometric_prob

    def __call__(self, image: np.ndarray, visibility: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment a uint8 BGR ``H x W x 3`` image and its float32 ``H x W`` visibility map."""
        if self.crop_prob > 0 and rng.random() < self.crop_prob:
            image, visibility = random_crop(image, visibility, rng)
        if self.low_res_prob > 0 and rng.random() < self.low_res_prob:
            image = low_resolution(image, rng)
        if self.photometric_prob > 0 and rng.random() < self.photometric_prob:
            image = photometric(image, rng)
        return image, visibility

    def __repr__(self) -> str:
        return (f"Augmenter(crop_prob={self.crop_prob}, low_res_prob={self.low_res_prob}, "
                f"photometric_prob={self.photometric_prob})")
