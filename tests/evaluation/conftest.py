"""Fixtures of the standalone-evaluation tests (helpers live in ``eval_helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_helpers import make_oaml_checkpoint, make_released_checkpoint, write_face_folder


@pytest.fixture(scope="session")
def oaml_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ir_18 (width 1/8) checkpoint in our layout."""
    return make_oaml_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="session")
def released_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny backbone in the released AdaFace layout."""
    return make_released_checkpoint(tmp_path_factory.mktemp("ckpt") / "adaface_tiny.ckpt")


@pytest.fixture(scope="session")
def face_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four identities with 3, 1, 4 and 2 images (one identity nested a level deeper is tested separately)."""
    return write_face_folder(tmp_path_factory.mktemp("faces"), [3, 1, 4, 2])
