"""``oaml study``: variant configs, option checks, occlusion statistics, mask reproduction, report and CLI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from oaml.cli.main import main
from oaml.errors import ConfigError
from oaml.evaluation.embed import OccludedImages
from oaml.evaluation.eval_data import EvalImages
from oaml.study.data import Identity, Split
from oaml.study.options import CALIBRATED_OCCLUDERS, METHODS, PROTOCOLS, VARIANTS, StudyOptions
from oaml.study.runs import read_loss_curves, run_config, run_study, steps_per_epoch
from oaml.study.report import render_markdown
from oaml.study.stats import aggregate


def test_variants_switch_exactly_the_documented_branches(tmp_path: Path) -> None:
    options = StudyOptions(epochs=40)
    configs = {k: run_config(options, v, 3, tmp_path / "train", tmp_path / "runs", 38) for k, v in VARIANTS.items()}
    summary = {k: (c.loss.adaface_loss_weight, c.loss.qaconv_loss_weight, c.loss.occlusion_loss_weight,
                   c.loss.occlusion_method, c.augment.mask_prob, c.loss.occlusion_detach) for k, c in configs.items()}
    assert summary == {"a": (1.0, 0.0, 0.0, "none", 0.0, True), "b": (1.0, 0.0, 0.0, "none", 0.5, True),
                       "c": (0.1, 0.7, 0.0, "none", 0.5, True), "d": (0.1, 0.7, 0.3, "scaling", 0.5, False),
                       "e": (0.1, 0.7, 0.3, "scaling", 0.5, True)}
    budget = {(c.train.epochs, c.train.batch_size, c.train.lr, tuple(c.train.lr_milestones), c.train.seed,
               c.model.arch, c.model.width, c.loss.k_nearest, c.system.num_workers) for c in configs.values()}
    assert budget == {(40, 64, 0.1, (25, 35), 3, "ir_18", 0.125, 16, 0)}  # the same budget for every variant
    assert [k for k, v in VARIANTS.items() if v.trains_occlusion] == ["d", "e"]
    assert run_config(options, VARIANTS["d"], 0, tmp_path / "t", tmp_path / "r", 6).loss.k_nearest == 5


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"variants": ("a", "x")}, "--variants"), ({"variants": ()}, "--variants"), ({"seeds": (1, 1)}, "--seeds"),
    ({"splits": ()}, "--splits"), ({"epochs": 0}, "--epochs"), ({"jobs": 0}, "--jobs"),
    ({"batch_size": 30}, "--batch-size"), ({"batch_size": 0}, "--batch-size")])
def test_bad_options_name_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        StudyOptions(**kwargs)


def test_steps_per_epoch_is_what_the_pk_sampler_yields(tmp_path: Path) -> None:
    identities = [Identity("d", f"p{k}", f"/d/p{k}", tuple(f"/d/p{k}/{j}.png" for j in range(5))) for k in range(38)]
    split = Split(0, tuple(identities), ())
    assert steps_per_epoch(split, 64) == 2  # 38 identities, 16 per batch, the incomplete third batch dropped
    assert steps_per_epoch(split, 16) == 9
    assert steps_per_epoch(Split(0, tuple(identities[:10]), ()), 64) == 0


def test_a_batch_larger_than_the_training_identities_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    for k in range(10):
        (root / f"p{k}").mkdir(parents=True)
        for j in range(4):
            (root / f"p{k}" / f"{j}.png").write_bytes(b"x")
    options = StudyOptions(roots=(str(root),), work_dir=str(tmp_path / "w"), output_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="--batch-size: 64 takes 16 identities per batch, but split 0 trains on 7"):
        run_study(options)
    assert not (tmp_path / "w").exists()  # refused before anything was linked or trained


def test_true_grids_are_the_masks_the_evaluator_draws(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        paths.append(str(tmp_path / f"{k}.png"))
        cv2.imwrite(paths[-1], rng.integers(100, 156, (112, 112, 3), dtype=np.uint8))
    images = EvalImages(names=paths, paths=paths)
    masked = OccludedImages(images, np.arange(3), "mask", seed=5)
    grids = np.stack([masked[k][1] for k in range(3)])
    for k in range(3):
        changed = np.any(masked[k][0] != images.read(k), axis=2)
        changed_cells = changed.reshape(7, 16, 7, 16).mean(axis=(1, 3))
        # Cells the grid calls covered were painted; fully visible cells were (almost) not touched.
        assert changed_cells[grids[k] < 0.1].min() > 0.9
        assert changed_cells[grids[k] == 1.0].max() < 0.3
        assert 0.0 < grids[k].min() < 0.5 or grids[k].min() == 0.0


def test_read_loss_curves_takes_the_epoch_columns(tmp_path: Path) -> None:
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,step,train/loss_step,train/loss_epoch,train/occlusion_loss_epoch,lr-SGD\n"
                        "0,0,5.0,,,0.1\n0,1,,4.5,0.25,\n1,3,,3.5,0.125,\n")
    assert read_loss_curves(csv_path) == {"loss": [4.5, 3.5], "occlusion_loss": [0.25, 0.125]}


def _fake_runs(variants: list[str], auc_e: float = 0.95) -> list[dict]:
    runs = []
    for v_index, variant in enumerate(variants):
        for seed in range(3):
            cell = {"accuracy": 0.8 + 0.01 * v_index + 0.002 * seed, "fold_std": 0.03, "tar": 0.4}
            run = {"variant": variant, "seed": seed, "split": 0, "train_s": 100.0, "eval_s": 3.0,
                   "metrics": {p: {m: dict(cell) for m in METHODS} for p in PROTOCOLS},
                   "curves": {"loss": [2.0, 1.0]}}
            if variant == "d":  # a collapsed head
                run["occlusion"] = {"inside": 1.0, "outside": 1.0, "clean_same_cells": 1.0, "clean_all": 1.0,
                                    "mae": 0.2, "mse": 0.1, "mse_all_visible": 0.1, "auc": 0.5}
            elif variant == "e":
                run["occlusion"] = {"inside": 0.3, "outside": 0.9, "clean_same_cells": 0.8, "clean_all": 0.9,
                                    "mae": 0.1, "mse": 0.02, "mse_all_visible": 0.1, "auc": auc_e}
            if "occlusion" in run:
                run["calibration"] = {name: {"auc": run["occlusion"]["auc"] - 0.01 * k, "mae": 0.1}
                                      for k, name in enumerate(CALIBRATED_OCCLUDERS)}
            runs.append(run)
    return runs


def _report(auc_e: float = 0.95) -> str:
    variants = list(VARIANTS)
    summary = aggregate(_fake_runs(variants, auc_e), variants, METHODS, list(PROTOCOLS))
    setup = {"command": "oaml study", "version": "0", "date": "2026-11-28", "machine": "2 CPU cores",
             "threads_per_run": 1, "wall_time_s": 600.0, "datasets": {"att": {"identities": 40, "images": 399}},
             "splits": [{"seed": 0, "train_identities": 38, "train_images": 382, "test_identities": 17,
                         "test_images": 172, "test_per_dataset": "att 12", "genuine": 785, "impostor": 785}],
             "options": StudyOptions().__dict__, "steps_per_epoch": 2, "steps": 240}
    return render_markdown(setup, summary, variants, {k: v.title for k, v in VARIANTS.items()},
                           {k: v.overrides for k, v in VARIANTS.items()}, {}, Path("."))


def test_report_has_every_variant_protocol_method_cell() -> None:
    text, variants = _report(), list(VARIANTS)
    for metric_header in ("### 10-fold accuracy", "### TAR at FAR = 1e-2"):
        table = text.split(metric_header)[1].split("###")[0]
        rows = [line for line in table.splitlines() if line.startswith("| (")]
        assert len(rows) == len(variants) * len(PROTOCOLS)
        assert all(line.count("±") == len(METHODS) for line in rows)
    assert "| (a) | clean | 80.2 ± 0.2 | 80.2 ± 0.2 | 80.2 ± 0.2 | 80.2 ± 0.2 |" in text  # mean of 80.0, 80.2, 80.4
    assert "| (b) - (a) | synthetic masks in training | masked | combined | +1.0 ± 0.0 | 3/3 | better |" in text
    assert "| (e) | 0.300 ± 0.000 | 0.900 ± 0.000" in text  # occlusion table: inside vs outside
    occlusion_lines = {line[:28]: line for line in text.splitlines() if line.startswith("- **Occlusion head")}
    assert "It separates masked from visible regions" in occlusion_lines["- **Occlusion head (e)**: pr"]
    assert "has collapsed to 'everything visible'" in occlusion_lines["- **Occlusion head (d)**: pr"]
    assert "prior on where masks sit" in occlusion_lines["- **Occlusion head (e)**: pr"]  # clean 0.8 < 0.9 - 0.05
    assert "| (e) | 0.95 ± 0.00 | 0.94 ± 0.00 | 0.93 ± 0.00 | 0.100 ± 0.000" in text  # per-occluder calibration
    # (e) - (c) is +2 on every seed with zero spread on every protocol, clean included, and the head's AUC 0.95:
    # the goal is met, and there is no "did not help" paragraph.
    assert "The occlusion branch pays off: (e) is better on masked, complementary, sunglasses, hand_mouth" in text
    assert "A head that separates" not in text


def test_report_says_when_the_goal_is_not_reached() -> None:
    text = _report(auc_e=0.6)
    assert "The goal is **not** reached" in text and "its head is not calibrated (AUC < 0.90)" in text


def test_cli_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", str(tmp_path / "absent"), "--work-dir", str(tmp_path / "w"),
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert "study data folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--variants", "z"])
    assert exit_info.value.code == 2
