"""Tests of oaml.models.heads against hand-computed values of the SPEC §3 formulas."""

from __future__ import annotations

import math

import pytest
import torch

from oaml.models.heads import HEADS, AdaFace, ArcFace, CosFace, build_head

PHI = 0.6  # angle between the embedding and class 0
S = 64.0


def _head(name: str, **kwargs: float):
    """A head on 2-d embeddings with class columns (1, 0), (0, 1), (-1, 0)."""
    head = build_head(name, embedding_size=2, num_classes=3, **kwargs)
    with torch.no_grad():
        head.kernel.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))
    return head.eval()


def _embedding() -> torch.Tensor:
    return torch.tensor([[math.cos(PHI), math.sin(PHI)]])


def _others() -> list[float]:
    return [S * math.sin(PHI), -S * math.cos(PHI)]


def _adaface_logit(scaler: float, m: float = 0.4) -> float:
    """True-class AdaFace logit for cos = cos(PHI), computed by hand from SPEC §3 step 4."""
    return S * (math.cos(PHI - m * scaler) - (m + m * scaler))


def test_registry_and_defaults() -> None:
    assert HEADS.names() == ["adaface", "arcface", "cosface"]
    ada = build_head("adaface", 8, 4)
    assert isinstance(ada, AdaFace) and (ada.m, ada.h, ada.s, ada.t_alpha) == (0.4, 0.333, 64.0, 0.01)
    assert isinstance(build_head("arcface", 8, 4), ArcFace) and build_head("arcface", 8, 4).m == 0.5
    assert isinstance(build_head("cosface", 8, 4), CosFace) and build_head("cosface", 8, 4).m == 0.4
    assert build_head("arcface", 8, 4, m=0.3).m == 0.3
    with pytest.raises(ValueError, match="adaface"):
        build_head("sphereface", 8, 4)


def test_kernel_init_unit_columns() -> None:
    head = build_head("adaface", 16, 10)
    assert head.kernel.shape == (16, 10)
    assert torch.allclose(head.kernel.norm(dim=0), torch.ones(10), atol=1e-6)


def test_arcface_hand_example() -> None:
    logits = _head("arcface").forward(_embedding(), torch.ones(1, 1), torch.tensor([0]))
    expected = [S * math.cos(PHI + 0.5), *_others()]
    assert torch.allclose(logits, torch.tensor([expected]), atol=1e-4)


def test_cosface_hand_example() -> None:
    logits = _head("cosface").forward(_embedding(), torch.ones(1, 1), torch.tensor([0]))
    expected = [S * (math.cos(PHI) - 0.4), *_others()]
    assert torch.allclose(logits, torch.tensor([expected]), atol=1e-4)


