"""Optimizer parameter groups and the learning-rate schedule.

Weight decay applies to conv, linear and PReLU weights, the margin-head kernel and the QAConv ``fc`` weight;
BatchNorm parameters and every bias get none. Each parameter lands in exactly one group (the predecessor
added some parameters several times, SPEC §11.8).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["build_sgd", "multistep_lambda", "parameter_groups"]


def parameter_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict[str, object]]:
    """Split the parameters of ``modules`` into a decayed and an undecayed group.

    A parameter shared by several modules is listed once (the first time it is met).

    Returns:
        ``[{"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]``; an empty group is dropped.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in modules:
        for sub in module.modules():
            is_norm = isinstance(sub, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
            for name, param in sub.named_parameters(recurse=False):
                if id(param) in seen or not param.requires_grad:
                    continue
                seen.add(id(param))
                (no_decay if is_norm or name == "bias" else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [group for group in groups if group["params"]]


def multistep_lambda(steps_per_epoch: int, milestones: tuple[int, ...], gamma: float,
                     warmup_epochs: float = 0.0):  # type: ignore[no-untyped-def]
    """The lr factor at optimizer step ``step``: ``gamma ** (milestones passed)`` times a linear warm-up.

    The schedule is evaluated per step, so a milestone takes effect at the first step of its epoch, exactly
    as an epoch-wise ``MultiStepLR`` would, and the warm-up ramps smoothly inside the first epochs.
    """
    warmup_steps = math.ceil(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        epoch = step // max(steps_per_epoch, 1)
        value = gamma ** sum(epoch >= m for m in milestones)
        if step < warmup_steps:
            value *= (step + 1) / warmup_steps
        return value

    return factor


def build_sgd(modules: Iterable[nn.Module], lr: float, momentum: float, weight_decay: float,
              steps_per_epoch: int, milestones: tuple[int, ...], gamma: float,
              warmup_epochs: float = 0.0) -> tuple[Optimizer, LambdaLR]:
    """SGD with momentum over :func:`parameter_groups`, and its per-step multi-step schedule."""
    optimizer = SGD(parameter_groups(modules, weight_decay), lr=lr, momentum=momentum)
    scheduler = LambdaLR(optimizer, multistep_lambda(steps_per_epoch, milestones, gamma, warmup_epochs))
    return optimizer, scheduler
