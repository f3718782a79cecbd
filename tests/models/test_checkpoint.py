"""Tests of oaml.models.checkpoint: accepted layouts, strict loading, safe unpickling, inference."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from oaml.errors import CheckpointError
from oaml.models.checkpoint import backbone_state_dict, extract_prefixed, infer_backbone_config, load_backbone
from oaml.models.iresnet import IResNet, build_backbone


class Opaque:
    """A class that weights_only unpickling does not allow."""

    def __init__(self) -> None:
        self.value = 3


@pytest.fixture(scope="module")
def source() -> IResNet:
    torch.manual_seed(1)
    return build_backbone("ir_18", width=0.125, input_size=64)


def _fresh() -> IResNet:
    return build_backbone("ir_18", width=0.125, input_size=64)


def _assert_same(model: IResNet, reference: IResNet) -> None:
    ref = reference.state_dict()
    got = model.state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def test_extract_prefixed() -> None:
    state = {"model.a": 1, "model.b.c": 2, "head.kernel": 3, "xmodel.d": 4}
    assert extract_prefixed(state, "model.") == {"a": 1, "b.c": 2}
    assert extract_prefixed(state, "none.") == {}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,  # raw backbone dict
        lambda sd: {"state_dict": sd},
        lambda sd: {"state_dict": {**_prefixed(sd, "model."), "head.kernel": torch.zeros(512, 5),
                                   "head.batch_mean": torch.ones(1), "head.batch_std": torch.ones(1),
                                   "head.t": torch.zeros(1)}},  # released AdaFace layout
        lambda sd: {"state_dict": {**_prefixed(sd, "model.backbone."), "model.qaconv.fc.weight": torch.zeros(1, 16),
                                   "model.occlusion_head.layers.0.weight": torch.zeros(16, 64, 3, 3),
                                   "head.kernel": torch.zeros(512, 5)},
                    "oaml": {"config": {"model": {"arch": "ir_18"}}}},  # oaml Lightning layout
        lambda sd: _prefixed(sd, "backbone."),  # a FaceModel state dict
    ],
    ids=["raw", "state_dict", "adaface_released", "oaml_lightning", "face_model"],
)
def test_accepted_layouts_load_strictly(source: IResNet, wrap) -> None:
    model = load_backbone(wrap(source.state_dict()), backbone=_fresh())
    _assert_same(model, source)


def test_prefix_preference_model_backbone_before_model(source: IResNet) -> None:
    decoy = {k: torch.zeros_like(v) for k, v in source.state_dict().items()}
    checkpoint = {**_prefixed(source.state_dict(), "model.backbone."), **_prefixed(decoy, "model.")}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in backbone_state_dict(checkpoint).items())


def test_load_file_infers_architecture(tmp_path: Path, source: IResNet) -> None:
    path = tmp_path / "released.ckpt"
    torch.save({"state_dict": _prefixed(source.state_dict(), "model.")}, path)
    model = load_backbone(path)
    assert (model.units, model.width, model.input_size) == ((2, 2, 2, 2), 0.125, 64)
    _assert_same(model, source)


def test_infer_backbone_config_se_and_full_width() -> None:
    with torch.device("meta"):
        model = build_backbone("ir_se_50")
    assert infer_backbone_config(model.state_dict()) == {"arch": "ir_se_50", "width": 1.0, "input_size": 112}


def test_unsafe_pickle_is_refused(tmp_path: Path, source: IResNet) -> None:
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": source.state_dict(), "extra": Opaque()}, path)
    with pytest.raises(CheckpointError, match="unsafe unpickling") as info:
        load_backbone(path, backbone=_fresh())
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


def test_key_mismatch_lists_missing_and_unexpected(source: IResNet) -> None:
    state = dict(source.state_dict())
    del state["body.0.res_layer.1.weight"]
    state["body.0.res_layer.9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_backbone(state, backbone=_fresh())
    message = str(info.value)
    assert "1 missing" in message and "body.0.res_layer.1.weight" in message
    assert "1 unexpected" in message and "body.0.res_layer.9.weight" in message


def test_shape_mismatch_is_checkpoint_error(source: IResNet) -> None:
    with pytest.raises(CheckpointError):
        load_backbone(source.state_dict(), backbone=build_backbone("ir_18", width=0.25, input_size=64))


def test_wrong_architecture_is_checkpoint_error(source: IResNet) -> None:
    with pytest.raises(CheckpointError, match="missing"):
        load_backbone(source.state_dict(), arch="ir_34", width=0.125, input_size=64)


def test_unknown_layout_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no backbone weights"):
        load_backbone({"state_dict": {"head.kernel": torch.zeros(2, 2)}})
    with pytest.raises(FileNotFoundError, match=r"nothing\.ckpt"):
        load_backbone(tmp_path / "nothing.ckpt")
