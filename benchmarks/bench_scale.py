"""Benchmark: per-rank memory and step cost of the margin head and class memory at WebFace scale (SPEC §13.3).

Three layouts for 85,742 (MS1MV2), 205,990 (WebFace4M) and 2,059,906 (WebFace42M) identities on 8 ranks, with
ir_50's 512-d embedding and 512 x 7 x 7 feature maps, k = 32 graph neighbours, SGD with momentum and 128 images
per rank (a global batch of 1,024):

- **full**: every rank holds the whole kernel and class memory and scores its own 128 images against every class
  (the layout before sharding);
- **sharded**: rank r holds ⌈C/8⌉ columns and memory rows and scores the global batch against them
  (``--sample_rate 1``);
- **sampled**: the same shards, with ``--sample_rate 0.1`` (every positive plus random negatives).

The memory rows are :func:`oaml.training.memory_estimate.estimate_rank_memory` (kernel, gradient, momentum, sampled
copies, logits, class memory, prototypes, graph); a machine this size cannot allocate them. The step-cost rows
count the head's matrix products (forward and the two backward products, 6·B·E·n flops for B rows against n
classes) and the class-memory matching (B_r·(1 + k) QAConv pairs of 3 · 2·(hw)²·C flops each, the same in every
layout: each sample is matched where its candidates live), converted to seconds at the fp32 GEMM rate measured on
this machine: a relative cost, not a GPU time.

Both formulas are validated on this machine at reduced sizes: one training step of a one-rank
:class:`~oaml.models.partial_fc.PartialFC` (what a rank holds) with its
:class:`~oaml.training.partial_sgd.PartialSGD` step, whose peak-RSS growth in a fresh process is compared with the
estimate of the tensors the step allocates (gradient, momentum, sampled copies, logits, the backward's
temporaries), and whose median time is
compared with the flop count at the measured GEMM rate (ratio measured / predicted).

Run: ``python -m benchmarks.bench_scale`` (``--quick`` for smaller validation sizes and fewer repeats).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from benchmarks._timing import median_seconds, module_main, peak_rss_growth, thread_note
from oaml.models.partial_fc import PartialFC, sample_size
from oaml.training.memory_estimate import RankMemory, estimate_rank_memory
from oaml.training.partial_sgd import PartialSGD

SCALES = (("MS1MV2", 85_742), ("WebFace4M", 205_990), ("WebFace42M", 2_059_906))
RANKS, BATCH_PER_RANK, SAMPLED_RATE, K_NEAREST = 8, 128, 0.1, 32
EMBEDDING, FEATURES = 512, (512, 7, 7)
LAYOUTS = (("full", 1, 1.0), ("sharded", RANKS, 1.0), ("sampled", RANKS, SAMPLED_RATE))
"""(name, world size of the estimate, sample rate); "full" is one rank's unsharded copy of everything."""
_GIB = 2**30


def head_flops(num_classes: int, world_size: int, sample_rate: float, batch_per_rank: int = BATCH_PER_RANK) -> int:
    """Flops of one rank's margin-head products in a step: the unsharded head scores its own rows against every
    class, a shard scores the global batch against its kept columns."""
    if world_size == 1:
        return 6 * batch_per_rank * EMBEDDING * num_classes
    local = math.ceil(num_classes / world_size)
    kept = local if sample_rate >= 1.0 else sample_size(sample_rate, local)
    return 6 * batch_per_rank * world_size * EMBEDDING * kept


def memory_flops(batch_per_rank: int = BATCH_PER_RANK, k_nearest: int = K_NEAREST) -> int:
    """Flops of one rank's class-memory matching in a step (forward and backward of the similarity products)."""
    channels, height, width = FEATURES
    return 3 * batch_per_rank * (1 + k_nearest) * 2 * (height * width) ** 2 * channels


def layout_memory(num_classes: int, world_size: int, sample_rate: float) -> RankMemory:
    """The per-rank estimate of one layout (module docstring)."""
    rows = BATCH_PER_RANK * (1 if world_size == 1 else world_size)
    return estimate_rank_memory(num_classes, world_size, sample_rate, EMBEDDING, FEATURES, K_NEAREST,
                                batch_size=rows)


