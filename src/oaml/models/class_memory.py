"""Class memory and k-nearest class graph for the QAConv softmax loss (SPEC §5, "Class memory").

Each class keeps the feature map of its latest training sample (detached, every location L2-normalised,
stored in fp16). It is a buffer, not a trained parameter, so it is saved and restored with the
``state_dict`` (SPEC §10) together with the ``seen`` flags and the class ``graph``. Every epoch the graph
is rebuilt: each class's ``k_nearest`` most similar seen classes, by the cosine of the flattened memories.
Before the first epoch ends it is also rebuilt whenever the number of seen classes has doubled since the last
build (:meth:`ClassMemory.graph_is_stale`), so the class-memory loss has neighbours from the first steps on at
most twice the cost of one build.
For a sample of class y the classification logits are QAConv(F, memory[{y} ∪ kNN(y)]).

Order within a training step: compute the logits with :meth:`ClassMemory.logits` first, then call
:meth:`ClassMemory.update` with the batch, so that a sample is never matched against its own copy.
Under DDP the caller gathers features and labels from all ranks before ``update`` (so every rank keeps
the same memory) and keeps the memory buffers out of DDP's buffer broadcast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from oaml.models.qaconv import QAConv

__all__ = ["ClassMemory"]

_NORM_EPS = 1e-6


class ClassMemory(nn.Module):
    """One fp16 feature map per class, plus a k-nearest class graph.

    Args:
        num_classes: number of identities.
        num_features: channels C of the feature maps.
        height: feature-map height.
        width: feature-map width.
        k_nearest: neighbours per class in the graph (32).
        device: where the buffers live. A device other than None pins them there: moving the module
            (``.to``, ``.cuda``, Lightning's device placement) leaves them in place and in fp16, which keeps a
            large memory on the host. None lets them follow the module like ordinary buffers.

    Buffers:
        memory: num_classes x C x H x W, fp16.
        seen: num_classes bool; True once a class has been written.
        graph: num_classes x k long; a class's nearest seen classes, -1 where there are fewer than k.
    """

    memory: Tensor
    seen: Tensor
    graph: Tensor

    def __init__(
        self,
        num_classes: int,
        num_features: int,
        height: int,
        width: int,
        k_nearest: int = 32,
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__()
        if min(num_classes, num_features, height, width) < 1 or k_nearest < 0:
            raise ValueError(
                f"invalid class memory shape: classes={num_classes}, C={num_features}, H={height}, W={width}, "
                f"k_nearest={k_nearest}"
            )
        self.num_classes = num_classes
        self.k_nearest = k_nearest
        self._pinned_device = None if device is None else torch.device(device)
        place = self._pinned_device
        self.register_buffer(
            "memory", torch.zeros(num_classes, num_features, height, width, dtype=torch.float16, device=place)
        )
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool, device=place))
        self.register_buffer("graph", torch.full((num_classes, k_nearest), -1, dtype=torch.long, device=place))
        self.seen_at_build = 0  # seen classes when the graph was last built

    def _apply(self, fn: Any, recurse: bool = True) -> ClassMemory:
        if self._pinned_device is not None:
            return self  # pinned: buffers keep their device and dtype
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Overwrite each batch class's memory with its latest sample.

        Args:
            features: B x C x H x W feature maps (any device or dtype; detached here).
            labels: B class indices; when a label repeats, the last occurrence wins.
        """
        if features.shape[1:] != self.memory.shape[1:] or labels.shape != (features.shape[0],):
            raise ValueError(
                f"features must be B x {tuple(self.memory.shape[1:])} with B labels, got "
                f"{tuple(features.shape)} and labels {tuple(labels.shape)}"
            )
        labels = labels.detach().to(device=self.memory.device, dtype=torch.long)
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got {int(labels.min())}..{int(labels.max())}"
            )
        classes, inverse = torch.unique(labels, return_inverse=True)
        order = torch.arange(labels.numel(), device=labels.device)
        last = torch.full_like(classes, -1).scatter_reduce_(0, inverse, order, reduce="amax")
        chosen = features.detach()[last.to(features.device)].float()
        chosen = F.normalize(chosen, dim=1, eps=_NORM_EPS)
        self.memory[classes] = chosen.to(device=self.memory.device, dtype=self.memory.dtype)
        self.seen[classes] = True

    @torch.no_grad()
    def rebuild_graph(self, chunk_size: int = 1024, device: str | torch.device | None = None) -> None:
        """Recompute every class's ``k_nearest`` nearest seen classes (self and unseen classes excluded).

        Works on blocks of ``chunk_size`` x ``chunk_size`` similarities with a running top-k, so it never
        builds a classes² matrix. Unseen classes get an all -1 row.

        Args:
            chunk_size: rows and columns per similarity block.
            device: where to compute (e.g. the GPU when the memory is kept on the host); the seen memories
                are copied there once, in fp16. None computes in place, gathering one block at a time.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.graph.fill_(-1)
        seen_idx = torch.nonzero(self.seen, as_tuple=False).flatten()
        self.seen_at_build = int(seen_idx.numel())
        k = min(self.k_nearest, seen_idx.numel() - 1)
        if k < 1:
            return
        source, index = self.memory.reshape(self.num_classes, -1), seen_idx
        if device is not None:
            source = source[seen_idx].to(device)  # one copy of the seen memories, fp16
            index = torch.arange(seen_idx.numel(), device=source.device)
        for start in range(0, seen_idx.numel(), chunk_size):
            positions = self._top_k_for(source, index, start, k, chunk_size)
            self.graph[seen_idx[start : start + chunk_size], :k] = seen_idx[positions.to(seen_idx.device)]

    def graph_is_stale(self) -> bool:
        """True when at least two classes are seen and their number has doubled since the graph was built."""
        seen = int(self.seen.sum())
        return seen >= 2 and seen >= 2 * self.seen_at_build

    @staticmethod
    def _top_k_for(source: Tensor, index: Tensor, start: int, k: int, chunk_size: int) -> Tensor:
        """Running top-k positions (rows x k, positions into ``index``) of the cosine between the memories
        ``source[index[start:start + chunk_size]]`` and the other indexed memories, over blocks of at most
        ``chunk_size`` columns; each block is gathered and converted to fp32 on its own."""

        def block(begin: int) -> Tensor:
            return F.normalize(source[index[begin : begin + chunk_size]].float(), dim=1, eps=_NORM_EPS)

        query = block(start)
        rows = torch.arange(start, start + query.shape[0], device=source.device)
        best_val = torch.full((rows.numel(), k), float("-inf"), device=source.device)
        best_idx = torch.full((rows.numel(), k), -1, dtype=torch.long, device=source.device)
        for col_start in range(0, index.numel(), chunk_size):
            keys = block(col_start)
            cols = torch.arange(col_start, col_start + keys.shape[0], device=source.device)
            sim = (query @ keys.t()).masked_fill(rows.unsqueeze(1) == cols.unsqueeze(0), float("-inf"))  # not self
            vals = torch.cat((best_val, sim), dim=1)
            idx = torch.cat((best_idx, cols.unsqueeze(0).expand(rows.numel(), -1)), dim=1)
            best_val, pos = vals.topk(k, dim=1)
            best_idx = idx.gather(1, pos)
        return best_idx

    def candidates(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The candidate classes {y} ∪ kNN(y) of each sample.

        Args:
            labels: B class indices.

        Returns:
            (index, valid): B x (1 + k) long class indices with the sample's own class in column 0, and a
            B x (1 + k) bool mask that is False for never-seen classes and empty graph slots. Invalid
            entries hold index 0. Both live on ``labels``' device.
        """
        own = labels.detach().to(device=self.graph.device, dtype=torch.long).reshape(-1, 1)
        index = torch.cat((own, self.graph[own.squeeze(1)]), dim=1)
        valid = index >= 0
        valid &= self.seen[index.clamp_min(0)]
        index = index.masked_fill(~valid, 0)
        return index.to(labels.device), valid.to(labels.device)

    def logits(
        self, matcher: QAConv, features: Tensor, labels: Tensor, occlusion: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """QAConv logits of each sample against the memories of its candidate classes.

        Args:
            matcher: the QAConv matcher (its ``match_groups`` is used).
            features: B x C x H x W feature maps (gradient flows into them).
            labels: B class indices.
            occlusion: B x 1 x H x W visibility of the samples, or None. Memories are unweighted.

        Returns:
            (logits, valid): B x (1 + k) logits with the true class in column 0 (invalid entries are 0),
            and the validity mask from :meth:`candidates`. In training mode with fewer than two valid
            pairs, all logits are 0 and carry no gradient (see the comment in the code).
        """
        index, valid = self.candidates(labels)
        if matcher.training and int(valid.sum()) < 2:
            # Batch statistics need two values. With at most one valid pair every row is either excluded
            # (unseen class) or a lone true class whose softmax is constant, so these logits carry no loss.
            return torch.zeros(valid.shape, device=features.device, dtype=features.dtype), valid
        gallery = self.memory[index.to(self.memory.device)].to(device=features.device, dtype=features.dtype)
        logits = matcher.match_groups(features, gallery, probe_occ=occlusion, valid=valid)
        return logits, valid
