"""Per-rank memory of the sharded head, the sharded class memory and their optimizer state, and the budget check
(SPEC §5, §13.3).

The estimate counts the tensors of the largest shard (⌈C/R⌉ classes, rank 0) as
:class:`~oaml.models.partial_fc.PartialFC`, :class:`~oaml.training.partial_sgd.PartialSGD` and
:class:`~oaml.models.ClassMemory` allocate them (E = embedding size, C_r = ⌈C/R⌉, n_s = ⌈ρ·C_r⌉ classes kept per
step, B_g = the global batch):

- ``kernel``: E x C_r fp32 parameter; ``kernel_grad``: its gradient, dense E x C_r (autograd materialises the whole
  shard, zero outside the sampled columns); ``optimizer_state``: the dense E x C_r momentum buffer (0 without
  momentum);
- ``sampled_kernel``: E x n_s for the gathered sampled columns and E x n_s for their normalised copy (at ρ = 1 the
  kernel is used in place and only its normalised copy is made, E x C_r);
- ``logits``: :data:`LOGIT_COPIES` B_g x n_s fp32 tensors alive together in the step (cosines, logits, the
  softmax's exponentials and the logit gradient);
- ``backward``: the two E x n_s temporaries of the column normalisation's backward (the gradient of the normalised
  copy and autograd's intermediate), alive next to the kernel gradient at the step's peak; the head's total is
  measured against the peak-RSS growth of a real step by ``benchmarks/bench_scale.py``;
- ``class_memory``: C_r x C x H x W fp16 plus the ``seen`` flags; ``prototypes``: prototype and running sum
  (C_r x E fp32 each), the validity flags and the counts (int64); ``graph``: C_r x k int64.

Other activations (the backbone's, QAConv's similarities) are not included. A checkpoint of a run on several ranks
holds every class: rank 0 gathers the full kernel, its momentum and the full memory on the host while it saves
(:attr:`RankMemory.gathered_on_save`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from oaml.errors import ConfigError
from oaml.models.partial_fc import sample_size

__all__ = ["LOGIT_COPIES", "RankMemory", "check_rank_memory", "estimate_rank_memory", "format_rank_memory"]

_GIB = 2**30
LOGIT_COPIES = 4
"""B_g x n_s fp32 tensors of the sharded softmax alive at its peak (cosine, logits, exponentials, gradient)."""


@dataclass(frozen=True)
class RankMemory:
    """Bytes per rank (largest shard), split by tensor; see the module docstring.

    Attributes:
        num_classes: C.
        world_size: R.
        sample_rate: ρ.
        memory_on_cpu: whether class memory, prototypes and graph live on the host.
        gathered_on_save: bytes rank 0 holds on the host while it writes a checkpoint (R > 1; 0 for one rank).
    """

    num_classes: int
    world_size: int
    sample_rate: float
    memory_on_cpu: bool
    kernel: int
    kernel_grad: int
    optimizer_state: int
    sampled_kernel: int
    logits: int
    backward: int
    class_memory: int
    prototypes: int
    graph: int
    gathered_on_save: int

    @property
    def head_total(self) -> int:
        """Kernel, its gradient and momentum, the sampled copies, the logits and the backward's temporaries."""
        return self.kernel + self.kernel_grad + self.optimizer_state + self.sampled_kernel + self.logits + \
            self.backward

    @property
    def memory_total(self) -> int:
        """Class memory, prototypes and graph."""
        return self.class_memory + self.prototypes + self.graph

    @property
    def device_total(self) -> int:
        """What the accelerator holds (everything on a CPU-only run)."""
        return self.head_total + (0 if self.memory_on_cpu else self.memory_total)

    @property
    def host_total(self) -> int:
        """What the host holds for this rank when the class memory is kept there."""
        return self.memory_total if self.memory_on_cpu else 0


