"""SGD with Partial FC's update rule for sharded, sampled kernels (SPEC §13.3).

Paper: An, Deng et al., "Partial FC" (CVPR 2022): in a step, only the sampled class centres are updated.

For the kernel of every :class:`~oaml.models.partial_fc.PartialFC` it is given (columns = classes) the
optimizer asks the head which columns took part in a backward since the last step
(:meth:`~oaml.models.partial_fc.PartialFC.pop_sampled_columns`, called after Lightning's closure has run the
backward) and updates those columns only:

    g = grad[:, S] + weight_decay · w[:, S];  buf[:, S] = momentum · buf[:, S] + g;  w[:, S] -= lr · buf[:, S]
    (Nesterov: w[:, S] -= lr · (g + momentum · buf[:, S])).

Unsampled columns keep their weights **and** their momentum: their buffer is frozen (neither decayed nor applied)
and resumes when the column is sampled again; weight decay never touches them. The buffer is a dense tensor of the
parameter's shape, created as zeros at the first step (with dampening 0, μ·0 + g equals torch SGD's first-step
``buf = g``), and stored as ``state[p]["momentum_buffer"]`` like torch's SGD, so with every column sampled
(ρ = 1) the update is torch SGD's, bit for bit. All other parameters go through torch's SGD unchanged.

The buffer is created (as zeros) at the first step that has a kernel gradient, even on a rank whose shard is
empty or had no sampled column, so that every rank holds one from then on.

Checkpoints: the momentum buffer is as sharded as the kernel. :meth:`PartialSGD.gather_state` (collective) turns
the heads' momentum shards of a state dict into full E x C buffers on one rank, and
:meth:`PartialSGD.load_state_dict` accepts such full buffers on any world size (each rank keeps its columns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR

from oaml.models.partial_fc import PartialFC
from oaml.training.optim import multistep_lambda, parameter_groups

__all__ = ["PartialSGD", "build_partial_sgd"]


class PartialSGD(SGD):
    """torch SGD, except that the kernels of ``heads`` are updated on their sampled columns only.

    Args:
        params: parameters or parameter groups (the heads' kernels must be among them).
        lr: learning rate.
        momentum: momentum factor.
        weight_decay: L2 penalty (per group, as in SGD).
        nesterov: Nesterov momentum.
        heads: the sharded heads whose ``kernel`` follows the column rule.

    Raises:
        ValueError: if a head's kernel is not optimised here.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, *, heads: Sequence[PartialFC] = ()) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        self._heads = list(heads)
        for head in self._heads:
            self._state_index(head.kernel)  # raises if the kernel is not optimised here

    def _state_index(self, param: Tensor) -> int:
        """The key of ``param`` in ``state_dict()["state"]`` (its position over all groups)."""
        flat = [p for group in self.param_groups for p in group["params"]]
        index = next((i for i, p in enumerate(flat) if p is param), None)
        if index is None:
            raise ValueError(f"the kernel {tuple(param.shape)} of a sharded head is not a parameter of this optimizer")
        return index

    def _group_of(self, param: Tensor) -> dict[str, Any]:
        return next(g for g in self.param_groups if any(p is param for p in g["params"]))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run the closure (forward and backward), torch SGD for the ordinary parameters, then the column rule."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = [(head.kernel, head.kernel.grad, head.pop_sampled_columns()) for head in self._heads]
        for param, _, _ in held:
            param.grad = None  # torch SGD skips parameters without gradient
        try:
            super().step()
        finally:
            for param, grad, _ in held:
                param.grad = grad
        for param, grad, columns in held:
            if grad is not None:
                self._update_columns(param, grad, columns.to(param.device), self._group_of(param))
        return loss

    def _update_columns(self, param: Tensor, grad: Tensor, columns: Tensor, group: dict[str, Any]) -> None:
        if group.get("dampening", 0) or group.get("maximize", False):
            raise ValueError("PartialSGD supports neither dampening nor maximize")
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        state = self.state[param]
        if momentum and state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if not columns.numel():
            return
        weight = param.index_select(1, columns)
        step = grad.index_select(1, columns)
        if decay:
            step = step.add(weight, alpha=decay)
        if momentum:
            buf = state["momentum_buffer"]
            velocity = buf.index_select(1, columns).mul_(momentum).add_(step)
            buf.index_copy_(1, columns, velocity)
            step = step.add(velocity, alpha=momentum) if group["nesterov"] else velocity
        param.index_copy_(1, columns, weight.add_(step, alpha=-lr))

    def gather_state(self, state: dict[str, Any], dst: int | None = 0) -> dict[str, Any]:
        """Put the full E x C momentum of every head into ``state`` (an ``optimizer.state_dict()``) on ``dst``.

        A collective: every rank calls it (e.g. in ``LightningModule.on_save_checkpoint``, which Lightning runs on
        every rank). The per-parameter entries are replaced, never modified, since ``state_dict()`` shares them
        with the live optimizer. Other ranks' ``state`` is returned unchanged.
        """
        for head in self._heads:
            key = self._state_index(head.kernel)
            entry = state["state"].get(key)
            local = None if entry is None else entry.get("momentum_buffer")
            has = torch.tensor([0 if local is None else 1], device=head.kernel.device)
            if head.spec.world_size > 1:
                dist.all_reduce(has, op=dist.ReduceOp.MIN, group=head.group)
            if int(has):
                full = head.gather_columns(local, dst)  # type: ignore[arg-type]
                if full is not None:
                    state["state"][key] = {**entry, "momentum_buffer": full}  # type: ignore[dict-item]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, keeping this rank's columns of a full E x C head momentum."""
        state = {**state_dict, "state": dict(state_dict["state"])}
        for head in self._heads:
            key = self._state_index(head.kernel)
            entry = state["state"].get(key)
            buf = None if entry is None else entry.get("momentum_buffer")
            if buf is not None and buf.dim() == 2 and buf.shape[1] == head.num_classes:
                state["state"][key] = {**entry, "momentum_buffer": head.local_columns(buf).clone()}
        super().load_state_dict(state)


def build_partial_sgd(modules: Iterable[nn.Module], heads: Sequence[PartialFC], lr: float, momentum: float,
                      weight_decay: float, steps_per_epoch: int, milestones: tuple[int, ...], gamma: float,
                      warmup_epochs: float = 0.0) -> tuple[PartialSGD, LambdaLR]:
    """:func:`oaml.training.optim.build_sgd` with the heads' kernels under the column rule.

    ``modules`` must include the heads (their kernels land in the decay group, as the unsharded kernel does).
    """
    optimizer = PartialSGD(parameter_groups(modules, weight_decay), lr=lr, momentum=momentum, heads=heads)
    scheduler = LambdaLR(optimizer, multistep_lambda(steps_per_epoch, milestones, gamma, warmup_epochs))
    return optimizer, scheduler
