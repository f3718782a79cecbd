"""Smoke tests of ``benchmarks/``: every module exposes ``run``, the shared helpers work, the baselines compute the
same numbers as the library, and ``gpu.sh`` refuses to run without CUDA. No timing assertions: the speed targets
live in the benchmarks (``python -m benchmarks``), whose results depend on the machine and its load.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``benchmarks`` is a folder of the repository, not part of the installed package
    sys.path.insert(0, str(REPO))

from benchmarks import _timing  # noqa: E402
from benchmarks.__main__ import MODULES  # noqa: E402


@pytest.mark.parametrize("name", MODULES)
def test_module_exposes_run(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(module.run)
    assert "quick" in inspect.signature(module.run).parameters


def test_interleaved_seconds_runs_alternately() -> None:
    calls: list[str] = []
    times = _timing.interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3,
                                        warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(times) == {"a", "b"} and all(len(v) == 3 and min(v) >= 0 for v in times.values())
    assert _timing.ratio_of_medians([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(2.0)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak-RSS measurement needs Linux /proc")
def test_peak_rss_growth_in_child() -> None:
    from benchmarks.bench_qaconv import _peak_setup

    result = _timing.peak_rss_growth(_peak_setup, "oaml", 4)
    assert result.peak_bytes >= 0 and result.seconds >= 0


def test_train_step_builds_both_objectives() -> None:
    from benchmarks.bench_train_step import build_step, make_batch

    batch = make_batch(8, num_classes=16)
    for full in (True, False):
        setup = build_step("ir_18", 0.125, full, num_classes=16)
        before = [p.detach().clone() for p in setup.system.model.backbone.parameters()][:3]
        setup.step(batch)
        after = list(setup.system.model.backbone.parameters())[:3]
        assert any(not torch.equal(b, a) for b, a in zip(before, after))
        assert setup.system.objective.uses_qaconv is full


def test_validation_baselines_agree() -> None:
    from benchmarks.bench_validation import loop_match_pairs, loop_summarise
    from oaml.models import QAConv
    from oaml.evaluation.scoring import PairScores, summarise_pairs

    torch.manual_seed(0)
    q = QAConv(8, 7, 7).eval()
    a, b = torch.randn(5, 8, 7, 7), torch.randn(5, 8, 7, 7)
    oa, ob = torch.rand(5, 1, 7, 7), torch.rand(5, 1, 7, 7)
    with torch.no_grad():
        assert torch.allclose(q.match_pairs(a, b, oa, ob), loop_match_pairs(q, a, b, oa, ob), atol=1e-5)
    rng = np.random.default_rng(0)
    n = 200
    same = np.tile([True, False], n // 2)
    scores = PairScores(pair_index=np.arange(n), set_index=np.repeat([0, 1], n // 2), issame=same,
                        dist_adaface=np.where(same, rng.normal(0.8, 0.3, n), rng.normal(1.5, 0.3, n)).clip(0, 4),
                        score_qaconv=np.where(same, rng.normal(1, 1, n), rng.normal(-1, 1, n)))
    fast, slow = summarise_pairs(scores, ["x", "y"]), loop_summarise(scores, ["x", "y"])
    assert all(fast[k] == pytest.approx(v, abs=1e-12) for k, v in slow.items())


def test_eval_naive_qaconv_agrees() -> None:
    from benchmarks.bench_eval import _recognizer, naive_qaconv_upper
    from oaml.evaluation.scoring import BatchFeatures, qaconv_upper

    recognizer = _recognizer()
    feats = recognizer.forward_batch(np.random.default_rng(0).integers(0, 255, (6, 112, 112, 3), np.uint8),
                                     with_maps=True)
    assert isinstance(feats, BatchFeatures)
    ours = qaconv_upper(recognizer.qaconv, feats, feats, recognizer.uses_occlusion, progress=False)
    assert np.allclose(ours, naive_qaconv_upper(recognizer.qaconv, feats), atol=1e-4)


def test_identify_benchmark_rows_run() -> None:
    from benchmarks.bench_identify import _search_rows, random_gallery

    gallery = random_gallery(2000)
    assert gallery.num_identities == 1000 and gallery.embeddings.dtype == np.float16
    rows = _search_rows(gallery, (3,), 1, "note")  # raises if exact and faiss (when installed) disagree
    assert rows[0]["name"] == "search exact fp16 (N=2k, B=3)" and rows[0]["value"] > 0


def test_scale_benchmark_formulas_and_checks() -> None:
    from benchmarks.bench_scale import RANKS, _validation_rows, head_flops, layout_memory

    classes, per_rank = 8 * 1000, 16
    # a rank of the unsharded head scores its 16 rows against all 8,000 classes, a shard the 128 global rows
    # against its 1,000: the same products; sampling 1 in 10 keeps a tenth of them
    assert head_flops(classes, 1, 1.0, per_rank) == head_flops(classes, RANKS, 1.0, per_rank) == \
        6 * per_rank * 512 * classes
    assert head_flops(classes, RANKS, 0.1, per_rank) * 10 == head_flops(classes, RANKS, 1.0, per_rank)
    full, sharded = layout_memory(85_742, 1, 1.0), layout_memory(85_742, RANKS, 1.0)
    assert full.class_memory == 85_742 * (512 * 49 * 2 + 1)
    assert sharded.class_memory == 10_718 * (512 * 49 * 2 + 1) and sharded.kernel == 10_718 * 512 * 4
    rows = _validation_rows((64,), 8, 1, rate=1e9)
    assert [r["name"] for r in rows] == [f"scale check {what} C_r=64 B=8 rho={rho}" for rho in (1.0, 0.1)
                                         for what in ("memory", "step")]
    assert all(r["value"] >= 0 and r["baseline"] > 0 for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the exit path of machines without CUDA")
def test_gpu_script_exits_without_cuda() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "no CUDA device available" in done.stderr


@pytest.mark.slow
def test_gpu_script_cpu_smoke() -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    args = ["--device", "cpu", "--arch", "ir_18", "--width", "0.125", "--batch", "8", "--classes", "32", "--steps",
            "1", "--warmup", "0", "--qaconv-n", "8", "--qaconv-repeats", "1", "--scale-classes", "800", "--scale-batch",
            "8"]
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "cost ratio full / adaface-only" in done.stdout and "qaconv all-pairs fp16" in done.stdout
    assert "sharded head bf16 rho=0.1" in done.stdout and "sharded class memory bf16" in done.stdout
