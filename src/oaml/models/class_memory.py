"""Class memory, class prototypes and the k-nearest class graph of the QAConv softmax loss (SPEC §5, §13.3).

Each class keeps the feature map of its latest training sample (detached, every location L2-normalised, fp16) and a
prototype, the normalised mean of its unit embeddings. They are buffers, not trained parameters, saved with the
``state_dict`` (SPEC §10). For a sample of class y the classification logits are QAConv(F, memory[{y} ∪ kNN(y)]).

- **Sharding.** The classes are split over the ranks as the sharded margin head splits them
  (:mod:`oaml.models.partial_fc`): rank r of R keeps the rows [r·⌈C/R⌉, (r+1)·⌈C/R⌉) of every buffer. With one rank
  (the default) no process group is needed and nothing is communicated.
- **Memory** (``memory``, ``seen``): :meth:`ClassMemory.update` all-gathers the batch and each rank overwrites its
  own classes; when a label repeats in the global batch its last occurrence wins.
- **Prototypes** (``prototype``, ``prototype_valid``, ``prototype_sum``, ``prototype_count``): ``update`` adds each
  sample's unit embedding to its class's running sum; :meth:`ClassMemory.rebuild_graph` turns every class with
  samples since the previous build into prototype = sum / ‖sum‖, keeps the previous prototype of the others, and
  resets the sums.
- **Graph** (``graph``, global class ids, -1 in empty slots): each class with a prototype gets its ``k_nearest``
  most cosine-similar other classes with a prototype, at most #prototypes - 1. Each rank computes its own rows: the
  ranks broadcast their prototypes in blocks of ``chunk_size`` in turn and every rank keeps a running top-k, so no
  rank builds a classes² matrix or holds more than one block of the others' prototypes. 512-d prototypes make a
  build ~49x cheaper than comparing flattened 512 x 7 x 7 memories. The graph is rebuilt every epoch and, until
  the memory is full, whenever the number of classes with a prototype has doubled since the last build
  (:meth:`ClassMemory.graph_is_stale`), so the class-memory term has neighbours from the first steps on at most
  twice the cost of one build.
- **Logits.** One rank: the gathered memories of the candidates are matched with ``QAConv.match_groups``. Several
  ranks (a collective): the batch's feature and visibility maps and labels are all-gathered, the candidates
  {y} ∪ kNN(y) come from the rank owning y and their validity from the ranks owning them; each rank scores the
  valid pairs whose candidate it owns, and the scores are summed over ranks (each pair is scored once) with
  gradient back to every sample's own rank. In training mode QAConv's two BatchNorms use the moments of **all**
  ranks' pairs and update their running statistics with them, so logits, gradients and statistics equal one rank
  on the concatenated batch up to float rounding. Memories carry no visibility map (normalised matching weighs
  the probe's own visibility).

Order within a training step: :meth:`ClassMemory.logits` first, then :meth:`ClassMemory.update` with the batch, so
that a sample is never matched against its own copy. Keep the buffers out of DDP's buffer broadcast.

Checkpoints: :meth:`ClassMemory.full_state_dict` gathers every buffer with all C rows on one rank; loading accepts
such full buffers on any world size (each rank keeps its rows). A state without prototypes (written before they
existed; its graph came from flattened memories) loads too: its graph is kept until the classes seen since have
prototypes for twice as many classes as it covered, or the next epoch's rebuild.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from oaml.models._distributed import (
    ShardSpec,
    all_reduce_,
    batch_sizes,
    check_group,
    comm_device,
    gather_rows,
    gather_shards,
    global_rank,
    reduce_sum_with_grad,
    synced_batch_norm,
)
from oaml.models.qaconv import QAConv

__all__ = ["ClassMemory"]

_NORM_EPS = 1e-6
_ROWS = ("memory", "seen", "graph", "prototype", "prototype_valid", "prototype_sum", "prototype_count")
"""The buffers with one row per class (sharded); ``built_with`` is a scalar."""


class ClassMemory(nn.Module):
    """One rank's rows of the class memory, prototypes and k-nearest class graph (module docstring).

    Args:
        num_classes: C, over all ranks.
        num_features: channels of the feature maps.
        height: feature-map height.
        width: feature-map width.
        k_nearest: neighbours per class in the graph (32).
        device: where the buffers live. A device other than None pins them there: moving the module (``.to``,
            ``.cuda``, Lightning's device placement) leaves them in place and in their dtype, which keeps a large
            memory on the host. None lets them follow the module like ordinary buffers.
        embedding_size: size of the unit embeddings averaged into prototypes (512).
        rank: this process's rank.
        world_size: R; with 1 no process group is needed.
        group: process group of the R ranks (None: the default group).

    Buffers (C_r rows each, C_r = this rank's classes):
        memory: C_r x C x H x W fp16. seen: C_r bool, True once a class has been written.
        graph: C_r x k long, nearest classes (global ids), -1 where there are fewer than k.
        prototype: C_r x E unit vectors; prototype_valid: C_r bool; prototype_sum: C_r x E, unit embeddings since
        the last build; prototype_count: C_r long. built_with: long scalar, classes with a prototype (all ranks)
        at the last build.
    """

    memory: Tensor
    seen: Tensor
    graph: Tensor
    prototype: Tensor
    prototype_valid: Tensor
    prototype_sum: Tensor
    prototype_count: Tensor
    built_with: Tensor

    def __init__(self, num_classes: int, num_features: int, height: int, width: int, k_nearest: int = 32,
                 device: str | torch.device | None = "cpu", *, embedding_size: int = 512, rank: int = 0,
                 world_size: int = 1, group: Any = None) -> None:
        super().__init__()
        if min(num_classes, num_features, height, width, embedding_size) < 1 or k_nearest < 0:
            raise ValueError(f"invalid class memory shape: classes={num_classes}, C={num_features}, H={height}, "
                             f"W={width}, E={embedding_size}, k_nearest={k_nearest}")
        self.num_classes, self.k_nearest, self.embedding_size = num_classes, k_nearest, embedding_size
        self.feature_shape = (num_features, height, width)
        self.spec, self.group = ShardSpec(num_classes, rank, world_size), group
        self._pinned_device = None if device is None else torch.device(device)
        for name, tensor in self._empty_rows(self.spec.size, self._pinned_device).items():
            self.register_buffer(name, tensor)
        self.register_buffer("built_with", torch.zeros((), dtype=torch.long, device=self._pinned_device))
        self.register_load_state_dict_pre_hook(self._accept_full_layout)

    def _empty_rows(self, rows: int, place: torch.device | None) -> dict[str, Tensor]:
        emb = self.embedding_size
        return {"memory": torch.zeros(rows, *self.feature_shape, dtype=torch.float16, device=place),
                "seen": torch.zeros(rows, dtype=torch.bool, device=place),
                "graph": torch.full((rows, self.k_nearest), -1, dtype=torch.long, device=place),
                "prototype": torch.zeros(rows, emb, device=place),
                "prototype_valid": torch.zeros(rows, dtype=torch.bool, device=place),
                "prototype_sum": torch.zeros(rows, emb, device=place),
                "prototype_count": torch.zeros(rows, dtype=torch.long, device=place)}

    def _apply(self, fn: Any, recurse: bool = True) -> ClassMemory:
        if self._pinned_device is not None:
            return self  # pinned: buffers keep their device and dtype
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def extra_repr(self) -> str:
        return (f"classes {self.spec.start}..{self.spec.end} of {self.num_classes}, rank={self.spec.rank}/"
                f"{self.spec.world_size}, k_nearest={self.k_nearest}")

    def bind(self, rank: int, world_size: int, group: Any = None) -> None:
        """Hold the rows of ``rank`` of ``world_size`` from now on (Lightning: in ``setup``, once the process group
        exists). A no-op when nothing changes; otherwise the buffers are re-created empty (load weights after)."""
        spec = ShardSpec(self.num_classes, rank, world_size)
        if (spec.rank, spec.world_size) == (self.spec.rank, self.spec.world_size):
            self.group = group
            return
        self.built_with.zero_()
        for name, tensor in self._empty_rows(spec.size, self.memory.device).items():
            setattr(self, name, tensor)
        self.spec, self.group = spec, group

    def _sum_over_ranks(self, tensor: Tensor) -> Tensor:
        """All-reduce sum without gradient on the collective device; returns on ``tensor``'s device."""
        if self.spec.world_size == 1:
            return tensor
        moved = tensor.to(comm_device(self.group, tensor.device))
        return all_reduce_(moved, dist.ReduceOp.SUM, self.group, self.spec.world_size).to(tensor.device)

    def _gather(self, x: Tensor, sizes: list[int]) -> Tensor:
        return gather_rows(x, sizes, self.spec.rank, self.group)

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, embeddings: Tensor) -> None:
        """Write this rank's classes from the (global) batch; a collective under R > 1.

        Args:
            features: B x C x H x W feature maps of this rank (any device or dtype; detached here).
            labels: B class indices; when a label repeats in the global batch, its last occurrence wins.
            embeddings: B x E embeddings; their unit vectors are added to the prototype sums.
        """
        batch = features.shape[0]
        if features.shape[1:] != self.feature_shape or labels.shape != (batch,) \
                or embeddings.shape != (batch, self.embedding_size):
            raise ValueError(f"expected B x {self.feature_shape} features, B labels and B x {self.embedding_size} "
                             f"embeddings, got {tuple(features.shape)}, {tuple(labels.shape)}, "
                             f"{tuple(embeddings.shape)}")
        check_group(self.spec, self.group)
        labels = labels.detach().to(features.device, torch.long)
        if self.spec.world_size > 1:
            sizes = batch_sizes(batch, features.device, self.group, self.spec.world_size)
            features, embeddings = self._gather(features.detach(), sizes), self._gather(embeddings.detach(), sizes)
            labels = self._gather(labels, sizes)
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {int(labels.min())}.."
                             f"{int(labels.max())}")
        own = self.spec.owns(labels)
        self._write(features[own], labels[own] - self.spec.start, embeddings[own])

    def _write(self, features: Tensor, labels: Tensor, embeddings: Tensor) -> None:
        """Overwrite the memories of local class ids ``labels`` (the last occurrence wins); add the prototype sums."""
        labels = labels.to(device=self.memory.device, dtype=torch.long)
        classes, inverse = torch.unique(labels, return_inverse=True)
        order = torch.arange(labels.numel(), device=labels.device)
        last = torch.full_like(classes, -1).scatter_reduce_(0, inverse, order, reduce="amax")
        chosen = features.detach()[last.to(features.device)].float()
        chosen = F.normalize(chosen, dim=1, eps=_NORM_EPS)
        self.memory[classes] = chosen.to(device=self.memory.device, dtype=self.memory.dtype)
        self.seen[classes] = True
        unit = F.normalize(embeddings.detach().float(), dim=1, eps=_NORM_EPS).to(self.prototype_sum.device)
        self.prototype_sum.index_add_(0, labels, unit)
        self.prototype_count.index_add_(0, labels, torch.ones_like(labels))

    # ------------------------------------------------------------------ graph
    def _with_prototype(self, pending: bool) -> int:
        """Classes (all ranks) with a prototype, counting those with samples since the last build if ``pending``."""
        have = self.prototype_valid | (self.prototype_count > 0) if pending else self.prototype_valid
        return int(self._sum_over_ranks(have.sum().reshape(1)))

    def graph_is_stale(self) -> bool:
        """True when at least two classes have a prototype (or samples for one) and their number has at least
        doubled since the graph was built; a collective under R > 1."""
        count = self._with_prototype(pending=True)
        return count >= 2 and count >= 2 * int(self.built_with)

    @torch.no_grad()
    def rebuild_graph(self, chunk_size: int = 1024, device: str | torch.device | None = None) -> None:
        """Finish the prototypes and recompute every local class's neighbours; a collective under R > 1.

        Without any prototype (a memory loaded from the layout before prototypes) the graph is left as it is.

        Args:
            chunk_size: prototypes per broadcast block and local rows per similarity block.
            device: where to compute the similarities (None: where the prototypes live).
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        check_group(self.spec, self.group)
        fresh = self.prototype_count > 0
        self.prototype[fresh] = F.normalize(self.prototype_sum[fresh], dim=1, eps=_NORM_EPS)
        self.prototype_valid |= fresh
        self.prototype_sum.zero_()
        self.prototype_count.zero_()
        total = self._with_prototype(pending=False)
        if total == 0:
            return
        self.built_with.fill_(total)
        self.graph.fill_(-1)
        k = min(self.k_nearest, total - 1)
        if k >= 1:
            self.graph[:, :k] = self._top_k(k, chunk_size, self.prototype.device if device is None else
                                            torch.device(device)).to(self.graph.device)

    def _top_k(self, k: int, chunk_size: int, work: torch.device) -> Tensor:
        """C_r x k global ids of each local class's nearest other classes with a prototype (-1: none left)."""
        queries = self.prototype.to(work)
        own_ids = torch.arange(self.spec.start, self.spec.end, device=work)
        best_val = torch.full((self.spec.size, k), float("-inf"), device=work)
        best_idx = torch.full((self.spec.size, k), -1, dtype=torch.long, device=work)
        for src in range(self.spec.world_size):
            first, last = self.spec.bounds(src)
            for offset in range(0, last - first, chunk_size):
                keys, key_valid = self._prototype_block(src, offset, min(chunk_size, last - first - offset), work)
                cols = torch.arange(first + offset, first + offset + keys.shape[0], device=work)
                for row in range(0, self.spec.size, chunk_size):
                    block = slice(row, row + chunk_size)
                    sim = (queries[block] @ keys.t()).masked_fill(~key_valid.unsqueeze(0), float("-inf"))
                    sim = sim.masked_fill(own_ids[block].unsqueeze(1) == cols, float("-inf"))  # not itself
                    vals = torch.cat((best_val[block], sim), dim=1)
                    idx = torch.cat((best_idx[block], cols.expand(sim.shape[0], -1)), dim=1)
                    best_val[block], pos = vals.topk(k, dim=1)
                    best_idx[block] = idx.gather(1, pos)
        best_idx[torch.isinf(best_val)] = -1
        best_idx[~self.prototype_valid.to(work)] = -1
        return best_idx

    def _prototype_block(self, src: int, offset: int, rows: int, work: torch.device) -> tuple[Tensor, Tensor]:
        """Rows [offset, offset + rows) of rank ``src``'s prototypes and their validity, on every rank."""
        if self.spec.world_size == 1:
            return (self.prototype[offset : offset + rows].to(work),
                    self.prototype_valid[offset : offset + rows].to(work))
        device = comm_device(self.group, work)
        packed = torch.empty(rows, self.embedding_size + 1, device=device)
        if src == self.spec.rank:
            packed[:, :-1] = self.prototype[offset : offset + rows].to(device)
            packed[:, -1] = self.prototype_valid[offset : offset + rows].to(device, torch.float32)
        dist.broadcast(packed, src=global_rank(self.group, src), group=self.group)
        packed = packed.to(work)
        return packed[:, :-1], packed[:, -1] > 0.5

    def full_graph(self) -> Tensor:
        """The C x k graph of all ranks, on every rank (a collective under R > 1), e.g. for the graph sampler."""
        full = gather_shards(self.graph, self.spec, self.group)
        assert full is not None  # dst=None: every rank receives it
        return full

    # ------------------------------------------------------------------ candidates and logits
    @torch.no_grad()
    def candidates(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The candidate classes {y} ∪ kNN(y) of each sample (a collective under R > 1: pass the same global labels
        on every rank).

        Args:
            labels: B class indices.

        Returns:
            (index, valid): B x (1 + k) long class indices with the sample's own class in column 0, and a
            B x (1 + k) bool mask that is False for never-seen classes and empty graph slots. Invalid entries hold
            index 0. Both live on ``labels``' device.
        """
        spec, dev = self.spec, self.graph.device
        own = labels.detach().to(device=dev, dtype=torch.long).reshape(-1)
        owned = spec.owns(own)
        neighbours = torch.zeros(own.numel(), self.k_nearest, dtype=torch.long, device=dev)
        if spec.size:
            rows = self.graph[(own - spec.start).clamp(0, spec.size - 1)] + 1  # +1: -1 becomes 0 for the sum
            neighbours = torch.where(owned.unsqueeze(1), rows, neighbours)
        index = torch.cat((own.unsqueeze(1), self._sum_over_ranks(neighbours) - 1), dim=1)
        here = spec.owns(index)
        seen = torch.zeros_like(here)
        seen[here] = self.seen[index[here] - spec.start]
        valid = self._sum_over_ranks(seen.to(torch.uint8)) > 0
        index = index.masked_fill(~valid, 0)
        return index.to(labels.device), valid.to(labels.device)

    def logits(self, matcher: QAConv, features: Tensor, labels: Tensor,
               occlusion: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """QAConv logits of each sample against the memories of its candidate classes (a collective under R > 1).

        Args:
            matcher: the QAConv matcher (identical on every rank).
            features: B x C x H x W feature maps of this rank (gradient flows into them).
            labels: B class indices.
            occlusion: B x 1 x H x W visibility of the samples, or None. Memories are unweighted.

        Returns:
            (logits, valid): B x (1 + k) logits with the true class in column 0 (invalid entries are 0), and the
            validity mask from :meth:`candidates`. In training mode with fewer than two valid pairs (in the global
            batch), all logits are 0 and carry no gradient: batch statistics need two values, and with at most one
            valid pair every row is excluded or a lone true class whose softmax is constant.
        """
        check_group(self.spec, self.group)
        if self.spec.world_size > 1:
            return self._sharded_logits(matcher, features, labels, occlusion)
        index, valid = self.candidates(labels)
        if matcher.training and int(valid.sum()) < 2:
            return torch.zeros(valid.shape, device=features.device, dtype=features.dtype), valid
        gallery = self.memory[index.to(self.memory.device)].to(device=features.device, dtype=features.dtype)
        return matcher.match_groups(features, gallery, probe_occ=occlusion, valid=valid), valid

    def _sharded_logits(self, matcher: QAConv, features: Tensor, labels: Tensor,
                        occlusion: Tensor | None) -> tuple[Tensor, Tensor]:
        spec, batch, channels = self.spec, features.shape[0], features.shape[1]
        sizes = batch_sizes(batch, features.device, self.group, spec.world_size)
        stacked = features if occlusion is None else torch.cat((features, occlusion.to(features.dtype)), dim=1)
        gathered = gather_rows(stacked, sizes, spec.rank, self.group)  # one gather: one backward collective
        index, valid = self.candidates(self._gather(labels.detach().to(features.device, torch.long), sizes))
        start = sum(sizes[: spec.rank])
        rows = slice(start, start + batch)
        total = int(valid.sum())
        if matcher.training and total < 2:
            return torch.zeros((batch, valid.shape[1]), device=features.device, dtype=features.dtype), valid[rows]
        pairs = torch.nonzero(valid & spec.owns(index))
        probe = gathered.index_select(0, pairs[:, 0])
        if pairs.shape[0]:
            local = (index[pairs[:, 0], pairs[:, 1]] - spec.start).to(self.memory.device)
            gallery = self.memory[local].to(device=features.device, dtype=features.dtype).unsqueeze(1)
            pooled, weights = matcher.pool_groups(probe[:, :channels], gallery,
                                                  None if occlusion is None else probe[:, channels:])
        else:  # still connected to the gathered maps, so that this rank joins the gather's backward
            pooled, weights = probe.flatten()[:0].reshape(0, 1, 2, matcher.hw), None
        counts = {id(matcher.bn): 2 * matcher.hw * total, id(matcher.logit_bn): total}
        norm = functools.partial(_synced_norm, counts=counts, group=self.group, world_size=spec.world_size)
        scores = matcher.score(pooled, weights, batch_norm=norm).reshape(-1)
        out = scores.new_zeros(valid.shape).index_put((pairs[:, 0], pairs[:, 1]), scores)
        return reduce_sum_with_grad(out, self.group, spec.world_size)[rows], valid[rows]

    # ------------------------------------------------------------------ checkpoints
    def full_state_dict(self, dst: int | None = 0) -> dict[str, Tensor] | None:
        """Every buffer with all C rows, on rank ``dst`` (None: on every rank) and None elsewhere; a collective
        under R > 1. The result loads strictly into a ClassMemory of any world size."""
        full = {name: gather_shards(getattr(self, name), self.spec, self.group, dst) for name in _ROWS}
        if full["memory"] is None:
            return None
        return {**full, "built_with": self.built_with.detach().clone()}  # type: ignore[dict-item]

    def _accept_full_layout(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load-time translation: a buffer with all C rows keeps this rank's rows; a state without prototypes
        (the layout before them) gets empty ones and a ``built_with`` of its seen classes, which keeps its graph."""
        seen = state_dict.get(prefix + "seen")
        if prefix + "prototype" not in state_dict and isinstance(seen, Tensor):
            rows = seen.shape[0]
            state_dict.update({prefix + name: tensor for name, tensor in self._empty_rows(rows, seen.device).items()
                               if name.startswith("prototype")})
            state_dict[prefix + "built_with"] = seen.sum().to(torch.long)
        for name in _ROWS:
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.dim() and value.shape[0] == self.num_classes:
                state_dict[prefix + name] = value[self.spec.start : self.spec.end]


def _synced_norm(bn: nn.BatchNorm1d, x: Tensor, counts: dict[int, int], group: Any, world_size: int) -> Tensor:
    """QAConv's BatchNorms over the valid pairs of every rank (``counts``: values per module over all ranks)."""
    return synced_batch_norm(bn, x, counts[id(bn)], group, world_size)