def gemm_rate(size: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 flops per second of a size x size x size matrix product on this machine."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats)


def _analytic_rows(rate: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, classes in SCALES:
        full = layout_memory(classes, 1, 1.0)
        full_flops = head_flops(classes, 1, 1.0) + memory_flops()
        for name, world, sample_rate in LAYOUTS:
            e = layout_memory(classes, world, sample_rate)
            rows.append({"name": f"scale memory/rank {label} C={classes:,} {name}", "value": e.device_total / _GIB,
                         "baseline": full.device_total / _GIB, "unit": "GiB",
                         "ratio": full.device_total / e.device_total,
                         "notes": f"R={world}, rho={sample_rate}: head {e.head_total / _GIB:.2f} GiB + class memory "
                                  f"{e.memory_total / _GIB:.2f} GiB (analytic); ratio = full / this"})
        for name, world, sample_rate in LAYOUTS:
            head = head_flops(classes, world, sample_rate)
            flops = head + memory_flops()
            rows.append({"name": f"scale step/rank {label} C={classes:,} {name}", "value": flops / rate,
                         "baseline": full_flops / rate, "unit": "s", "ratio": full_flops / flops,
                         "notes": f"{flops / 1e9:,.0f} GFLOP (head {head / 1e9:,.0f})"
                                  f" at {rate / 1e9:.0f} GFLOP/s measured here (relative cost); ratio = full / this"})
    return rows


def _head_step(classes: int, batch: int, sample_rate: float) -> Callable[[], None]:
    """One training step of a one-rank head over ``classes`` columns and ``batch`` rows, with its optimizer."""
    torch.manual_seed(0)
    head = PartialFC("adaface", EMBEDDING, classes, sample_rate=sample_rate).train()
    optimizer = PartialSGD([head.kernel], lr=0.1, momentum=0.9, heads=[head])
    embedding = F.normalize(torch.randn(batch, EMBEDDING), dim=1)
    norm, labels = torch.ones(batch, 1), torch.randint(0, classes, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)
        head(embedding, norm, labels).loss.backward()
        optimizer.step()

    return step


def _first_step(classes: int, batch: int, sample_rate: float) -> Callable[[], None]:
    """Child workload of :func:`peak_rss_growth`: the head's first step, which allocates gradient and momentum."""
    return _head_step(classes, batch, sample_rate)


def _validation_rows(sizes: tuple[int, ...], batch: int, repeats: int, rate: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for classes in sizes:
        for sample_rate in (1.0, SAMPLED_RATE):
            e = estimate_rank_memory(classes, 1, sample_rate, EMBEDDING, FEATURES, K_NEAREST, class_memory=False,
                                     batch_size=batch)
            predicted = e.head_total - e.kernel
            grown = peak_rss_growth(_first_step, classes, batch, sample_rate).peak_bytes
            rows.append({"name": f"scale check memory C_r={classes:,} B={batch} rho={sample_rate}",
                         "value": grown / 2**20, "baseline": predicted / 2**20, "unit": "MiB",
                         "ratio": grown / predicted,
                         "notes": "peak RSS growth of the first head step in a fresh process vs the estimate of what "
                                  "it allocates (the head's total but the kernel); ratio = measured / estimate"})
            kept = classes if sample_rate >= 1.0 else sample_size(sample_rate, classes)
            seconds = median_seconds(_head_step(classes, batch, sample_rate), repeats)
            predicted_s = 6 * batch * EMBEDDING * kept / rate
            rows.append({"name": f"scale check step C_r={classes:,} B={batch} rho={sample_rate}", "value": seconds,
                         "baseline": predicted_s, "unit": "s", "ratio": seconds / predicted_s,
                         "notes": f"head fwd+bwd+PartialSGD step vs 6*B*E*n flops at the measured GEMM rate; "
                                  f"ratio = measured / predicted; {thread_note()}"})
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run the scale benchmark.

    Args:
        quick: validation at C_r = 2,048 and 8,192 with B = 128 and 2 repeats (else 4,096 and 16,384, B = 256,
            5 repeats).

    Returns:
        Rows with name, value, baseline, unit, ratio and notes: the analytic table, then the checks.
    """
    rate = gemm_rate(512 if quick else 1024, 3 if quick else 5)
    sizes, batch, repeats = ((2048, 8192), 128, 2) if quick else ((4096, 16384), 256, 5)
    return _analytic_rows(rate) + _validation_rows(sizes, batch, repeats, rate)


if __name__ == "__main__":
    sys.exit(module_main(run, __doc__.splitlines()[0], "smaller validation sizes and fewer repeats"))
