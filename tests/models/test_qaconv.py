"""Tests of oaml.models.qaconv: the QAConv 2.1 formula, occlusion weighting, chunking, memory, precision."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.nn import functional as F

from oaml.models.qaconv import QAConv

K = math.sqrt(1 + 1e-5)  # BatchNorm with running mean 0, var 1, affine 1/0 divides by this


def _qaconv(c: int = 8, h: int = 3, w: int = 3, **kwargs: int) -> QAConv:
    torch.manual_seed(0)
    return QAConv(c, h, w, **kwargs)


def _features(n: int, c: int = 8, h: int = 3, w: int = 3, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=generator)


def _maps(n: int, h: int = 3, w: int = 3, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, h, w, generator=generator)


def naive_reference(q: QAConv, probe, gallery, probe_occ=None, gallery_occ=None) -> torch.Tensor:
    """The published QAConv 2.1 computation, materialising P x G x hw x hw, with SPEC §5 weighting."""
    p, g, hw = probe.shape[0], gallery.shape[0], q.hw
    prob = F.normalize(probe.reshape(p, q.num_features, hw), dim=1)
    gal = F.normalize(gallery.reshape(g, q.num_features, hw), dim=1)
    score = torch.einsum("pcs,gcr->pgrs", prob, gal)
    if gallery_occ is not None:
        score = score * gallery_occ.reshape(1, g, hw, 1)
    if probe_occ is not None:
        score = score * probe_occ.reshape(p, 1, 1, hw)
    score = torch.cat((score.max(dim=2)[0], score.max(dim=3)[0]), dim=-1).reshape(-1, 1, hw)
    score = q.fc(q.bn(score).reshape(-1, hw)).reshape(-1, 2).sum(dim=1, keepdim=True)
    return q.logit_bn(score).reshape(p, g)


def test_structure_and_init() -> None:
    q = QAConv(512, 7, 7)
    assert isinstance(q.bn, torch.nn.BatchNorm1d) and q.bn.num_features == 1
    assert isinstance(q.logit_bn, torch.nn.BatchNorm1d) and q.logit_bn.num_features == 1
    assert q.fc.in_features == 49 and q.fc.out_features == 1
    assert torch.all(q.fc.weight == 1 / 49)
    assert abs(q.fc.bias.item()) <= 1 / math.sqrt(49)  # PyTorch's default Linear bias init


def _hand_model() -> QAConv:
    q = QAConv(2, 1, 2).eval()
    with torch.no_grad():
        q.fc.bias.zero_()
    return q


def _hand_features() -> tuple[torch.Tensor, torch.Tensor]:
    probe = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # s0 = (1, 0), s1 = (0, 1)
    gallery = torch.tensor([[3.0, 0.0], [2.0, 2.0]]).T.reshape(1, 2, 1, 2)  # r0 ~ (1, 0), r1 ~ (1, 1)/sqrt2
    return probe, gallery


def test_hand_example_without_occlusion() -> None:
    probe, gallery = _hand_features()
    # S[r, s]: r0s0 = 1, r0s1 = 0, r1s0 = r1s1 = 1/sqrt2. a = max_r = (1, 1/sqrt2); b = max_s = (1, 1/sqrt2)
    root = 1 / math.sqrt(2)
    expected = ((1 + root) / 2 + (1 + root) / 2) / K / K
    assert _hand_model()(probe, gallery).item() == pytest.approx(expected, abs=1e-6)


def test_hand_example_each_map_weights_its_own_locations() -> None:
    probe, gallery = _hand_features()
    probe_occ = torch.tensor([1.0, 0.5]).reshape(1, 1, 1, 2)
    gallery_occ = torch.tensor([0.5, 1.0]).reshape(1, 1, 1, 2)
    root = 1 / math.sqrt(2)
    # S'[r, s] = S · O_gal[r] · O_prob[s]: r0s0 = 0.5, r0s1 = 0, r1s0 = root, r1s1 = root / 2
    a = (max(0.5, root), max(0.0, root / 2))
    b = (max(0.5, 0.0), max(root, root / 2))
    expected = (sum(a) / 2 + sum(b) / 2) / K / K
    got = _hand_model()(probe, gallery, probe_occ, gallery_occ).item()
    assert got == pytest.approx(expected, abs=1e-6)
    # the predecessor's transposed weighting gives another value
    swapped = _hand_model()(probe, gallery, gallery_occ, probe_occ).item()
    assert abs(swapped - expected) > 0.05


@pytest.mark.parametrize("train", [False, True])
def test_matches_naive_reference(train: bool) -> None:
    q = _qaconv().train(train)
    probe, gallery, po, go = _features(5), _features(4, seed=3), _maps(5), _maps(4, seed=4)
    got = q(probe, gallery, po, go)
    expected = naive_reference(q, probe, gallery, po, go)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_swap_transposes(train: bool) -> None:
    q = _qaconv().train(train)
    probe, gallery, po, go = _features(5), _features(4, seed=3), _maps(5), _maps(4, seed=4)
    assert torch.allclose(q(probe, gallery, po, go), q(gallery, probe, go, po).T, atol=1e-5)


def test_match_pairs_equals_diagonal() -> None:
    q = _qaconv().eval()
    with torch.no_grad():
        q.bn.running_mean.fill_(0.3)
        q.bn.running_var.fill_(0.2)
        q.logit_bn.running_mean.fill_(-0.1)
    a, b, oa, ob = _features(6), _features(6, seed=3), _maps(6), _maps(6, seed=4)
    full = q(a, b, oa, ob)
    assert torch.allclose(q.match_pairs(a, b, oa, ob), full.diagonal(), atol=1e-5)
    assert torch.allclose(q.match_pairs(a, b, oa, ob, chunk_size=4), full.diagonal(), atol=1e-5)
    assert torch.allclose(q.match_pairs(a, b), q(a, b).diagonal(), atol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_invisible_location_cannot_change_any_score(train: bool) -> None:
    q = _qaconv().train(train)
    probe, gallery = _features(4), _features(3, seed=3)
    probe_occ, gallery_occ = _maps(4), _maps(3, seed=4)
    probe_occ[:, 0, 0, 1] = 0  # probe location 1 hidden
    gallery_occ[:, 0, 2, 0] = 0  # a different gallery location (6) hidden
    before = q(probe, gallery, probe_occ, gallery_occ)
    probe2, gallery2 = probe.clone(), gallery.clone()
    probe2[:, :, 0, 1] = torch.randn(4, 8) * 5
    gallery2[:, :, 2, 0] = torch.randn(3, 8) * 5
    assert torch.allclose(q(probe2, gallery2, probe_occ, gallery_occ), before, atol=1e-6)
    # sanity: the same change at a visible location does change the scores
    probe2[:, :, 0, 0] = torch.randn(4, 8) * 5
    assert not torch.allclose(q(probe2, gallery2, probe_occ, gallery_occ), before, atol=1e-3)


@pytest.mark.parametrize("train", [False, True])
def test_all_ones_maps_equal_no_maps(train: bool) -> None:
    q = _qaconv().train(train)
    probe, gallery = _features(4), _features(5, seed=3)
    ones_p, ones_g = torch.ones(4, 1, 3, 3), torch.ones(5, 1, 3, 3)
    assert torch.allclose(q(probe, gallery, ones_p, ones_g), q(probe, gallery), atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_equals_unchunked(train: bool, chunk: int) -> None:
    q = _qaconv().train(train)
    probe, gallery, po, go = _features(5), _features(7, seed=3), _maps(5), _maps(7, seed=4)
    whole = q(probe, gallery, po, go, chunk_size=100)
    assert q.block_sizes(5, 7, chunk) == (min(5, chunk), min(7, chunk))
    assert torch.allclose(q(probe, gallery, po, go, chunk_size=chunk), whole, atol=1e-5)


def test_block_sizes_respect_the_budget() -> None:
    q = QAConv(512, 7, 7)
    pc, gc = q.block_sizes(2000, 2000)
    assert pc * gc * 49 * 49 * 4 <= q.max_chunk_bytes and pc * gc > 1000
    # Extra memory of an eval-mode 2000 x 2000 match (fp32): the normalised probe and gallery copies
    # (one of them transiently twice), one S block, its pooled values with indices, and the output.
    normalised = 3 * 2000 * 49 * 512 * 4
    pooled = pc * gc * 2 * 49 * (4 + 8) * 2
    total = normalised + q.max_chunk_bytes + pooled + 2000 * 2000 * 4 * 2
    assert total < 2 * 2**30
    small = QAConv(8, 3, 3, max_chunk_bytes=10_000)
    pc, gc = small.block_sizes(50, 3)
    assert gc == 3 and pc * gc * 81 * 4 <= 10_000
    assert small.block_sizes(1, 1) == (1, 1)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import torch
    from oaml.models.qaconv import QAConv

    def rss(field):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field + ":"))

    torch.set_num_threads(1)
    q = QAConv(16, 7, 7, max_chunk_bytes=8 * 2**20).eval()
    x = torch.randn(300, 16, 7, 7)
    with torch.no_grad():
        q(x[:8], x[:8])  # load kernels first
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak RSS
        before = rss("VmRSS")
        out = q(x, x)
        growth = rss("VmHWM") - before
    assert out.shape == (300, 300)
    print(growth)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux only)")
def test_measured_peak_memory_is_bounded() -> None:
    # A naive 300 x 300 match of 7 x 7 maps materialises 300² · 49² fp32 similarities = 864 MB.
    # A fixed mmap threshold makes glibc return freed blocks at once, so the reading reflects the tensors
    # alive at the same time rather than allocator fragmentation.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.strip().splitlines()[-1])
    assert growth < 32 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB with an 8 MiB block budget"


def test_match_groups_scores_only_valid_pairs() -> None:
    q = _qaconv().train()
    probe, gallery = _features(4), _features(12, seed=3).reshape(4, 3, 8, 3, 3)
    valid = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    out = q.match_groups(probe, gallery, valid=valid)
    assert torch.all(out[~valid] == 0)
    rows, cols = valid.nonzero(as_tuple=True)
    paired = q.match_pairs(probe[rows], gallery[rows, cols])  # the same pairs, so the same batch statistics
    assert torch.allclose(out[valid], paired, atol=1e-5)


def test_match_groups_without_valid_pairs_returns_zeros() -> None:
    q = _qaconv().train()
    out = q.match_groups(_features(2), _features(4, seed=3).reshape(2, 2, 8, 3, 3), valid=torch.zeros(2, 2, dtype=bool))
    assert torch.equal(out, torch.zeros(2, 2))


def test_bf16_autocast_runs_forward_and_backward() -> None:
    q = _qaconv().train()
    probe = _features(6).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(probe, probe.detach() + 0.1, _maps(6), _maps(6, seed=5))
        pairs = q.match_pairs(probe, probe.detach().flip(0))
    assert torch.isfinite(out).all() and torch.isfinite(pairs).all()
    (out.float().sum() + pairs.float().sum()).backward()
    assert torch.isfinite(probe.grad).all() and probe.grad.abs().sum() > 0
    q.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = q(probe, probe)
    assert torch.allclose(low.float(), q(probe, probe), atol=0.1)


def test_gradients_reach_features_maps_and_parameters() -> None:
    q = _qaconv().train()
    probe, occ = _features(4).requires_grad_(), _maps(4).requires_grad_()
    q(probe, probe, occ, occ).pow(2).sum().backward()
    for tensor in (probe.grad, occ.grad, q.fc.weight.grad, q.bn.weight.grad, q.logit_bn.weight.grad):
        assert tensor is not None and tensor.abs().sum() > 0


def test_shape_errors() -> None:
    q = _qaconv()
    with pytest.raises(ValueError, match="probe features"):
        q(torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3))
    with pytest.raises(ValueError, match="gallery visibility"):
        q(_features(2), _features(2), None, torch.ones(2, 1, 2, 2))
    with pytest.raises(ValueError, match="B x K"):
        q.match_groups(_features(2), _features(2))
