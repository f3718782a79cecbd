"""Crash safety: interrupted writes leave the old file (or nothing), never a torn one; SIGTERM and SIGINT during
training leave a ``last.ckpt`` that loads with ``weights_only`` and resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_helpers import ROOT

from oaml.data import verification_sets
from oaml.data.verification_sets import convert_bin, load_memfile, memfile_paths
from oaml.fileio import atomic_write, atomic_write_bytes
from oaml.training.checkpoint_io import AtomicCheckpointIO


class Crash(Exception):
    """The simulated failure."""


# ------------------------------------------------------------------------------------------------ atomic_write
@pytest.mark.parametrize("failure", [Crash, KeyboardInterrupt])
def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path: Path, failure: type[BaseException]) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"old content")
    with pytest.raises(failure):
        with atomic_write(target) as handle:
            handle.write(b"new content, first half")
            raise failure()
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left behind


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_atomic_write_keeps_the_old_file_when_fsync_or_rename_fails(tmp_path: Path, step: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new" * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_checkpoint_io_keeps_the_old_checkpoint_when_saving_crashes(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def torn_save(obj: object, handle: object, *args: object, **kwargs: object) -> None:
        handle.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise Crash("killed while writing")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(Crash):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ------------------------------------------------------------------------------------------- memfile conversion
def _snapshot(folder: Path, name: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in memfile_paths(folder, name) if p.exists()}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def _interrupt_decode_after(monkeypatch: pytest.MonkeyPatch, images: int) -> None:
    real = verification_sets.decode_image
    calls = {"n": 0}

    def decode(buf: bytes, where: str) -> object:
        calls["n"] += 1
        if calls["n"] > images:
            raise Crash(f"interrupted while decoding {where}")
        return real(buf, where)

    monkeypatch.setattr(verification_sets, "decode_image", decode)


def test_interrupted_first_conversion_leaves_no_final_file(synthetic_master: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "memfiles"
    _interrupt_decode_after(monkeypatch, 3)
    with pytest.raises(Crash):
        convert_bin(synthetic_master / "lfw.bin", out, name="lfw")
    assert list(out.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="no converted verification set 'lfw'"):
        load_memfile(out, "lfw")


def test_interrupted_reconversion_keeps_the_old_memfile(synthetic_master: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "memfiles"
    convert_bin(synthetic_master / "lfw.bin", out, name="lfw")
    before = _snapshot(out, "lfw")
    _interrupt_decode_after(monkeypatch, 3)
    with pytest.raises(Crash):  # a different source under the same name: a real re-conversion
        convert_bin(synthetic_master / "calfw.bin", out, name="lfw")
    assert _snapshot(out, "lfw") == before and _leftovers(out) == []
    assert json.loads(before["lfw.json"])["source"] == "lfw.bin"
    images, _, _ = load_memfile(out, "lfw")
    assert images.tobytes() == before["lfw.u8"]


def test_reconversion_interrupted_between_renames_never_mixes_sets(synthetic_master: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "memfiles"
    convert_bin(synthetic_master / "lfw.bin", out, name="lfw")
    real = verification_sets.publish
    calls = {"n": 0}

    def replace_once(tmp: Path, final: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash("power cut after the first rename")
        real(tmp, final)

    monkeypatch.setattr(verification_sets, "publish", replace_once)
    with pytest.raises(Crash):
        convert_bin(synthetic_master / "calfw.bin", out, name="lfw")
    # New images next to the old issame array must not pass for a converted set: it reads as not converted.
    with pytest.raises(FileNotFoundError):
        load_memfile(out, "lfw")
    assert _leftovers(out) == []
    monkeypatch.undo()
    convert_bin(synthetic_master / "calfw.bin", out, name="lfw")  # the next run converts again
    assert json.loads((out / "lfw.json").read_text())["source"] == "calfw.bin"


# ------------------------------------------------------------------------------------------------ signals
def _train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "--data_root", str(data.parent), "--train_data_path", data.name,
            "--val_data_path", "absent", "--arch", "ir_18", "--width", "0.125", "--batch_size", "8",
            "--k_nearest", "2", "--num_workers", "0", "--lr_milestones", "5000", "--output_dir", str(out), *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("OAML_EXPERIMENT_DIR", None)
    return env


def _wait_for(pattern: str, folder: Path, process: subprocess.Popen[str], timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        if process.poll() is not None:
            raise AssertionError(f"training exited early ({process.returncode}): {process.communicate()[1][-3000:]}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"no {pattern} under {folder} after {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_resumable_last_checkpoint(synthetic: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "runs"
    process = subprocess.Popen(_train_command(synthetic, out, "--epochs", "1000"), cwd=tmp_path, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # preview.png is written when the first batch starts; the signal is honoured when a batch ends.
        _wait_for("*/preview.png", out, process, timeout=60)
        time.sleep(1.0)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, (process.returncode, stderr[-3000:])  # 143 / 130, never 0
    assert "saved a resumable checkpoint" in stderr, stderr[-3000:]
    (last,) = out.glob("*/checkpoints/last.ckpt")
    summary = stdout
    assert f"interrupted by {signal.Signals(signum).name}" in summary and f"--resume_from_checkpoint {last}" in summary
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] >= 1 and checkpoint["optimizer_states"] and "oaml" in checkpoint
    run = last.parents[1]
    rows_before = (run / "metrics.csv").read_text().count("\n")
    epochs = checkpoint["epoch"] + 2  # the interrupted epoch plus one more
    # The seed's README form: the checkpoint and the data; the model settings come from the checkpoint.
    resumed = subprocess.run([sys.executable, str(ROOT / "main.py"), "--resume_from_checkpoint", str(last),
                              "--data_root", str(synthetic.parent), "--train_data_path", synthetic.name,
                              "--val_data_path", "absent", "--epochs", str(epochs)],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=90)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stderr, resumed.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [run.name]  # continued in the same run folder
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] == epochs - 1 and state["global_step"] > checkpoint["global_step"]
    assert (run / "metrics.csv").read_text().count("\n") > rows_before  # appended, not replaced
    assert "resuming in" in (run / "train.log").read_text()
