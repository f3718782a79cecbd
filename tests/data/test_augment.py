"""Augmentations and transforms: geometry moves the visibility map, photometric maths, tensors, channel order."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import pytest
import torch

from oaml.constants import ChannelOrder
from oaml.data.augment import (Augmenter, crop_in_place, hflip, low_resolution, photometric, random_crop,
                               random_resized_crop_box)
from oaml.data.masks import apply_medical_mask, visibility_grid
from oaml.data.occluders import OccluderMixture
from oaml.data.transforms import EvalTransform, TrainTransform, image_to_tensor, tensor_to_image

Factory = Callable[..., np.ndarray]


def _left_half_masked() -> np.ndarray:
    visibility = np.ones((112, 112), np.float32)
    visibility[:, :40] = 0
    return visibility


def test_flip_moves_a_one_sided_mask_to_the_other_side(image_factory: Factory) -> None:
    image = image_factory(0)
    flipped, visibility = hflip(image, _left_half_masked())
    assert np.array_equal(flipped, image[:, ::-1])
    assert visibility[:, 72:].max() == 0 and visibility[:, :72].min() == 1
    assert np.array_equal(visibility_grid(visibility), visibility_grid(_left_half_masked())[:, ::-1])


def test_crop_keeps_pixels_in_place_and_occludes_the_rest(image_factory: Factory) -> None:
    image = image_factory(1)
    cropped, visibility = crop_in_place(image, _left_half_masked(), (10, 20, 50, 60))
    inside = (slice(10, 60), slice(20, 80))
    assert np.array_equal(cropped[inside], image[inside])
    outside = np.ones((112, 112), bool)
    outside[inside] = False
    assert cropped[outside].max() == 0 and visibility[outside].max() == 0
    assert visibility[10:60, 20:40].max() == 0 and visibility[10:60, 40:80].min() == 1  # prior mask kept
    grid = visibility_grid(visibility)
    assert grid[0, 2] == pytest.approx(6 * 8 / 256)  # cell rows 0-15, cols 32-47: rows 10-15 x cols 40-47 visible


def test_random_resized_crop_box_ranges() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(112, 112, rng)
        assert 0 <= top and top + h <= 112 and 0 <= left and left + w <= 112
        assert 0.2 - 0.02 <= h * w / 112 ** 2 <= 1.0
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # No box of 2-3x the image area fits: fall back to the central crop with the clamped ratio.
    assert random_resized_crop_box(112, 112, rng, scale=(2.0, 3.0)) == (0, 0, 112, 112)
    # w = round(50 * 4/3), left = (200 - 67) // 2
    assert random_resized_crop_box(50, 200, rng, scale=(2.0, 3.0)) == (0, 66, 50, 67)


def test_random_crop_output(image_factory: Factory) -> None:
    image, visibility = random_crop(image_factory(2), np.ones((112, 112), np.float32), np.random.default_rng(4))
    rows, cols = np.nonzero(visibility)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    assert visibility[box].min() == 1 and visibility.sum() == visibility[box].size
    assert np.array_equal(image[box], image_factory(2)[box]) and image[visibility == 0].max() == 0


def test_low_resolution_removes_detail() -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    detail = cv2.Laplacian(noise, cv2.CV_32F).var()
    for _ in range(10):
        out = low_resolution(noise, rng, ratio=(0.2, 0.5))
        assert out.shape == noise.shape and out.dtype == np.uint8
        assert cv2.Laplacian(out, cv2.CV_32F).var() < 0.5 * detail
    assert np.array_equal(low_resolution(noise, rng, ratio=(1.0, 1.0)), noise)


def test_photometric_matches_hand_computed_values(image_factory: Factory) -> None:
    image = image_factory(3)
    factor = np.random.default_rng(5).uniform(0.5, 1.5)  # the first draw is the brightness factor
    out = photometric(image, np.random.default_rng(5), brightness=0.5, contrast=0.0, saturation=0.0)
    expected = np.floor(np.clip(image.astype(np.float64) * factor, 0, 255) + 0.5).astype(np.uint8)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    gray = np.repeat(image[..., :1], 3, axis=2)
    assert np.array_equal(photometric(gray, np.random.default_rng(6), 0.0, 0.0, 0.5), gray)  # no colour to scale
    flat = np.full((112, 112, 3), 90, np.uint8)
    assert np.array_equal(photometric(flat, np.random.default_rng(7), 0.0, 0.5, 0.0), flat)  # contrast about mean


def test_augmenter_probabilities(image_factory: Factory) -> None:
    image, ones = image_factory(4), np.ones((112, 112), np.float32)
    with pytest.raises(ValueError, match="crop_prob"):
        Augmenter(crop_prob=1.5)
    same_image, same_vis = Augmenter()(image, ones, np.random.default_rng(0))
    assert np.array_equal(same_image, image) and np.array_equal(same_vis, ones)
    cropped = [Augmenter(crop_prob=1.0)(image, ones, np.random.default_rng(s))[1].mean() for s in range(20)]
    assert max(cropped) <= 1.0 and np.mean(cropped) < 0.9


def test_tensor_normalisation_and_channel_order() -> None:
    blue = np.zeros((112, 112, 3), np.uint8)
    blue[..., 0] = 255
    bgr = image_to_tensor(blue, ChannelOrder.BGR)
    rgb = image_to_tensor(blue, ChannelOrder.RGB)
    assert bgr.shape == (3, 112, 112) and bgr.dtype == torch.float32 and bgr.is_contiguous()
    assert torch.all(bgr[0] == 1.0) and torch.all(bgr[1:] == -1.0)
    assert torch.all(rgb[2] == 1.0) and torch.all(rgb[:2] == -1.0)
    assert image_to_tensor(np.full((2, 2, 3), 51, np.uint8))[0, 0, 0].item() == pytest.approx((51 / 255 - 0.5) / 0.5)
    image = np.random.default_rng(0).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    for order in ChannelOrder:
        assert np.array_equal(tensor_to_image(image_to_tensor(image, order), order), image)


def test_train_transform_outputs_and_determinism(image_factory: Factory) -> None:
    image = image_factory(5)
    transform = TrainTransform(mask_prob=1.0, flip_prob=0.5, crop_prob=0.3, low_res_prob=0.3,
                               photometric_prob=0.3, seed=11)
    tensor, visibility = transform(image)
    assert tensor.shape == (3, 112, 112) and tensor.dtype == torch.float32
    assert visibility.shape == (1, 112, 112) and visibility.dtype == torch.float32
    assert -1.0 <= tensor.min() and tensor.max() <= 1.0 and 0.3 < visibility.mean() < 0.95
    again = TrainTransform(mask_prob=1.0, flip_prob=0.5, crop_prob=0.3, low_res_prob=0.3,
                           photometric_prob=0.3, seed=11)(image)
    assert torch.equal(again[0], tensor) and torch.equal(again[1], visibility)
    transform.reseed(12)
    assert not torch.equal(transform(image)[0], tensor)
    explicit = transform(image, rng=np.random.default_rng(3))
    assert torch.equal(explicit[0], transform(image, rng=np.random.default_rng(3))[0])


def test_train_transform_flip_only_and_nothing(image_factory: Factory) -> None:
    image = image_factory(6)
    flipped, visibility = TrainTransform(mask_prob=0.0, flip_prob=1.0)(image)
    assert torch.equal(flipped, image_to_tensor(np.ascontiguousarray(image[:, ::-1])))
    assert torch.all(visibility == 1.0)
    plain, _ = TrainTransform(mask_prob=0.0, flip_prob=0.0, channel_order=ChannelOrder.RGB)(image)
    assert torch.equal(plain, image_to_tensor(image, ChannelOrder.RGB))
    evaluated = EvalTransform(ChannelOrder.RGB)(image)
    assert torch.equal(evaluated[0], plain) and torch.all(evaluated[1] == 1.0)


def test_train_transform_crop_marks_black_pixels_occluded(image_factory: Factory) -> None:
    transform = TrainTransform(mask_prob=0.0, flip_prob=0.0, crop_prob=1.0, seed=1)
    for _ in range(10):
        tensor, visibility = transform(image_factory(7))
        black = (tensor == -1.0).all(dim=0)
        assert torch.equal(black, visibility[0] == 0)  # the test image has no pure-black pixels of its own


def test_mask_frequency_follows_mask_prob(image_factory: Factory) -> None:
    transform = TrainTransform(mask_prob=0.5, flip_prob=0.5, seed=0)
    masked = [bool((transform(image_factory(8))[1] < 1).any()) for _ in range(200)]
    assert abs(np.mean(masked) - 0.5) < 0.12
    assert math.isclose(TrainTransform(mask_prob=0.0).mask_prob, 0.0)


def _old_default_path(image: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The training transform before occluder mixtures existed, written out: flip (p 0.5), medical mask (p 0.5)."""
    visibility = np.ones(image.shape[:2], np.float32)
    if rng.random() < 0.5:
        image, visibility = hflip(image, visibility)
    if rng.random() < 0.5:
        image, visibility = apply_medical_mask(image, rng, None)
    return image_to_tensor(image), torch.from_numpy(visibility)[None]


