"""Benchmark: the chunked QAConv matcher against the naive formulation, in pairs per second and peak memory.

Measured (median over repeats after one warm-up run, CPU threads as configured by torch):

- all-pairs matching of a B x B batch (B = 64), forward (eval, no grad) and forward + backward (train);
- paired matching of N = 6000 pairs (the validation mode), forward;
- each in fp32 and under CPU bf16 autocast. bf16 uses B = 32 and N = 1000: CPUs without AVX512-BF16 or
  AMX emulate bf16 matrix products at a fraction of the fp32 speed, so those rows only show that the
  path runs and how the two formulations compare there; bf16 pays off on GPUs;
- the naive baseline for all-pairs: materialise the P x G x hw x hw similarity tensor with ``einsum`` and
  take two ``max`` calls (the published QAConv code), with the same BN / fc head;
- peak memory (growth of the peak RSS in a fresh process, Linux only) of one eval all-pairs forward,
  ours against naive, at B = 64 and at a larger B where chunking matters.

Both implementations must agree, or the benchmark fails. Rows follow ``benchmarks/__main__.py``: name,
value, baseline, unit, ratio (value / baseline for throughput, baseline / value for memory: > 1 is better).

Run: ``python -m benchmarks.bench_qaconv`` (``--quick`` for smaller sizes and fewer repeats).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch.nn import functional as F

from benchmarks._timing import MIB, median_seconds, peak_rss_growth
from oaml.models.qaconv import QAConv

__all__ = ["naive_all_pairs", "run"]

CHANNELS, SIDE = 512, 7


def naive_all_pairs(q: QAConv, probe: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """The published QAConv computation: a full P x G x hw x hw tensor, then two max reductions."""
    p, g, hw = probe.shape[0], gallery.shape[0], q.hw
    prob = F.normalize(probe.reshape(p, q.num_features, hw), dim=1)
    gal = F.normalize(gallery.reshape(g, q.num_features, hw), dim=1)
    score = torch.einsum("pcs,gcr->pgrs", prob, gal)
    score = torch.cat((score.max(dim=2)[0], score.max(dim=3)[0]), dim=-1).reshape(-1, 1, hw)
    score = q.fc(q.bn(score.to(q.fc.weight.dtype)).reshape(-1, hw)).reshape(-1, 2).sum(dim=1, keepdim=True)
    return q.logit_bn(score).reshape(p, g)


def _precision(dtype: str) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def _forward(fn: Callable[[], torch.Tensor], dtype: str) -> Callable[[], None]:
    def call() -> None:
        with torch.no_grad(), _precision(dtype):
            fn()

    return call


def _forward_backward(fn: Callable[[], torch.Tensor], dtype: str, leaf: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        leaf.grad = None
        with _precision(dtype):
            out = fn()
        out.float().square().mean().backward()

    return call


def _check_agreement(q: QAConv, feats: torch.Tensor) -> None:
    with torch.no_grad():
        ours, naive = q(feats, feats), naive_all_pairs(q, feats, feats)
    if not torch.allclose(ours, naive, atol=1e-4):
        raise RuntimeError(f"chunked and naive QAConv differ by {float((ours - naive).abs().max()):.2e}")


def _throughput_rows(dtype: str, batch: int, pairs: int, repeats: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    q = QAConv(CHANNELS, SIDE, SIDE)
    feats = torch.randn(batch, CHANNELS, SIDE, SIDE)
    leaf = feats.clone().requires_grad_()
    a, b = torch.randn(pairs, CHANNELS, SIDE, SIDE), torch.randn(pairs, CHANNELS, SIDE, SIDE)
    _check_agreement(q.eval(), feats)
    rows = []
    ours = median_seconds(_forward(lambda: q(feats, feats), dtype), repeats)
    naive = median_seconds(_forward(lambda: naive_all_pairs(q, feats, feats), dtype), repeats)
    rows.append(_speed_row(f"qaconv all-pairs fwd {dtype} (B={batch})", batch * batch, ours, naive))
    q.train()
    ours = median_seconds(_forward_backward(lambda: q(leaf, leaf), dtype, leaf), repeats)
    naive = median_seconds(_forward_backward(lambda: naive_all_pairs(q, leaf, leaf), dtype, leaf), repeats)
    rows.append(_speed_row(f"qaconv all-pairs fwd+bwd {dtype} (B={batch})", batch * batch, ours, naive))
    q.eval()
    ours = median_seconds(_forward(lambda: q.match_pairs(a, b), dtype), repeats)
    rows.append(_speed_row(f"qaconv paired fwd {dtype} (N={pairs})", pairs, ours, None))
    return rows


def _speed_row(name: str, pairs: int, seconds: float, baseline_seconds: float | None) -> dict[str, Any]:
    value = pairs / seconds
    baseline = None if baseline_seconds is None else pairs / baseline_seconds
    return {"name": name, "value": value, "baseline": baseline, "unit": "pairs/s",
            "ratio": None if baseline is None else value / baseline,
            "notes": "" if baseline is None else "baseline: naive P x G x hw x hw einsum + 2 max"}


def _peak_setup(impl: str, batch: int) -> Callable[[], torch.Tensor]:
    """Child-process workload of :func:`peak_rss_growth`: one eval all-pairs forward of B maps."""
    q = QAConv(CHANNELS, SIDE, SIDE).eval()
    feats = torch.randn(batch, CHANNELS, SIDE, SIDE)
    fn = (lambda x: q(x, x)) if impl == "oaml" else (lambda x: naive_all_pairs(q, x, x))
    with torch.no_grad():
        fn(feats[:2])  # load kernels before the baseline reading

    def call() -> torch.Tensor:
        with torch.no_grad():
            return fn(feats)

    return call


def _memory_rows(batches: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    measured = {(batch, impl): peak_rss_growth(_peak_setup, impl, batch).peak_bytes
                for batch, impl in itertools.product(batches, ("oaml", "naive"))}
    for batch in batches:
        ours, naive = measured[batch, "oaml"], measured[batch, "naive"]
        rows.append({"name": f"qaconv all-pairs peak memory fp32 (B={batch})", "value": max(ours, 1) / MIB,
                     "baseline": naive / MIB, "unit": "MiB", "ratio": naive / max(ours, 1),
                     "notes": "peak RSS growth in a fresh process; ratio = naive / oaml"})
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run the QAConv benchmark.

    Args:
        quick: smaller sizes and fewer repeats (fp32 B = 32, N = 1000; bf16 B = 16, N = 500; 2 repeats;
            memory at B = 64 only).

    Returns:
        Rows with name, value, baseline, unit, ratio and notes.

    Raises:
        RuntimeError: if the chunked and naive matchers disagree.
    """
    if quick:
        return _throughput_rows("fp32", 32, 1000, 2) + _throughput_rows("bf16", 16, 500, 2) + _memory_rows((64,))
    return _throughput_rows("fp32", 64, 6000, 3) + _throughput_rows("bf16", 32, 1000, 3) + _memory_rows((64, 320))


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    rows = run(quick=parser.parse_args(argv).quick)
    for row in rows:
        baseline = "-" if row["baseline"] is None else f"{row['baseline']:,.1f}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        print(f"{row['name']:<46} {row['value']:>14,.1f} {baseline:>14} {row['unit']:<8} {ratio:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
