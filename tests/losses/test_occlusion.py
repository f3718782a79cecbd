"""Tests of oaml.losses.occlusion."""

from __future__ import annotations

import pytest
import torch

from oaml.losses.occlusion import OcclusionLoss


def test_mse_by_hand() -> None:
    prediction = torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]])
    target = torch.tensor([[[1.0, 1.0], [0.5, 0.25]]])  # B x H x W is accepted
    assert OcclusionLoss()(prediction, target).item() == pytest.approx((0.25 + 0.25) / 4)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="does not match"):
        OcclusionLoss()(torch.zeros(2, 1, 7, 7), torch.zeros(2, 1, 4, 4))
