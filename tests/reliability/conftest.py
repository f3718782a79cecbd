"""Fixtures of the reliability tests: tiny synthetic data and a tiny inference checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from oaml.data.synthetic import make_synthetic
from oaml.models import build_backbone


@pytest.fixture(scope="session")
def synthetic_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 identities x 4 images as train.rec and identity folders, plus five 4-pair .bin sets (never modified)."""
    path = tmp_path_factory.mktemp("synthetic") / "master"
    make_synthetic(path, identities=8, images=4, seed=5, formats=("rec", "folder"), val_pairs=4)
    return path


@pytest.fixture
def synthetic(synthetic_master: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic data that a test may corrupt."""
    copy = tmp_path / "data" / "syn"
    shutil.copytree(synthetic_master, copy)
    for cache in copy.glob("*.labels.npz"):
        cache.unlink()
    return copy


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A released-AdaFace-layout checkpoint (``model.``-prefixed backbone) of a width-1/8 ir_18."""
    torch.manual_seed(0)
    backbone = build_backbone("ir_18", width=0.125)
    path = tmp_path_factory.mktemp("model") / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in backbone.state_dict().items()}}, path)
    return path
