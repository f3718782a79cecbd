"""``oaml eval`` and ``oaml embed`` on bad input: one line naming the problem, before any model or data work.

Each test reproduces an item of issue 14 ("a run never fails silently"): devices that do not exist, corrupt images
read in DataLoader workers, earlier results that a second run would have overwritten silently, ``--skip-bad``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_helpers import write_face_folder
from oaml.cli.main import main


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def broken_folder(tmp_path: Path) -> tuple[Path, Path]:
    """Three identities, one image of which is a JPEG cut short (its header still reads, decoding fails)."""
    root = write_face_folder(tmp_path / "faces", [3, 2, 3])
    victim = sorted(root.rglob("*.png"))[4]
    victim.write_bytes(victim.read_bytes()[:60])
    return root, victim


@pytest.mark.parametrize("command, device", [("eval", "cuda:0"), ("embed", "gpu"), ("eval", "cuda:7")])
def test_an_absent_device_is_refused_first(oaml_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           command: str, device: str) -> None:
    missing_data = tmp_path / "not_read"  # the device check comes before the data is looked at
    assert main([command, "--model-path", str(oaml_ckpt), "--data-path", str(missing_data), "--device", device,
                 "--output-dir", str(tmp_path / "out")]) == 2
    line = _one_line(capsys)
    assert f"--device {device}" in line and "available: cpu" in line and "not_read" not in line


def test_a_corrupt_image_read_by_a_worker_is_one_line(oaml_ckpt: Path, broken_folder: tuple[Path, Path],
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, victim = broken_folder
    assert main(["eval", "--model-path", str(oaml_ckpt), "--data-path", str(root), "--num-workers", "2",
                 "--output-dir", str(tmp_path / "out"), "--no-progress", "--no-plots"]) == 2
    line = _one_line(capsys)
    assert str(victim) in line and "Traceback" not in line


def test_eval_skip_bad_lists_the_image_and_drops_its_pairs(oaml_ckpt: Path, broken_folder: tuple[Path, Path],
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, victim = broken_folder
    out = tmp_path / "out"
    assert main(["eval", "--model-path", str(oaml_ckpt), "--data-path", str(root), "--skip-bad", "--num-workers",
                 "2", "--output-dir", str(out), "--no-progress", "--no-plots"]) == 0
    assert f"skipped unreadable image {victim}" in capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())["data"]
    assert data["n_images"] == 7 and data["n_pairs"] == 7 * 6 // 2  # the broken image and its 7 pairs left out
    assert len(data["bad_images"]) == 1 and str(victim) in data["bad_images"][0]
    assert "unreadable images left out" in (out / "report.md").read_text()


def test_a_second_eval_does_not_overwrite_the_first(oaml_ckpt: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = write_face_folder(tmp_path / "faces", [2, 2])
    out = tmp_path / "results"
    args = ["eval", "--model-path", str(oaml_ckpt), "--data-path", str(root), "--output-dir", str(out),
            "--no-progress", "--no-plots"]
    assert main(args) == 0
    first = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    line = _one_line(capsys)
    assert "already holds results.json" in line and "--overwrite" in line
    assert (out / "results.json").read_bytes() == first
    assert main([*args, "--overwrite"]) == 0
    assert (out / "results.json").stat().st_mode & 0o777 == 0o666 & ~_umask()  # the umask, not 0600


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_embed_skip_bad_writes_the_list(oaml_ckpt: Path, broken_folder: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root, victim = broken_folder
    out = tmp_path / "emb"
    base = ["embed", "--model-path", str(oaml_ckpt), "--data-path", str(root), "--output-dir", str(out),
            "--no-progress"]
    assert main(base) == 2
    assert str(victim) in _one_line(capsys)
    assert main([*base, "--skip-bad"]) == 0
    assert (out / "skipped.txt").read_text().startswith(str(victim))
    assert len((out / "index.csv").read_text().splitlines()) == 1 + 7
    assert main([*base, "--skip-bad"]) == 2 and "already holds embeddings.npy" in _one_line(capsys)


def test_an_options_error_is_prefixed_once(oaml_ckpt: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model-path", str(oaml_ckpt), "--data-path", str(tmp_path), "--adaface-weight", "-1",
                 "--output-dir", str(tmp_path / "o")]) == 2
    line = _one_line(capsys)
    assert line.startswith("oaml eval: error: ") and line.count("oaml eval") == 1


@pytest.mark.parametrize("command", ["eval", "embed", "study", "demo", "make-synthetic"])
def test_help_shows_the_defaults(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "(default:" in capsys.readouterr().out
