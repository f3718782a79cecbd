"""Run these tests single-threaded.

The tensors here are tiny, so extra threads buy nothing, and on a busy machine OpenMP threads that spin while
waiting for a core make tiny forward passes up to ~50x slower (0.2 s vs 15 s measured on 2 shared cores).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
