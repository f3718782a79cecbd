"""The sharded class memory on two gloo processes equals one ClassMemory on the concatenated batch, its prototype
graph is the brute-force top-k, and the graph sampler's batches follow the gathered graph (SPEC §5, §13.3).

The tests share one 2-process gloo session (module fixture ``two_ranks``); each compares what the ranks recorded
with a single-process reference computed here.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn import functional as F

from oaml.losses.triplet import SoftmaxTripletLoss
from oaml.data.samplers import GraphSampler
from oaml.models.class_memory import ClassMemory
from oaml.models.partial_fc import PartialFC
from oaml.models.qaconv import QAConv

from .distributed_helpers import run_workers

NC, CF, H, W, EMB, K = 7, 4, 2, 2, 5, 3  # two ranks: classes 0..3 and 4..6
SIZES = (5, 4)  # batch sizes of the ranks
BUFFERS = ("memory", "seen", "graph", "prototype", "prototype_valid", "prototype_sum", "prototype_count",
           "built_with")
MODES = (("train", "scaling"), ("eval", "scaling"), ("train", "normalised"))
P, IMAGES = 3, 2  # graph-sampler batches: a seed class and its two nearest classes, two images each
DATASET_LABELS = [c for c in range(NC) for _ in range(3 + c % 2)]  # 3 or 4 images per class


def _batch(seed: int, classes: int = NC - 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global batch: feature maps, labels in [0, classes), embeddings, visibility maps (class 6 never seen)."""
    g = torch.Generator().manual_seed(seed)
    total = sum(SIZES)
    labels = torch.randint(0, classes, (total,), generator=g)
    if seed == 0:
        labels[:classes] = torch.arange(classes)  # every class once; later batches leave some out (fallbacks)
    return (torch.randn(total, CF, H, W, generator=g), labels, torch.randn(total, EMB, generator=g),
            torch.rand(total, 1, H, W, generator=g))


def _rows(rank: int) -> slice:
    return slice(sum(SIZES[:rank]), sum(SIZES[: rank + 1]))


def _filled(rank: int, world: int, classes: int = NC - 1) -> ClassMemory:
    """Three updates with a graph build after the second (so the prototypes mix fresh means and fallbacks)."""
    memory = ClassMemory(NC, CF, H, W, K, embedding_size=EMB, rank=rank, world_size=world)
    for seed in range(3):
        features, labels, embeddings, _ = _batch(seed, classes)
        rows = _rows(rank) if world > 1 else slice(None)
        memory.update(features[rows], labels[rows], embeddings[rows])
        if seed == 1:
            memory.rebuild_graph(chunk_size=2)
    memory.rebuild_graph(chunk_size=2)
    return memory


def _matcher(train: bool, visibility: str = "scaling") -> QAConv:
    torch.manual_seed(5)
    matcher = QAConv(CF, H, W, visibility=visibility).train(train)
    with torch.no_grad():
        matcher.fc.weight.normal_()  # something less symmetric than 1/hw
    return matcher


def _logits_step(memory: ClassMemory, rank: int, mode: tuple[str, str], extra: PartialFC | None = None) -> dict:
    train = mode[0] == "train"
    matcher = _matcher(train, mode[1])
    features, labels, embeddings, occlusion = _batch(10, NC)
    mine = features[_rows(rank)].clone().requires_grad_()
    occ = occlusion[_rows(rank)].clone().requires_grad_()
    logits, valid = memory.logits(matcher, mine, labels[_rows(rank)], occ)
    loss = SoftmaxTripletLoss.class_memory_loss(logits, valid)[0]
    if extra is not None:  # a sharded head in the same backward: its collectives interleave with the memory's
        emb = F.normalize(embeddings[_rows(rank)], dim=1).requires_grad_()
        loss = loss + extra(emb, torch.ones(SIZES[rank], 1), labels[_rows(rank)]).loss
    if train:
        loss.backward()
    return {"logits": logits.detach(), "valid": valid, "loss": loss.detach(),
            "grad": None if mine.grad is None else mine.grad, "occ_grad": occ.grad,
            "param_grads": {n: p.grad for n, p in matcher.named_parameters()},
            "stats": {n: b.clone() for n, b in matcher.named_buffers()}}


