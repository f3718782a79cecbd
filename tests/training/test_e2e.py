"""End-to-end training runs on tiny synthetic data (slow; CI runs them too).

Every run uses a width-0.125 ir_18 on 112x112 synthetic faces, in fp32 on the CPU.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oaml.config import OamlConfig, config_from_dict
from oaml.data.synthetic import make_synthetic
from oaml.models.checkpoint import CheckpointMeta, save_checkpoint
from oaml.training.build import build_datamodule, build_system
from oaml.training.run import run_training

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synthetic"
    make_synthetic(path, identities=64, images=8, seed=3, val_pairs=200)
    return path


def _config(data_dir: Path, out: Path, **flat: object) -> OamlConfig:
    base = {"data_root": str(data_dir.parent), "train_data_path": data_dir.name, "val_data_path": data_dir.name,
            "arch": "ir_18", "width": 0.125, "batch_size": 32, "epochs": 5, "lr_milestones": "4", "k_nearest": 8,
            "num_workers": 0, "val_batch_size": 100, "masked_protocol": False, "output_dir": str(out),
            "log_every_n_steps": 5}
    return config_from_dict(flat=base | flat)


def _untrained_checkpoint(config: OamlConfig, path: Path) -> Path:
    datamodule = build_datamodule(config)
    system = build_system(config, datamodule.num_classes, datamodule.class_names)
    return save_checkpoint(path, system.state_dict(), system.metadata)


def test_short_run_beats_chance_and_the_untrained_model(data_dir: Path, tmp_path: Path) -> None:
    config = _config(data_dir, tmp_path / "runs", epochs=6, lr_milestones="5", val_every_n_epochs=3)
    untrained = run_training(config.replace(evaluate=True, start_from_model_statedict=str(
        _untrained_checkpoint(config, tmp_path / "untrained.ckpt"))))
    trained = run_training(config)
    # Measured on this data (seed 3, one thread): untrained 0.706 combined (pixel statistics alone separate
    # some synthetic pairs), trained 0.872 combined / 0.866 AdaFace / 0.842 QAConv after 6 epochs.
    # The thresholds leave about 0.07 for platform differences.
    assert trained.test_metrics["avg_combined_acc"] > 0.80
    assert trained.test_metrics["avg_adaface_acc"] > 0.78
    assert trained.test_metrics["avg_qaconv_acc"] > 0.75
    assert trained.test_metrics["avg_combined_acc"] > untrained.val_metrics["avg_combined_acc"] + 0.10
    for name in ("config.yaml", "metrics.csv", "preview.png", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (trained.experiment_dir / name).is_file(), name


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if v.is_floating_point()}


def test_kill_and_resume_matches_an_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    # No augmentation randomness, no validation: the weights depend only on the batches, the RNG of the
    # dropout layer and the restored optimizer, scheduler, class memory and AdaFace statistics.
    flat = {"mask_prob": 0.0, "flip_prob": 0.0, "val_data_path": "absent", "deterministic": True}
    full = run_training(_config(data_dir, tmp_path / "full", epochs=3, lr_milestones="2", **flat))
    first = run_training(_config(data_dir, tmp_path / "part", epochs=2, lr_milestones="2", **flat))
    c = _weights(first.last_checkpoint)
    resumed = run_training(_config(data_dir, tmp_path / "part", epochs=3, lr_milestones="2",
                                   resume_from_checkpoint=str(first.last_checkpoint), **flat))
    assert resumed.experiment_dir == first.experiment_dir  # the resumed run continues in its own folder
    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the third epoch changed the weights


def _val_metrics(experiment_dir: Path) -> dict[str, float]:
    rows = list(csv.DictReader(open(experiment_dir / "metrics.csv", encoding="utf-8")))
    last = [r for r in rows if r.get("val_acc")][-1]
    return {k: float(v) for k, v in last.items() if v and k.startswith(("val/", "val_acc"))}


def _cli(*args: str, cwd: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OAML_EXPERIMENT_DIR", None)
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def test_ddp_two_cpu_processes_and_evaluate_reproduces_metrics(data_dir: Path, tmp_path: Path) -> None:
    common = ["--data_root", str(data_dir.parent), "--train_data_path", data_dir.name, "--val_data_path",
              data_dir.name, "--arch", "ir_18", "--width", "0.125", "--batch_size", "32", "--k_nearest", "8",
              "--num_workers", "0", "--val_batch_size", "100", "--no-masked_protocol"]
    _cli(*common, "--epochs", "5", "--lr_milestones", "4", "--val_every_n_epochs", "5", "--num_processes", "2",
         "--output_dir", str(tmp_path / "ddp"), cwd=tmp_path)
    (ddp_run,) = (tmp_path / "ddp").iterdir()
    assert (ddp_run / "checkpoints" / "best.ckpt").is_file()
    best = torch.load(ddp_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert CheckpointMeta.from_entry(best["oaml"], "best").config["system"]["num_processes"] == 2
    logged = _val_metrics(ddp_run)
    assert logged["val_acc"] > 0.6  # the 2-process run learned

    # Evaluate the best checkpoint with one process and with two: the gathered, de-duplicated pairs must give
    # the same accuracies, equal to those logged when the checkpoint was chosen.
    for processes in ("1", "2"):
        out = tmp_path / f"eval{processes}"
        _cli(*common, "--evaluate", "--start_from_model_statedict", str(ddp_run / "checkpoints" / "best.ckpt"),
             "--num_processes", processes, "--output_dir", str(out), cwd=tmp_path)
        (eval_run,) = out.iterdir()
        metrics = _val_metrics(eval_run)
        for key in ("val/avg_adaface_acc", "val/avg_qaconv_acc", "val/avg_combined_acc", "val_acc"):
            assert metrics[key] == pytest.approx(logged_at_best(ddp_run, key), abs=1e-6), (processes, key)


def logged_at_best(experiment_dir: Path, key: str) -> float:
    """The value of ``key`` at the validation whose val_acc was the best."""
    rows = [r for r in csv.DictReader(open(experiment_dir / "metrics.csv", encoding="utf-8")) if r.get("val_acc")]
    best = max(rows, key=lambda r: float(r["val_acc"]))
    return float(best[key])
