"""Untrusted files that try to run code are refused, run nothing, and the error names the file.

Every crafted file carries an object whose ``__reduce__`` runs ``os.system("touch SIDE")`` or
``builtins.exec(...)``; each test asserts oaml's own exception type, the file name in its message, and that the
side-effect file never appears. The last tests audit the source: every ``torch.load`` passes
``weights_only=True`` and nothing but ``oaml.data.safe_pickle`` unpickles.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import EXPLOITS, ROOT, tiny_config

import oaml
from oaml.cli.main import main
from oaml.data.verification_sets import convert_bin, load_bin
from oaml.errors import CheckpointError, UnsafePickleError
from oaml.models import load_backbone
from oaml.models.checkpoint import read_checkpoint
from oaml.training.checkpoint_io import AtomicCheckpointIO
from oaml.training.run import run_training

JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")  # a JPEG envelope; never decoded here


@pytest.fixture(params=sorted(EXPLOITS))
def exploit(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[object, Path]:
    marker = tmp_path / "SIDE"
    return EXPLOITS[request.param](marker), marker


# ---------------------------------------------------------------------------------------------------- .bin files
BIN_LAYOUTS = {
    "top-level, protocol 0": lambda evil: pickle.dumps(evil, protocol=0),
    "hidden among images, protocol 2": lambda evil: pickle.dumps(([JPEG, JPEG, evil, JPEG], [True, False]), 2),
    "as the issame list, protocol 4": lambda evil: pickle.dumps(([JPEG, JPEG], evil), protocol=4),
}


@pytest.fixture(params=sorted(BIN_LAYOUTS))
def evil_bin(request: pytest.FixtureRequest, exploit: tuple[object, Path], tmp_path: Path) -> tuple[Path, Path]:
    evil, marker = exploit
    path = tmp_path / "lfw.bin"
    path.write_bytes(BIN_LAYOUTS[request.param](evil))
    return path, marker


def test_load_bin_refuses_code(evil_bin: tuple[Path, Path]) -> None:
    path, marker = evil_bin
    with pytest.raises(UnsafePickleError, match="not allowed") as info:
        load_bin(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_convert_bin_refuses_code_and_writes_nothing(evil_bin: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = evil_bin
    out = tmp_path / "memfiles"
    with pytest.raises(UnsafePickleError) as info:
        convert_bin(path, out)
    assert str(path) in str(info.value)
    assert not marker.exists()
    assert not out.exists() or not any(out.iterdir())


def test_oaml_eval_on_a_malicious_bin_exits_2(evil_bin: tuple[Path, Path], tiny_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = evil_bin
    out = tmp_path / "results"
    code = main(["eval", "--model-path", str(tiny_model), "--data-path", str(path), "--output-dir", str(out),
                 "--num-workers", "0", "--no-progress", "--no-plots"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not allowed" in err
    assert not marker.exists()
    assert not (out / "results.json").exists()


# ---------------------------------------------------------------------------------------------- checkpoints
def _save_evil_checkpoint(evil: object, path: Path, writer: str) -> None:
    if writer == "torch.save":  # a normal-looking checkpoint with one poisoned entry
        state = {"model.input_layer.0.weight": torch.zeros(1)}
        torch.save({"state_dict": state, "hyper_parameters": {"callback": evil}}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": evil}, protocol=2))


@pytest.fixture(params=["torch.save", "pickle.dumps"])
def evil_ckpt(request: pytest.FixtureRequest, exploit: tuple[object, Path], tmp_path: Path) -> tuple[Path, Path]:
    evil, marker = exploit
    path = tmp_path / "evil.ckpt"
    _save_evil_checkpoint(evil, path, request.param)
    return path, marker


def _assert_refused(info: pytest.ExceptionInfo[BaseException], path: Path, marker: Path) -> None:
    assert isinstance(info.value, CheckpointError), repr(info.value)
    assert str(path) in str(info.value) and "unsafe unpickling" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["read_checkpoint", "AtomicCheckpointIO.load_checkpoint", "oaml.load_model",
                                    "load_backbone"])
def test_checkpoint_loaders_refuse_code(evil_ckpt: tuple[Path, Path], loader: str) -> None:
    path, marker = evil_ckpt
    load = {"read_checkpoint": read_checkpoint, "oaml.load_model": oaml.load_model, "load_backbone": load_backbone,
            "AtomicCheckpointIO.load_checkpoint": AtomicCheckpointIO().load_checkpoint}[loader]
    with pytest.raises(CheckpointError) as info:
        load(path)
    _assert_refused(info, path, marker)


@pytest.mark.parametrize("flag", ["resume_from_checkpoint", "start_from_model_statedict"])
def test_training_refuses_a_malicious_checkpoint(evil_ckpt: tuple[Path, Path], synthetic: Path, tmp_path: Path,
                                                 flag: str) -> None:
    # resume goes through Lightning's Trainer.fit(ckpt_path=...) and AtomicCheckpointIO.load_checkpoint.
    path, marker = evil_ckpt
    config = tiny_config(synthetic.parent, synthetic.name, tmp_path / "runs", **{flag: str(path)})
    with pytest.raises(CheckpointError) as info:
        run_training(config)
    _assert_refused(info, path, marker)


def test_cli_train_start_from_malicious_statedict_exits_2(synthetic: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "SIDE"
    path = tmp_path / "released.ckpt"
    _save_evil_checkpoint(EXPLOITS["os.system"](marker), path, "torch.save")
    code = main(["train", "--data_root", str(synthetic.parent), "--train_data_path", synthetic.name,
                 "--val_data_path", "absent", "--arch", "ir_18", "--width", "0.125", "--batch_size", "8",
                 "--num_workers", "0", "--output_dir", str(tmp_path / "runs"),
                 "--start_from_model_statedict", str(path)])
    assert code == 2
    assert str(path) in capsys.readouterr().err
    assert not marker.exists()


def test_truncated_and_foreign_checkpoints_raise_checkpoint_error(tiny_model: Path, tmp_path: Path) -> None:
    data = tiny_model.read_bytes()
    for name, content in (("empty", b""), ("truncated", data[: len(data) // 2]), ("text", b"hello world\n")):
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=str(path)):
            AtomicCheckpointIO().load_checkpoint(path)


# ---------------------------------------------------------------------------------------------- source audit
def _python_sources() -> list[Path]:
    files = sorted((ROOT / "src").rglob("*.py"))
    files += sorted(p for folder in ("scripts", "benchmarks") for p in (ROOT / folder).rglob("*.py"))
    return files + sorted(ROOT.glob("*.py"))


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(_dotted(node.func), node) for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else "<expression>"
    return None


def _torch_aliases(path: Path) -> set[str]:
    """Names under which ``path`` imports torch (``import torch as th``), so ``th.load`` is audited too."""
    names = {"torch"}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.asname for a in node.names if a.name == "torch" and a.asname}
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            assert all(a.name != "load" for a in node.names), f"{path}: import torch.load by its dotted name"
    return names


def test_every_torch_load_passes_weights_only_true() -> None:
    # An AST walk rather than a text grep: it sees calls split over lines and ignores docstrings.
    seen, bad = 0, []
    for path in _python_sources():
        loads = {f"{alias}.load" for alias in _torch_aliases(path)} | {"torch.serialization.load"}
        for name, call in _calls(path):
            if name in loads:
                seen += 1
                if _keyword(call, "weights_only") is not True:
                    bad.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert seen >= 1, "the audit found no torch.load call at all; did the source move?"
    assert not bad, f"torch.load without weights_only=True: {bad}"


UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.load",
              "dill.load", "dill.loads", "joblib.load", "pd.read_pickle", "pandas.read_pickle", "shelve.open"}


def test_nothing_but_safe_pickle_unpickles() -> None:
    safe = ROOT / "src" / "oaml" / "data" / "safe_pickle.py"
    bad = []
    for path in _python_sources():
        for name, call in _calls(path):
            if path != safe and name in UNPICKLERS:
                bad.append(f"{path.relative_to(ROOT)}:{call.lineno} {name}")
            if name.endswith(("np.load", "numpy.load")) and _keyword(call, "allow_pickle") not in (None, False):
                bad.append(f"{path.relative_to(ROOT)}:{call.lineno} {name}(allow_pickle=...)")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if path != safe and isinstance(node, ast.ClassDef):
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} subclasses {_dotted(b)}" for b in node.bases
                        if _dotted(b).endswith("Unpickler")]
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "dill") and path != safe:
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {a.name}"
                        for a in node.names if a.name.startswith(("load", "Unpickler"))]
    assert not bad, f"unpickling outside oaml.data.safe_pickle: {bad}"


@pytest.mark.parametrize("content, expected", [
    (bytes(range(7, 256)) * 20, "is not a torch checkpoint (it starts with the bytes 07 08 09 0a"),
    (b"", "is empty"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert expected in message and str(path) in message
    assert "unsafe" not in message and "weights_only" not in message


def test_random_pickle_bytes_are_damaged_not_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x02" + bytes(range(185, 256)) * 10)  # a pickle header, then garbage opcodes
    with pytest.raises(CheckpointError, match="is damaged") as info:
        read_checkpoint(path)
    assert "unsafe" not in str(info.value) and "weights_only" not in str(info.value)


def test_a_truncated_checkpoint_is_named_truncated(tmp_path: Path) -> None:
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, whole)
    path = tmp_path / "model.ckpt"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged") as info:
        read_checkpoint(path)
    assert "weights_only" not in str(info.value)


def test_cli_eval_on_random_bytes_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "random.ckpt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert main(["eval", "--model-path", str(path), "--data-path", str(tmp_path), "--output-dir",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a torch checkpoint" in err[0] and "weights_only" not in err[0]
