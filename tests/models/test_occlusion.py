"""Tests of oaml.models.occlusion: the head's structure and output."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oaml.models.occlusion import OcclusionHead


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
