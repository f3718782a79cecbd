"""PK and graph samplers: batch shape, epoch coverage, DDP sharding, resume, labels without decoding."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from torch.utils.data import DataLoader

from oaml.data.datasets import RecordDataset
from oaml.data.samplers import GraphSampler, PKSampler


def _labels(num_classes: int = 40, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).integers(1, 9, size=num_classes)  # some identities have < K images
    labels = np.repeat(np.arange(num_classes), counts)
    return np.random.default_rng(seed + 1).permutation(labels)


def _identities(batch: list[int], labels: np.ndarray, k: int) -> list[int]:
    groups = np.asarray(batch).reshape(-1, k)
    for group in groups:
        assert len(set(labels[group])) == 1  # K images of one identity, consecutive
    return [int(labels[group[0]]) for group in groups]


def test_pk_batches_and_epoch_coverage() -> None:
    labels = _labels(40)
    sampler = PKSampler(labels, batch_size=16, k=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10  # 40 identities / 4 per batch
    seen = []
    for batch in batches:
        assert len(batch) == 16
        ids = _identities(batch, labels, 4)
        assert len(set(ids)) == 4
        seen += ids
    assert sorted(seen) == list(range(40))  # every identity exactly once
    small = [c for c in range(40) if (labels == c).sum() < 4]
    assert small  # identities with fewer than K images are sampled with replacement
    for batch in batches:
        for group in np.asarray(batch).reshape(-1, 4):
            if labels[group[0]] in small:
                assert set(group) <= set(np.flatnonzero(labels == labels[group[0]]))


def test_pk_epochs_are_deterministic_and_different() -> None:
    labels = _labels(24)
    a, b = PKSampler(labels, 8, 4, seed=1), PKSampler(labels, 8, 4, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


@pytest.mark.parametrize("num_classes,drop_last", [(40, True), (37, True), (37, False)])
def test_two_ranks_get_whole_disjoint_identities_and_equal_batches(num_classes: int, drop_last: bool) -> None:
    labels = _labels(num_classes, seed=5)
    ranks = [PKSampler(labels, 12, 4, num_replicas=2, rank=r, seed=9, drop_last=drop_last) for r in range(2)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == len(ranks[1])
    assert all(len(batch) == 12 for rank in batches for batch in rank)
    ids = [Counter(i for batch in rank for i in _identities(batch, labels, 4)) for rank in batches]
    shared = set(ids[0]) & set(ids[1])
    if num_classes % 2 == 0:
        assert not shared
    else:
        assert len(shared) <= 1  # only the one identity repeated to pad 37 to 38
    if not drop_last:
        assert set(ids[0]) | set(ids[1]) == set(range(num_classes))


def test_resume_reproduces_the_remaining_batches() -> None:
    labels = _labels(30)
    reference = PKSampler(labels, 8, 4, seed=2)
    reference.set_epoch(4)
    full = list(reference)
    interrupted = PKSampler(labels, 8, 4, seed=2)
    interrupted.set_epoch(4)
    iterator = iter(interrupted)
    head = [next(iterator) for _ in range(3)]
    state = interrupted.state_dict()
    assert head == full[:3] and state == {"epoch": 4, "batches_yielded": 3, "seed": 2}
    resumed = PKSampler(labels, 8, 4, seed=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # Lightning sets the epoch again at the start of the resumed epoch
    assert list(resumed) == full[3:]
    resumed.set_epoch(5)
    reference.set_epoch(5)
    assert list(resumed) == list(reference)  # later epochs are unaffected
    with pytest.raises(ValueError, match="seed"):
        PKSampler(labels, 8, 4, seed=3).load_state_dict(state)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of k"):
        PKSampler([0, 1], batch_size=10, k=4)
    with pytest.raises(ValueError, match="rank 2"):
        PKSampler([0, 1], batch_size=8, k=4, num_replicas=2, rank=2)


def test_lightning_sets_the_epoch_through_the_loader() -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    sampler = PKSampler(_labels(8), 8, 4)
    loader = DataLoader(list(range(len(sampler.labels))), batch_sampler=sampler)
    _set_sampler_epoch(loader, 3)
    assert sampler.epoch == 3


def test_labels_come_from_the_index_without_decoding(make_rec: Callable[..., Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rec = make_rec([0] * 4 + [1] * 3 + [2] * 5 + [3] * 4)
    calls = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: calls.append(1) or real(*a, **k))
    dataset = RecordDataset(rec)
    batches = list(PKSampler(dataset.labels, 8, 4, seed=0))
    assert calls == [] and len(batches) == 2
    image, label, _, _ = dataset[batches[0][0]]
    assert len(calls) == 1 and label == dataset.labels[batches[0][0]]


def test_graph_sampler_builds_batches_from_nearest_classes() -> None:
    labels = _labels(12, seed=2)
    graph = np.array([[(c + 1) % 12, (c + 2) % 12, (c + 5) % 12, c] for c in range(12)])
    sampler = GraphSampler(labels, graph, batch_size=12, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12  # every class seeds one batch per epoch
    seeds = []
    for batch in batches:
        ids = _identities(batch, labels, 4)
        seeds.append(ids[0])
        assert ids == [ids[0], (ids[0] + 1) % 12, (ids[0] + 2) % 12]
    assert sorted(seeds) == list(range(12))
    halves = [list(GraphSampler(labels, graph, 12, 4, num_replicas=2, rank=r)) for r in range(2)]
    assert len(halves[0]) == len(halves[1]) == 6
    seeds_by_rank = [{_identities(b, labels, 4)[0] for b in half} for half in halves]
    assert seeds_by_rank[0].isdisjoint(seeds_by_rank[1])
    with pytest.raises(ValueError, match="rows"):
        sampler.set_graph(graph[:5])


def test_graph_sampler_resumes_with_the_saved_graph_and_position() -> None:
    labels = _labels(12, seed=2)
    graph = np.array([[(c + 1) % 12, (c + 2) % 12, (c + 5) % 12, c] for c in range(12)])
    full = GraphSampler(labels, graph, batch_size=12, k=4, seed=5)
    full.set_epoch(1)
    expected = list(full)
    interrupted = GraphSampler(labels, graph, batch_size=12, k=4, seed=5)
    interrupted.set_epoch(1)
    iterator = iter(interrupted)
    head = [next(iterator) for _ in range(4)]
    state = interrupted.state_dict()
    other = np.array([[(c + 3) % 12, (c + 4) % 12, c, c] for c in range(12)])
    resumed = GraphSampler(labels, other, batch_size=12, k=4, seed=5)  # the epoch's graph comes from the state
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert head + list(resumed) == expected
    assert np.array_equal(resumed.graph, graph)


def test_pair_shard_sampler_gives_whole_pairs_in_equal_blocks() -> None:
    from oaml.data.samplers import PairShardSampler

    ranks = [list(PairShardSampler(10, 2, r)) for r in range(2)]
    assert ranks[0] == [0, 1, 2, 3, 4, 5]
    assert ranks[1] == [6, 7, 8, 9, 8, 9]  # padded with the last pair
    assert sorted(set(ranks[0] + ranks[1])) == list(range(10))
    assert list(PairShardSampler(10)) == list(range(10))
    with pytest.raises(ValueError, match="odd length 9"):
        PairShardSampler(9)
