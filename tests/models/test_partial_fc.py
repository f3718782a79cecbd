"""Tests of oaml.models.partial_fc, oaml.training.partial_sgd and oaml.training.memory_estimate (SPEC §13.3).

The distributed tests run one 2-process gloo session (module fixture ``two_ranks``) that records losses, gradients,
statistics and gathered kernels; each test compares one of them with the unsharded head in this process.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from oaml.errors import ConfigError
from oaml.models.class_memory import ClassMemory
from oaml.models.heads import build_head
from oaml.models.partial_fc import PartialFC, sample_size
from oaml.training.memory_estimate import check_rank_memory, estimate_rank_memory
from oaml.training.partial_sgd import PartialSGD

from .distributed_helpers import run_workers

HEADS = ("adaface", "arcface", "cosface")
E, C, SEED = 16, 11, 3  # two ranks: classes 0..5 and 6..10
SIZES = (5, 3)  # batch sizes of the ranks (uneven on purpose)
RATE = 0.5


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: unit embeddings, norms, labels (classes on both shards)."""
    g = torch.Generator().manual_seed(100 + step)
    total = sum(SIZES)
    embedding = F.normalize(torch.randn(total, E, generator=g), dim=1)
    norm = torch.rand(total, 1, generator=g) * 40 + 5
    labels = torch.randint(0, C, (total,), generator=g)
    labels[0], labels[-1], labels[1] = 2, 9, 2
    return embedding, norm, labels


def _rows(rank: int) -> slice:
    return slice(sum(SIZES[:rank]), sum(SIZES[: rank + 1]))


def _step(head: PartialFC, rank: int, step: int) -> dict[str, Any]:
    embedding, norm, labels = _batch(step)
    mine = embedding[_rows(rank)].clone().requires_grad_()
    out = head(mine, norm[_rows(rank)], labels[_rows(rank)])
    out.loss.backward()
    grad = head.kernel.grad.clone()
    head.kernel.grad = None
    return {"loss": out.loss.detach(), "acc": out.accuracy, "emb_grad": mine.grad, "kernel_grad": grad,
            "margin": {k: v.clone() for k, v in head.margin.state_dict().items()}, "sampled": out.num_sampled}


def _worker(rank: int, world: int) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for name in HEADS:
        head = PartialFC(name, E, C, rank=rank, world_size=world, seed=SEED).train()
        out[name] = [_step(head, rank, step) for step in range(2)]
        out[name, "full"] = head.full_kernel()
        out[name, "state"] = head.full_state_dict()
    averaged = PartialFC("cosface", E, C, rank=rank, world_size=world, seed=SEED, ddp_average=True).train()
    out["ddp_average"] = _step(averaged, rank, 0)
    sampled = PartialFC("adaface", E, C, rank=rank, world_size=world, seed=SEED, sample_rate=RATE).train()
    out["index"] = sampled.sample(_batch(0)[2], 0) + sampled.spec.start
    out["sampled"] = _step(sampled, rank, 0)
    out["dst0"] = sampled.full_kernel(dst=0)
    loaded = PartialFC("arcface", E, C, rank=rank, world_size=world, seed=SEED + 1)
    loaded.load_full_kernel(PartialFC("arcface", E, C, seed=SEED).kernel.detach())
    out["loaded"] = loaded.full_kernel()
    lone = PartialFC("adaface", E, 1, rank=rank, world_size=world).train()  # rank 1's shard is empty
    mine = _batch(0)[0][_rows(rank)].clone().requires_grad_()
    result = lone(mine, torch.full((SIZES[rank], 1), 20.0), torch.zeros(SIZES[rank], dtype=torch.long))
    result.loss.backward()
    out["lone"] = {"loss": result.loss.detach(), "acc": result.accuracy, "grad": mine.grad, "shape": lone.kernel.shape,
                   "full": lone.full_kernel()}
    optimizer = PartialSGD([sampled.kernel], lr=0.1, momentum=0.9, heads=[sampled])
    sampled.pop_sampled_columns()  # forget step 0: the optimizer step follows step 1 only
    _step(sampled, rank, 1)
    sampled.kernel.grad = torch.ones_like(sampled.kernel)  # anything: only the recorded columns move
    optimizer.step()
    state = optimizer.gather_state(optimizer.state_dict(), dst=0)
    out["momentum"] = state["state"][0]["momentum_buffer"]
    out["live_momentum"] = optimizer.state[sampled.kernel]["momentum_buffer"]  # untouched by the gather
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[Any, Any]]:
    return run_workers(_worker, 2, tmp_path_factory.mktemp("partial_fc"))


