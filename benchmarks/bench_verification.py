"""Benchmark: vectorised ``ten_fold_accuracy`` against the straightforward folds x thresholds loop.

The baseline is the loop of ``arcface_torch/eval/verification.py`` (``calculate_roc`` without the per-threshold
TPR/FPR bookkeeping): for each of 10 folds, the training accuracy at each of 400 thresholds, then the held-out
accuracy at the best one. Both must return identical fold accuracies, or the benchmark fails.

Run: ``python -m benchmarks.bench_verification`` (add ``--quick`` for fewer repeats).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks._timing import median_seconds
from oaml.evaluation.report import console_table
from oaml.evaluation.verification import DISTANCE_THRESHOLDS, fold_bounds, ten_fold_accuracy

__all__ = ["naive_ten_fold", "run"]


def naive_ten_fold(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray = DISTANCE_THRESHOLDS
                   ) -> list[float]:
    """The straightforward loop: per fold, per threshold, a boolean pass over the training pairs."""
    accs = []
    for a, b in fold_bounds(dist.size):
        train = np.ones(dist.size, dtype=bool)
        train[a:b] = False
        d_tr, s_tr = dist[train], issame[train]
        acc_train = np.array([np.mean(np.less(d_tr, t) == s_tr) for t in thresholds])
        best = thresholds[np.argmax(acc_train)]
        accs.append(float(np.mean(np.less(dist[a:b], best) == issame[a:b])))
    return accs


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Time both implementations on 6,000 synthetic pairs (the size of LFW, AgeDB-30, CPLFW, CALFW).

    Returns:
        One row: name, value (vectorised median seconds), baseline (loop median seconds), unit, ratio.

    Raises:
        RuntimeError: If the two implementations disagree.
    """
    rng = np.random.default_rng(0)
    n = 6000
    same = np.repeat([True, False], n // 2)
    dist = np.clip(np.where(same, rng.normal(0.9, 0.3, n), rng.normal(1.6, 0.3, n)), 0, 4).astype(np.float32)
    fast = ten_fold_accuracy(dist, same, higher_is_same=False)
    if list(fast.fold_accuracies) != naive_ten_fold(dist, same):
        raise RuntimeError("vectorised and loop 10-fold accuracies differ")
    value = median_seconds(lambda: ten_fold_accuracy(dist, same, higher_is_same=False), 5 if quick else 30)
    baseline = median_seconds(lambda: naive_ten_fold(dist, same), 1 if quick else 5)
    return [{"name": "ten_fold_accuracy, 6000 pairs x 400 thresholds", "value": value, "baseline": baseline,
             "unit": "s", "ratio": baseline / value}]


def main() -> None:
    """Print the benchmark table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    rows = run(quick=parser.parse_args().quick)
    print(console_table([[r["name"], f"{1e3 * r['value']:.2f} ms", f"{1e3 * r['baseline']:.1f} ms",
                          f"{r['ratio']:.0f}x"] for r in rows], ["benchmark", "oaml", "loop", "ratio"]))


if __name__ == "__main__":
    main()
