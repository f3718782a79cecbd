"""Tests of the standalone evaluator (``oaml eval``): pair counts, every output file, the released layout,
``.bin`` and pairs-file input, size checks, label-free fusion and the all-pairs scorers."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from eval_helpers import write_face_folder
from oaml.cli.main import main
from oaml.errors import DataError
from oaml.evaluation.api import load_model
from oaml.evaluation.embed import extract_features
from oaml.evaluation.eval_data import EvalImages
from oaml.evaluation.scoring import cosine_upper, fuse_label_free, qaconv_all, qaconv_upper
from oaml.evaluation.evaluate import EvalOptions, evaluate

LFW_ALIGNED = Path(__file__).resolve().parents[3] / "shared" / "data" / "lfw_subset10_arcface112"
FAST = EvalOptions(progress=False, batch_size=32, plots=False)
METHODS = ["adaface", "qaconv", "combined"]


def _opts(**kw: object) -> EvalOptions:
    return dataclasses.replace(FAST, **kw)  # type: ignore[arg-type]


def _table_rows(report: str) -> dict[str, list[str]]:
    """Rows of the report's first table (VR@FAR): method -> cells."""
    section = report.split("## Verification rate at fixed FAR")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")][1:]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_folder_counts_are_exact_with_and_without_masks(oaml_ckpt: Path, tmp_path: Path) -> None:
    counts = [3, 1, 4, 2]
    root = write_face_folder(tmp_path / "faces", counts, nested=True)
    out = evaluate(oaml_ckpt, root, tmp_path / "out", options=_opts(mask_probes=True)).results
    n = sum(counts)
    genuine = sum(c * (c - 1) // 2 for c in counts)
    data = out["data"]
    assert (data["n_images"], data["n_identities"], data["n_pairs"]) == (n, 4, n * (n - 1) // 2)
    assert (data["n_genuine"], data["n_impostor"]) == (genuine, n * (n - 1) // 2 - genuine)
    assert list(out["methods"]) == METHODS + [m + "_masked" for m in METHODS]
    for entry in out["methods"].values():
        assert (entry["n_genuine"], entry["n_impostor"]) == (genuine, n * (n - 1) // 2 - genuine)
        assert "ten_fold" not in entry  # all-pairs mode
    assert out["masked_protocol"]["side"].startswith("probe i")
    assert set(out["fusion"]["label_free_parameters"]) == {"clean", "masked"}


@pytest.mark.shared_data
def test_lfw_subset_end_to_end_writes_every_file(oaml_ckpt: Path, tmp_path: Path) -> None:
    if not LFW_ALIGNED.is_dir():
        pytest.skip(f"{LFW_ALIGNED} not found (real-face fixture outside the repository)")
    outcome = evaluate(oaml_ckpt, LFW_ALIGNED, tmp_path, options=_opts(plots=True))
    names = ["results.json", "report.md", "roc.png"] + [f"score_hist_{m}.png" for m in METHODS]
    for name in names:
        assert (tmp_path / name).is_file(), name
        if name.endswith(".png"):
            with Image.open(tmp_path / name) as image:
                assert image.size[0] > 100 and image.size[1] > 100
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"]["n_images"] == 100 and results["data"]["n_genuine"] == 10 * 45
    prov = results["provenance"]["model"]
    assert (prov["arch"], prov["width"], prov["channel_order"]) == ("ir_18", 0.125, "bgr")
    assert len(prov["sha256"]) == 64 and results["oaml_version"] and results["timings"]["wall_time_s"] > 0
    table = _table_rows((tmp_path / "report.md").read_text())
    assert list(table) == list(results["methods"])
    for name, entry in results["methods"].items():
        auc, eer, *tars = table[name]
        assert auc == f"{entry['auc']:.4f}" and eer == f"{100 * entry['eer']:.2f}"
        for cell, point in zip(tars, entry["tar_at_far"].values()):
            assert cell == (f"{100 * point['tar']:.2f}" if "tar" in point else "n/a")
    assert results["methods"]["adaface"]["tar_at_far"]["1e-04"]["omitted"].startswith("needs >= 10000")
    assert [row[0] for row in outcome.rows] == METHODS


@pytest.mark.shared_data
def test_lfw_pairs_file_skips_missing_images_and_counts_them(oaml_ckpt: Path, tmp_path: Path) -> None:
    if not (LFW_ALIGNED / "pairs.txt").is_file():
        pytest.skip(f"{LFW_ALIGNED}/pairs.txt not found (real-face fixture outside the repository)")
    results = evaluate(oaml_ckpt, LFW_ALIGNED, tmp_path, pairs_path=LFW_ALIGNED / "pairs.txt", options=FAST).results
    data = results["data"]
    assert data["missing_images"] == ["Jacques_Chirac/Jacques_Chirac_0006", "Jacques_Chirac/Jacques_Chirac_0010"]
    assert data["pairs_skipped"] == 8 and data["n_pairs"] == 292 and data["mode"] == "pairs_file"
    for name in METHODS:
        fold = results["methods"][name]["ten_fold"]
        assert len(fold["fold_accuracies"]) == 10 and sum(fold["fold_sizes"]) == 292
    assert "Jacques_Chirac_0006" in (tmp_path / "report.md").read_text()


def test_released_layout_evaluates_adaface_only(released_ckpt: Path, face_folder: Path, tmp_path: Path) -> None:
    results = evaluate(released_ckpt, face_folder, tmp_path, options=_opts(mask_probes=True, plots=True)).results
    assert list(results["methods"]) == ["adaface", "adaface_masked"]
    assert set(results["methods_unavailable"]) == {"qaconv", "combined"}
    report = (tmp_path / "report.md").read_text()
    assert "QAConv is unavailable" in report and "only AdaFace is evaluated" in report
    assert results["provenance"]["model"]["source_layout"] == "adaface_released"
    assert (tmp_path / "score_hist_adaface_masked.png").is_file()
    assert not (tmp_path / "score_hist_qaconv.png").exists()


def _write_bin(path: Path, n_pairs: int, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng(5)
    blobs, issame = [], []
    for k in range(n_pairs):
        for _ in range(2):
            ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            blobs.append(buf.tobytes())
        issame.append(k % 2 == 0)
    path.write_bytes(pickle.dumps((blobs, issame), protocol=2))
    return np.array(issame)


def test_bin_input(oaml_ckpt: Path, tmp_path: Path) -> None:
    issame = _write_bin(tmp_path / "tiny.bin", 12)
    results = evaluate(oaml_ckpt, tmp_path / "tiny.bin", tmp_path / "out", options=_opts(mask_probes=True)).results
    data = results["data"]
    assert (data["mode"], data["n_images"], data["n_pairs"], data["n_identities"]) == ("bin", 24, 12, None)
    assert data["n_genuine"] == int(issame.sum())
    for name in METHODS + [m + "_masked" for m in METHODS]:
        assert len(results["methods"][name]["ten_fold"]["fold_accuracies"]) == 10
    assert results["masked_protocol"]["side"].startswith("second image")


def test_few_pairs_omit_the_ten_fold_accuracy_with_a_reason(oaml_ckpt: Path, tmp_path: Path) -> None:
    _write_bin(tmp_path / "few.bin", 4)
    results = evaluate(oaml_ckpt, tmp_path / "few.bin", tmp_path / "out", options=FAST).results
    assert results["methods"]["qaconv"]["ten_fold"] == {"omitted": "needs >= 10 pairs for 10 folds, have 4"}


def test_non_112_images_refused_without_resize(oaml_ckpt: Path, tmp_path: Path) -> None:
    root = write_face_folder(tmp_path / "big", [2, 2], size=120)
    with pytest.raises(DataError, match=r"id00/img000.png \(120x120\).*oaml align.*--resize"):
        evaluate(oaml_ckpt, root, tmp_path / "out", options=FAST)
    results = evaluate(oaml_ckpt, root, tmp_path / "out", options=_opts(resize=True)).results
    assert results["data"]["n_pairs"] == 6
    _write_bin(tmp_path / "big.bin", 2, size=100)
    with pytest.raises(DataError, match=r"big.bin\[0\] \(100x100\)"):
        evaluate(oaml_ckpt, tmp_path / "big.bin", tmp_path / "out", options=FAST)


def test_no_genuine_pairs_is_a_clear_error(oaml_ckpt: Path, tmp_path: Path) -> None:
    root = write_face_folder(tmp_path / "singles", [1, 1, 1])
    with pytest.raises(DataError, match="0 genuine"):
        evaluate(oaml_ckpt, root, tmp_path / "out", options=FAST)


def test_label_free_fusion() -> None:
    rng = np.random.default_rng(0)
    a, q = rng.normal(0.3, 0.1, 50), rng.normal(5.0, 3.0, 50)
    combined, params = fuse_label_free({"adaface": a, "qaconv": q}, {"adaface": 0.7, "qaconv": 0.3})
    expected = 0.7 * (a - a.mean()) / a.std() + 0.3 * (q - q.mean()) / q.std()
    np.testing.assert_allclose(combined, expected)
    assert params["qaconv"] == {"mean": q.mean(), "std": q.std(), "weight": 0.3}
    with pytest.raises(ValueError):
        fuse_label_free({"adaface": a}, {"adaface": 0.0})


def test_all_pairs_scorers_equal_the_upper_triangle(oaml_ckpt: Path, face_folder: Path) -> None:
    rec = load_model(oaml_ckpt, batch_size=4)
    files = sorted(str(p) for p in face_folder.rglob("*.png"))
    feats = extract_features(rec, EvalImages(names=files, paths=files), progress=False)
    masked = extract_features(rec, EvalImages(names=files, paths=files), occluder="mask", progress=False)
    n = len(files)
    iu = np.triu_indices(n, 1)
    emb = feats.embedding
    np.testing.assert_allclose(cosine_upper(emb, emb), (emb @ emb.T).numpy()[iu], atol=1e-6)
    full = qaconv_all(rec.qaconv, masked, feats, rec.uses_occlusion).numpy()
    np.testing.assert_allclose(qaconv_upper(rec.qaconv, masked, feats, rec.uses_occlusion, block_rows=3,
                                            progress=False), full[iu],
                               rtol=1e-4, atol=1e-5)


def test_cli_eval_prints_the_table(oaml_ckpt: Path, face_folder: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model-path", str(oaml_ckpt), "--data-path", str(face_folder), "--output-dir",
                 str(tmp_path), "--batch-size", "8", "--num-workers", "0", "--adaface-weight", "0.8",
                 "--qaconv-weight", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^combined\s+10\s+35\s", printed, re.MULTILINE)
    assert json.loads((tmp_path / "results.json").read_text())["fusion"]["weights"] == {"adaface": 0.8,
                                                                                      "qaconv": 0.2}


def test_pair_list_input_scores_the_listed_pairs_and_names_a_missing_file(oaml_ckpt: Path, tmp_path: Path) -> None:
    from oaml.data.pairs import Pair, write_pair_list

    root = write_face_folder(tmp_path / "faces", [3, 3, 2, 2])
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    pairs = [Pair(a, b, a.split("/")[0] == b.split("/")[0]) for k, a in enumerate(files) for b in files[k + 1:]]
    write_pair_list(tmp_path / "list.txt", pairs[:30])
    results = evaluate(oaml_ckpt, root, tmp_path / "out", pairs_path=tmp_path / "list.txt", options=FAST).results
    data = results["data"]
    assert (data["mode"], data["n_pairs"], data["n_genuine"]) == ("pairs_file", 30, sum(p.same for p in pairs[:30]))
    assert data["n_identities"] == 4 and len(results["methods"]["adaface"]["ten_fold"]["fold_accuracies"]) == 10
    write_pair_list(tmp_path / "gone.txt", [*pairs[:3], Pair(files[0], "id09/none.png", False)])
    with pytest.raises(DataError, match=r"gone\.txt:5: image id09/none\.png not found"):
        evaluate(oaml_ckpt, root, tmp_path / "out2", pairs_path=tmp_path / "gone.txt", options=FAST)
