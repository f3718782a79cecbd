"""Tests of ``oaml.data.images.labelled_images``: the one listing of identity folders (galleries, probes, eval)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from oaml.data.images import labelled_images
from oaml.errors import DataError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_identities_are_the_first_folder_level(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "faces"
    _touch(root / "bob" / "b.png")
    _touch(root / "amy" / "2.jpg")
    _touch(root / "amy" / "session" / "1.JPG")  # any depth, any case of the suffix
    _touch(root / "amy" / "notes.txt")
    _touch(root / ".hidden" / "x.png")
    _touch(root / "loose.png")
    elsewhere = _touch(tmp_path / "other" / "cat" / "c.png").parent
    (root / "cat").symlink_to(elsewhere, target_is_directory=True)  # a linked identity folder is listed too
    with caplog.at_level(logging.WARNING, logger="oaml.data.images"):
        files, names = labelled_images(root)
    assert [p.relative_to(root).as_posix() for p in files] == ["amy/2.jpg", "amy/session/1.JPG", "bob/b.png",
                                                               "cat/c.png"]
    assert names == ["amy", "amy", "bob", "cat"]
    assert "1 images directly in" in caplog.text and "loose.png" in caplog.text


def test_no_identity_images_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty_identity").mkdir()
    _touch(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no images in identity folders") as info:
        labelled_images(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        labelled_images(tmp_path / "absent")
