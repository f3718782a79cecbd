"""Shared test helpers: the location of the real-face fixtures and a fixture that skips without them."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
"""``../shared/data`` next to the repository: real-face fixtures that are not part of the repository."""

SHARED_DATA_REASON = "../shared/data not found (real-face fixtures are not in the repo)"


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder; skips the test when it is absent. Mark such tests ``@pytest.mark.shared_data``."""
    if not SHARED_DATA.is_dir():
        pytest.skip(SHARED_DATA_REASON)
    return SHARED_DATA
