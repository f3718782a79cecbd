"""Tests of oaml.models.occlusion: the head's structure and output, and the visible-fraction target."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oaml.models.occlusion import OcclusionHead, visibility_target


def test_head_structure_and_output_range() -> None:
    head = OcclusionHead(512, 128)
    conv1, bn, relu, conv2 = head.layers
    assert isinstance(conv1, nn.Conv2d) and conv1.kernel_size == (3, 3) and conv1.padding == (1, 1)
    assert conv1.bias is None and (conv1.in_channels, conv1.out_channels) == (512, 128)
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert conv2.kernel_size == (1, 1) and conv2.bias is not None and conv2.out_channels == 1
    out = OcclusionHead(16, 8)(torch.randn(3, 16, 7, 7) * 10)
    assert out.shape == (3, 1, 7, 7)
    assert out.min() >= 0 and out.max() <= 1


def test_invalid_channels() -> None:
    with pytest.raises(ValueError):
        OcclusionHead(0)


def _hand_mask() -> torch.Tensor:
    """112 x 112, visible except: cell (0, 0) fully occluded, the left half of cell (0, 1), an 8 x 8
    quarter of cell (3, 3) and 4 x 16 pixels of cell (6, 6)."""
    mask = torch.ones(112, 112)
    mask[0:16, 0:16] = 0
    mask[0:16, 16:24] = 0
    mask[48:56, 48:56] = 0
    mask[96:100, 96:112] = 0
    return mask


def test_visibility_target_exact_fractions() -> None:
    expected = torch.ones(7, 7)
    expected[0, 0] = 0.0
    expected[0, 1] = 0.5
    expected[3, 3] = 0.75
    expected[6, 6] = 0.75
    target = visibility_target(_hand_mask().unsqueeze(0))
    assert target.shape == (1, 1, 7, 7)
    assert torch.equal(target[0, 0], expected)
    assert torch.equal(visibility_target(_hand_mask().view(1, 1, 112, 112)), target)


def test_visibility_target_integer_masks_and_all_ones() -> None:
    as_uint8 = visibility_target(_hand_mask().to(torch.uint8).unsqueeze(0))
    assert as_uint8.dtype == torch.float32 and torch.equal(as_uint8, visibility_target(_hand_mask().unsqueeze(0)))
    assert torch.equal(visibility_target(torch.ones(2, 112, 112)), torch.ones(2, 1, 7, 7))


def test_visibility_target_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="B x H x W"):
        visibility_target(torch.ones(2, 3, 112, 112))
