"""The training objective: the class-memory term from the first steps (no fake 0 in epoch 0)."""

from __future__ import annotations

import torch

from oaml.config import config_from_dict, load_config_file
from oaml.models import build_face_model
from oaml.training.build import build_objective

LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _objective_and_model() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    config = config_from_dict(load_config_file("tiny_cpu"))
    model = build_face_model(config.model.arch, config.model.width, config.data.input_size).train()
    return build_objective(config, model, num_classes=6), model


def test_class_memory_term_is_absent_then_learns_within_the_first_epoch() -> None:
    objective, model = _objective_and_model()
    images = torch.randn(8, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    visibility = torch.ones(8, 1, 112, 112)
    out = model(images)
    _, parts = objective(out, LABELS, visibility, model.qaconv)
    assert "cls_loss" not in parts and "cls_acc" not in parts  # no class has a memory yet: absent, not 0
    assert parts["triplet_loss"] >= 0
    objective.update_memory(out, LABELS)  # the graph is rebuilt here: 4 classes seen
    assert objective.class_memory.graph[0, :3].tolist() != [-1, -1, -1]
    total, parts = objective(model(images), LABELS, visibility, model.qaconv)
    assert parts["cls_loss"] > 0 and 0.0 <= float(parts["cls_acc"]) <= 1.0
    total.backward()
    assert model.qaconv.fc.weight.grad is not None