def _sampler_batches(graph: torch.Tensor, rank: int, world: int) -> list[list[int]]:
    return list(GraphSampler(DATASET_LABELS, graph.numpy(), P * IMAGES, IMAGES, world, rank, seed=1))


def _worker(rank: int, world: int) -> dict[str, Any]:
    memory = _filled(rank, world)
    out: dict[str, Any] = {"full": memory.full_state_dict(dst=None), "dst0": memory.full_state_dict(dst=0)}
    for mode in MODES:
        out[mode] = _logits_step(memory, rank, mode)
    graph = memory.full_graph()
    out["graph"], out["batches"] = graph, _sampler_batches(graph, rank, world)
    lonely = _filled(rank, world, classes=4)  # only rank 0's classes are seen: rank 1 owns no pair
    out["lonely_full"] = lonely.full_state_dict(dst=None)
    head = PartialFC("cosface", EMB, NC, rank=rank, world_size=world).train()
    out["lonely"] = _logits_step(lonely, rank, ("train", "scaling"), extra=head)
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_workers(_worker, 2, tmp_path_factory.mktemp("sharded_memory"))


def _reference_memory(full: dict[str, torch.Tensor]) -> ClassMemory:
    memory = ClassMemory(NC, CF, H, W, K, embedding_size=EMB)
    memory.load_state_dict(full, strict=True)
    return memory


def _reference_step(full: dict[str, torch.Tensor], mode: tuple[str, str]) -> dict[str, Any]:
    """One ClassMemory on the concatenated batch; the loss is the sum of the ranks' losses."""
    train = mode[0] == "train"
    memory, matcher = _reference_memory(full), _matcher(train, mode[1])
    features, labels, _, occlusion = _batch(10, NC)
    features.requires_grad_()
    occlusion.requires_grad_()
    logits, valid = memory.logits(matcher, features, labels, occlusion)
    if train:
        sum(SoftmaxTripletLoss.class_memory_loss(logits[_rows(r)], valid[_rows(r)])[0] for r in range(2)).backward()
    return {"logits": logits.detach(), "valid": valid, "grad": features.grad, "occ_grad": occlusion.grad,
            "param_grads": {n: p.grad for n, p in matcher.named_parameters()},
            "stats": {n: b.clone() for n, b in matcher.named_buffers()}}


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sharded_memory_equals_one_memory(two_ranks: list[dict[str, Any]]) -> None:
    reference = _filled(0, 1)  # the same updates and builds on one rank, whole batches
    for result in two_ranks:
        for name in BUFFERS:
            if name == "prototype":
                _close(result["full"][name], getattr(reference, name))  # sums over other row orders
            else:
                assert torch.equal(result["full"][name], getattr(reference, name)), name
    assert not bool(reference.seen[6])