def _reference(name: str, steps: int = 2) -> list[dict[str, Any]]:
    """The unsharded head on the global batches, with the same kernel."""
    head = build_head(name, E, C).train()
    head.kernel.data.copy_(PartialFC(name, E, C, seed=SEED).kernel.detach())
    results = []
    for step in range(steps):
        embedding, norm, labels = _batch(step)
        embedding = embedding.clone().requires_grad_()
        logits = head(embedding, norm, labels)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        results.append({"loss": loss.detach(), "acc": (logits.argmax(1) == labels).float().mean(),
                        "emb_grad": embedding.grad, "kernel_grad": head.kernel.grad.clone(), "logits": logits,
                        "margin": {k: v.clone() for k, v in head.state_dict().items() if k != "kernel"}})
        head.kernel.grad = None
    return results


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", HEADS)
def test_two_ranks_equal_the_unsharded_head(two_ranks: list[dict[Any, Any]], name: str) -> None:
    reference = _reference(name)
    for step, ref in enumerate(reference):
        for rank, result in enumerate(two_ranks):
            got = result[name][step]
            start, end = (0, 6) if rank == 0 else (6, C)
            _close(got["loss"], ref["loss"])
            _close(got["emb_grad"], ref["emb_grad"][_rows(rank)])
            _close(got["kernel_grad"], ref["kernel_grad"][:, start:end])
            assert got["acc"] == ref["acc"]
            for key, value in ref["margin"].items():  # AdaFace's mu, sigma: global norms, on both ranks
                _close(got["margin"][key], value)
        assert all(torch.equal(two_ranks[0][name][step]["margin"][k], two_ranks[1][name][step]["margin"][k])
                   for k in ref["margin"])
    if name == "adaface":
        assert reference[1]["margin"]["batch_mean"].item() != 20.0  # the statistics did move


def test_kernel_init_and_gathers_do_not_depend_on_world_size(two_ranks: list[dict[Any, Any]]) -> None:
    single = PartialFC("adaface", E, C, seed=SEED).kernel.detach()
    assert torch.allclose(single.norm(dim=0), torch.ones(C))
    for result in two_ranks:
        assert torch.equal(result["adaface", "full"], single)
        assert torch.equal(result["loaded"], PartialFC("arcface", E, C, seed=SEED).kernel.detach())
    assert two_ranks[0]["dst0"] is not None and two_ranks[1]["dst0"] is None
    assert torch.equal(two_ranks[0]["dst0"], PartialFC("adaface", E, C, seed=SEED).kernel.detach())


def test_ddp_average_multiplies_the_embedding_gradient_by_world_size(two_ranks: list[dict[Any, Any]]) -> None:
    ref = _reference("cosface", steps=1)[0]
    for rank, result in enumerate(two_ranks):
        _close(result["ddp_average"]["emb_grad"], 2 * ref["emb_grad"][_rows(rank)])
        _close(result["ddp_average"]["kernel_grad"], result["cosface"][0]["kernel_grad"])


def test_sampled_loss_is_the_softmax_over_the_sampled_classes(two_ranks: list[dict[Any, Any]]) -> None:
    embedding, norm, labels = _batch(0)
    kept = torch.cat([result["index"] for result in two_ranks])
    assert set(labels.tolist()) <= set(kept.tolist())
    assert [len(r["index"]) for r in two_ranks] == [r["sampled"]["sampled"] for r in two_ranks]
    head = build_head("adaface", E, C).train()
    head.kernel.data.copy_(PartialFC("adaface", E, C, seed=SEED).kernel.detach())
    embedding.requires_grad_()
    logits = head(embedding, norm, labels)[:, kept]
    remapped = torch.searchsorted(kept, labels)
    loss = F.cross_entropy(logits, remapped)
    loss.backward()
    full_grad = torch.zeros_like(head.kernel)
    full_grad[:, kept] = head.kernel.grad[:, kept]
    for rank, result in enumerate(two_ranks):
        start, end = (0, 6) if rank == 0 else (6, C)
        _close(result["sampled"]["loss"], loss.detach())
        _close(result["sampled"]["emb_grad"], embedding.grad[_rows(rank)])
        _close(result["sampled"]["kernel_grad"], full_grad[:, start:end])  # unsampled columns: exactly 0
        assert result["sampled"]["acc"] == (logits.argmax(1) == remapped).float().mean()


