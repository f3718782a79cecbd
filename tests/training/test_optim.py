"""Parameter groups hold every parameter exactly once; the schedule decays at the milestones."""

from __future__ import annotations

import pytest
from torch import nn

from oaml.training.optim import build_sgd, multistep_lambda, parameter_groups


def _toy() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.PReLU(4), nn.Flatten(),
                         nn.Linear(4, 2), nn.BatchNorm1d(2, affine=False))


def test_decay_split_follows_the_rules() -> None:
    model = _toy()
    groups = parameter_groups([model], 5e-4)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(model[0].weight), id(model[2].weight), id(model[4].weight)}
    assert no_decay == {id(model[1].weight), id(model[1].bias), id(model[4].bias)}


def test_shared_parameters_are_listed_once() -> None:
    shared = nn.Linear(3, 3)
    outer = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    groups = parameter_groups([outer, shared], 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == 2


@pytest.mark.parametrize(("step", "expected"), [(0, 1.0), (9, 1.0), (10, 0.1), (29, 0.1), (30, 0.01), (99, 0.01)])
def test_multistep_factor(step: int, expected: float) -> None:
    factor = multistep_lambda(steps_per_epoch=5, milestones=(2, 6), gamma=0.1)
    assert factor(step) == pytest.approx(expected)


def test_warmup_ramps_linearly_then_hands_over() -> None:
    factor = multistep_lambda(steps_per_epoch=4, milestones=(3,), gamma=0.5, warmup_epochs=1.0)
    assert [factor(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert factor(12) == pytest.approx(0.5)


def test_scheduler_drives_the_optimizer_lr() -> None:
    model = _toy()
    optimizer, scheduler = build_sgd([model], lr=0.1, momentum=0.9, weight_decay=5e-4, steps_per_epoch=2,
                                     milestones=(1,), gamma=0.1)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01])
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)