def test_arcface_angle_is_clipped_below_pi() -> None:
    head = _head("arcface")
    logits = head(torch.tensor([[math.cos(3.0), math.sin(3.0)]]), torch.ones(1, 1), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(S * math.cos(math.pi - 1e-4), abs=1e-3)


def test_adaface_scaler_minus_one_is_arcface() -> None:
    head = _head("adaface")
    head.batch_mean.fill_(50.0)
    head.batch_std.fill_(1.0)  # h (1 - 50) / 1.001 < -1, clipped to -1
    logits = head(_embedding(), torch.ones(1, 1), torch.tensor([0]))
    expected = [S * math.cos(PHI + 0.4), *_others()]  # ArcFace with m = 0.4, no additive part
    assert torch.allclose(logits, torch.tensor([expected]), atol=1e-4)
    assert torch.allclose(logits, _head("arcface", m=0.4)(_embedding(), torch.ones(1, 1), torch.tensor([0])), atol=1e-4)


def test_adaface_scaler_zero_is_cosface() -> None:
    head = _head("adaface")  # mu = 20
    logits = head(_embedding(), torch.full((1, 1), 20.0), torch.tensor([0]))
    expected = [S * (math.cos(PHI) - 0.4), *_others()]
    assert torch.allclose(logits, torch.tensor([expected]), atol=1e-4)


def test_adaface_scaler_inside_interpolates() -> None:
    head = _head("adaface")  # mu = 20, sigma = 100, h = 0.333
    scaler = 0.333 * (50.0 - 20.0) / (100.0 + 1e-3)
    assert 0 < scaler < 1
    logits = head(_embedding(), torch.full((1, 1), 50.0), torch.tensor([0]))
    expected = [_adaface_logit(scaler), *_others()]
    assert torch.allclose(logits, torch.tensor([expected]), atol=1e-4)


def test_adaface_norm_is_clipped_to_100() -> None:
    head = _head("adaface")
    head.batch_std.fill_(1.0)
    big = head(_embedding(), torch.full((1, 1), 1e6), torch.tensor([0]))
    at_100 = head(_embedding(), torch.full((1, 1), 100.0), torch.tensor([0]))
    assert torch.equal(big, at_100)
    assert big[0, 0].item() == pytest.approx(_adaface_logit(1.0), abs=1e-3)  # h (100 - 20) / 1.001 > 1


@pytest.mark.parametrize("train", [False, True])
def test_h_zero_equals_cosface(train: bool) -> None:
    torch.manual_seed(0)
    ada = build_head("adaface", 8, 5, h=0.0).train(train)
    cos = build_head("cosface", 8, 5).train(train)
    cos.kernel.data.copy_(ada.kernel.data)
    embedding = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    norms = torch.rand(6, 1) * 50
    labels = torch.randint(0, 5, (6,))
    assert torch.allclose(ada(embedding, norms, labels), cos(embedding, norms, labels), atol=1e-3)


def test_ema_update_in_training_mode_used_at_once() -> None:
    head = _head("adaface").train()
    norms = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    logits = head(_embedding().expand(4, 2), norms, torch.zeros(4, dtype=torch.long))
    mean = 0.01 * 2.5 + 0.99 * 20.0
    std = 0.01 * math.sqrt(5.0 / 3.0) + 0.99 * 100.0  # unbiased std of 1, 2, 3, 4
    assert head.batch_mean.item() == pytest.approx(mean, rel=1e-6)
    assert head.batch_std.item() == pytest.approx(std, rel=1e-6)
    for i, n in enumerate([1.0, 2.0, 3.0, 4.0]):
        scaler = 0.333 * (n - mean) / (std + 1e-3)
        assert logits[i, 0].item() == pytest.approx(_adaface_logit(scaler), abs=1e-3)


def test_ema_not_updated_in_eval_or_for_single_sample() -> None:
    head = _head("adaface").eval()
    head(_embedding().expand(3, 2), torch.rand(3, 1), torch.zeros(3, dtype=torch.long))
    assert (head.batch_mean.item(), head.batch_std.item()) == (20.0, 100.0)
    head.train()(_embedding(), torch.ones(1, 1), torch.zeros(1, dtype=torch.long))
    assert (head.batch_mean.item(), head.batch_std.item()) == (20.0, 100.0)


def test_kernel_columns_are_renormalised_every_forward() -> None:
    head = _head("cosface")
    before = head(_embedding(), torch.ones(1, 1), torch.tensor([1]))
    with torch.no_grad():
        head.kernel.mul_(torch.tensor([3.0, 0.5, 7.0]))
    assert torch.allclose(head(_embedding(), torch.ones(1, 1), torch.tensor([1])), before, atol=1e-5)


def test_released_head_layout_loads_strictly() -> None:
    released = {"kernel": torch.randn(512, 7), "t": torch.zeros(1), "batch_mean": torch.tensor([21.5]),
                "batch_std": torch.tensor([98.0])}
    head = build_head("adaface", 512, 7)
    head.load_state_dict(released, strict=True)
    assert torch.equal(head.kernel, released["kernel"]) and head.batch_mean.item() == 21.5
    build_head("arcface", 512, 7).load_state_dict({"kernel": released["kernel"]}, strict=True)


def test_gradient_reaches_embedding_and_kernel() -> None:
    head = build_head("adaface", 8, 5).train()
    embedding = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    loss = torch.nn.functional.cross_entropy(head(embedding, torch.rand(4, 1) * 30, torch.arange(4)), torch.arange(4))
    loss.backward()
    assert embedding.grad.abs().sum() > 0 and head.kernel.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["adaface", "arcface", "cosface"])
def test_finite_gradient_at_cosine_one_under_bf16_autocast(name: str) -> None:
    head = build_head(name, 8, 3).train()
    embedding = torch.nn.functional.normalize(head.kernel.detach()[:, :2].T.clone(), dim=1).requires_grad_()
    labels = torch.tensor([0, 1])  # each embedding equals its class column: cos_y = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(embedding, torch.full((2, 1), 25.0), labels)
    assert logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert torch.isfinite(embedding.grad).all() and torch.isfinite(head.kernel.grad).all()