def test_momentum_is_gathered_on_rank_zero(two_ranks: list[dict[Any, Any]]) -> None:
    full = two_ranks[0]["momentum"]
    assert full.shape == (E, C)
    assert two_ranks[1]["momentum"].shape == (E, 5)  # other ranks keep their shard
    assert all(r["live_momentum"].shape == r["momentum"].shape for r in two_ranks[1:])
    assert two_ranks[0]["live_momentum"].shape == (E, 6)
    torch.testing.assert_close(full[:, :6], two_ranks[0]["live_momentum"])
    touched = (full != 0).any(dim=0)
    assert 0 < int(touched.sum()) < C  # only sampled columns got momentum


def test_full_state_dict_loads_into_the_unsharded_head_and_any_world(two_ranks: list[dict[Any, Any]]) -> None:
    state = two_ranks[0]["adaface", "state"]
    head = build_head("adaface", E, C)
    head.load_state_dict({k: v for k, v in state.items() if k != "sample_step"}, strict=True)
    _close(head.batch_mean, _reference("adaface")[1]["margin"]["batch_mean"])
    shards = []
    for rank in range(3):  # a third world size: loading needs no process group
        part = PartialFC("adaface", E, C, rank=rank, world_size=3, seed=SEED + 7)
        part.load_state_dict(state, strict=True)
        assert torch.equal(part.margin.batch_std, head.batch_std)
        shards.append(part.kernel.detach())
    assert [s.shape[1] for s in shards] == [4, 4, 3]
    assert torch.equal(torch.cat(shards, dim=1), state["kernel"])


def test_an_empty_shard_takes_part(two_ranks: list[dict[Any, Any]]) -> None:
    assert [tuple(r["lone"]["shape"]) for r in two_ranks] == [(E, 1), (E, 0)]
    for result in two_ranks:  # one class: the softmax is 1, the loss 0, every prediction right
        assert result["lone"]["loss"] == 0 and result["lone"]["acc"] == 1
        assert torch.equal(result["lone"]["grad"], torch.zeros_like(result["lone"]["grad"]))
        assert result["lone"]["full"].shape == (E, 1)


# ---------------------------------------------------------------------- single process
def test_shards_split_classes_by_ceil() -> None:
    sizes = [PartialFC("cosface", 4, 5, rank=r, world_size=4).kernel.shape[1] for r in range(4)]
    assert sizes == [2, 2, 1, 0]
    assert [ClassMemory(5, 1, 1, 1, 2, rank=r, world_size=4).memory.shape[0] for r in range(4)] == sizes


def test_sample_size_rounds_before_ceil() -> None:
    assert sample_size(0.1, 30) == 3 and sample_size(0.1, 31) == 4 and sample_size(1.0, 7) == 7
    assert sample_size(0.5, 1) == 1 and sample_size(0.3, 0) == 0


def test_sampling_keeps_positives_is_sized_and_reproducible() -> None:
    head = PartialFC("arcface", E, 40, rank=1, world_size=2, sample_rate=0.3)  # classes 20..39, no group needed
    labels = torch.tensor([3, 21, 21, 25, 39, 7])
    index = head.sample(labels, step=5)
    assert index.tolist() == sorted(set(index.tolist())) and len(index) == 6 == sample_size(0.3, 20)
    assert {1, 5, 19} <= set(index.tolist())
    assert torch.equal(index, head.sample(labels, step=5))
    assert any(not torch.equal(index, head.sample(labels, step=s)) for s in range(6, 10))
    other_rank = PartialFC("arcface", E, 40, rank=0, world_size=2, sample_rate=0.3).sample(labels, step=5)
    assert {3, 7} <= set(other_rank.tolist())
    many = torch.arange(20, 40)  # more positives than the sample size: all of them
    assert head.sample(many, step=0).tolist() == list(range(20))


def test_labels_are_remapped_to_the_sampled_positions() -> None:
    torch.manual_seed(0)
    head = PartialFC("cosface", E, 30, sample_rate=0.2, seed=1).train()
    embedding = F.normalize(torch.randn(4, E), dim=1)
    labels = torch.tensor([17, 4, 29, 4])
    index = head.sample(labels, 0)
    out = head(embedding, torch.ones(4, 1), labels)
    reference = build_head("cosface", E, 30)
    reference.kernel.data.copy_(head.kernel.detach())
    logits = reference(embedding, torch.ones(4, 1), labels)[:, index]
    expected = F.cross_entropy(logits, torch.searchsorted(index, labels))
    _close(out.loss, expected)
    assert int(head.sample_step) == 1 and out.num_sampled == 6
    head.eval()
    assert head(embedding, torch.ones(4, 1), labels).num_sampled == 30  # evaluation keeps every class


