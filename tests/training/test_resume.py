"""``--resume_from_checkpoint``: the checkpoint's configuration, the settings a resume may change, the run folder.

The seed's README command (``main.py --resume_from_checkpoint .../last.ckpt --data_root D --train_data_path mine
--val_data_path mine``) used to rebuild the model from the defaults (ir_50) and crash in ``load_state_dict`` for
any run not trained with them; these tests pin that the checkpoint's own settings are used instead.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from oaml.cli.config_args import config_from_args
from oaml.cli.main import build_parser
from oaml.config import OamlConfig, config_from_dict
from oaml.errors import ConfigError
from oaml.models.checkpoint import save_checkpoint
from oaml.training.build import checkpoint_meta
from oaml.training.resume import LOCKED_ON_RESUME, check_resume, resume_folder

TRAINED = {"arch": "ir_18", "width": 0.125, "batch_size": 8, "k_nearest": 2, "epochs": 3, "seed": 7,
           "data_root": "/old", "train_data_path": "mine", "val_data_path": "mine", "num_workers": 0}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A run folder holding ``checkpoints/last.ckpt`` with the metadata our checkpoints carry."""
    run = tmp_path / "runs" / "tiny_12-01_0"
    (run / "checkpoints").mkdir(parents=True)
    config = config_from_dict(flat=TRAINED)
    config.save(run / "config.yaml")
    return save_checkpoint(run / "checkpoints" / "last.ckpt", {}, checkpoint_meta(config, 40, []))


def _resume(checkpoint: Path, extra: str = "") -> OamlConfig:
    argv = ["train", "--resume_from_checkpoint", str(checkpoint), *shlex.split(extra)]
    return config_from_args(build_parser().parse_args(argv))


def test_resume_takes_the_model_from_the_checkpoint(checkpoint: Path) -> None:
    config = _resume(checkpoint, "--data_root /data --train_data_path mine --val_data_path mine")
    assert (config.model.arch, config.model.width, config.train.batch_size, config.loss.k_nearest) == (
        "ir_18", 0.125, 8, 2)  # the defaults would be ir_50, width 1, batch 256, k 32
    assert config.data.data_root == "/data" and config.system.resume_from_checkpoint == str(checkpoint)


def test_safe_settings_may_change(checkpoint: Path) -> None:
    config = _resume(checkpoint, "--epochs 6 --num_processes 2 --val_every_n_epochs 2 --set train.lr_milestones=4,5")
    assert (config.train.epochs, config.system.num_processes, config.eval.val_every_n_epochs) == (6, 2, 2)
    assert config.train.lr_milestones == (4, 5)
    assert _resume(checkpoint, "--arch ir_18 --width 0.125").model.arch == "ir_18"  # equal values are no conflict


@pytest.mark.parametrize("flags, key", [("--arch ir_50", "arch"), ("--batch_size 16", "batch_size"),
                                        ("--set loss.k_nearest=4", "k_nearest"), ("--lr 0.01", "lr"),
                                        ("--seed 1", "seed")])
def test_a_real_conflict_is_one_line(checkpoint: Path, flags: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _resume(checkpoint, flags)
    message = str(info.value)
    assert message.startswith(f"--{key} ") and str(checkpoint) in message and "\n" not in message
    assert "--start_from_model_statedict" in message  # the way out


def test_resume_cannot_be_combined_with_new_weights(checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be combined"):
        _resume(checkpoint, f"--start_from_model_statedict {checkpoint}")


def test_the_api_checks_a_resolved_config_too(checkpoint: Path) -> None:
    stored = config_from_dict(flat=TRAINED)
    check_resume(stored.replace(epochs=9), stored, str(checkpoint))
    with pytest.raises(ConfigError, match="--width 1.0: the checkpoint"):
        check_resume(stored.replace(width=1.0), stored, str(checkpoint))


def test_locked_keys_cover_the_model_and_the_restored_optimizer_state() -> None:
    assert {"arch", "width", "head", "m", "h", "s", "t_alpha", "k_nearest", "occlusion_method", "batch_size", "seed",
            "lr", "momentum", "weight_decay", "input_size", "channel_order"} <= LOCKED_ON_RESUME
    assert not {"epochs", "data_root", "train_data_path", "val_data_path", "gpus", "num_processes", "num_workers",
                "class_memory_on_cpu", "occlusion_detach", "lr_milestones"} & LOCKED_ON_RESUME


def test_resume_folder_is_the_run_of_the_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    assert resume_folder(checkpoint) == checkpoint.parents[1].resolve()
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(checkpoint.read_bytes())
    assert resume_folder(loose) is None
