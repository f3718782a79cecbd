"""What a run checks and writes: no silent no-op runs, a checkpoint for every finished run, train.log, loss.png,
throughput in metrics.csv, one log line per message (issue 14: "a run never fails silently")."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oaml.config import config_from_dict, load_config_file
from oaml.data.synthetic import make_synthetic
from oaml.errors import ConfigError
from oaml.training.run import run_training

ROOT = Path(__file__).resolve().parents[2]
TINY = load_config_file("tiny_cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_synthetic(root / "ten", identities=10, images=4, seed=1, val_pairs=20)
    make_synthetic(root / "mine", identities=16, images=4, seed=2, val_pairs=20)
    (root / "empty_dir").mkdir()
    return root


def _config(data: Path, out: Path, train: str, val: str, **flat: object) -> object:
    base = {"data_root": str(data), "train_data_path": train, "val_data_path": val, "output_dir": str(out),
            "num_workers": 0, "width": 0.0625} | flat
    return config_from_dict(TINY, base)


def test_too_few_identities_for_one_batch_stops_before_training(data: Path, tmp_path: Path) -> None:
    # tiny_cpu.yaml's batch 64 takes 16 identities x 4; a folder of 10 used to train nothing and exit 0.
    with pytest.raises(ConfigError) as info:
        run_training(_config(data, tmp_path / "runs", "ten", "ten"))
    message = str(info.value)
    assert message.startswith("--batch_size 64: a batch takes 16 identities x 4 images") and "\n" not in message
    assert "has 10 identities" in message and "use --batch_size 40 or less" in message
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no empty run folder


@pytest.mark.parametrize("flat, flag", [
    ({"occluders": "mask:0.5,visor:0.1"}, "--occluders: occluder mixture entry 'visor:0.1'"),
    ({"val_occluders": "sunglasses,mask+"}, "--val_occluders: occlusion protocol 'mask+'"),
])
def test_bad_occluder_settings_stop_before_a_run_folder(data: Path, tmp_path: Path, flat: dict[str, str],
                                                        flag: str) -> None:
    with pytest.raises(ConfigError) as info:
        run_training(_config(data, tmp_path / "runs", "mine", "mine", **flat))
    assert str(info.value).startswith(flag) and "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_run_without_validation_writes_last_ckpt_and_says_so(data: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # tiny_cpu.yaml validates every 8 epochs; with no .bin files the seed's setup saved no checkpoint at all.
    config = _config(data, tmp_path / "runs", "mine", "empty_dir", epochs=2, batch_size=32, log_every_n_steps=1)
    with caplog.at_level("INFO"):
        result = run_training(config)
    assert result.last_checkpoint is not None and result.last_checkpoint.is_file() and result.best_checkpoint is None
    assert any("trains without validation" in r.getMessage() and "no best.ckpt" in r.getMessage()
               for r in caplog.records)
    run = result.experiment_dir
    log = (run / "train.log").read_text()
    assert "trains without validation" in log and "images/s, ETA" in log and "training data" in log
    assert (run / "loss.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(run / "metrics.csv", encoding="utf-8")))
    assert any(float(r["train/images_per_s"]) > 0 for r in rows if r.get("train/images_per_s"))
    assert result.steps == 4 and result.wall_seconds > 0  # 16 identities / 8 per batch x 2 epochs


def test_tensorboard_without_the_extra_is_a_clear_error(data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning.fabric.loggers.tensorboard as tb

    monkeypatch.setattr(tb, "_TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr(tb, "_TENSORBOARDX_AVAILABLE", False)
    config = _config(data, tmp_path / "runs", "mine", "empty_dir", epochs=1, batch_size=32, tensorboard=True)
    with pytest.raises(ImportError, match=r'pip install "oaml\[tensorboard\]"'):
        run_training(config)
    assert not any((tmp_path / "runs").iterdir())  # the failed launch left no run folder behind


@pytest.mark.slow
def test_console_prints_each_line_once_without_adverts(data: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OAML_EXPERIMENT_DIR", None)
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", "tiny_cpu",
                             "--data_root", str(data), "--train_data_path", "mine", "--val_data_path", "empty_dir",
                             "--epochs", "1", "--batch_size", "32", "--width", "0.0625", "--num_workers", "0",
                             "--output_dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=600,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stderr + result.stdout
    assert text.count("GPU available: False") == 1, text[-3000:]
    for noise in ("litlogger", "LeafSpec", "defaulting to `False`", "convert_bin"):
        assert noise not in text, noise
    assert "last checkpoint:" in result.stdout and "wall time:" in result.stdout


def test_tensorboard_logs_next_to_metrics_csv(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason='the "tensorboard" extra is not installed')
    result = run_training(_config(data, tmp_path / "runs", "mine", "empty_dir", epochs=1, batch_size=32,
                                  tensorboard=True))
    assert list((result.experiment_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_training_asks_for_absent_gpus_before_any_data_work(data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from oaml.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA devices")
    (data / "mine" / "memfiles").mkdir(exist_ok=True)
    before = sorted(p.name for p in (data / "mine" / "memfiles").iterdir())
    assert main(["train", "--data_root", str(data), "--train_data_path", "mine", "--val_data_path", "mine",
                 "--gpus", "4", "--batch_size", "64", "--output_dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gpus 4: this machine has 0 CUDA device(s)" in err[0] and "--gpus 0" in err[0]
    assert sorted(p.name for p in (data / "mine" / "memfiles").iterdir()) == before  # nothing was converted
    assert not (tmp_path / "runs").exists()


def test_summary_says_where_the_test_score_comes_from_and_how_a_run_ended(tmp_path: Path) -> None:
    from oaml.training.run import TrainingResult, format_summary

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    metrics = {"lfw_adaface_acc": 0.9, "lfw_qaconv_acc": 0.8, "lfw_combined_acc": 0.85}
    tested = format_summary(TrainingResult(tmp_path, None, tmp_path / "checkpoints" / "last.ckpt",
                                           test_metrics=metrics, set_names=["lfw"], steps=5, wall_seconds=65))
    assert "on the validation sets that selected it" in tested and "wall time: 0:01:05 (5 steps)" in tested
    stopped = TrainingResult(tmp_path, None, tmp_path / "checkpoints" / "last.ckpt", stopped_by="SIGINT", steps=3)
    assert stopped.exit_status == 130 and TrainingResult(tmp_path, None, None, stopped_by="SIGTERM").exit_status == 143
    assert (f"interrupted by SIGINT after 3 steps; resume with: oaml train --resume_from_checkpoint "
            f"{tmp_path / 'checkpoints' / 'last.ckpt'}") in format_summary(stopped)
    assert "metrics:" not in format_summary(stopped)  # no metrics.csv was written: its path is not printed


def test_memory_preflight_logs_the_per_rank_need_and_refuses_what_cannot_fit(
        caplog: pytest.LogCaptureFixture) -> None:
    from oaml.devices import host_memory_available
    from oaml.training.memory_estimate import estimate_rank_memory
    from oaml.training.run import check_memory

    config = config_from_dict(TINY, {"num_processes": 2, "batch_size": 32})
    with caplog.at_level("INFO", logger="oaml.training.run"):
        fits = check_memory(config, 1000)
    assert fits.world_size == 2 and fits.num_classes == 1000
    assert any("memory per rank" in r.getMessage() and "C=1000, R=2" in r.getMessage() for r in caplog.records)
    # a class count whose shards cannot fit this host on two CPU processes (at least 50 KB per class per rank)
    classes = 4 * host_memory_available() // estimate_rank_memory(1, 1).class_memory
    with pytest.raises(ConfigError) as info:
        check_memory(config, classes)
    message = str(info.value)
    assert "\n" not in message and message.startswith("per-rank host memory")
    assert "--sample_rate" in message and "more ranks" in message
    assert "--class_memory_on_cpu" not in message  # a CPU-only run has no device memory to save
