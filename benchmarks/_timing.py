"""Shared timing and memory helpers of the benchmark modules: medians, interleaved runs, peak-memory children.

Every comparison in ``benchmarks/`` follows the same rules, implemented here once:

- **warm-up** first (allocator, lazily initialised kernels, caches), never timed;
- **interleaving**: the implementations being compared run alternately, once each per repeat, so that a
  change in machine load (the benchmark machines are shared) hits both alike;
- **medians** of the per-repeat times, and ratios of those medians;
- **peak memory** measured in a fresh ``spawn`` process (Linux): the growth of the peak RSS over one call,
  with glibc returning freed blocks to the system at once, so the peak reflects the tensors alive together
  rather than allocator fragmentation or what the parent process happened to hold.
"""

from __future__ import annotations

import argparse

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, NamedTuple

import torch

__all__ = ["MIB", "PeakMemory", "cpu_note", "interleaved_seconds", "median_seconds", "module_main", "peak_rss_growth",
           "ratio_of_medians", "thread_note", "time_once"]

MIB = float(2**20)
_MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def time_once(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_once(fn) for _ in range(max(1, repeats)))


def interleaved_seconds(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1
                        ) -> dict[str, list[float]]:
    """Per-repeat wall seconds of each function, run alternately (a, b, a, b, ...) after a warm-up.

    Args:
        fns: name -> zero-argument callable; all run once per repeat, in the mapping's order.
        repeats: timed rounds (at least 1).
        warmup: untimed rounds before them.

    Returns:
        name -> list of ``repeats`` seconds.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            times[name].append(time_once(fn))
    return times


def ratio_of_medians(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """``median(numerator) / median(denominator)``."""
    return statistics.median(numerator) / statistics.median(denominator)


def thread_note() -> str:
    """``"N torch threads"`` plus OMP_NUM_THREADS when set, for the notes of timed rows."""
    omp = os.environ.get("OMP_NUM_THREADS")
    return f"{torch.get_num_threads()} torch thread(s)" + (f", OMP_NUM_THREADS={omp}" if omp else "")


def cpu_note() -> str:
    """``"<CPU model> (torch CPU capability <AVX2...>); <thread_note()>"``, for the notes of timed rows."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), name)
    except OSError:  # not Linux
        pass
    return f"{name} (torch CPU capability {torch.backends.cpu.get_cpu_capability()}); {thread_note()}"


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


class PeakMemory(NamedTuple):
    """What :func:`peak_rss_growth` measured: peak-RSS growth in bytes and the call's wall seconds."""

    peak_bytes: int
    seconds: float


def _peak_growth_child(setup: Callable[..., Callable[[], Any]], args: tuple[Any, ...],
                       threads: int) -> tuple[int, float]:
    """Runs in the child: build the workload, reset the high-water mark, run it, return growth and seconds."""
    torch.set_num_threads(threads)
    run = setup(*args)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _rss_bytes("VmRSS")
    seconds = time_once(run)
    return _rss_bytes("VmHWM") - before, seconds


def peak_rss_growth(setup: Callable[..., Callable[[], Any]], *args: Any) -> PeakMemory:
    """Peak-RSS growth of one workload, and its wall time, measured in a fresh process (Linux only).

    Args:
        setup: a module-level (picklable) function; called in the child with ``args``, it prepares the inputs
            (and should run a tiny warm-up so that kernels and libraries are loaded) and returns the
            zero-argument callable whose peak memory is measured.
        args: picklable arguments of ``setup``.

    Returns:
        ``PeakMemory(peak_bytes, seconds)``: VmHWM after the call minus VmRSS before it, and the call's wall time
        (one cold run in a fresh process, with the child's thread count set to the parent's).
    """
    context = multiprocessing.get_context("spawn")
    saved = os.environ.get(_MMAP_ENV)
    os.environ[_MMAP_ENV] = "65536"  # inherited by the child: freed blocks go back to the system at once
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            growth, seconds = pool.submit(_peak_growth_child, setup, args, torch.get_num_threads()).result()
        return PeakMemory(int(growth), float(seconds))
    finally:
        if saved is None:
            del os.environ[_MMAP_ENV]
        else:
            os.environ[_MMAP_ENV] = saved


def module_main(run: Callable[..., list[dict[str, Any]]], description: str, quick_help: str,
                argv: list[str] | None = None) -> int:
    """The ``python -m benchmarks.<module> [--quick]`` entry point: run and print one line per row."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    for row in run(quick=parser.parse_args(argv).quick):
        baseline = "-" if row["baseline"] is None else f"{row['baseline']:,.3f}"
        ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}x"
        print(f"{row['name']}: {row['value']:,.3f} {row['unit']} | baseline {baseline} | {ratio} | "
              f"{row.get('notes', '')}")
    return 0
