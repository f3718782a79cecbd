"""Validation under occlusion protocols: one metric prefix per protocol, the masked protocol unchanged, the same
occluders and scores as ``oaml eval``, and the occlusion head's calibration logged per protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

from eval_helpers import make_oaml_checkpoint, write_bin_of_faces
from oaml.config import config_from_dict
from oaml.errors import ConfigError
from oaml.evaluation.evaluate import EvalOptions, evaluate
from oaml.training.build import build_datamodule, build_system, val_protocols
from oaml.training.weights import load_start_weights


def _validate(checkpoint: Path, root: Path, **flat: Any) -> dict[str, float]:
    config = config_from_dict(flat={"data_root": str(root), "train_data_path": "none", "val_data_path": "sets",
                                    "arch": "ir_18", "width": 0.125, "val_batch_size": 20, "num_workers": 0,
                                    "evaluate": True, **flat})
    datamodule = build_datamodule(config)
    datamodule.prepare_data()
    datamodule.setup("validate")
    system = build_system(config, num_classes=7, val_set_names=datamodule.val_datasets[0].names)
    load_start_weights(system, checkpoint)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(system, datamodule=datamodule, verbose=False)
    return system.val_metrics


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("val")
    write_bin_of_faces(root / "sets" / "lfw.bin", pairs=20, seed=2)
    return make_oaml_checkpoint(root / "tiny.ckpt"), root


def test_protocol_prefixes_and_the_masked_protocol_unchanged(setup: tuple[Path, Path]) -> None:
    checkpoint, root = setup
    default = _validate(checkpoint, root)
    both = _validate(checkpoint, root, val_occluders="sunglasses,mask+sunglasses")
    assert {key for key in default if key.startswith("masked_")} <= set(both)
    for key, value in default.items():  # the default protocols' numbers stay exactly as they were
        assert both[key] == value, key
    for prefix in ("masked_", "occ_sunglasses_", "occ_mask+sunglasses_"):
        assert f"{prefix}lfw_combined_acc" in both and f"{prefix}avg_adaface_acc" in both
        assert 0.0 <= both[f"{prefix}head_auc"] <= 1.0 and both[f"{prefix}head_mae"] >= 0
    assert not any(key.startswith("head_") for key in both)  # the clean pairs have nothing to calibrate
    none = _validate(checkpoint, root, masked_protocol=False, val_occluders="eyes")
    assert not any(key.startswith("masked_") for key in none) and "occ_eyes_lfw_qaconv_acc" in none


def test_validation_protocols_score_as_oaml_eval(setup: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, root = setup
    metrics = _validate(checkpoint, root, val_occluders="mask+sunglasses")
    options = EvalOptions(batch_size=20, progress=False, plots=False, dynamic_weights=True, mask_probes=True,
                          occluders=("mask+sunglasses",), mask_seed=42)  # validation seeds with the training seed
    results = evaluate(checkpoint, root / "sets" / "lfw.bin", tmp_path, options=options).results
    for suffix, prefix in (("_masked", "masked_"), ("_mask+sunglasses", "occ_mask+sunglasses_")):
        for method in ("adaface", "qaconv", "combined"):
            assert results["methods"][method + suffix]["ten_fold"]["accuracy"] == metrics[f"{prefix}lfw_{method}_acc"]
        head = results["occlusion_head"]["masked" if suffix == "_masked" else "mask+sunglasses"]
        assert metrics[f"{prefix}head_auc"] == pytest.approx(head["auc"], abs=1e-9)
        assert metrics[f"{prefix}head_mae"] == pytest.approx(head["mae"], abs=1e-6)


def test_an_unknown_validation_occluder_is_a_config_error(tmp_path: Path) -> None:
    config = config_from_dict(flat={"val_occluders": "mask,visor"})
    with pytest.raises(ConfigError, match=r"--val_occluders: occlusion protocol 'visor': unknown occluder"):
        val_protocols(config)
    assert [p.name for p in val_protocols(config_from_dict())] == ["mask"]