def _expected_prototypes() -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised mean of the unit embeddings since the last build, else the previous prototype."""
    first, second = torch.zeros(NC, EMB), torch.zeros(NC, EMB)
    for seed in range(3):
        _, labels, embeddings, _ = _batch(seed)
        (first if seed < 2 else second).index_add_(0, labels, F.normalize(embeddings, dim=1, eps=1e-6))
    fresh = second.norm(dim=1) > 0
    prototype = F.normalize(torch.where(fresh.unsqueeze(1), second, first), dim=1, eps=1e-6)
    return prototype, (first.norm(dim=1) > 0) | fresh


def _brute_force_graph(prototype: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    sim = prototype @ prototype.t()
    sim[:, ~valid] = float("-inf")
    sim.fill_diagonal_(float("-inf"))
    graph = torch.full((prototype.shape[0], k), -1, dtype=torch.long)
    used = min(k, int(valid.sum()) - 1)
    values, index = sim.topk(used, dim=1)
    graph[:, :used] = torch.where(torch.isinf(values), -1, index)
    graph[~valid] = -1
    return graph


def test_prototypes_and_graph_equal_brute_force(two_ranks: list[dict[str, Any]]) -> None:
    prototype, valid = _expected_prototypes()
    for result in two_ranks:
        full = result["full"]
        assert torch.equal(full["prototype_valid"], valid)
        _close(full["prototype"][valid], prototype[valid])
        assert torch.equal(full["graph"], _brute_force_graph(full["prototype"], valid, K))
        assert torch.equal(full["prototype_count"], torch.zeros(NC, dtype=torch.long))
    assert int((two_ranks[0]["full"]["graph"] >= 0).sum()) == 6 * K and valid.tolist() == [True] * 6 + [False]
    _, last_labels, _, _ = _batch(2)
    assert len(set(last_labels.tolist())) < 6  # some prototype fell back to the previous build


@pytest.mark.parametrize("mode", MODES, ids="-".join)
def test_two_ranks_logits_equal_one_class_memory(two_ranks: list[dict[str, Any]], mode: tuple[str, str]) -> None:
    ref = _reference_step(two_ranks[0]["full"], mode)
    assert int(ref["valid"].sum()) > 2 * len(ref["valid"])  # neighbours on both ranks take part
    for rank, result in enumerate(two_ranks):
        got = result[mode]
        assert torch.equal(got["valid"], ref["valid"][_rows(rank)])
        _close(got["logits"], ref["logits"][_rows(rank)])
        if mode[0] == "train":
            _close(got["grad"], ref["grad"][_rows(rank)])
            _close(got["occ_grad"], ref["occ_grad"][_rows(rank)])
        for name, value in ref["stats"].items():  # BN running statistics from the moments of all ranks
            _close(got["stats"][name], value)
    if mode[0] == "train":
        for name, grad in ref["param_grads"].items():  # each rank's QAConv gradient is its part of the sum
            _close(two_ranks[0][mode]["param_grads"][name] + two_ranks[1][mode]["param_grads"][name], grad)


def test_a_rank_without_pairs_still_joins_and_matches(two_ranks: list[dict[str, Any]]) -> None:
    full = two_ranks[0]["lonely_full"]
    assert not bool(full["seen"][4:].any())
    ref = _reference_step(full, ("train", "scaling"))
    for rank, result in enumerate(two_ranks):
        got = result["lonely"]
        _close(got["logits"], ref["logits"][_rows(rank)])
        _close(got["grad"], ref["grad"][_rows(rank)])
    assert torch.equal(two_ranks[1]["lonely"]["param_grads"]["fc.weight"], torch.zeros(1, H * W))


def test_full_state_gathers_on_one_rank_and_loads_anywhere(two_ranks: list[dict[str, Any]]) -> None:
    state = two_ranks[0]["dst0"]
    assert two_ranks[1]["dst0"] is None
    assert all(torch.equal(state[k], two_ranks[1]["full"][k]) for k in BUFFERS)
    _reference_memory(state)  # loads strictly on one process
    shard = ClassMemory(NC, CF, H, W, K, embedding_size=EMB, rank=2, world_size=3)
    shard.load_state_dict(state, strict=True)  # rows 6..6 of a three-rank world
    assert torch.equal(shard.memory, state["memory"][6:]) and torch.equal(shard.graph, state["graph"][6:])


def test_graph_sampler_batches_follow_the_gathered_graph(two_ranks: list[dict[str, Any]]) -> None:
    graph = two_ranks[0]["full"]["graph"]
    assert all(torch.equal(result["graph"], graph) for result in two_ranks)  # every rank holds the whole graph
    batches = [result["batches"] for result in two_ranks]
    assert len(batches[0]) == len(batches[1]) == -(-NC // 2)  # every class seeds once; equal batch counts
    labels = torch.tensor(DATASET_LABELS)
    seeds = []
    for rank_batches in batches:
        for batch in rank_batches:
            classes = labels[torch.tensor(batch)].reshape(P, IMAGES)
            assert (classes == classes[:, :1]).all()  # whole identities: IMAGES images of each class
            seed, rest = int(classes[0, 0]), classes[1:, 0].tolist()
            seeds.append(seed)
            neighbours = [c for c in graph[seed].tolist() if c >= 0][: P - 1]
            assert rest[: len(neighbours)] == neighbours, (seed, rest, graph[seed])
            assert len(set(classes[:, 0].tolist())) == P
    assert set(seeds) == set(range(NC)) and len(seeds) == 2 * -(-NC // 2)  # the padding repeats one seed
    assert (graph[6] == -1).all()  # class 6 has no prototype: its batch is topped up at random
