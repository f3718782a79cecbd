"""``oaml study`` end to end on two small synthetic identity-folder datasets (slow; CI runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oaml.data.synthetic import make_synthetic
from oaml.study.options import CALIBRATED_OCCLUDERS, METHODS, PROTOCOLS, VARIANTS, StudyOptions
from oaml.study.runs import run_study

pytestmark = pytest.mark.slow


def _dataset(root: Path, name: str, seed: int) -> Path:
    make_synthetic(root / f"{name}_raw", identities=8, images=5, seed=seed, formats=("folder",), val_pairs=20)
    return (root / f"{name}_raw" / "images").rename(root / name)


def test_study_trains_every_variant_and_writes_the_report(tmp_path: Path) -> None:
    roots = (str(_dataset(tmp_path, "setA", 0)), str(_dataset(tmp_path, "setB", 1)))
    options = StudyOptions(roots=roots, seeds=(0, 1), epochs=2, batch_size=16, jobs=2,
                           output_dir=str(tmp_path / "docs"), work_dir=str(tmp_path / "work"))
    files = run_study(options)
    for name in ("markdown", "json", "loss_curves", "mean_maps", "overlay"):
        assert files[name].is_file() and files[name].stat().st_size > 0, name

    results = json.loads(files["json"].read_text())
    runs = results["runs"]
    assert sorted((r["variant"], r["seed"]) for r in runs) == sorted((v, s) for v in options.variants
                                                                     for s in (0, 1))
    for run in runs:
        assert list(run["metrics"]) == list(PROTOCOLS)  # no benchmark with explicit roots
        for protocol in PROTOCOLS:
            for method in METHODS:
                assert 0.0 <= run["metrics"][protocol][method]["accuracy"] <= 1.0
        assert Path(run["checkpoint"]).is_file()
        assert ("occlusion" in run) == VARIANTS[run["variant"]].trains_occlusion
        if "calibration" in run:
            assert set(run["calibration"]) == set(CALIBRATED_OCCLUDERS)
            assert run["calibration"]["mask"] == run["occlusion"]

    # No held-out identity is in the training folder.
    split = results["setup"]["splits"][0]
    trained = {p.name.replace("__", "/") for p in (tmp_path / "work" / "split0" / "train").iterdir()}
    assert trained and not trained & set(split["test_keys"])
    assert split["train_identities"] + split["test_identities"] == 16

    text = files["markdown"].read_text()
    accuracy_table = text.split("### 10-fold accuracy")[1].split("###")[0]
    assert sum(line.startswith("| (") for line in accuracy_table.splitlines()) == len(PROTOCOLS) * len(options.variants)
    assert "**Answer** ((e), the default objective, vs (c)" in text
    assert "| (e) | " in text.split("## Occlusion head on held-out faces")[1].split("##")[0]
    assert options.command() in text


def test_module_entry_point_has_the_same_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "oaml.study", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--seeds", "--splits", "--variants", "--epochs", "--jobs", "--output-dir", "--work-dir"):
        assert flag in out
