"""Column sharding and the few collectives the sharded head and class memory need (SPEC §13.3).

Classes are split into contiguous shards: rank r of R holds classes [r·⌈C/R⌉, (r+1)·⌈C/R⌉) clipped to C, so
the last shards may be shorter or empty. Every function takes an explicit process group (None = the default
group) and does nothing collective when the world has one rank, so the modules work without any process group.

The autograd functions here follow the usual rule of differentiable collectives: on every rank, ``backward``
returns the gradient of the sum over ranks of the ranks' objectives. They hold no data-dependent branches
around their collectives, so every rank runs the same collectives in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd import Function

__all__ = ["ShardSpec", "all_reduce_", "batch_sizes", "check_group", "comm_device", "gather_rows", "gather_shards",
           "global_rank", "reduce_sum_with_grad", "synced_batch_norm"]

Group = Any
"""A ``torch.distributed`` process group, or None for the default group."""


@dataclass(frozen=True)
class ShardSpec:
    """Where the classes of each rank lie.

    Attributes:
        num_classes: C.
        rank: this process's rank r.
        world_size: R.
    """

    num_classes: int
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if self.num_classes < 1 or self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"invalid shard: num_classes={self.num_classes}, rank={self.rank}, "
                             f"world_size={self.world_size} (need C >= 1, R >= 1, 0 <= rank < R)")

    @property
    def per_rank(self) -> int:
        """⌈C/R⌉, the width of every shard but the last ones."""
        return math.ceil(self.num_classes / self.world_size)

    def bounds(self, rank: int | None = None) -> tuple[int, int]:
        """[start, end) of ``rank`` (default: this rank)."""
        r = self.rank if rank is None else rank
        return min(r * self.per_rank, self.num_classes), min((r + 1) * self.per_rank, self.num_classes)

    @property
    def start(self) -> int:
        return self.bounds()[0]

    @property
    def end(self) -> int:
        return self.bounds()[1]

    @property
    def size(self) -> int:
        """C_r, the number of classes of this rank (0 for an empty last shard)."""
        return self.end - self.start

    def sizes(self) -> list[int]:
        """C_r of every rank."""
        return [b - a for a, b in (self.bounds(r) for r in range(self.world_size))]

    def owns(self, classes: Tensor) -> Tensor:
        """Bool mask of the entries of ``classes`` that lie in this rank's shard."""
        return (classes >= self.start) & (classes < self.end)


def check_group(spec: ShardSpec, group: Group) -> None:
    """Raise if a world of several ranks has no initialised process group or disagrees with ``spec``."""
    if spec.world_size == 1:
        return
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"world_size={spec.world_size} needs an initialised torch.distributed process group "
                           "(Lightning's DDP strategy creates it before LightningModule.setup)")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if (world, rank) != (spec.world_size, spec.rank):
        raise ValueError(f"shard says rank {spec.rank} of {spec.world_size}, the process group says rank {rank} "
                         f"of {world}")


def comm_device(group: Group, fallback: torch.device) -> torch.device:
    """The device collectives need: the current CUDA device for NCCL, the CPU for gloo, ``fallback`` alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return fallback
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_rank(group: Group, rank: int) -> int:
    """The default-group rank of ``rank`` of ``group`` (what ``broadcast``'s src and ``gather``'s dst expect)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def all_reduce_(tensor: Tensor, op: Any, group: Group, world_size: int) -> Tensor:
    """In-place all-reduce without gradient, on the tensor's own device; a no-op for one rank."""
    if world_size > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def batch_sizes(local: int, device: torch.device, group: Group, world_size: int) -> list[int]:
    """The batch size of every rank (one tiny all-gather; ranks may hold different batch sizes)."""
    if world_size == 1:
        return [local]
    size = torch.tensor([local], dtype=torch.long, device=device)
    out = [torch.empty_like(size) for _ in range(world_size)]
    dist.all_gather(out, size, group=group)
    return [int(s) for s in out]


