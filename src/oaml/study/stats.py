"""Aggregates of the real-face study: mean ± std over runs, paired differences between variants, verdicts.

A *run* is one (split, seed, variant). Runs of two variants with the same split and seed share the held-out pairs
and the seed, so their difference is *paired*; its spread over the seeds is the noise that a difference between
the variants has to exceed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["COMPARISONS", "Spread", "aggregate", "paired_difference", "spread", "verdict"]

COMPARISONS = (("b", "a", "synthetic masks in training"), ("c", "b", "QAConv losses"),
               ("d", "c", "occlusion head + occlusion-weighted QAConv"),
               ("e", "c", "occlusion head (maps detached in QAConv)"), ("e", "d", "maps detached in QAConv"),
               ("d", "a", "full objective vs AdaFace only"), ("e", "a", "full (maps detached) vs AdaFace only"))
"""(variant, reference, what the difference measures); pairs with a variant that did not run are skipped."""

Spread = dict[str, float]


def spread(values: Sequence[float]) -> Spread:
    """``mean``, ``std`` (sample std, ddof=1; 0 for one value), ``n``, ``min`` and ``max`` of ``values``."""
    arr = np.asarray(values, np.float64)
    if arr.size == 0:
        raise ValueError("no values to summarise")
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size),
            "min": float(arr.min()), "max": float(arr.max())}


def _runs(results: Sequence[dict[str, Any]], variant: str) -> dict[tuple[int, int], dict[str, Any]]:
    return {(r["split"], r["seed"]): r for r in results if r["variant"] == variant}


def _value(run: dict[str, Any], protocol: str, method: str, metric: str) -> float | None:
    """One cell of a run; None when the run did not score it (no TAR, or a protocol of the first seed only)."""
    return run["metrics"].get(protocol, {}).get(method, {}).get(metric)


def paired_difference(results: Sequence[dict[str, Any]], variant: str, reference: str, protocol: str, method: str,
                      metric: str = "accuracy") -> dict[str, float] | None:
    """Per-(split, seed) ``variant - reference`` of one cell, summarised; None when no run pairs up.

    Returns:
        The :func:`spread` of the differences plus ``better`` (how many runs improved).
    """
    mine, theirs = _runs(results, variant), _runs(results, reference)
    pairs = [(_value(mine[k], protocol, method, metric), _value(theirs[k], protocol, method, metric))
             for k in sorted(mine.keys() & theirs.keys())]
    diffs = [a - b for a, b in pairs if a is not None and b is not None]
    if not diffs:
        return None
    return {**spread(diffs), "better": int(sum(d > 0 for d in diffs))}


def verdict(diff: dict[str, float] | None) -> str:
    """``"better"``/``"worse"`` when every paired run agrees in sign and the mean exceeds two standard errors.

    Anything else, including fewer than three paired runs, is ``"no clear difference"``.
    """
    if diff is None or diff["n"] < 3:
        return "no clear difference"
    standard_error = diff["std"] / math.sqrt(diff["n"])
    if abs(diff["mean"]) <= 2 * standard_error or diff["mean"] == 0:
        return "no clear difference"
    if diff["mean"] > 0 and diff["better"] == diff["n"]:
        return "better"
    if diff["mean"] < 0 and diff["better"] == 0:
        return "worse"
    return "no clear difference"


def aggregate(results: Sequence[dict[str, Any]], variants: Sequence[str], methods: Sequence[str],
              protocols: Sequence[str]) -> dict[str, Any]:
    """Everything the report shows, from the raw runs.

    Returns:
        ``cells[variant][protocol][method][metric]`` spreads (metric ``accuracy`` or ``tar``; None when no run has
        a TAR), ``comparisons`` (paired differences of accuracy and TAR per protocol and method), ``occlusion``
        (spreads of each separation statistic per variant that trains the head, medical mask), ``calibration``
        (``[variant][occluder]`` spreads of the head's cell AUC and MAE), ``fold_std`` (mean 10-fold std
        per variant and protocol), ``final_losses`` (last-epoch loss means per variant) and ``timing``.
    """
    cells: dict[str, Any] = {}
    for variant in variants:
        runs = list(_runs(results, variant).values())
        cells[variant] = {p: {m: {metric: (spread(vals) if (vals := [v for r in runs
                                                                      if (v := _value(r, p, m, metric)) is not None])
                                           else None)
                                  for metric in ("accuracy", "tar")}
                              for m in methods} for p in protocols}
    comparisons = []
    for variant, reference, meaning in COMPARISONS:
        if variant not in variants or reference not in variants:
            continue
        comparisons.append({"variant": variant, "reference": reference, "meaning": meaning,
                            "cells": {p: {m: {metric: paired_difference(results, variant, reference, p, m, metric)
                                              for metric in ("accuracy", "tar")} for m in methods}
                                      for p in protocols}})
    occlusion, calibration = {}, {}
    for variant in variants:
        stats = [r["occlusion"] for r in _runs(results, variant).values() if r.get("occlusion")]
        if stats:
            occlusion[variant] = {key: spread([s[key] for s in stats]) for key in stats[0]}
        per_occluder = [r["calibration"] for r in _runs(results, variant).values() if r.get("calibration")]
        if per_occluder:
            calibration[variant] = {name: {key: spread([c[name][key] for c in per_occluder]) for key in ("auc", "mae")}
                                    for name in per_occluder[0]}
    fold_std = {v: {p: float(np.mean([f for r in _runs(results, v).values() for m in methods
                                      if (f := _value(r, p, m, "fold_std")) is not None])) for p in protocols}
                for v in variants}
    final_losses = {}
    for variant in variants:
        curves = [r["curves"] for r in _runs(results, variant).values()]
        names = sorted({name for c in curves for name in c})
        final_losses[variant] = {name: spread([c[name][-1] for c in curves if c.get(name)]) for name in names}
    timing = {v: spread([r["train_s"] + r["eval_s"] for r in _runs(results, v).values()]) for v in variants}
    return {"cells": cells, "comparisons": comparisons, "occlusion": occlusion, "calibration": calibration,
            "fold_std": fold_std,
            "final_losses": final_losses, "timing": timing}