def test_default_transform_is_the_old_medical_mask_path_bit_for_bit(image_factory: Factory) -> None:
    images = [image_factory(40 + k) for k in range(24)]
    default = TrainTransform(seed=5)  # mask_prob 0.5, flip_prob 0.5, no mixture: the config's defaults
    single = TrainTransform(seed=5, occluders="mask:0.5")  # the mixture of the mask alone draws the same
    reference = np.random.default_rng(5)
    masked = 0
    for image in images:
        expected = _old_default_path(image, reference)
        for transform in (default, single):
            tensor, visibility = transform(image)
            assert torch.equal(tensor, expected[0]) and torch.equal(visibility, expected[1])
        masked += bool((expected[1] < 1).any())
    assert 4 <= masked <= 20  # both branches were exercised


def test_mixture_transform_draws_every_occluder_and_its_map_follows_flip_and_crop(image_factory: Factory) -> None:
    text = "sunglasses:0.4,lower_half:0.4"
    transform = TrainTransform(flip_prob=0.5, crop_prob=1.0, seed=3, occluders=text)
    assert "OccluderMixture" in repr(transform)
    reference, mixture, crop = np.random.default_rng(3), OccluderMixture.from_text(text), Augmenter(crop_prob=1.0)
    for k in range(12):  # flip, then one occluder of the mixture, then the crop, all from one generator
        image, visibility = image_factory(k), np.ones((112, 112), np.float32)
        if reference.random() < 0.5:
            image, visibility = hflip(image, visibility)
        image, visibility = crop(*mixture(image, reference), reference)
        tensor, vis = transform(image_factory(k))
        assert torch.equal(tensor, image_to_tensor(image)) and torch.equal(vis[0], torch.from_numpy(visibility))
    counts = {"eyes": 0, "lower": 0, "none": 0}
    plain = TrainTransform(flip_prob=0.0, seed=4, occluders=text)
    for k in range(60):
        hidden = plain(image_factory(k))[1][0] == 0
        counts["lower" if hidden[100].all() else "eyes" if hidden[45:60].any() else "none"] += 1
    assert min(counts.values()) >= 10, counts
    with pytest.raises(ValueError, match="'visor:0.2'"):
        TrainTransform(occluders="mask:0.3,visor:0.2")
