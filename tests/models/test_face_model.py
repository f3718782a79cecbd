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


def test_embedding_gate_multiplies_the_feature_map_by_the_visibility() -> None:
    torch.manual_seed(0)
    model = build_face_model("ir_18", width=0.125, input_size=64, embedding_gate=True).eval()
    x = torch.randn(3, 3, 64, 64)
    out = model(x)
    feature_map = model.backbone.forward_features(x)
    expected, _ = model.backbone.embed(feature_map * model.occlusion_head(feature_map))
    assert torch.allclose(out.embedding, expected, atol=1e-6)
    ungated = model.backbone(x).embedding
    assert not torch.allclose(out.embedding, ungated, atol=1e-3)  # the maps are not all ones: the gate acts
    with torch.no_grad():  # a head that says "all visible" makes the gate the identity
        model.occlusion_head.layers[-1].weight.zero_()
        model.occlusion_head.layers[-1].bias.fill_(50.0)
    assert torch.allclose(model(x).embedding, ungated, atol=1e-6)


@pytest.mark.parametrize("detach", [False, True])
def test_detached_gate_sends_no_embedding_gradient_into_the_head(detach: bool) -> None:
    torch.manual_seed(0)
    model = build_face_model("ir_18", width=0.125, input_size=64, embedding_gate=True, detach_gate=detach).train()
    model(torch.randn(4, 3, 64, 64)).embedding.sum().backward()
    grads = [p.grad for p in model.occlusion_head.parameters()]
    assert all(g is None for g in grads) == detach
