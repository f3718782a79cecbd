"""Visibility-normalised QAConv matching (``QAConv(visibility="normalised")``): its defining properties.

A hidden location neither counts as a match nor as a mismatch; all-ones maps give the plain matcher; the chunked
computation equals a naive one that materialises every P x G x hw x hw similarity.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from oaml.models.qaconv import QAConv

C, H, W = 8, 3, 3
HW = H * W


def _qaconv(train: bool = False) -> QAConv:
    torch.manual_seed(0)
    q = QAConv(C, H, W, visibility="normalised")
    with torch.no_grad():  # non-trivial BN statistics and fc weights, so that no property holds by accident
        q.bn.running_mean.fill_(0.3)
        q.bn.running_var.fill_(0.5)
        q.fc.weight.copy_(torch.linspace(0.5, 1.5, HW).reshape(1, HW) / HW)
    return q.train(train)


def _features(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, C, H, W, generator=torch.Generator().manual_seed(seed))


def _maps(n: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, H, W, generator=torch.Generator().manual_seed(seed))


def naive_normalised(q: QAConv, probe: torch.Tensor, gallery: torch.Tensor, probe_occ: torch.Tensor,
                     gallery_occ: torch.Tensor) -> torch.Tensor:
    """The module docstring's formula, written out over the full P x G x hw x hw similarity tensor."""
    p, g = probe.shape[0], gallery.shape[0]
    prob = F.normalize(probe.reshape(p, C, HW), dim=1)
    gal = F.normalize(gallery.reshape(g, C, HW), dim=1)
    op, og = probe_occ.reshape(p, 1, HW), gallery_occ.reshape(1, g, HW)
    sim = torch.einsum("pcs,gcr->pgsr", prob, gal)  # [p, g, probe location s, gallery location r]
    sim = op.reshape(p, 1, HW, 1) * og.reshape(1, g, 1, HW) * (sim + 1) - 1
    a, b = sim.max(dim=3).values, sim.max(dim=2).values  # best match of each probe / gallery location
    joint = op * og  # p x g x hw, visible in both
    weights = joint / joint.mean(dim=2, keepdim=True)
    pooled = q.bn(torch.stack((a, b), dim=2).reshape(-1, 1, HW)).reshape(p, g, 2, HW)  # one BN over both directions
    x = pooled * weights.unsqueeze(2)
    score = q.fc(x.reshape(-1, HW)).reshape(p, g, 2).sum(dim=2)
    return q.logit_bn(score.reshape(-1, 1)).reshape(p, g)


@pytest.mark.parametrize("train", [False, True])
def test_matches_the_naive_formula(train: bool) -> None:
    q = _qaconv(train)
    probe, gallery, op, og = _features(4), _features(5, seed=3), _maps(4), _maps(5, seed=4)
    expected = naive_normalised(q, probe, gallery, op, og)
    assert torch.allclose(q(probe, gallery, op, og), expected, atol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_all_ones_maps_equal_the_plain_matcher(train: bool) -> None:
    q, plain = _qaconv(train), _qaconv(train)
    plain.visibility = "scaling"
    probe, gallery = _features(4), _features(5, seed=3)
    ones_p, ones_g = torch.ones(4, 1, H, W), torch.ones(5, 1, H, W)
    assert torch.allclose(q(probe, gallery, ones_p, ones_g), plain(probe, gallery), atol=1e-5)
    assert torch.equal(q(probe, gallery), plain(probe, gallery))  # no maps: the plain matcher itself
    pairs = q.match_pairs(probe[:4], gallery[:4], ones_p, ones_g[:4])
    assert torch.allclose(pairs, plain.match_pairs(probe[:4], gallery[:4]), atol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_a_hidden_location_changes_no_score(train: bool) -> None:
    q = _qaconv(train)
    probe, gallery, op, og = _features(3), _features(4, seed=3), _maps(3), _maps(4, seed=4)
    op[:, 0, 1, 2] = 0.0  # probe location 5 hidden in every probe
    og[2, 0, 0, 0] = 0.0  # gallery location 0 hidden in gallery image 2
    changed_p, changed_g = probe.clone(), gallery.clone()
    changed_p[:, :, 1, 2] = torch.randn(3, C) * 10
    changed_g[2, :, 0, 0] = torch.randn(C) * 10
    assert torch.allclose(q(probe, gallery, op, og), q(changed_p, changed_g, op, og), atol=1e-5)
    assert torch.allclose(q.match_pairs(probe, gallery[:3], op, og[:3]),
                          q.match_pairs(changed_p, changed_g[:3], op, og[:3]), atol=1e-5)


def test_a_hidden_location_does_not_lower_a_genuine_score() -> None:
    """The same face on both sides, one probe location replaced by an occluder: hiding it restores the score of the
    unoccluded pair (uniform fc weights at initialisation); counting it, as visible, lowers the score."""
    torch.manual_seed(0)
    q = QAConv(C, H, W, visibility="normalised").eval()
    face = _features(1)
    occluded = face.clone()
    occluded[:, :, 2, 1] = torch.randn(C) * 5
    ones = torch.ones(1, 1, H, W)
    hidden = ones.clone()
    hidden[0, 0, 2, 1] = 0.0
    clean_score = q(face, face, ones, ones)
    assert torch.allclose(q(occluded, face, hidden, ones), clean_score, atol=1e-5)
    assert q(occluded, face, ones, ones) < clean_score - 1e-4
    scaling = QAConv(C, H, W).eval()
    scaling.load_state_dict(q.state_dict())
    assert scaling(occluded, face, hidden, ones) < scaling(face, face, ones, ones) - 1e-4  # the seed's rule lowers it


@pytest.mark.parametrize("train", [False, True])
def test_swap_transposes_and_chunking_changes_nothing(train: bool) -> None:
    q = _qaconv(train)
    probe, gallery, op, og = _features(5), _features(6, seed=3), _maps(5), _maps(6, seed=4)
    full = q(probe, gallery, op, og)
    assert torch.allclose(q(gallery, probe, og, op), full.t(), atol=1e-5)
    assert torch.allclose(q(probe, gallery, op, og, chunk_size=2), full, atol=1e-5)


def test_match_groups_equals_the_all_pairs_scores() -> None:
    q = _qaconv()
    probe, gallery, op = _features(3), _features(4, seed=3), _maps(3)
    full = q(probe, gallery, op, None)  # gallery without maps: all visible
    groups = q.match_groups(probe, gallery.unsqueeze(0).expand(3, -1, -1, -1, -1), op, chunk_size=1)
    assert torch.allclose(groups, full, atol=1e-5)


def test_gradients_reach_features_and_maps() -> None:
    q = _qaconv(train=True)
    probe, op = _features(4).requires_grad_(), _maps(4).requires_grad_()
    q(probe, probe, op, op).sum().backward()
    assert probe.grad is not None and probe.grad.abs().sum() > 0
    assert op.grad is not None and op.grad.abs().sum() > 0


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="visibility must be one of"):
        QAConv(C, H, W, visibility="masked")
