"""Tests of oaml.models.class_memory on one process: overwrite rules, prototypes, the prototype k-nearest graph and
its rebuild schedule, candidates, logits, binding and the checkpoint layouts (hand-computed expectations).

The two-process equalities (sharded == one memory) are in ``test_class_memory_distributed.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from oaml.models.class_memory import ClassMemory
from oaml.models.qaconv import QAConv

ANGLES = [0.0, 0.1, 0.3, 0.7, 1.5, 3.0]
BUFFERS = ("memory", "seen", "graph", "prototype", "prototype_valid", "prototype_sum", "prototype_count",
           "built_with")


def _class_features(angles: list[float], scale: float = 3.0) -> torch.Tensor:
    """N x 3 x 1 x 2 maps: location 0 = (cos a, sin a, 0), location 1 = (0, 0, 1), unnormalised."""
    feats = torch.zeros(len(angles), 3, 1, 2)
    for i, angle in enumerate(angles):
        feats[i, :, 0, 0] = torch.tensor([math.cos(angle), math.sin(angle), 0.0]) * scale
        feats[i, 2, 0, 1] = scale * (i + 1)
    return feats


def _embeddings(angles: list[float], scale: float = 5.0) -> torch.Tensor:
    """N x 2 embeddings at the given angles (not unit: the prototypes normalise them)."""
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles]) * scale


def _memory(num_classes: int = 6, k: int = 2, **kw: object) -> ClassMemory:
    return ClassMemory(num_classes, 3, 1, 2, k_nearest=k, embedding_size=2, **kw)


def _filled(k: int = 2) -> ClassMemory:
    memory = _memory(k=k)
    # The feature maps run in the opposite order to the embeddings: the graph must follow the embeddings.
    memory.update(_class_features(ANGLES[::-1]), torch.arange(6), _embeddings(ANGLES))
    return memory


def test_buffers_not_parameters() -> None:
    memory = ClassMemory(10, 4, 2, 2, k_nearest=3)
    assert list(memory.parameters()) == []
    assert set(memory.state_dict()) == set(BUFFERS)
    assert memory.memory.dtype == torch.float16 and memory.memory.shape == (10, 4, 2, 2)
    assert memory.seen.dtype == torch.bool and memory.graph.shape == (10, 3) and memory.graph.dtype == torch.long
    assert memory.prototype.shape == (10, 512) and memory.built_with.shape == ()


def test_update_stores_normalised_detached_fp16() -> None:
    memory = _memory(4)
    feats = _class_features([0.3, 1.0]).requires_grad_()
    memory.update(feats, torch.tensor([2, 0]), _embeddings([0.0, 1.0]))
    assert memory.seen.tolist() == [True, False, True, False]
    assert not memory.memory.requires_grad
    expected = torch.tensor([[math.cos(0.3), 0.0], [math.sin(0.3), 0.0], [0.0, 1.0]]).reshape(3, 1, 2)
    assert torch.allclose(memory.memory[2].float(), expected, atol=1e-3)
    assert memory.prototype_count.tolist() == [1, 0, 1, 0]
    assert torch.allclose(memory.prototype_sum[0], torch.tensor([math.cos(1.0), math.sin(1.0)]))


def test_overwrite_and_last_occurrence_wins() -> None:
    memory = _memory(3)
    feats = _class_features([0.0, 1.0, 2.0])
    memory.update(feats[:1], torch.tensor([1]), _embeddings([0.0]))
    memory.update(feats, torch.tensor([1, 0, 1]), _embeddings([0.0, 0.0, 0.0]))  # class 1 twice: the last wins
    assert torch.allclose(memory.memory[1, 0, 0, 0].float(), torch.tensor(math.cos(2.0)), atol=1e-3)
    assert torch.allclose(memory.memory[0, 0, 0, 0].float(), torch.tensor(math.cos(1.0)), atol=1e-3)
    assert memory.prototype_count.tolist() == [1, 3, 0]  # every sample counts towards the prototype


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 100])
def test_graph_holds_the_nearest_prototypes(chunk_size: int) -> None:
    memory = _filled(k=2)
    memory.rebuild_graph(chunk_size=chunk_size)
    # angle gaps 0.1, 0.2, 0.4, 0.8, 1.5 between consecutive classes
    assert memory.graph.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2], [4, 3]]
    assert int(memory.built_with) == 6


def test_prototype_is_the_mean_since_the_last_build_or_the_previous_one() -> None:
    memory = ClassMemory(3, 3, 1, 2, k_nearest=1, embedding_size=2)
    feats = _class_features([0.0, 0.0])
    memory.update(feats, torch.tensor([0, 1]), torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
    memory.rebuild_graph()
    memory.update(feats, torch.tensor([0, 0]), torch.tensor([[1.0, 0.0], [0.0, 7.0]]))  # mean of unit vectors
    memory.rebuild_graph()
    assert torch.allclose(memory.prototype[0], torch.tensor([2**-0.5, 2**-0.5]))
    assert torch.allclose(memory.prototype[1], torch.tensor([0.0, 1.0]))  # no new sample: kept
    assert memory.prototype_valid.tolist() == [True, True, False]
    assert memory.graph.tolist() == [[1], [0], [-1]]
    assert memory.prototype_sum.abs().sum() == 0 and memory.prototype_count.sum() == 0


def test_unseen_classes_are_excluded() -> None:
    memory = _memory(6, k=3)
    memory.update(_class_features(ANGLES[:5]), torch.arange(5), _embeddings(ANGLES[:5]))  # class 5 never written
    memory.rebuild_graph(chunk_size=2)
    assert memory.graph[5].tolist() == [-1, -1, -1]
    assert 5 not in memory.graph.flatten().tolist()
    index, valid = memory.candidates(torch.tensor([5, 0]))
    assert valid[0].tolist() == [False] * 4 and index[0].tolist() == [0] * 4
    assert index[1].tolist() == [0, 1, 2, 3] and valid[1].all()


def test_fewer_classes_than_k_pads_with_invalid() -> None:
    memory = _memory(6, k=4)
    memory.update(_class_features(ANGLES[:3]), torch.arange(3), _embeddings(ANGLES[:3]))
    memory.rebuild_graph()
    assert memory.graph[0].tolist() == [1, 2, -1, -1]
    index, valid = memory.candidates(torch.tensor([0]))
    assert index.tolist() == [[0, 1, 2, 0, 0]] and valid.tolist() == [[True, True, True, False, False]]


def test_no_graph_before_two_classes_have_a_prototype() -> None:
    memory = _memory(4)
    memory.rebuild_graph()
    memory.update(_class_features([0.5]), torch.tensor([1]), _embeddings([0.5]))
    memory.rebuild_graph()
    assert torch.all(memory.graph == -1) and int(memory.built_with) == 1


def test_graph_is_stale_when_the_classes_with_a_prototype_double() -> None:
    memory = _memory(6)
    features, embeddings = _class_features(ANGLES), _embeddings(ANGLES)

    def write(c: int) -> None:
        memory.update(features[c : c + 1], torch.tensor([c]), embeddings[c : c + 1])

    write(0)
    assert not memory.graph_is_stale()  # one class: no neighbour to find
    write(1)
    assert memory.graph_is_stale()  # pending samples count before the build turns them into prototypes
    memory.rebuild_graph()
    assert int(memory.built_with) == 2 and not memory.graph_is_stale()
    write(2)
    assert not memory.graph_is_stale()  # 3 < 2 x 2
    write(3)
    assert memory.graph_is_stale()  # 4 = 2 x 2


def test_state_dict_round_trip() -> None:
    memory = _filled(k=2)
    memory.rebuild_graph()
    restored = _memory(k=2)
    restored.load_state_dict(memory.state_dict(), strict=True)
    for name in BUFFERS:
        assert torch.equal(getattr(restored, name), getattr(memory, name)), name


def test_the_layout_before_prototypes_loads_and_keeps_its_graph() -> None:
    old_graph = torch.tensor([[2, 1], [0, 2], [1, 0], [-1, -1], [-1, -1], [-1, -1]])
    state = {"memory": torch.randn(6, 3, 1, 2).half(), "seen": torch.tensor([True] * 3 + [False] * 3),
             "graph": old_graph}
    memory = _memory(k=2)
    memory.load_state_dict(state, strict=True)
    assert not memory.prototype_valid.any() and int(memory.built_with) == 3
    memory.rebuild_graph()  # no prototype yet: the flattened-memory graph stays in use
    assert torch.equal(memory.graph, old_graph)
    memory.update(_class_features(ANGLES[:5]), torch.arange(5), _embeddings(ANGLES[:5]))
    assert not memory.graph_is_stale()  # 5 classes with samples < 2 x the 3 the old graph covered
    memory.rebuild_graph()  # the next epoch's build: from the prototypes
    assert memory.graph.tolist()[:5] == [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2]]


def test_pinned_memory_ignores_module_moves() -> None:
    memory = ClassMemory(4, 3, 1, 2, device="cpu").to(torch.float64)
    assert memory.memory.dtype == torch.float16 and memory.prototype.dtype == torch.float32
    follower = ClassMemory(4, 3, 1, 2, device=None).to(torch.float64)
    assert follower.memory.dtype == torch.float64


def test_logits_against_candidates() -> None:
    memory = _filled(k=2)
    memory.rebuild_graph()
    matcher = QAConv(3, 1, 2).eval()
    probe = _class_features([0.05, 2.9]).requires_grad_()
    labels = torch.tensor([0, 5])
    logits, valid = memory.logits(matcher, probe, labels)
    assert logits.shape == (2, 3) and valid.all()
    gallery = memory.memory[torch.tensor([[0, 1, 2], [5, 4, 3]])].float()
    expected = torch.stack([matcher(probe[i : i + 1], gallery[i])[0] for i in range(2)])
    assert torch.allclose(logits, expected, atol=1e-5)
    logits.sum().backward()
    assert probe.grad.abs().sum() > 0


def test_logits_in_training_with_fewer_than_two_valid_pairs_are_zero() -> None:
    memory = _memory(4)
    memory.update(_class_features([0.5]), torch.tensor([1]), _embeddings([0.5]))
    logits, valid = memory.logits(QAConv(3, 1, 2).train(), _class_features([0.1, 0.2]), torch.tensor([1, 2]))
    assert valid.tolist() == [[True, False, False], [False, False, False]]
    assert torch.equal(logits, torch.zeros(2, 3))


def test_rebuild_on_an_explicit_device_gives_the_same_graph() -> None:
    memory = _filled(k=3)
    memory.rebuild_graph(chunk_size=2)
    expected = memory.graph.clone()
    memory.rebuild_graph(chunk_size=4, device="cpu")
    assert torch.equal(memory.graph, expected)


def test_bind_re_creates_the_rows_of_a_rank() -> None:
    memory = _filled()
    memory.rebuild_graph()
    memory.bind(1, 2)
    assert memory.memory.shape[0] == 3 and (memory.spec.start, memory.spec.end) == (3, 6)
    assert not memory.seen.any() and (memory.graph == -1).all() and int(memory.built_with) == 0
    memory.seen[1] = True
    memory.bind(1, 2)  # unchanged: a no-op
    assert memory.seen[1]


def test_full_layout_loads_the_rows_of_a_rank() -> None:
    memory = _filled(k=2)
    memory.rebuild_graph()
    shard = _memory(k=2, rank=1, world_size=4)  # classes 2 and 3
    shard.load_state_dict(memory.full_state_dict(), strict=True)
    assert torch.equal(shard.memory, memory.memory[2:4]) and torch.equal(shard.graph, memory.graph[2:4])
    assert int(shard.built_with) == 6


def test_update_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        _memory(4).update(_class_features([0.1]), torch.tensor([4]), _embeddings([0.1]))
    with pytest.raises(ValueError, match="embeddings"):
        _memory(4).update(_class_features([0.1]), torch.tensor([1]), torch.randn(1, 3))