def estimate_rank_memory(num_classes: int, world_size: int, sample_rate: float = 1.0, embedding_size: int = 512,
                         feature_shape: tuple[int, int, int] = (512, 7, 7), k_nearest: int = 32,
                         memory_on_cpu: bool = False, momentum: bool = True, class_memory: bool = True,
                         batch_size: int = 0, param_bytes: int = 4, memory_bytes: int = 2) -> RankMemory:
    """Per-rank bytes of the sharded head and class memory (module docstring).

    Args:
        num_classes: C.
        world_size: R.
        sample_rate: ρ in (0, 1].
        embedding_size: E.
        feature_shape: C x H x W of the memorised feature maps.
        k_nearest: graph neighbours per class.
        memory_on_cpu: class memory on the host (``--class_memory_on_cpu``).
        momentum: SGD with momentum (a buffer per kernel element).
        class_memory: whether the softmax-triplet loss (and so the class memory) is on.
        batch_size: the global batch B_g (0 leaves the logits out).
        param_bytes: bytes per kernel, gradient and momentum element (4, fp32).
        memory_bytes: bytes per memorised feature value (2, fp16).

    Raises:
        ConfigError: on non-positive sizes or a sample rate outside (0, 1].
    """
    if num_classes < 1 or world_size < 1 or batch_size < 0 or not 0.0 < sample_rate <= 1.0:
        raise ConfigError(f"memory estimate needs num_classes >= 1, world_size >= 1, batch_size >= 0 and sample_rate "
                          f"in (0, 1], got {num_classes}, {world_size}, {batch_size}, {sample_rate}")
    local = math.ceil(num_classes / world_size)
    column = embedding_size * param_bytes
    kept = sample_size(sample_rate, local) if sample_rate < 1.0 else local
    rows = local if class_memory else 0
    per_class = math.prod(feature_shape) * memory_bytes + 1 + 2 * embedding_size * 4 + 1 + 8 + k_nearest * 8
    return RankMemory(
        num_classes=num_classes, world_size=world_size, sample_rate=sample_rate, memory_on_cpu=memory_on_cpu,
        kernel=local * column, kernel_grad=local * column, optimizer_state=local * column if momentum else 0,
        sampled_kernel=(2 * kept if sample_rate < 1.0 else local) * column,
        logits=LOGIT_COPIES * batch_size * kept * 4, backward=2 * kept * column,
        class_memory=rows * (math.prod(feature_shape) * memory_bytes + 1),
        prototypes=rows * (2 * embedding_size * 4 + 1 + 8),
        graph=rows * k_nearest * 8,
        gathered_on_save=0 if world_size == 1 else num_classes * (column * (2 if momentum else 1)
                                                                  + (per_class if class_memory else 0)))


def _gib(n: int) -> str:
    """GiB with two decimals, or MiB below 1 GiB."""
    return f"{n / _GIB:.2f} GiB" if n >= _GIB else f"{n / 2**20:.1f} MiB"


def format_rank_memory(e: RankMemory) -> str:
    """One line: the per-rank figures of ``e`` by tensor, in GiB."""
    where = "host" if e.memory_on_cpu else "device"
    saved = f"; a checkpoint gathers {_gib(e.gathered_on_save)} on rank 0's host" if e.gathered_on_save else ""
    return (f"C={e.num_classes}, R={e.world_size}, sample_rate={e.sample_rate}: kernel {_gib(e.kernel)}, kernel grad "
            f"{_gib(e.kernel_grad)}, momentum {_gib(e.optimizer_state)}, sampled kernel {_gib(e.sampled_kernel)}, "
            f"logits {_gib(e.logits)}, backward {_gib(e.backward)}, class memory {_gib(e.class_memory)} + prototypes "
            f"{_gib(e.prototypes)} + graph {_gib(e.graph)} on the {where}; device total {_gib(e.device_total)}, "
            f"host total {_gib(e.host_total)}{saved}")


def check_rank_memory(num_classes: int, world_size: int, device_budget: int, host_budget: int | None = None,
                      cpu_only: bool = False, **settings: Any) -> RankMemory:
    """Estimate (:func:`estimate_rank_memory` with ``settings``) and raise a one-line
    :class:`~oaml.errors.ConfigError` if it exceeds a budget (bytes per rank).

    Args:
        num_classes: C.
        world_size: R.
        device_budget: bytes an accelerator (a CPU-only run: the host) can give this rank.
        host_budget: bytes the host can give this rank besides (None: unchecked).
        cpu_only: the run has no accelerator, so ``--class_memory_on_cpu`` is no fix.
        settings: the other arguments of :func:`estimate_rank_memory`.

    The message names the sizes and the fixes: a lower ``--sample_rate``, ``--class_memory_on_cpu``, or more
    ranks (with the smallest world size that would fit, all else equal).

    Returns:
        The estimate, when it fits.
    """
    e = estimate_rank_memory(num_classes, world_size, **settings)
    if _fits(e, device_budget, host_budget):
        return e
    fits = next((r for r in _larger_worlds(world_size)
                 if _fits(estimate_rank_memory(num_classes, r, **settings), device_budget, host_budget)), None)
    over_device = e.device_total > device_budget
    where, total, budget = ("device", e.device_total, device_budget) if over_device else \
        ("host", e.host_total, host_budget or 0)
    if over_device:  # the sample rate shrinks the sampled copies and the logits; the host holds no part of the head
        fixes = "lower --sample_rate, " + ("" if cpu_only or e.memory_on_cpu or not e.memory_total else
                                           "pass --class_memory_on_cpu, ")
    else:
        fixes = "keep the class memory on the device (no --class_memory_on_cpu), "
    raise ConfigError(
        f"per-rank {'host' if cpu_only else where} memory of the sharded head, class memory and optimizer state is "
        f"{_gib(total)} but {_gib(budget)} is available ({format_rank_memory(e)}); {fixes}or use more ranks"
        f"{f' (R={fits} would fit)' if fits else ''}")


def _fits(e: RankMemory, device_budget: int, host_budget: int | None) -> bool:
    return e.device_total <= device_budget and (host_budget is None or e.host_total <= host_budget)


def _larger_worlds(world_size: int) -> list[int]:
    """World sizes to try for the hint: every R up to 16, then doubling up to 65536."""
    small = list(range(world_size + 1, 17))
    return small + [2**p for p in range(5, 17) if 2**p > world_size]
