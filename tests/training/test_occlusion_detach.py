"""``loss.occlusion_detach``: the QAConv losses reach the occlusion head only when the maps are not detached."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from oaml.config import config_from_dict
from oaml.data.batches import TrainBatch
from oaml.training.build import build_system


def _occlusion_head_grads(detach: bool, occlusion_weight: float) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    torch.manual_seed(0)
    config = config_from_dict({"model": {"arch": "ir_18", "width": 0.0625}, "loss": {"k_nearest": 2}},
                              {"occlusion_loss_weight": occlusion_weight, "occlusion_detach": detach})
    system = build_system(config, num_classes=4)
    system.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    system.log = system.log_dict = lambda *args, **kwargs: None  # outside a fit loop there is nowhere to log
    visibility = torch.ones(8, 1, 112, 112)
    visibility[:, :, 64:, :] = 0.0  # a mask over the lower face
    batch = TrainBatch(torch.randn(8, 3, 112, 112), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), visibility)
    loss = system.training_step(batch, 0)
    loss.backward()
    return ([p.grad for p in system.model.occlusion_head.parameters()],
            system.model.backbone.input_layer[0].weight.grad)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_qaconv_losses_train_the_occlusion_head_unless_the_maps_are_detached() -> None:
    attached, backbone = _occlusion_head_grads(detach=False, occlusion_weight=0.0)
    assert all(g is not None and g.abs().sum() > 0 for g in attached)  # QAConv alone moves the head
    assert backbone.abs().sum() > 0
    detached, backbone = _occlusion_head_grads(detach=True, occlusion_weight=0.0)
    assert all(g is None for g in detached)  # no loss reaches the head
    assert backbone.abs().sum() > 0  # QAConv still trains the backbone (SPEC §1)
    supervised, _ = _occlusion_head_grads(detach=True, occlusion_weight=0.3)
    assert all(g is not None and g.abs().sum() > 0 for g in supervised)  # the MSE alone trains it
