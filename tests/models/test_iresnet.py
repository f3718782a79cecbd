"""Tests of oaml.models.iresnet: the released AdaFace key layout, parameter counts, widths, forward."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from oaml.models.iresnet import BACKBONES, BackboneOutput, IResNet, build_backbone, feature_map_side, scaled_widths

SPEC_UNITS = {"ir_18": (2, 2, 2, 2), "ir_34": (3, 4, 6, 3), "ir_50": (3, 4, 14, 3), "ir_101": (3, 13, 30, 3)}
SPEC_PARAMS_M = {"ir_18": 24.0, "ir_34": 34.1, "ir_50": 43.6, "ir_101": 65.2}
SPEC_CONV_SHORTCUTS = {"ir_18": (2, 4, 6), "ir_34": (3, 7, 13), "ir_50": (3, 7, 21), "ir_101": (3, 16, 46)}


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    stats = {f"{prefix}.running_mean": (channels,), f"{prefix}.running_var": (channels,),
             f"{prefix}.num_batches_tracked": ()}
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), **stats}


def expected_layout(units: tuple[int, ...], se: bool = False) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the released AdaFace IR layout, written from the rules of SPEC §2."""
    keys: dict[str, tuple[int, ...]] = {"input_layer.0.weight": (64, 3, 3, 3), **_bn("input_layer.1", 64),
                                        "input_layer.2.weight": (64,)}
    index, in_c = 0, 64
    for count, depth in zip(units, (64, 128, 256, 512), strict=True):
        for unit in range(count):
            res = f"body.{index}.res_layer"
            keys.update(_bn(f"{res}.0", in_c))
            keys[f"{res}.1.weight"] = (depth, in_c, 3, 3)
            keys.update(_bn(f"{res}.2", depth))
            keys[f"{res}.3.weight"] = (depth,)
            keys[f"{res}.4.weight"] = (depth, depth, 3, 3)
            keys.update(_bn(f"{res}.5", depth))
            if se:
                keys[f"{res}.se_block.fc1.weight"] = (depth // 16, depth, 1, 1)
                keys[f"{res}.se_block.fc2.weight"] = (depth, depth // 16, 1, 1)
            if unit == 0 and in_c != depth:
                keys[f"body.{index}.shortcut_layer.0.weight"] = (depth, in_c, 1, 1)
                keys.update(_bn(f"body.{index}.shortcut_layer.1", depth))
            index, in_c = index + 1, depth
    keys.update(_bn("output_layer.0", 512))
    keys["output_layer.3.weight"] = (512, 512 * 7 * 7)
    keys["output_layer.3.bias"] = (512,)
    keys.update({k: v for k, v in _bn("output_layer.4", 512).items() if not k.endswith(("weight", "bias"))})
    return keys


def _meta(arch: str, **kwargs: object) -> IResNet:
    with torch.device("meta"):
        return build_backbone(arch, **kwargs)


def _layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_ir18_state_dict_equals_released_layout() -> None:
    assert _layout(_meta("ir_18")) == expected_layout(SPEC_UNITS["ir_18"])


def test_ir_se_50_state_dict_equals_released_layout() -> None:
    assert _layout(_meta("ir_se_50")) == expected_layout(SPEC_UNITS["ir_50"], se=True)


@pytest.mark.parametrize("arch", sorted(SPEC_UNITS))
def test_layout_and_parameter_count(arch: str) -> None:
    model = _meta(arch)
    layout = _layout(model)
    assert layout == expected_layout(SPEC_UNITS[arch])
    shortcuts = sorted({int(k.split(".")[1]) for k in layout if ".shortcut_layer." in k})
    assert tuple(shortcuts) == SPEC_CONV_SHORTCUTS[arch]
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 1e6 - SPEC_PARAMS_M[arch]) < 0.05 + 1e-9


def test_registry_names_and_unknown_arch() -> None:
    assert BACKBONES.names() == ["ir_18", "ir_34", "ir_50", "ir_101", "ir_se_50"]  # registration order
    with pytest.raises(ValueError, match="ir_18"):
        build_backbone("ir_1000")


def test_width_multiplier_and_feature_map_side() -> None:
    assert scaled_widths(1.0) == (64, 128, 256, 512)
    assert scaled_widths(0.125) == (8, 16, 32, 64)
    assert scaled_widths(0.001) == (1, 1, 1, 1)
    with pytest.raises(ValueError):
        scaled_widths(0.0)
    # four stride-2 stages, each n -> ceil(n / 2)
    assert [feature_map_side(n) for n in (112, 64, 56, 32, 16)] == [7, 4, 4, 2, 1]
    model = _meta("ir_18", width=0.125, input_size=64)
    assert (model.out_channels, model.feature_map_size) == (64, 4)
    assert model.output_layer[3].in_features == 64 * 4 * 4
    assert model.output_layer[3].out_features == 512  # embedding size kept at every width


@pytest.mark.parametrize("arch", ["ir_18", "ir_34", "ir_50", "ir_101", "ir_se_50"])
def test_forward_backward_tiny(arch: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(arch, width=0.125, input_size=112)
    x = torch.randn(2, 3, 112, 112)
    out = model(x)
    assert isinstance(out, BackboneOutput)
    assert out.embedding.shape == (2, 512) and out.norm.shape == (2, 1)
    assert out.feature_map.shape == (2, 64, 7, 7)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(2), atol=1e-5)
    (out.embedding.sum() + out.norm.sum() + out.feature_map.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_other_input_size_forward() -> None:
    model = build_backbone("ir_18", width=0.125, input_size=64)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.feature_map.shape == (2, 64, 4, 4) and out.embedding.shape == (2, 512)


def test_feature_map_is_body_output_and_norm_matches_raw_embedding() -> None:
    torch.manual_seed(0)
    model = build_backbone("ir_18", width=0.125, input_size=32).eval()
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    body = model.body(model.input_layer(x))
    raw = model.output_layer(body)
    assert torch.equal(out.feature_map, body)
    assert torch.allclose(out.norm.squeeze(1), raw.norm(dim=1))
    assert torch.allclose(out.embedding * out.norm, raw, atol=1e-5)


def test_zero_embedding_does_not_divide_by_zero() -> None:
    model = build_backbone("ir_18", width=0.125, input_size=32)
    model.output_layer = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4, 512))
    nn.init.zeros_(model.output_layer[1].weight)
    nn.init.zeros_(model.output_layer[1].bias)
    out = model(torch.randn(2, 3, 32, 32))
    assert torch.equal(out.norm, torch.zeros(2, 1))
    assert torch.equal(out.embedding, torch.zeros(2, 512))


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = build_backbone("ir_18", width=1.0, input_size=16)
    conv = model.body[7].res_layer[4]  # 512 -> 512, 3x3: fan_out = 512 * 9
    assert abs(conv.weight.std().item() - math.sqrt(2 / (512 * 9))) < 0.02 * math.sqrt(2 / (512 * 9))
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert torch.all(model.output_layer[3].bias == 0)
