"""Shared test helpers: single-threaded torch, the real-face fixtures and a fixture that skips without them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
"""``../shared/data`` next to the repository: real-face fixtures that are not part of the repository."""

SHARED_DATA_REASON = "../shared/data not found (real-face fixtures are not in the repo)"


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder; skips the test when it is absent. Mark such tests ``@pytest.mark.shared_data``."""
    if not SHARED_DATA.is_dir():
        pytest.skip(SHARED_DATA_REASON)
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Run every test with one torch thread.

    The tensors in the tests are tiny, so extra threads buy nothing, and on a busy machine OpenMP threads that
    spin while waiting for a core make tiny forward passes up to ~50x slower (0.2 s vs 15 s measured on 2
    shared cores).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
