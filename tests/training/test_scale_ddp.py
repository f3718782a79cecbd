"""A sharded, sampled run (``--sample_rate 0.5 --graph_sampler``) over two CPU DDP processes, resumed with one
process and evaluated with ``oaml eval`` (slow; gloo on the CPU).

The margin head and class memory are sharded over the two ranks, so the resume with one process loads the full
kernel, memory and momentum gathered into the checkpoint; ``oaml eval`` of the final checkpoint must give the
accuracies the resumed run logged at its last validation.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oaml.data.synthetic import make_synthetic
from oaml.models.checkpoint import CheckpointMeta

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _oaml(*args: str, cwd: Path) -> str:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)  # this checkout's oaml, whatever is installed
    env.pop("OAML_EXPERIMENT_DIR", None)
    result = subprocess.run([sys.executable, "-m", "oaml", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _last_validation(experiment_dir: Path) -> dict[str, float]:
    rows = [r for r in csv.DictReader(open(experiment_dir / "metrics.csv", encoding="utf-8")) if r.get("val_acc")]
    return {k: float(v) for k, v in rows[-1].items() if v and k.startswith("val/")}


def test_two_process_sampled_run_resumes_on_one_process_and_evaluates_as_logged(tmp_path: Path) -> None:
    data = tmp_path / "synthetic"
    make_synthetic(data, identities=16, images=8, seed=3, val_pairs=100)
    common = ["--data_root", str(tmp_path), "--train_data_path", data.name, "--val_data_path", data.name,
              "--arch", "ir_18", "--width", "0.125", "--batch_size", "32", "--k_nearest", "4", "--num_workers", "0",
              "--val_batch_size", "100", "--no-masked_protocol", "--sample_rate", "0.5", "--graph_sampler",
              "--lr_milestones", "5", "--output_dir", str(tmp_path / "runs")]
    # Over 4 epochs validation runs once per epoch (the seed's rule), here only after the last one.
    log = _oaml("train", *common, "--epochs", "5", "--val_every_n_epochs", "5", "--num_processes", "2", cwd=tmp_path)
    assert "memory per rank" in log
    (run,) = (tmp_path / "runs").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert CheckpointMeta.from_entry(saved["oaml"], "last").config["system"]["num_processes"] == 2
    state = saved["state_dict"]
    assert state["objective.head.kernel"].shape == (512, 16)  # gathered whole from the two shards
    assert state["objective.class_memory.memory"].shape[0] == 16
    two_process = _last_validation(run)
    assert two_process["val/avg_adaface_acc"] > 0.5

    _oaml("train", *common, "--epochs", "6", "--val_every_n_epochs", "1", "--num_processes", "1",
          "--resume_from_checkpoint", str(last), cwd=tmp_path)
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == saved["epoch"] + 1
    logged = _last_validation(run)

    out = tmp_path / "eval"
    _oaml("eval", "--model-path", str(last), "--data-path", str(data / "lfw.bin"), "--output-dir", str(out),
          "--batch-size", "100", "--num-workers", "0", "--no-plots", cwd=tmp_path)
    methods = json.loads((out / "results.json").read_text())["methods"]
    for method in ("adaface", "qaconv", "combined"):
        accuracy = methods[method]["ten_fold"]["accuracy"]
        assert accuracy == pytest.approx(logged[f"val/lfw_{method}_acc"], abs=1e-6), method
