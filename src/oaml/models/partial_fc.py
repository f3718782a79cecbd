"""Sharded, sampled margin head with a cross-rank softmax: Partial FC (SPEC §13.3).

Paper: An, Deng et al., "Killing Two Birds with One Stone: Efficient and Robust Training of Face Recognition CNNs
by Partial FC" (CVPR 2022). The class centres are split over the ranks; each rank scores the whole (all-gathered)
batch against a sample of its own centres, and the softmax is normalised across ranks with two all-reduces, so
no rank ever holds the full B x C logit matrix.

- **Sharding.** Rank r of R holds the kernel columns [r·⌈C/R⌉, (r+1)·⌈C/R⌉) clipped to C (the last shards may
  be shorter or empty). The kernel is initialised block by block (4096 columns per block, uniform(-1, 1) from a
  generator seeded by (``seed``, block), then unit columns, SPEC §3), so the full kernel is the same for every
  world size.
- **Gather.** Unit embeddings, norms and labels are all-gathered in rank order (batch sizes may differ between
  ranks). The embedding gather returns to each rank the sum over ranks of the gradient of its own rows.
- **Sampling** (training mode, ``sample_rate`` ρ < 1). Every local class that is a label of the global batch is
  kept, then ⌈ρ·C_r⌉ - #positives random local negatives are added (none if the positives already reach it):
  the first non-positive classes of ``torch.randperm(C_r)`` drawn from a CPU generator seeded with
  ``np.random.SeedSequence((seed, 1, step, rank))``, where ``step`` is the ``sample_step`` buffer (incremented
  by every sampling forward, saved in the state dict). The kept classes are sorted; labels are remapped to
  their position in that list. ρ = 1, and evaluation mode, keep every class.
- **Margins.** The true-class logit comes from the head's own ``target_logit`` (SPEC §3) on the rank that owns
  the class; all other logits are the head's ``non_target_logit``. AdaFace's μ and σ are updated from the
  gathered (global) norms, identically on every rank.
- **Loss.** m = all-reduce-max of the row maxima, s = all-reduce-sum of Σ exp(logit - m), logit_y from the owning
  rank (0 elsewhere, all-reduce-sum); loss = mean over the global rows of log s + m - logit_y. Every rank returns
  the same value. The gradient w.r.t. the local logits is (softmax - one-hot) / B_global, so each kernel shard
  gets exactly its slice of the unsharded gradient and each rank's embeddings exactly their rows of it (with
  ``ddp_average=True`` the embedding gradient is multiplied by R, which DDP's gradient average undoes).
- **Columns with gradient.** A backward hook records the sampled columns; :class:`oaml.training.partial_sgd.
  PartialSGD` updates only those (:meth:`PartialFC.pop_sampled_columns`).
- **Checkpoints.** ``state_dict`` has the unsharded head's keys (``kernel``, and AdaFace's ``batch_mean``,
  ``batch_std``, ``t``) plus ``sample_step``, with the local E x C_r columns under ``kernel``;
  :meth:`PartialFC.full_kernel` and :meth:`PartialFC.full_state_dict` gather the full kernel (collective).
  ``load_state_dict`` accepts a full E x C kernel and keeps its own columns, so a checkpoint with the full kernel
  loads on any number of ranks, and so does the unsharded head's state (without ``sample_step``).
- **Placement.** Under Lightning the process group exists only from ``LightningModule.setup`` on: build the head
  for rank 0 of the world size and call :meth:`PartialFC.bind` there, before any weights are loaded.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd import Function
from torch.nn import functional as F

from oaml.models._distributed import ShardSpec, all_reduce_, batch_sizes, check_group, gather_rows, gather_shards
from oaml.models.heads import build_head

__all__ = ["PartialFC", "PartialFCOutput", "sample_size"]

_INIT_BLOCK = 4096  # kernel columns per initialisation block; fixed, so the init does not depend on R
_TAG_INIT, _TAG_SAMPLE = 0, 1  # separate the seed streams of the init and of the sampling


def sample_size(sample_rate: float, num_local: int) -> int:
    """⌈ρ·C_r⌉, the classes a rank keeps before adding missing positives.

    ρ·C_r is rounded to 6 decimals first, so that 0.1 · 30 gives 3 and not 4 (0.1 is not exact in binary).
    """
    return math.ceil(round(sample_rate * num_local, 6))


def _seed(*words: int) -> int:
    """A 63-bit generator seed from non-negative integers (numpy's SeedSequence mixing)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _init_columns(embedding_size: int, num_classes: int, start: int, end: int, seed: int) -> Tensor:
    """Columns [start, end) of the full kernel: uniform(-1, 1) per fixed block of columns, then unit columns."""
    out = torch.empty(embedding_size, end - start)
    if end <= start:
        return out
    for block in range(start // _INIT_BLOCK, math.ceil(end / _INIT_BLOCK)):
        lo, hi = block * _INIT_BLOCK, min((block + 1) * _INIT_BLOCK, num_classes)
        generator = torch.Generator().manual_seed(_seed(seed, _TAG_INIT, block))
        values = torch.empty(embedding_size, hi - lo).uniform_(-1.0, 1.0, generator=generator)
        a, b = max(lo, start), min(hi, end)
        out[:, a - start : b - start] = values[:, a - lo : b - lo]
    return F.normalize(out, dim=0)


class PartialFCOutput(NamedTuple):
    """What :class:`PartialFC` returns.

    Attributes:
        loss: the cross-entropy, a scalar, identical on every rank.
        accuracy: fraction of the global batch whose arg-max class (over all ranks' kept classes, the lowest
            class id on ties) is the label; no gradient.
        num_sampled: classes this rank kept in this step.
    """

    loss: Tensor
    accuracy: Tensor
    num_sampled: int


class _ShardedCrossEntropy(Function):
    """Per-row cross-entropy of logits split by columns over the ranks (SPEC §13.3), and the row maxima."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, group: Any, world_size: int) -> tuple[Tensor, Tensor]:
        rows = logits.shape[0]
        row_max = logits.amax(dim=1) if logits.shape[1] else logits.new_full((rows,), float("-inf"))
        m = all_reduce_(row_max.clone(), dist.ReduceOp.MAX, group, world_size)
        exp = torch.exp(logits - m.unsqueeze(1))
        owned = target >= 0
        logit_y = logits.new_zeros(rows)
        logit_y[owned] = logits[owned, target[owned]]
        sums = all_reduce_(torch.stack((exp.sum(dim=1), logit_y)), dist.ReduceOp.SUM, group, world_size)
        ctx.save_for_backward(exp, sums[0], target)
        ctx.mark_non_differentiable(m)
        return torch.log(sums[0]) + m - sums[1], m

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor, grad_max: Tensor) -> tuple[Tensor | None, ...]:
        exp, total, target = ctx.saved_tensors
        grad = exp / total.unsqueeze(1)
        owned = torch.nonzero(target >= 0).flatten()
        grad[owned, target[owned]] -= 1.0
        return grad * grad_rows.unsqueeze(1), None, None, None


class PartialFC(nn.Module):
    """One rank's shard of a margin head with a sampled, cross-rank softmax loss (module docstring).

    Args:
        head: ``adaface``, ``arcface`` or ``cosface`` (:func:`oaml.models.build_head`).
        embedding_size: E (512).
        num_classes: C, over all ranks.
        rank: this process's rank r.
        world_size: R; with 1 no process group is needed.
        group: process group of the R ranks (None = the default group, e.g. Lightning's DDP group).
        sample_rate: ρ in (0, 1].
        seed: seeds the kernel initialisation and the sampling.
        m: margin; None picks the head's default.
        h: AdaFace margin concentration.
        s: logit scale.
        t_alpha: AdaFace EMA momentum.
        ddp_average: multiply the embedding gradient by R, for backbones whose gradients DDP averages over
            ranks (then the backbone gets exactly the gradient of this loss). False gives the exact gradient of
            the loss w.r.t. the local embeddings.

    Attributes:
        kernel: E x C_r parameter, the local columns.
        margin: the head's formulas (``target_logit``, ``non_target_logit``) and AdaFace's buffers; its own
            kernel is removed.
        sample_step: long buffer, the number of sampling steps so far (the sampling RNG's step).
    """

    kernel: nn.Parameter
    sample_step: Tensor

    def __init__(self, head: str, embedding_size: int, num_classes: int, *, rank: int = 0, world_size: int = 1,
                 group: Any = None, sample_rate: float = 1.0, seed: int = 0, m: float | None = None,
                 h: float = 0.333, s: float = 64.0, t_alpha: float = 0.01, ddp_average: bool = False) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
        if embedding_size < 1 or seed < 0:
            raise ValueError(f"embedding_size must be positive and seed >= 0, got {embedding_size}, {seed}")
        self.head_name, self.embedding_size, self.num_classes = head, embedding_size, num_classes
        self.spec, self.group = ShardSpec(num_classes, rank, world_size), group
        self.sample_rate, self.seed, self.ddp_average = float(sample_rate), seed, ddp_average
        self.margin = build_head(head, 1, 1, m=m, h=h, s=s, t_alpha=t_alpha)
        self.margin.register_parameter("kernel", None)  # the classes live in self.kernel
        self.kernel = nn.Parameter(_init_columns(embedding_size, num_classes, self.spec.start, self.spec.end, seed))
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.long))
        self._touched: Tensor | None = None  # columns whose gradient was computed since the last pop
        self.register_load_state_dict_pre_hook(self._accept_full_layout)
        self.register_state_dict_post_hook(_unsharded_names)

    def extra_repr(self) -> str:
        return (f"head={self.head_name}, classes {self.spec.start}..{self.spec.end} of {self.num_classes}, "
                f"rank={self.spec.rank}/{self.spec.world_size}, sample_rate={self.sample_rate}")

    # ------------------------------------------------------------------ forward
    def forward(self, embedding: Tensor, norm: Tensor, labels: Tensor) -> PartialFCOutput:
        """Loss and accuracy of the global batch; a collective: every rank must call it.

        Args:
            embedding: B_r x E unit embeddings of this rank.
            norm: B_r x 1 raw-embedding norms (AdaFace; detached here).
            labels: B_r class indices in [0, C).
        """
        batch = embedding.shape[0]
        if embedding.dim() != 2 or embedding.shape[1] != self.embedding_size or norm.numel() != batch \
                or labels.shape != (batch,):
            raise ValueError(f"expected B x {self.embedding_size} embeddings, B norms and B labels, got "
                             f"{tuple(embedding.shape)}, {tuple(norm.shape)}, {tuple(labels.shape)}")
        spec, group = self.spec, self.group
        check_group(spec, group)
        sizes = batch_sizes(batch, embedding.device, group, spec.world_size)
        scale = float(spec.world_size) if self.ddp_average else 1.0
        emb = gather_rows(embedding, sizes, spec.rank, group, grad_scale=scale)
        nrm = gather_rows(norm.detach().reshape(-1, 1).float(), sizes, spec.rank, group)
        lab = gather_rows(labels.detach().reshape(-1).to(embedding.device, torch.long), sizes, spec.rank, group)
        if lab.numel() == 0 or int(lab.min()) < 0 or int(lab.max()) >= self.num_classes:
            found = "an empty batch" if lab.numel() == 0 else f"{int(lab.min())}..{int(lab.max())}"
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {found}")
        index = None
        if self.training and self.sample_rate < 1.0:
            index = self.sample(lab, int(self.sample_step)).to(self.kernel.device)
            self.sample_step += 1
        logits, target = self._logits(emb, nrm, lab, index)
        rows, row_max = _ShardedCrossEntropy.apply(logits, target, group, spec.world_size)
        with torch.no_grad():
            accuracy = self._accuracy(logits, row_max, lab, index)
        return PartialFCOutput(rows.mean(), accuracy, logits.shape[1])

    def sample(self, labels: Tensor, step: int) -> Tensor:
        """This rank's kept classes for the global ``labels`` at sampling step ``step`` (module docstring).

        Returns:
            Sorted long local column indices (CPU): every local positive, padded with random negatives up to
            :func:`sample_size`.
        """
        spec = self.spec
        labels = labels.detach().reshape(-1).cpu()
        positives = torch.unique(labels[spec.owns(labels)] - spec.start)
        missing = sample_size(self.sample_rate, spec.size) - positives.numel()
        if missing <= 0:
            return positives
        generator = torch.Generator().manual_seed(_seed(self.seed, _TAG_SAMPLE, step, spec.rank))
        order = torch.randperm(spec.size, generator=generator)
        is_positive = torch.zeros(spec.size, dtype=torch.bool)
        is_positive[positives] = True
        negatives = order[~is_positive[order]][:missing]
        return torch.sort(torch.cat((positives, negatives))).values

    def _logits(self, emb: Tensor, nrm: Tensor, lab: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
        """Bg x n margin logits over the kept local columns, and each row's target column (-1: not local)."""
        weight = F.normalize(self.kernel if index is None else self.kernel.index_select(1, index), dim=0)
        if weight.requires_grad and torch.is_grad_enabled():
            weight.register_hook(self._recorder(index))
        cosine = (emb @ weight).float()
        owned = self.spec.owns(lab)
        local = (lab - self.spec.start).clamp_min(0)
        target = local if index is None else torch.searchsorted(index, local)
        target = torch.where(owned, target, torch.full_like(target, -1))
        cos_y = cosine.new_zeros(lab.shape[0], 1)
        if cosine.shape[1]:
            cos_y = cosine.gather(1, target.clamp_min(0).unsqueeze(1)).masked_fill(~owned.unsqueeze(1), 0.0)
        true_logit = self.margin.target_logit(cos_y, nrm)  # every rank: AdaFace's statistics see all norms
        mask = torch.zeros_like(cosine, dtype=torch.bool)
        rows = torch.nonzero(owned).flatten()
        mask[rows, target[rows]] = True
        return torch.where(mask, true_logit, self.margin.non_target_logit(cosine)), target

    def _recorder(self, index: Tensor | None) -> Any:
        def record(grad: Tensor) -> None:
            if self._touched is None or self._touched.device != grad.device:
                self._touched = torch.zeros(self.spec.size, dtype=torch.bool, device=grad.device)
            if index is None:
                self._touched.fill_(True)
            else:
                self._touched[index.to(grad.device)] = True
        return record

    def _accuracy(self, logits: Tensor, row_max: Tensor, lab: Tensor, index: Tensor | None) -> Tensor:
        candidate = torch.full_like(lab, self.num_classes)  # C: "not the maximum here"
        if logits.shape[1]:
            best = logits.argmax(dim=1)
            ids = self.spec.start + (best if index is None else index[best])
            candidate = torch.where(logits.amax(dim=1) == row_max, ids, candidate)
        predicted = all_reduce_(candidate, dist.ReduceOp.MIN, self.group, self.spec.world_size)
        return (predicted == lab).float().mean()

    def pop_sampled_columns(self) -> Tensor:
        """Sorted local columns whose gradient was computed since the last call, and forget them.

        :class:`~oaml.training.partial_sgd.PartialSGD` calls it in ``step`` (after Lightning's closure ran the
        backward), so gradient accumulation and skipped steps are handled: only columns that took part in a
        backward are updated.
        """
        if self._touched is None:
            return torch.zeros(0, dtype=torch.long, device=self.kernel.device)
        columns = torch.nonzero(self._touched).flatten()
        self._touched.zero_()
        return columns.to(self.kernel.device)

    # ------------------------------------------------------------------ checkpoints and sharding
    def full_kernel(self, dst: int | None = None) -> Tensor | None:
        """The full E x C kernel (collective: every rank must call it).

        Args:
            dst: the rank that receives it; None gives it to every rank.

        Returns:
            E x C on ``dst`` (every rank for None), None elsewhere.
        """
        return self.gather_columns(self.kernel.detach(), dst)

    def gather_columns(self, local: Tensor, dst: int | None = None) -> Tensor | None:
        """Any E x C_r per-column tensor of this rank (the kernel, its momentum) as E x C (collective)."""
        full = gather_shards(local.detach().t(), self.spec, self.group, dst)
        return None if full is None else full.t().contiguous()

    def local_columns(self, full: Tensor) -> Tensor:
        """This rank's columns of an E x C tensor (a view)."""
        if full.dim() != 2 or full.shape[1] != self.num_classes:
            raise ValueError(f"expected ... x {self.num_classes} columns, got {tuple(full.shape)}")
        return full[:, self.spec.start : self.spec.end]

    def load_full_kernel(self, kernel: Tensor) -> None:
        """Copy this rank's columns of a full E x C kernel (local; every rank calls it with the same tensor)."""
        if kernel.shape != (self.embedding_size, self.num_classes):
            raise ValueError(f"full kernel must be {self.embedding_size} x {self.num_classes}, got "
                             f"{tuple(kernel.shape)}")
        with torch.no_grad():
            self.kernel.copy_(self.local_columns(kernel))

    def full_state_dict(self, dst: int | None = None) -> dict[str, Tensor] | None:
        """:meth:`state_dict` with the full E x C ``kernel``, on ``dst`` (None: every rank) and None elsewhere; a
        collective. It loads into a PartialFC of any world size, and without ``sample_step`` strictly into
        ``build_head(head, E, C)``."""
        kernel = self.full_kernel(dst)
        if kernel is None:
            return None
        return {k: v.detach().clone() for k, v in self.state_dict().items()} | {"kernel": kernel}

    def bind(self, rank: int, world_size: int, group: Any = None, ddp_average: bool | None = None) -> None:
        """Hold the columns of ``rank`` of ``world_size`` from now on (Lightning: in ``setup``, before the
        optimizer and DDP exist). A no-op when nothing changes; otherwise the kernel is re-created from the seeded
        initialisation (the module docstring), so bind before loading or training.

        Args:
            rank: this process's rank.
            world_size: R.
            group: process group.
            ddp_average: new value of ``ddp_average`` (None keeps it).
        """
        spec = ShardSpec(self.num_classes, rank, world_size)
        if (spec.rank, spec.world_size) != (self.spec.rank, self.spec.world_size):
            self.kernel = nn.Parameter(_init_columns(self.embedding_size, self.num_classes, spec.start, spec.end,
                                                     self.seed).to(self.kernel.device))
            self._touched = None
        self.spec, self.group = spec, group
        if ddp_average is not None:
            self.ddp_average = ddp_average

    def _accept_full_layout(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load-time translation: a full kernel keeps the local columns; the unsharded head's keys map to
        ``margin.*``; a missing ``sample_step`` keeps the current one."""
        key = prefix + "kernel"
        kernel = state_dict.get(key)
        if isinstance(kernel, Tensor) and kernel.dim() == 2 and kernel.shape[1] == self.num_classes:
            state_dict[key] = self.local_columns(kernel)
        for name in self.margin.state_dict():
            if prefix + name in state_dict and prefix + "margin." + name not in state_dict:
                state_dict[prefix + "margin." + name] = state_dict.pop(prefix + name)
        state_dict.setdefault(prefix + "sample_step", self.sample_step.detach().clone())


def _unsharded_names(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """``state_dict`` post-hook: the margin's buffers under the unsharded head's names (``batch_mean``, not
    ``margin.batch_mean``)."""
    inner = prefix + "margin."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
