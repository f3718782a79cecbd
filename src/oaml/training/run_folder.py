"""Experiment folders: ``{output_dir}/{prefix}_{MM-DD}_{n}`` with n the next free integer.

The predecessor sorted folder names as strings, so run 10 came before run 9 and the numbering broke;
here the numbers are parsed as integers.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

__all__ = ["create_run_folder"]


def create_run_folder(output_dir: str | os.PathLike[str], prefix: str, date: _dt.date | None = None) -> Path:
    """Create and return the next experiment folder for ``prefix`` on ``date`` (today by default).

    The folder is created with ``mkdir(exist_ok=False)``, so two processes racing for the same number
    get different folders.
    """
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}_{(date or _dt.date.today()).strftime('%m-%d')}"
    pattern = re.compile(re.escape(stem) + r"_(\d+)")
    taken = [int(m.group(1)) for p in root.iterdir() if (m := pattern.fullmatch(p.name))]
    number = max(taken, default=-1) + 1
    while True:
        candidate = root / f"{stem}_{number}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1
