"""The one-way import rule of docs/architecture.md, checked on the source (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "oaml"
BASE = {"constants", "errors", "fileio", "devices", "_registry", "oaml"}  # "oaml": ``from oaml import __version__``
ALLOWED = {
    "models": BASE,
    "losses": BASE,
    "data": BASE,
    "config": BASE | {"models"},
    "evaluation": BASE | {"data", "models"},
    "training": BASE | {"config", "data", "models", "losses", "evaluation"},
    "tools": BASE | {"data", "models", "evaluation"},
    "study": BASE | {"config", "data", "models", "losses", "evaluation", "training"},
}
LIGHTNING_HOMES = {"training", "data/datamodule.py"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def _package(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return parts[0]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_layers_below(package: str) -> None:
    files = [SOURCE / f"{package}.py"] if (SOURCE / f"{package}.py").is_file() else sorted(
        (SOURCE / package).rglob("*.py"))
    wrong = []
    for path in files:
        if path.name == "__main__.py":  # entry points may call the CLI
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "oaml":
                continue
            target = parts[1] if len(parts) > 1 else "oaml"
            if target != package and target not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(SOURCE)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_lightning_only_in_training_and_the_datamodule() -> None:
    wrong = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        if any(relative == home or relative.startswith(home + "/") for home in LIGHTNING_HOMES):
            continue
        if any(name.split(".")[0] in ("lightning", "pytorch_lightning") for name in _imports(path)):
            wrong.append(relative)
    assert not wrong, f"Lightning imported outside training/ and data/datamodule.py: {wrong}"


def test_only_the_cli_reads_argv() -> None:
    """``__main__`` modules may only hand argv to the CLI's ``main``."""
    readers = [path for path in sorted(SOURCE.rglob("*.py")) if "sys.argv" in path.read_text(encoding="utf-8")]
    wrong = [path.relative_to(SOURCE).as_posix() for path in readers
             if not path.relative_to(SOURCE).as_posix().startswith("cli/")
             and not (path.name == "__main__.py" and "oaml.cli.main" in _imports(path))]
    assert not wrong, wrong
