"""The configuration tree and its command line: seed command lines, YAML precedence, bad values."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oaml.cli.config_args import config_from_args
from oaml.cli.main import build_parser, main
from oaml.config import OamlConfig, config_from_dict
from oaml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def parse(command: str) -> tuple[OamlConfig, object]:
    argv = shlex.split(command)
    args = build_parser().parse_args(["train", *argv])
    return config_from_args(args), args


def test_defaults_are_the_documented_values() -> None:
    c = OamlConfig()
    assert (c.data.train_data_path, c.data.val_data_path, c.data.channel_order, c.data.input_size) == (
        "faces_emore", "faces_emore", "bgr", 112)
    assert (c.train.epochs, c.train.batch_size, c.train.lr, c.train.lr_milestones, c.train.lr_gamma) == (
        24, 256, 0.1, (8, 12, 14), 0.1)
    assert (c.train.momentum, c.train.weight_decay, c.train.seed, c.train.accumulate_grad_batches) == (
        0.9, 5e-4, 42, 1)
    assert (c.model.arch, c.model.width, c.model.head, c.model.m, c.model.h, c.model.s, c.model.t_alpha) == (
        "ir_50", 1.0, "adaface", None, 0.333, 64.0, 0.01)  # m None: the head's paper margin
    assert c.loss.k_nearest == 32
    assert (c.loss.adaface_loss_weight, c.loss.qaconv_loss_weight, c.loss.occlusion_loss_weight,
            c.loss.triplet_weight) == (0.1, 0.7, 0.3, 0.5)
    assert (c.eval.eval_adaface_weight, c.eval.eval_qaconv_weight) == (0.5, 0.5)
    assert (c.loss.occlusion_method, c.augment.mask_prob, c.loss.instances_per_identity) == ("scaling", 0.5, 4)
    assert (c.augment.low_res_augmentation_prob, c.augment.crop_augmentation_prob,
            c.augment.photometric_augmentation_prob) == (0.0, 0.0, 0.0)
    assert (c.system.distributed_backend, c.system.use_16bit, c.system.num_workers, c.system.wandb) == (
        "ddp", False, -1, False)  # -1: the usable cores, at most 8 (the seed hard-coded 16)


SEED_LINES = [
    ("--data_root /data --train_data_path faces_emore --val_data_path faces_emore --arch ir_50 --head adaface "
     "--batch_size 256 --epochs 24 --gpus 4",
     {"data_root": "/data", "arch": "ir_50", "head": "adaface", "batch_size": 256, "epochs": 24, "gpus": 4,
      "train_data_subset": False}),
    ("--data_root /data --train_data_path faces_emore --val_data_path faces_emore --train_data_subset --arch ir_50 "
     "--batch_size 128 --epochs 24 --gpus 2",
     {"data_root": "/data", "train_data_subset": True, "batch_size": 128, "gpus": 2}),
    ("--data_root /data --val_data_path faces_emore --evaluate --start_from_model_statedict "
     "experiments/model/best.ckpt --arch ir_50",
     {"evaluate": True, "start_from_model_statedict": "experiments/model/best.ckpt", "arch": "ir_50"}),
]


@pytest.mark.parametrize(("line", "expected"), SEED_LINES)
def test_seed_command_lines_parse_to_their_values(line: str, expected: dict[str, object]) -> None:
    config, _ = parse(line)
    flat = {k: v for section in config.to_dict().values() for k, v in section.items()}
    for key, value in expected.items():
        assert flat[key] == value, key


def test_seed_eval_command_line_parses() -> None:
    args = build_parser().parse_args(shlex.split(
        "eval --model-path experiments/model/best.ckpt --data-path /test/dataset --output-dir results "
        "--batch-size 64 --adaface-weight 0.5 --qaconv-weight 0.5"))
    assert (args.model_path, args.data_path, args.output_dir) == ("experiments/model/best.ckpt", "/test/dataset",
                                                                  "results")
    assert (args.batch_size, args.adaface_weight, args.qaconv_weight) == (64, 0.5, 0.5)


def test_yaml_then_set_then_flags_precedence(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 0.05, "epochs": 3, "batch_size": 32},
                                    "model": {"arch": "ir_18", "width": 0.25}}))
    config, _ = parse(f"--config {path} --set train.epochs=5 --set model.width=0.5 --width 0.125")
    assert config.train.lr == 0.05  # from YAML
    assert config.model.arch == "ir_18"  # from YAML
    assert config.train.epochs == 5  # --set beats YAML
    assert config.model.width == 0.125  # a flag beats --set
    assert config.train.batch_size == 32


def test_saved_config_round_trips(tmp_path: Path) -> None:
    config = config_from_dict(flat={"lr_milestones": "2,3", "width": 0.25, "use_16bit": "true"})
    config.save(tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == config
    assert again.train.lr_milestones == (2, 3) and again.system.use_16bit is True


@pytest.mark.parametrize(("argv", "fragment"), [
    ("--arch ir_51", "--arch: invalid value 'ir_51'; choose one of ir_18"),
    ("--head sphereface", "--head: invalid value 'sphereface'; choose one of adaface, arcface, cosface"),
    ("--lr_milestones 8,12,10", "--lr_milestones: invalid value '8,12,10'; expected strictly increasing"),
    ("--lr -0.1", "--lr: invalid value -0.1; expected a positive number"),
    ("--batch_size 250", "--batch_size: invalid value 250; it must be divisible by instances_per_identity x "
                         "devices = 4 x 1 = 4"),
    ("--batch_size 40 --gpus 4", "--batch_size: invalid value 40; it must be divisible by instances_per_identity x "
                                 "devices = 4 x 4 = 16"),
    ("--distributed_backend dp", "--distributed_backend: invalid value 'dp'; dp and ddp2 were removed in Lightning 2"),
    ("--epochs two", "--epochs: invalid value 'two'; expected an integer"),
    ("--set train.nonsense=1", "unknown config key 'train.nonsense'"),
])
def test_bad_values_give_one_clear_line_and_status_2(argv: str, fragment: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *shlex.split(argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert fragment in err


def test_missing_data_path_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data_root", str(tmp_path), "--train_data_path", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "not found" in err


def test_use_mxrecord_requires_a_rec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "faces" / "alice").mkdir(parents=True)
    assert main(["train", "--data_root", str(tmp_path), "--train_data_path", "faces", "--use_mxrecord"]) == 2
    assert "--use_mxrecord: no train.rec in" in capsys.readouterr().err


def test_unknown_yaml_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  archh: ir_18\n")
    with pytest.raises(ConfigError, match="unknown config key model.archh"):
        parse(f"--config {path}")


def test_help_lists_every_parameter_with_its_default() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--help"], capture_output=True, text=True,
                            check=True, env={"COLUMNS": "200", "PATH": ""})
    text = " ".join(result.stdout.split())
    flat = {k: v for section in OamlConfig().to_dict().values() for k, v in section.items()}
    for key, value in flat.items():
        assert f"--{key}" in text, key
    for fragment in ("(default: 24)", "(default: 256)", "(default: 8,12,14)", "(default: 0.0005)",
                     "(default: ir_50)", "(default: 0.333)", "(default: 32)", "(default: scaling)"):
        assert fragment in text, fragment


def test_top_level_help_lists_every_parameter_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for values in OamlConfig().to_dict().values():
        for key, value in values.items():
            shown = ",".join(map(str, value)) if isinstance(value, list) else repr(value) if value == "" else value
            assert f"--{key} {shown}" in text, key


def test_auto_workers_follow_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import oaml.devices

    monkeypatch.setattr(oaml.devices, "cpu_count", lambda: 2)
    assert config_from_dict().system.workers == 2  # the 2-core machine gets 2, not the seed's 16
    assert config_from_dict(flat={"num_processes": 2}).system.workers == 1  # shared by the devices
    assert config_from_dict(flat={"num_workers": 16}).system.workers == 2  # an explicit count is capped
    monkeypatch.setattr(oaml.devices, "cpu_count", lambda: 64)
    assert config_from_dict().system.workers == 8 and config_from_dict(flat={"num_workers": 0}).system.workers == 0


def test_make_synthetic_prints_a_summary_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-synthetic", "--out", str(tmp_path / "s"), "--identities", "4", "--images", "2",
                 "--val-pairs", "10"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{tmp_path / 's'}: 8 training images of 4 identities") and "SyntheticSummary" not in out


def test_study_writes_its_report_into_the_work_folder_by_default() -> None:
    from oaml.study.options import StudyOptions

    options = StudyOptions()
    assert options.output_dir == options.work_dir != "docs"  # the repository's docs change only when asked


@pytest.mark.parametrize("head, margin", [("adaface", 0.4), ("arcface", 0.5), ("cosface", 0.4)])
def test_each_head_trains_with_its_paper_margin_unless_m_is_given(head: str, margin: float) -> None:
    from oaml.training.build import build_system

    system = build_system(config_from_dict(flat={"arch": "ir_18", "width": 0.0625, "head": head}), num_classes=3)
    assert system.objective.head.margin.m == margin  # the seed gave every head AdaFace's 0.4
    explicit = config_from_dict(flat={"arch": "ir_18", "width": 0.0625, "head": head, "m": "0.3"})
    assert build_system(explicit, num_classes=3).objective.head.margin.m == 0.3
    assert config_from_dict(flat={"m": "none"}).model.m is None


def test_arch_and_head_names_come_from_the_registries() -> None:
    from oaml.models import BACKBONES, HEADS

    for arch in BACKBONES.names():
        assert config_from_dict(flat={"arch": arch}).model.arch == arch
    for head in HEADS.names():
        assert config_from_dict(flat={"head": head}).model.head == head
    with pytest.raises(ConfigError, match="choose one of " + ", ".join(BACKBONES.names())):
        config_from_dict(flat={"arch": "ir_1000"})


@pytest.mark.parametrize("name", ["tiny_cpu", "ir50_adaface_qaconv"])
def test_packaged_configs_load_by_name(name: str) -> None:
    from oaml.config import load_config_file, packaged_configs

    assert name in packaged_configs()
    config = config_from_dict(load_config_file(name))
    assert config.model.arch in ("ir_18", "ir_50")
    with pytest.raises(ConfigError, match="neither a file nor a packaged configuration; packaged: "):
        load_config_file("no_such_recipe")
