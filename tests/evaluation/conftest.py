"""Fixtures of the standalone-evaluation tests (helpers live in ``eval_helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_helpers import make_oaml_checkpoint, make_released_checkpoint, write_face_folder
from oaml.evaluation.api import FaceRecognizer, load_model
from oaml.evaluation.gallery import Gallery

GALLERY_COUNTS = [3, 1, 2]
"""Images of the enrolled identities id00, id01, id02 of the ``gallery`` fixture."""


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


@pytest.fixture(scope="session")
def gallery_model(oaml_ckpt: Path) -> FaceRecognizer:
    """The tiny checkpoint, loaded (batch size 8)."""
    return load_model(oaml_ckpt, batch_size=8)


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> FaceRecognizer:
    """Another tiny checkpoint (different weights, so a different SHA-256)."""
    return load_model(make_oaml_checkpoint(tmp_path_factory.mktemp("other") / "other.ckpt", seed=1), batch_size=8)


@pytest.fixture(scope="session")
def enrol_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Identity folders id00, id01, id02 with :data:`GALLERY_COUNTS` images."""
    return write_face_folder(tmp_path_factory.mktemp("enrol"), GALLERY_COUNTS, seed=3)


@pytest.fixture(scope="session")
def gallery(gallery_model: FaceRecognizer, enrol_folder: Path) -> Gallery:
    """The enrol folder as a gallery with QAConv maps, built with ``gallery_model``."""
    return Gallery.from_folder(gallery_model, enrol_folder, with_maps=True)
