"""Identity-balanced batch samplers: PK sampling (SPEC §8) and QAConv-GS graph sampling (SPEC §5).

Both are *batch* samplers (``DataLoader(dataset, batch_sampler=...)``) that read only the label array, never
an image. Under DDP each rank gets whole identities and the same number of batches; the per-epoch order
is a pure function of ``(seed, epoch)``, so every rank computes the same permutation without
communication. Lightning calls :meth:`set_epoch` on batch samplers; build the Trainer with
``use_distributed_sampler=False`` so that it does not try to wrap them.

``state_dict``/``load_state_dict`` record the epoch and how many batches were already yielded (and, for the graph
sampler, the graph of the epoch), so a resumed run continues with exactly the batches the interrupted one would have
produced next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["GraphSampler", "PKSampler", "PairShardSampler"]


def _group_by_label(labels: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(int(labels.max()) + 2)) if len(labels) else np.zeros(1, int)
    return [order[bounds[c]:bounds[c + 1]] for c in range(len(bounds) - 1)]


class _IdentityBatchSampler(Sampler[list[int]]):
    """Shared state handling: labels, K, epoch, rank, and resumable iteration."""

    def __init__(self, labels: Sequence[int] | np.ndarray, batch_size: int, k: int, num_replicas: int, rank: int,
                 seed: int) -> None:
        if k < 1 or batch_size < k or batch_size % k:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of k ({k})")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is invalid for num_replicas={num_replicas}")
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.labels) == 0:
            raise ValueError("cannot sample batches from an empty label array")
        self.batch_size, self.k, self.num_ids = batch_size, k, batch_size // k
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.members = _group_by_label(self.labels)
        self.classes = np.array([c for c, m in enumerate(self.members) if len(m)], np.int64)
        self.epoch = 0
        self._yielded = 0
        self._resume_from = 0

    @property
    def sampler(self) -> _IdentityBatchSampler:
        """The sampler itself: Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; its order is a pure function of ``(seed, epoch)``.

        Setting the epoch a resumed state was saved in keeps the pending skip of already-seen batches.
        """
        if int(epoch) != self.epoch:
            self._resume_from = 0
        self.epoch = int(epoch)
        self._yielded = self._resume_from

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batches_yielded", "seed"}`` for resuming mid-epoch."""
        return {"epoch": self.epoch, "batches_yielded": self._yielded, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration skips the batches the saved run had already yielded.

        Raises:
            ValueError: if the saved seed differs (the batches could not be reproduced).
        """
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has {self.seed}")
        self.epoch = int(state["epoch"])
        self._yielded = self._resume_from = int(state["batches_yielded"])

    def _pick(self, rng: np.random.Generator, cls: int) -> np.ndarray:
        members = self.members[cls]
        return rng.choice(members, size=self.k, replace=len(members) < self.k)

    def _batches(self, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._batches(rng)
        start, self._resume_from = self._resume_from, 0
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield batch


class PKSampler(_IdentityBatchSampler):
    """P identities x K images per batch; one epoch visits every identity once (SPEC §8).

    Identities with fewer than K images are sampled with replacement. With several replicas the epoch's
    identity permutation is padded (by repeating its start) to a multiple of ``num_replicas`` and dealt out
    round-robin, so each rank gets whole identities and the same number of batches.

    Args:
        labels: int label of every dataset item.
        batch_size: batch size per rank (P x K).
        k: images per identity.
        num_replicas: number of DDP ranks.
        rank: this rank.
        seed: base seed; the epoch order depends on ``(seed, epoch)`` only.
        drop_last: drop the rank's last incomplete group of P identities; otherwise complete it with the
            rank's first identities, so that every batch is still P x K.

    Raises:
        ValueError: if ``batch_size`` is not a multiple of ``k`` or the rank is out of range.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, batch_size: int, k: int = 4, num_replicas: int = 1,
                 rank: int = 0, seed: int = 42, drop_last: bool = True) -> None:
        super().__init__(labels, batch_size, k, num_replicas, rank, seed)
        self.drop_last = drop_last
        self._per_rank = -(-len(self.classes) // num_replicas)
        full, extra = divmod(self._per_rank, self.num_ids)
        self._num_batches = full + (1 if extra and not drop_last else 0)

    def __len__(self) -> int:
        return self._num_batches

    def _batches(self, rng: np.random.Generator) -> list[list[int]]:
        order = rng.permutation(self.classes)
        padded = np.resize(order, self._per_rank * self.num_replicas)  # np.resize repeats from the start
        mine = padded[self.rank::self.num_replicas]
        needed = self._num_batches * self.num_ids
        if needed > len(mine):
            mine = np.resize(mine, needed)
        # Draw each rank's images from its own stream so that ranks stay independent of each other.
        pick_rng = np.random.default_rng([self.seed, self.epoch, self.rank + 1])
        batches = []
        for b in range(self._num_batches):
            ids = mine[b * self.num_ids:(b + 1) * self.num_ids]
            batches.append(np.concatenate([self._pick(pick_rng, int(c)) for c in ids]).tolist())
        return batches


class GraphSampler(_IdentityBatchSampler):
    """QAConv-GS graph sampling: each batch is a seed class and its nearest classes, K images each (SPEC §5).

    Every class with images is a seed once per epoch (in random order); its batch is the seed followed by
    the first ``P - 1`` distinct classes of ``graph[seed]`` that have images, topped up with random classes
    if the row is too short (an empty graph, ``num_classes x 0``, gives random batches). Seeds are dealt to ranks
    round-robin (padded like :class:`PKSampler`), so each rank gets whole identities and the same number of
    batches.

    Args:
        labels: int label of every dataset item.
        graph: ``num_classes x k_nearest`` int array of each class's nearest classes (best first, -1 for empty
            slots); replace it with :meth:`set_graph` when the class memory rebuilds it.
        batch_size: batch size per rank (P x K).
        k: images per class.
        num_replicas: number of DDP ranks.
        rank: this rank.
        seed: base seed.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, graph: np.ndarray, batch_size: int, k: int = 4,
                 num_replicas: int = 1, rank: int = 0, seed: int = 42) -> None:
        super().__init__(labels, batch_size, k, num_replicas, rank, seed)
        self.graph = np.empty((0, 0), np.int64)
        self.set_graph(graph)
        self._per_rank = -(-len(self.classes) // num_replicas)

    def set_graph(self, graph: np.ndarray) -> None:
        """Replace the class graph (takes effect at the next epoch).

        Raises:
            ValueError: if the graph has fewer rows than there are classes.
        """
        graph = np.asarray(graph, dtype=np.int32)  # class ids; half the memory of int64 at 2M classes x k
        if graph.ndim != 2 or graph.shape[0] < len(self.members):
            raise ValueError(f"graph must be num_classes x k ({len(self.members)} rows), got {graph.shape}")
        self.graph = graph

    def state_dict(self) -> dict[str, Any]:
        """The position (:meth:`PKSampler.state_dict`) and the graph, which decides the epoch's batches."""
        return {**super().state_dict(), "graph": torch.from_numpy(self.graph)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the position and the graph of the saved epoch."""
        super().load_state_dict(state)
        if "graph" in state:
            self.set_graph(np.asarray(state["graph"]))

    def __len__(self) -> int:
        return self._per_rank

    def _batch_classes(self, rng: np.random.Generator, seed_class: int) -> list[int]:
        chosen = [seed_class]
        for c in self.graph[seed_class]:
            if len(chosen) == self.num_ids:
                break
            if 0 <= c < len(self.members) and len(self.members[c]) and int(c) not in chosen:
                chosen.append(int(c))
        while len(chosen) < self.num_ids:
            c = int(rng.choice(self.classes))
            if c not in chosen or len(self.classes) < self.num_ids:
                chosen.append(c)
        return chosen

    def _batches(self, rng: np.random.Generator) -> list[list[int]]:
        order = rng.permutation(self.classes)
        seeds = np.resize(order, self._per_rank * self.num_replicas)[self.rank::self.num_replicas]
        pick_rng = np.random.default_rng([self.seed, self.epoch, self.rank + 1])
        return [np.concatenate([self._pick(pick_rng, c) for c in self._batch_classes(pick_rng, int(s))]).tolist()
                for s in seeds]


class PairShardSampler(Sampler[int]):
    """Sequential sampler over verification images that gives each rank a contiguous block of whole pairs.

    Pairs are images (2k, 2k+1). Rank r gets pairs [r * n, (r + 1) * n) with n = ceil(pairs / replicas); the
    last ranks are padded by repeating the final pair, so every rank runs the same number of batches. The
    caller gathers the scores and de-duplicates them by pair index (``PairScores.deduplicated``).

    Args:
        num_images: length of the verification dataset (even).
        num_replicas: number of ranks.
        rank: this rank.
    """

    def __init__(self, num_images: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_images % 2:
            raise ValueError(f"verification datasets hold pairs; got an odd length {num_images}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        pairs = num_images // 2
        per_rank = -(-pairs // num_replicas)
        chosen = np.minimum(np.arange(rank * per_rank, (rank + 1) * per_rank), max(pairs - 1, 0))
        self.indices = np.stack([2 * chosen, 2 * chosen + 1], axis=1).reshape(-1) if pairs else np.zeros(0, int)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())
