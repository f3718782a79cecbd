"""Experiment folder numbering stays correct past 9 (the predecessor broke at 10)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from oaml.training.run_folder import create_run_folder


def test_numbering_counts_past_ten(tmp_path: Path) -> None:
    day = dt.date(2026, 3, 7)
    made = [create_run_folder(tmp_path, "run", day).name for _ in range(12)]
    assert made == [f"run_03-07_{n}" for n in range(12)]


def test_next_number_follows_the_largest_not_the_last_sorted(tmp_path: Path) -> None:
    day = dt.date(2026, 3, 7)
    for n in (2, 9, 10):
        (tmp_path / f"run_03-07_{n}").mkdir()
    (tmp_path / "run_03-07_x").mkdir()
    (tmp_path / "other_03-07_40").mkdir()
    assert create_run_folder(tmp_path, "run", day).name == "run_03-07_11"
    assert create_run_folder(tmp_path, "run", dt.date(2026, 3, 8)).name == "run_03-08_0"
