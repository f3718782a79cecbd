"""``oaml eval`` under occlusion protocols: one row per protocol, the sides each occluder covers, the masked
protocol unchanged, the complementary protocol against a direct computation, and the occlusion head's calibration."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from eval_helpers import write_bin_of_faces, write_face_folder
from oaml.cli.main import main
from oaml.data.occluders import occlude_pairs
from oaml.evaluation.api import load_model
from oaml.evaluation.eval_data import load_eval_set
from oaml.evaluation.evaluate import EvalOptions, evaluate

FAST = EvalOptions(progress=False, batch_size=16, plots=False)
METHODS = ["adaface", "qaconv", "combined"]


@pytest.fixture(scope="module")
def small_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bin_of_faces(tmp_path_factory.mktemp("bin") / "faces.bin", 12, seed=3)


def test_each_protocol_is_its_own_set_of_methods(oaml_ckpt: Path, small_bin: Path, tmp_path: Path) -> None:
    options = dataclasses.replace(FAST, mask_probes=True, occluders=("sunglasses", "mask+sunglasses", "mask"))
    outcome = evaluate(oaml_ckpt, small_bin, tmp_path, options=options)
    results = outcome.results
    suffixes = ["", "_masked", "_sunglasses", "_mask+sunglasses"]  # "mask" given twice runs once
    assert list(results["methods"]) == [m + s for s in suffixes for m in METHODS]
    assert [row[0] for row in outcome.rows] == list(results["methods"])
    protocols = results["occlusion_protocols"]
    assert list(protocols) == ["masked", "sunglasses", "mask+sunglasses"]
    assert protocols["sunglasses"]["side"] == "sunglasses on the second image (2k + 1)"
    assert protocols["mask+sunglasses"]["side"] == ("mask on the first image (2k); sunglasses on the second image "
                                                    "(2k + 1)")
    assert results["masked_protocol"]["side"].startswith("second image")
    for key in protocols:
        head = results["occlusion_head"][key]
        assert 0.0 <= head["auc"] <= 1.0 and head["cells"] > head["occluded_cells"] > 0
    report = (tmp_path / "report.md").read_text()
    assert "## Occlusion head against the true occlusion" in report and "| mask+sunglasses | " in report
    assert "`_sunglasses` methods: sunglasses on the second image" in report
    alone = evaluate(oaml_ckpt, small_bin, tmp_path / "alone", options=dataclasses.replace(FAST, mask_probes=True))
    for method in METHODS:  # the masked protocol does not change when other protocols run beside it
        assert alone.results["methods"][method + "_masked"]["auc"] == results["methods"][method + "_masked"]["auc"]
        assert (alone.results["methods"][method + "_masked"]["ten_fold"]
                == results["methods"][method + "_masked"]["ten_fold"])


def test_complementary_protocol_matches_a_direct_computation(oaml_ckpt: Path, small_bin: Path,
                                                             tmp_path: Path) -> None:
    options = dataclasses.replace(FAST, occluders=("mask+sunglasses",), mask_seed=4)
    results = evaluate(oaml_ckpt, small_bin, tmp_path, options=options).results
    data = load_eval_set(small_bin)
    images = [data.images.read(k) for k in range(len(data.images))]
    drawn = occlude_pairs(images, data.pair_i, data.pair_j, "mask+sunglasses", seed=4)
    recognizer = load_model(oaml_ckpt)
    first = recognizer.forward_batch(drawn["first_images"]).embedding
    second = recognizer.forward_batch(drawn["second_images"]).embedding
    cosine = (first * second).sum(1).double().numpy()
    stats = results["methods"]["adaface_mask+sunglasses"]["genuine_scores"]
    genuine = cosine[data.issame]
    assert stats["count"] == genuine.size and stats["mean"] == pytest.approx(float(genuine.mean()), abs=1e-6)
    assert stats["min"] == pytest.approx(float(genuine.min()), abs=1e-6)


def test_all_pairs_protocols_occlude_probe_i(oaml_ckpt: Path, tmp_path: Path) -> None:
    root = write_face_folder(tmp_path / "faces", [3, 2, 3])
    options = dataclasses.replace(FAST, occluders=("eyes", "mask+nose"))
    results = evaluate(oaml_ckpt, root, tmp_path / "out", options=options).results
    assert results["occlusion_protocols"]["eyes"]["side"] == "eyes on the probe i"
    assert results["occlusion_protocols"]["mask+nose"]["side"] == "mask on the probe i; nose on the gallery j"
    assert results["methods"]["adaface_eyes"]["n_genuine"] == results["methods"]["adaface"]["n_genuine"]


def test_released_checkpoint_reports_why_the_head_is_not_scored(released_ckpt: Path, small_bin: Path,
                                                                tmp_path: Path) -> None:
    options = dataclasses.replace(FAST, occluders=("scarf",))
    results = evaluate(released_ckpt, small_bin, tmp_path, options=options).results
    assert list(results["methods"]) == ["adaface", "adaface_scarf"]
    assert results["occlusion_head"] == {"scarf": {"omitted": "the checkpoint has no occlusion head"}}


def test_cli_runs_protocols_and_refuses_unknown_occluders(oaml_ckpt: Path, small_bin: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", "--model-path", str(oaml_ckpt), "--data-path", str(small_bin), "--no-progress", "--no-plots"]
    assert main([*args, "--output-dir", str(tmp_path / "a"), "--occluders", "visor"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--occluders" in error[0] and "'visor'" in error[0] and "sunglasses" in error[0]
    assert not (tmp_path / "a").exists()
    assert main([*args, "--output-dir", str(tmp_path / "b"), "--mask-probes", "--occluders",
                 "rect25,mask+glasses"]) == 0
    printed = capsys.readouterr().out
    for name in ("adaface_masked", "combined_rect25", "qaconv_mask+glasses"):
        assert name in printed
    assert "occlusion head" in printed and "rect25" in printed
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["provenance"]["options"]["occluders"] == ["rect25", "mask+glasses"]
    assert np.isfinite(results["occlusion_head"]["rect25"]["mae"])


def test_the_study_can_score_a_protocol_on_its_own_pairs(oaml_ckpt: Path, small_bin: Path, tmp_path: Path) -> None:
    from oaml.evaluation.embed import extract_features
    from oaml.evaluation.protocols import score_occlusion_protocol

    data = load_eval_set(small_bin)
    recognizer = load_model(oaml_ckpt, batch_size=16)
    clean = extract_features(recognizer, data.images, progress=False)
    scored = score_occlusion_protocol(recognizer, data.images, clean, data.pair_i, data.pair_j, data.issame,
                                      "mask+sunglasses", FAST)
    results = evaluate(oaml_ckpt, small_bin, tmp_path, options=dataclasses.replace(
        FAST, occluders=("mask+sunglasses",))).results
    assert scored.scores.ten_fold["combined_mask+sunglasses"].accuracy == (
        results["methods"]["combined_mask+sunglasses"]["ten_fold"]["accuracy"])
    assert scored.calibration["auc"] == results["occlusion_head"]["mask+sunglasses"]["auc"]
