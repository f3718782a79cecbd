"""Run a function on several gloo CPU processes (the distributed tests of the sharded head and class memory).

``run_workers(fn, 2, tmp_path, *args)`` spawns two processes with ``torch.multiprocessing``, initialises a gloo
process group through a ``file://`` rendezvous in ``tmp_path`` (no port to pick), calls ``fn(rank, world_size,
*args)`` in each and returns the results in rank order (each saved with ``torch.save``, so tensors and
dicts of tensors come back). ``fn`` must be a module-level function, as spawn pickles it by name. A worker that
raises makes ``run_workers`` raise; a collective that waits longer than ``timeout_s`` fails instead of hanging.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["run_workers"]


def _entry(rank: int, fn: Callable[..., Any], world_size: int, folder: str, args: tuple[Any, ...],
           timeout_s: float) -> None:
    torch.set_num_threads(1)  # the tensors are tiny; extra threads only fight over the shared cores
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    try:
        result = fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(folder) / f"rank{rank}.pt")


def run_workers(fn: Callable[..., Any], world_size: int, tmp_path: Path, *args: Any,
                timeout_s: float = 120.0) -> list[Any]:
    """``[fn(0, world_size, *args), ..., fn(world_size - 1, world_size, *args)]``, each on its own process."""
    folder = tmp_path / f"gloo_{fn.__name__}"
    folder.mkdir(parents=True)
    mp.start_processes(_entry, args=(fn, world_size, str(folder), args, timeout_s), nprocs=world_size, join=True,
                       start_method="spawn")
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
