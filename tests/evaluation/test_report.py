"""Tests for oaml.evaluation.report: PNGs, Markdown numbers, console tables and atomic JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oaml.evaluation.report import console_table, markdown_report, plot_roc, plot_score_histogram, write_json
from oaml.evaluation.verification import Omitted, TarPoint, roc, tar_at_far, ten_fold_accuracy


def _roc(mu: float, n: int, seed: int):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(mu, 1, n), rng.normal(0, 1, 4 * n)]
    same = np.r_[np.ones(n, bool), np.zeros(4 * n, bool)]
    return roc(scores, same), scores, same


def test_png_files_open_at_useful_size(tmp_path: Path) -> None:
    ra, scores, same = _roc(2.0, 500, 0)
    rb, _, _ = _roc(1.0, 500, 1)
    roc_png = plot_roc({"adaface": ra, "qaconv": rb}, tmp_path / "plots" / "roc.png")
    hist_png = plot_score_histogram(scores[same], scores[~same], tmp_path / "hist.png", "adaface")
    for png in (roc_png, hist_png):
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width >= 300 and img.height >= 200
            assert np.asarray(img.convert("L")).std() > 5  # something was drawn


def test_plot_input_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="results_by_method"):
        plot_roc({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="impostor"):
        plot_score_histogram(np.ones(3), np.array([]), tmp_path / "x.png")


def _table(md: str, heading: str) -> list[list[str]]:
    block = md.split(f"## {heading}\n\n", 1)[1].split("\n\n", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_markdown_numbers_match_results() -> None:
    ra, scores, same = _roc(2.0, 500, 0)
    rb, _, _ = _roc(1.0, 500, 1)
    fars = (1e-1, 1e-2, 1e-3, 1e-4)
    acc = {"adaface": ten_fold_accuracy(scores, same, higher_is_same=True)}
    md = markdown_report({"adaface": ra, "qaconv": rb}, fars=fars, accuracy_by_method=acc,
                         provenance={"model": "ir_50 @ epoch 3", "data": "synthetic"})
    rows = {r[0]: r for r in _table(md, "Verification rate at fixed FAR")}
    for name, res in (("adaface", ra), ("qaconv", rb)):
        row = rows[name]
        assert float(row[1]) == pytest.approx(res.auc, abs=5e-5)
        assert float(row[2]) == pytest.approx(100 * res.eer, abs=5e-3)
        for cell, point in zip(row[3:], tar_at_far(res, fars=fars).values()):
            if isinstance(point, TarPoint):
                assert float(cell) == pytest.approx(100 * point.tar, abs=5e-3)
            else:
                assert isinstance(point, Omitted) and cell == "n/a"
    assert "TAR@FAR=1e-4: omitted, needs >= 10000 impostor pairs, have 2000" in md
    counts = {r[0]: r[1:] for r in _table(md, "Pair counts")}
    assert counts["qaconv"] == ["500", "2000"]
    assert _table(md, "10-fold accuracy")[0][1] == f"{100 * acc['adaface'].accuracy:.2f}"
    assert "- **model**: ir_50 @ epoch 3" in md


def test_console_table_alignment() -> None:
    text = console_table([["lfw", 0.99123, 6000], ["cfp_fp", 0.9, 7000]], ["set", "acc", "pairs"])
    lines = text.splitlines()
    assert lines[0].split() == ["set", "acc", "pairs"]
    assert lines[2] == "lfw     0.9912   6000"
    assert lines[3] == "cfp_fp  0.9000   7000"
    assert len({len(line) for line in lines}) == 1
    with pytest.raises(ValueError, match=r"rows\[0\] has 2 cells"):
        console_table([["a", 1]], ["x", "y", "z"])


def test_write_json_atomic_and_numpy(tmp_path: Path) -> None:
    ra, _, _ = _roc(2.0, 100, 0)
    obj = {"roc": ra, "points": tar_at_far(ra, fars=(1e-1, 1e-4)), "n": np.int64(3), "x": np.float32(0.5),
           "arr": np.arange(3), "inf": np.inf, "path": Path("a/b"), 0.1: (True, np.bool_(False))}
    path = write_json(tmp_path / "out" / "r.json", obj)
    data = json.loads(path.read_text())
    assert data["n"] == 3 and data["x"] == 0.5 and data["arr"] == [0, 1, 2] and data["inf"] == "inf"
    assert data["roc"]["n_impostor"] == 400 and data["points"]["0.0001"] == {"reason": "needs >= 10000 "
                                                                              "impostor pairs, have 400"}
    assert data["0.1"] == [True, False] and data["path"] == "a/b"
    with pytest.raises(TypeError, match="object"):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == data  # failed write left the old file
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp files left
    assert re.search(r'"auc": 0\.\d+', path.read_text())
