"""Every loss sends gradient into the backbone (SPEC §1, §11.1: the predecessor's QAConv branch did not)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from oaml.losses import CombinedLoss
from oaml.data.masks import visibility_grid
from oaml.models import ClassMemory, FaceModel, build_face_model, build_head

LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


@pytest.fixture()
def model() -> FaceModel:
    torch.manual_seed(0)
    return build_face_model("ir_18", width=0.125, input_size=112).train()


def _images() -> torch.Tensor:
    return torch.randn(8, 3, 112, 112, generator=torch.Generator().manual_seed(1))


def _trunk_parameters(model: FaceModel) -> dict[str, torch.nn.Parameter]:
    """The parameters between the image and the feature map: input_layer and body."""
    return {name: p for name, p in model.backbone.named_parameters() if not name.startswith("output_layer")}


def _assert_all_nonzero(params: dict[str, torch.nn.Parameter]) -> None:
    missing = [name for name, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient in {missing[:5]} ({len(missing)} of {len(params)})"


def test_qaconv_losses_alone_train_the_backbone(model: FaceModel) -> None:
    memory = ClassMemory(4, 64, 7, 7, k_nearest=2)
    with torch.no_grad():
        first = model(_images())
        memory.update(first.feature_map, LABELS, first.embedding)
    memory.rebuild_graph()
    out = model(_images())
    score = model.qaconv(out.feature_map, out.feature_map, out.occlusion, out.occlusion)
    logits, valid = memory.logits(model.qaconv, out.feature_map, LABELS, out.occlusion)
    assert valid.all()
    loss = CombinedLoss(adaface_weight=0.0, qaconv_weight=1.0, occlusion_weight=0.0)
    total, parts = loss(LABELS, qaconv_score=score, memory_logits=logits, memory_valid=valid)
    assert parts["cls"] > 0 and parts["pairwise"] > 0
    total.backward()
    _assert_all_nonzero(_trunk_parameters(model))
    _assert_all_nonzero(dict(model.qaconv.named_parameters()))
    assert all(p.grad is None for n, p in model.backbone.named_parameters() if n.startswith("output_layer"))


def test_occlusion_loss_alone_trains_the_backbone(model: FaceModel) -> None:
    out = model(_images())
    mask = torch.ones(8, 112, 112)
    mask[:, 60:, 20:92] = 0  # a lower-face occluder
    loss = CombinedLoss(adaface_weight=0.0, qaconv_weight=0.0, occlusion_weight=1.0)
    total, _ = loss(LABELS, occlusion=out.occlusion, occlusion_target=visibility_grid(mask))
    total.backward()
    _assert_all_nonzero(_trunk_parameters(model))
    _assert_all_nonzero(dict(model.occlusion_head.named_parameters()))


def test_adaface_loss_reaches_output_layer_and_trunk(model: FaceModel) -> None:
    head = build_head("adaface", 512, 4).train()
    out = model(_images())
    total, _ = CombinedLoss(adaface_weight=1.0, qaconv_weight=0.0, occlusion_weight=0.0)(
        LABELS, adaface_loss=F.cross_entropy(head(out.embedding, out.norm, LABELS), LABELS))
    total.backward()
    _assert_all_nonzero(dict(model.backbone.named_parameters()))