def _gather_padded(x: Tensor, sizes: list[int], group: Group) -> Tensor:
    """Concatenate the rows of every rank (each padded to the largest batch for the all-gather)."""
    widest = max(sizes)
    padded = x.new_zeros((widest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


class _GatherRows(Function):
    """All-gather of rows whose backward sums every rank's gradient of its own rows (all-reduce, then slice)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rank: int, group: Group, grad_scale: float) -> Tensor:
        ctx.sizes, ctx.rank, ctx.group, ctx.grad_scale = sizes, rank, group, grad_scale
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)  # gloo has no reduce-scatter; Bg x ... is small
        start = sum(ctx.sizes[: ctx.rank])
        own = total[start : start + ctx.sizes[ctx.rank]]
        return (own * ctx.grad_scale if ctx.grad_scale != 1.0 else own), None, None, None, None


def gather_rows(x: Tensor, sizes: list[int], rank: int, group: Group, grad_scale: float = 1.0) -> Tensor:
    """Rows of all ranks, in rank order (Σ sizes x ...), with gradient back to this rank's own rows.

    Args:
        x: sizes[rank] x ... local rows.
        sizes: every rank's row count (:func:`batch_sizes`).
        rank: this rank.
        group: process group.
        grad_scale: factor on the gradient returned to ``x`` (the world size under DDP's gradient averaging).
    """
    if len(sizes) == 1:
        return x if grad_scale == 1.0 or not x.requires_grad else _Scale.apply(x, grad_scale)
    if x.requires_grad and torch.is_grad_enabled():
        return _GatherRows.apply(x, sizes, rank, group, grad_scale)
    return _gather_padded(x.detach(), sizes, group)


class _Scale(Function):
    """Identity whose backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class _AllReduceSum(Function):
    """Sum over ranks; the backward sums the gradients over ranks (the objective is the sum of the ranks')."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Group) -> Tensor:
        ctx.group = group
        out = x.clone().contiguous()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        out = grad.clone().contiguous()
        dist.all_reduce(out, group=ctx.group)
        return out, None


def reduce_sum_with_grad(x: Tensor, group: Group, world_size: int) -> Tensor:
    """Differentiable all-reduce sum (identity for one rank)."""
    return x if world_size == 1 else _AllReduceSum.apply(x, group)


def gather_shards(local: Tensor, spec: ShardSpec, group: Group, dst: int | None = None,
                  chunk_rows: int = 4096) -> Tensor | None:
    """The full C x ... tensor from every rank's C_r x ... shard (rows = classes), without gradient.

    Works in chunks of ``chunk_rows`` rows per rank so that the communication buffers stay small, on the
    collective device (:func:`comm_device`), and returns on ``local``'s device.

    Args:
        local: C_r x ... this rank's shard.
        spec: the sharding.
        group: process group.
        dst: the rank that receives the result; None gives it to every rank.
        chunk_rows: rows per rank and chunk.

    Returns:
        C x ... on ``dst`` (or on every rank for ``dst=None``), None on the other ranks.
    """
    if spec.world_size == 1:
        return local.detach().clone()
    if local.dtype == torch.bool:  # not every backend reduces or gathers bool
        full = gather_shards(local.to(torch.uint8), spec, group, dst, chunk_rows)
        return None if full is None else full.bool()
    device = comm_device(group, local.device)
    receive = dst is None or dst == spec.rank
    pieces: list[list[Tensor]] = [[] for _ in range(spec.world_size)]
    for offset in range(0, spec.per_rank, chunk_rows):
        width = min(chunk_rows, spec.per_rank - offset)
        buf = local.new_zeros((width, *local.shape[1:]), device=device)
        mine = local[offset : offset + width].detach()
        buf[: mine.shape[0]] = mine.to(device)
        parts = [torch.empty_like(buf) for _ in range(spec.world_size)] if receive else None
        if dst is None:
            dist.all_gather(parts, buf, group=group)  # type: ignore[arg-type]
        else:
            dist.gather(buf, parts, dst=global_rank(group, dst), group=group)
        if parts is not None:
            for r, part in enumerate(parts):
                pieces[r].append(part.to(local.device))
    if not receive:
        return None
    rows = [torch.cat(pieces[r], dim=0)[:n] for r, n in enumerate(spec.sizes())]
    return torch.cat(rows, dim=0)


def synced_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, count: int, group: Group,
                      world_size: int) -> Tensor:
    """``bn(x)`` with the batch moments of every rank's ``x`` (``count`` values per channel over all ranks).

    In training mode the mean and the biased variance come from differentiable all-reduces of Σx and Σ(x - mean)²,
    and the running statistics are updated with them (unbiased variance, as BatchNorm does); in eval mode, or
    without running statistics to use, it is ``bn(x)``. Every rank must call it, with ``x`` possibly empty.
    """
    if not bn.training and bn.running_mean is not None:
        return bn(x)
    dims = [0, *range(2, x.dim())]
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    mean = (reduce_sum_with_grad(x.sum(dim=dims), group, world_size) / count).reshape(shape)
    centred = x - mean
    var = (reduce_sum_with_grad(centred.square().sum(dim=dims), group, world_size) / count).reshape(shape)
    y = centred * torch.rsqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight.reshape(shape) + bn.bias.reshape(shape)
    if bn.training and bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            factor = 0.0 if bn.momentum is None else bn.momentum
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
                if bn.momentum is None:
                    factor = 1.0 / float(bn.num_batches_tracked)
            # Through .data, as BatchNorm's own kernel updates them: without a version bump, since an earlier call
            # of the same module in this step saved them for a backward that does not read them in training mode.
            bn.running_mean.data.mul_(1 - factor).add_(mean.flatten(), alpha=factor)
            bn.running_var.data.mul_(1 - factor).add_(var.flatten() * (count / (count - 1)), alpha=factor)
    return y
