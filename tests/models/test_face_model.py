"""Tests of oaml.models.face_model: wiring, output shapes and consistency checks."""

from __future__ import annotations

import pytest
import torch

from oaml.models import FaceModel, FaceOutput, OcclusionHead, QAConv, build_backbone, build_face_model


def test_forward_outputs() -> None:
    torch.manual_seed(0)
    model = build_face_model("ir_18", width=0.125, input_size=64)
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, FaceOutput)
    assert out.embedding.shape == (2, 512) and out.norm.shape == (2, 1)
    assert out.feature_map.shape == (2, 64, 4, 4) and out.occlusion.shape == (2, 1, 4, 4)
    assert out.occlusion.min() >= 0 and out.occlusion.max() <= 1
    assert (model.qaconv.num_features, model.qaconv.height, model.qaconv.width) == (64, 4, 4)
    assert model.occlusion_head.layers[0].out_channels == 16  # 128 scaled by the width
    assert model.qaconv(out.feature_map, out.feature_map, out.occlusion, out.occlusion).shape == (2, 2)


def test_full_width_parts() -> None:
    with torch.device("meta"):
        model = build_face_model("ir_50")
    assert model.occlusion_head.layers[0].in_channels == 512 and model.occlusion_head.layers[0].out_channels == 128
    assert (model.qaconv.num_features, model.qaconv.height, model.qaconv.width) == (512, 7, 7)


def test_mismatched_parts_raise() -> None:
    backbone = build_backbone("ir_18", width=0.125, input_size=32)
    with pytest.raises(ValueError, match="QAConv"):
        FaceModel(backbone, OcclusionHead(64, 8), QAConv(64, 7, 7))
    with pytest.raises(ValueError, match="occlusion head"):
        FaceModel(backbone, OcclusionHead(32, 8), QAConv(64, 2, 2))