def _trained_head(rate: float) -> tuple[PartialFC, PartialSGD]:
    torch.manual_seed(0)
    head = PartialFC("adaface", E, 24, sample_rate=rate).train()
    optimizer = PartialSGD([head.kernel], lr=0.5, momentum=0.9, weight_decay=0.01, heads=[head])
    return head, optimizer


def _backward(head: PartialFC, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    embedding = F.normalize(torch.randn(3, E, generator=g), dim=1)
    head(embedding, torch.rand(3, 1, generator=g) * 30, torch.randint(0, 24, (3,), generator=g)).loss.backward()


def test_optimizer_leaves_unsampled_columns_and_their_momentum_untouched() -> None:
    head, optimizer = _trained_head(0.25)
    _backward(head, 1)
    optimizer.step()
    optimizer.zero_grad()
    first = head.pop_sampled_columns()
    assert first.numel() == 0  # step popped them
    weight, momentum = head.kernel.detach().clone(), optimizer.state[head.kernel]["momentum_buffer"].clone()
    _backward(head, 2)
    columns = torch.nonzero(head._touched).flatten()
    grad = head.kernel.grad.clone()
    optimizer.step()
    others = torch.ones(24, dtype=torch.bool)
    others[columns] = False
    assert 0 < int(others.sum()) < 24 and bool((momentum[:, others] != 0).any())
    assert torch.equal(head.kernel.detach()[:, others], weight[:, others])
    assert torch.equal(optimizer.state[head.kernel]["momentum_buffer"][:, others], momentum[:, others])
    step = grad[:, columns] + 0.01 * weight[:, columns]
    velocity = 0.9 * momentum[:, columns] + step
    _close(optimizer.state[head.kernel]["momentum_buffer"][:, columns], velocity)
    _close(head.kernel.detach()[:, columns], weight[:, columns] - 0.5 * velocity)


def test_optimizer_with_every_column_is_torch_sgd_bit_for_bit() -> None:
    head, optimizer = _trained_head(1.0)
    twin = head.kernel.detach().clone().requires_grad_()
    plain = torch.optim.SGD([twin], lr=0.5, momentum=0.9, weight_decay=0.01)
    for seed in range(3):
        _backward(head, seed)
        twin.grad = head.kernel.grad.clone()
        optimizer.step()
        plain.step()
        optimizer.zero_grad()
        assert torch.equal(head.kernel.detach(), twin.detach())


def test_accumulation_unions_columns_and_a_skipped_backward_records_none() -> None:
    head, _ = _trained_head(0.25)
    labels = torch.tensor([1, 2, 3])
    head(F.normalize(torch.randn(3, E), dim=1), torch.ones(3, 1), labels)  # no backward: nothing recorded
    assert head.pop_sampled_columns().numel() == 0
    _backward(head, 1)
    a = set(torch.nonzero(head._touched).flatten().tolist())
    _backward(head, 2)
    assert set(head.pop_sampled_columns().tolist()) >= a and head.pop_sampled_columns().numel() == 0


def test_momentum_shards_back_from_the_full_layout() -> None:
    head = PartialFC("cosface", E, C, rank=1, world_size=2)
    optimizer = PartialSGD([head.kernel], lr=0.1, momentum=0.9, heads=[head])
    full = torch.arange(E * C, dtype=torch.float32).reshape(E, C)
    state = {"state": {0: {"momentum_buffer": full}}, "param_groups": optimizer.state_dict()["param_groups"]}
    optimizer.load_state_dict(state)  # a full-layout checkpoint, on rank 1 of 2
    assert torch.equal(optimizer.state[head.kernel]["momentum_buffer"], full[:, 6:])
    assert state["state"][0]["momentum_buffer"] is full  # the caller's dict is not modified
    with pytest.raises(ValueError, match="not a parameter"):
        PartialSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, heads=[head])


def test_bind_equals_a_shard_built_directly() -> None:
    head = PartialFC("adaface", E, C, world_size=2, seed=SEED)  # built for rank 0, as before Lightning's setup
    head.margin.batch_mean.fill_(33.0)
    head.bind(1, 2, ddp_average=True)
    direct = PartialFC("adaface", E, C, rank=1, world_size=2, seed=SEED)
    assert torch.equal(head.kernel, direct.kernel) and head.kernel.shape == (E, 5) and head.ddp_average
    assert head.margin.batch_mean.item() == 33.0
    kernel = head.kernel
    head.bind(1, 2)  # unchanged: a no-op
    assert head.kernel is kernel and head.ddp_average


