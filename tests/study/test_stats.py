"""Spreads, paired differences and verdicts of the study against hand-computed values."""

from __future__ import annotations

import math
from typing import Any

import pytest

from oaml.study.stats import aggregate, paired_difference, spread, verdict

METHODS = ("adaface", "qaconv", "combined")
PROTOCOLS = ("clean", "masked")


def _run(variant: str, seed: int, acc: float, tar: float | None = 0.5, split: int = 0, **extra: Any) -> dict:
    cell = {"accuracy": acc, "fold_std": 0.02, "tar": tar}
    return {"variant": variant, "seed": seed, "split": split, "train_s": 10.0, "eval_s": 2.0,
            "metrics": {p: {m: dict(cell) for m in METHODS} for p in PROTOCOLS},
            "curves": {"loss": [3.0, 2.0, 1.0 + seed]}, **extra}


def test_spread_uses_the_sample_std() -> None:
    s = spread([0.80, 0.82, 0.87])
    assert s["mean"] == pytest.approx(0.83)
    assert s["std"] == pytest.approx(math.sqrt((0.03 ** 2 + 0.01 ** 2 + 0.04 ** 2) / 2))
    assert (s["n"], s["min"], s["max"]) == (3, 0.80, 0.87)
    assert spread([0.5])["std"] == 0.0
    with pytest.raises(ValueError):
        spread([])


def test_paired_difference_pairs_runs_by_split_and_seed() -> None:
    runs = [_run("a", 0, 0.80), _run("a", 1, 0.90), _run("b", 1, 0.93), _run("b", 0, 0.84), _run("b", 2, 0.99)]
    diff = paired_difference(runs, "b", "a", "masked", "combined")
    assert diff is not None
    assert diff["n"] == 2  # seed 2 has no partner
    assert diff["mean"] == pytest.approx(0.035)  # (0.04 + 0.03) / 2
    assert diff["better"] == 2
    assert paired_difference(runs, "c", "a", "masked", "combined") is None


def test_verdict_needs_agreement_and_two_standard_errors() -> None:
    assert verdict({"mean": 0.03, "std": 0.01, "n": 3, "better": 3}) == "better"  # 0.03 > 2 * 0.01 / sqrt(3)
    assert verdict({"mean": -0.03, "std": 0.01, "n": 3, "better": 0}) == "worse"
    assert verdict({"mean": 0.01, "std": 0.01, "n": 3, "better": 3}) == "no clear difference"  # 0.01 < 0.0115
    assert verdict({"mean": 0.03, "std": 0.01, "n": 3, "better": 2}) == "no clear difference"  # one run disagrees
    assert verdict({"mean": 0.05, "std": 0.0, "n": 1, "better": 1}) == "no clear difference"  # one run is no evidence
    assert verdict({"mean": 0.05, "std": 0.01, "n": 2, "better": 2}) == "no clear difference"  # nor are two
    assert verdict(None) == "no clear difference"


def test_aggregate_summarises_every_cell_comparison_and_loss() -> None:
    occ = {"inside": 0.2, "outside": 0.9}
    runs = [_run("a", s, 0.80 + 0.01 * s, tar=None) for s in range(3)] + \
           [_run("d", s, 0.85 + 0.02 * s, occlusion=occ) for s in range(3)]
    summary = aggregate(runs, ["a", "d"], METHODS, PROTOCOLS)
    cell = summary["cells"]["d"]["masked"]["qaconv"]["accuracy"]
    assert cell["mean"] == pytest.approx(0.87) and cell["std"] == pytest.approx(0.02)
    assert summary["cells"]["a"]["clean"]["adaface"]["tar"] is None  # no run had a TAR
    (comparison,) = summary["comparisons"]  # only (d) - (a) has both variants
    assert (comparison["variant"], comparison["reference"]) == ("d", "a")
    assert comparison["cells"]["masked"]["combined"]["accuracy"]["mean"] == pytest.approx(0.06)
    assert comparison["cells"]["masked"]["combined"]["tar"] is None
    assert set(summary["occlusion"]) == {"d"} and summary["occlusion"]["d"]["inside"]["mean"] == pytest.approx(0.2)
    assert summary["final_losses"]["a"]["loss"]["mean"] == pytest.approx(2.0)  # last epochs 1, 2, 3
    assert summary["fold_std"]["d"]["clean"] == pytest.approx(0.02)
    assert summary["timing"]["a"]["mean"] == pytest.approx(12.0)
