"""Tests of oaml.models.class_memory: overwrite rules, the k-nearest graph, candidates, state round-trip."""

from __future__ import annotations

import math

import pytest
import torch

from oaml.models.class_memory import ClassMemory
from oaml.models.qaconv import QAConv

ANGLES = [0.0, 0.1, 0.3, 0.7, 1.5, 3.0]


def _class_features(angles: list[float], scale: float = 3.0) -> torch.Tensor:
    """N x 3 x 1 x 2 maps: location 0 = (cos a, sin a, 0), location 1 = (0, 0, 1), unnormalised.

    After per-location normalisation the flattened cosine of classes c, d is (cos(a_c - a_d) + 1) / 2,
    so the nearest classes are those with the closest angles.
    """
    feats = torch.zeros(len(angles), 3, 1, 2)
    for i, angle in enumerate(angles):
        feats[i, :, 0, 0] = torch.tensor([math.cos(angle), math.sin(angle), 0.0]) * scale
        feats[i, 2, 0, 1] = scale * (i + 1)
    return feats


def _filled(k: int = 2, angles: list[float] = ANGLES, num_classes: int = 6) -> ClassMemory:
    memory = ClassMemory(num_classes, 3, 1, 2, k_nearest=k)
    memory.update(_class_features(angles), torch.arange(len(angles)))
    return memory


def test_buffers_not_parameters() -> None:
    memory = ClassMemory(10, 4, 2, 2, k_nearest=3)
    assert list(memory.parameters()) == []
    assert set(memory.state_dict()) == {"memory", "seen", "graph"}
    assert memory.memory.dtype == torch.float16 and memory.memory.shape == (10, 4, 2, 2)
    assert memory.seen.dtype == torch.bool and memory.graph.shape == (10, 3) and memory.graph.dtype == torch.long


def test_update_stores_normalised_detached_fp16() -> None:
    memory = ClassMemory(4, 3, 1, 2)
    feats = _class_features([0.3, 1.0]).requires_grad_()
    memory.update(feats, torch.tensor([2, 0]))
    assert memory.seen.tolist() == [True, False, True, False]
    assert not memory.memory.requires_grad
    expected = torch.tensor([[math.cos(0.3), 0.0], [math.sin(0.3), 0.0], [0.0, 1.0]]).reshape(3, 1, 2)
    assert torch.allclose(memory.memory[2].float(), expected, atol=1e-3)
    assert torch.allclose(memory.memory[2].float().norm(dim=0), torch.ones(1, 2), atol=1e-3)


def test_overwrite_and_last_occurrence_wins() -> None:
    memory = ClassMemory(3, 3, 1, 2)
    feats = _class_features([0.0, 1.0, 2.0])
    memory.update(feats[:1], torch.tensor([1]))
    memory.update(feats, torch.tensor([1, 0, 1]))  # class 1 appears twice; the last sample (angle 2.0) wins
    assert torch.allclose(memory.memory[1, 0, 0, 0].float(), torch.tensor(math.cos(2.0)), atol=1e-3)
    assert torch.allclose(memory.memory[0, 0, 0, 0].float(), torch.tensor(math.cos(1.0)), atol=1e-3)


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 100])
def test_graph_holds_true_nearest_classes(chunk_size: int) -> None:
    memory = _filled(k=2)
    memory.rebuild_graph(chunk_size=chunk_size)
    # angle gaps: 0.1, 0.2, 0.4, 0.8, 1.5 between consecutive classes
    expected = [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2], [4, 3]]
    assert memory.graph.tolist() == expected


def test_unseen_classes_are_excluded() -> None:
    memory = ClassMemory(6, 3, 1, 2, k_nearest=3)
    memory.update(_class_features(ANGLES[:5]), torch.arange(5))  # class 5 never written
    memory.rebuild_graph(chunk_size=2)
    assert memory.graph[5].tolist() == [-1, -1, -1]
    assert 5 not in memory.graph.flatten().tolist()
    index, valid = memory.candidates(torch.tensor([5, 0]))
    assert valid[0].tolist() == [False, False, False, False] and index[0].tolist() == [0, 0, 0, 0]
    assert index[1].tolist() == [0, 1, 2, 3] and valid[1].all()


def test_fewer_seen_classes_than_k_pads_with_invalid() -> None:
    memory = ClassMemory(6, 3, 1, 2, k_nearest=4)
    memory.update(_class_features(ANGLES[:3]), torch.arange(3))
    memory.rebuild_graph()
    assert memory.graph[0].tolist() == [1, 2, -1, -1]
    index, valid = memory.candidates(torch.tensor([0]))
    assert index.tolist() == [[0, 1, 2, 0, 0]] and valid.tolist() == [[True, True, True, False, False]]


def test_no_graph_before_two_classes_are_seen() -> None:
    memory = ClassMemory(4, 3, 1, 2, k_nearest=2)
    memory.rebuild_graph()
    memory.update(_class_features([0.5]), torch.tensor([1]))
    memory.rebuild_graph()
    assert torch.all(memory.graph == -1)


def test_graph_is_stale_when_the_seen_classes_double() -> None:
    memory = ClassMemory(6, 3, 1, 2, k_nearest=2)
    features = _class_features(ANGLES)
    memory.update(features[:1], torch.tensor([0]))
    assert not memory.graph_is_stale()  # one class: no neighbour to find
    memory.update(features[1:2], torch.tensor([1]))
    assert memory.graph_is_stale()
    memory.rebuild_graph()
    assert memory.seen_at_build == 2 and not memory.graph_is_stale()
    memory.update(features[2:3], torch.tensor([2]))
    assert not memory.graph_is_stale()  # 3 < 2 x 2
    memory.update(features[3:4], torch.tensor([3]))
    assert memory.graph_is_stale()  # 4 = 2 x 2


def test_state_dict_round_trip() -> None:
    memory = _filled(k=2)
    memory.rebuild_graph()
    restored = ClassMemory(6, 3, 1, 2, k_nearest=2)
    restored.load_state_dict(memory.state_dict(), strict=True)
    for name in ("memory", "seen", "graph"):
        assert torch.equal(getattr(restored, name), getattr(memory, name))


def test_pinned_memory_ignores_module_moves() -> None:
    memory = ClassMemory(4, 3, 1, 2, device="cpu").to(torch.float64)
    assert memory.memory.dtype == torch.float16
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
    memory = ClassMemory(4, 3, 1, 2, k_nearest=2)
    memory.update(_class_features([0.5]), torch.tensor([1]))
    logits, valid = memory.logits(QAConv(3, 1, 2).train(), _class_features([0.1, 0.2]), torch.tensor([1, 2]))
    assert valid.tolist() == [[True, False, False], [False, False, False]]
    assert torch.equal(logits, torch.zeros(2, 3))


def test_rebuild_on_an_explicit_device_gives_the_same_graph() -> None:
    memory = _filled(k=3)
    memory.rebuild_graph(chunk_size=2)
    expected = memory.graph.clone()
    memory.rebuild_graph(chunk_size=4, device="cpu")
    assert torch.equal(memory.graph, expected)


def test_update_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        ClassMemory(4, 3, 1, 2).update(_class_features([0.1]), torch.tensor([4]))