def test_state_dict_has_the_unsharded_names() -> None:
    head = PartialFC("adaface", E, C)
    assert set(head.state_dict()) == {"kernel", "batch_mean", "batch_std", "t", "sample_step"}
    assert set(PartialFC("arcface", E, C).state_dict()) == {"kernel", "sample_step"}
    restored = PartialFC("adaface", E, C, seed=SEED + 1)
    restored.load_state_dict(head.state_dict(), strict=True)
    assert torch.equal(restored.kernel, head.kernel)


def test_unsharded_checkpoint_layout_loads_into_a_shard() -> None:
    head = build_head("adaface", E, C)
    head.batch_mean.fill_(25.0)
    shard = PartialFC("adaface", E, C, rank=0, world_size=2)
    shard.load_state_dict(head.state_dict(), strict=True)
    assert torch.equal(shard.kernel, head.kernel[:, :6]) and shard.margin.batch_mean.item() == 25.0


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC("adaface", E, C, sample_rate=0.0)
    with pytest.raises(ValueError, match="rank"):
        PartialFC("adaface", E, C, rank=2, world_size=2)
    with pytest.raises(RuntimeError, match="process group"):
        PartialFC("adaface", E, C, rank=0, world_size=2)(torch.ones(1, E), torch.ones(1, 1), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        PartialFC("adaface", E, C)(torch.ones(1, E), torch.ones(1, 1), torch.tensor([11]))


# ---------------------------------------------------------------------- memory estimate
def _bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("rate", [1.0, 0.3])
def test_memory_estimate_matches_allocated_bytes(rate: float) -> None:
    classes, world, emb, shape, k = 37, 3, 8, (4, 2, 3), 5
    # rank 0 of 3 holds 13 classes; a one-rank head over 13 classes allocates what it allocates (no group needed)
    head = PartialFC("cosface", emb, math.ceil(classes / world), sample_rate=rate).train()
    optimizer = PartialSGD([head.kernel], lr=0.1, momentum=0.9, heads=[head])
    out = head(F.normalize(torch.randn(2, emb), dim=1), torch.ones(2, 1), torch.tensor([0, 1]))
    out.loss.backward()
    optimizer.step()
    memory = ClassMemory(classes, *shape, k, embedding_size=emb, rank=0, world_size=world)
    est = estimate_rank_memory(classes, world, rate, emb, shape, k)
    assert est.kernel == _bytes(head.kernel)
    assert est.kernel_grad == _bytes(head.kernel.grad)
    assert est.optimizer_state == _bytes(optimizer.state[head.kernel]["momentum_buffer"])
    assert est.sampled_kernel == (2 * out.num_sampled if rate < 1 else head.spec.size) * emb * 4
    assert est.backward == 2 * out.num_sampled * emb * 4  # at rate 1 every column is "sampled"
    assert est.class_memory == _bytes(memory.memory, memory.seen)
    assert est.prototypes == _bytes(memory.prototype, memory.prototype_sum, memory.prototype_valid,
                                    memory.prototype_count)
    assert est.graph == _bytes(memory.graph)
    assert est.device_total == est.head_total + est.memory_total and est.host_total == 0
    assert estimate_rank_memory(classes, world, rate, emb, shape, k, memory_on_cpu=True).host_total == \
        est.memory_total


def test_memory_check_names_the_sizes_and_the_fixes() -> None:
    settings = {"sample_rate": 1.0, "memory_on_cpu": False}
    fits = check_rank_memory(100_000, 8, device_budget=80 * 2**30, **settings)
    assert fits.device_total < 80 * 2**30
    with pytest.raises(ConfigError) as info:
        check_rank_memory(2_000_000, 8, device_budget=8 * 2**30, **settings)
    message = str(info.value)
    assert "\n" not in message and "--sample_rate" in message and "--class_memory_on_cpu" in message
    assert "more ranks" in message and "class memory" in message and "GiB" in message
    needed = int(message.split("(R=")[1].split(" ")[0])
    assert check_rank_memory(2_000_000, needed, device_budget=8 * 2**30, **settings)
    with pytest.raises(ConfigError):
        check_rank_memory(2_000_000, needed - 1, device_budget=8 * 2**30, **settings)
    per_class = 512 * 49 * 2
    assert math.isclose(estimate_rank_memory(2_000_000, 8).class_memory, 250_000 * (per_class + 1))

