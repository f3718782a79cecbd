"""Benchmark: ``oaml occlude`` of a 6,000-pair ``.bin`` on one core (target: under 60 s, issue 17).

Data: LFW View 2 (``../shared/data/lfw_view2_arcface112``: 6,000 pairs of aligned real faces, JPEG) turned into a
``.bin`` once with :func:`oaml.tools.convert.pairs_to_bin` and cached under ``$OAML_CACHE/bench``; without the
shared data, the 600-pair synthetic ``lfw.bin`` of :func:`oaml.data.synthetic.make_synthetic` repeated ten times
(the images repeat, their occluders do not: each is seeded by its index).

Each row is one complete :func:`oaml.tools.occlude.occlude_set` (read and decode, occlude, encode PNG, write the
``.bin``, ``occlusion.npz`` with its 12,000 maps, SHA-256 of every output, ``manifest.json``) into a fresh folder,
with the process pinned to one CPU core (``os.sched_setaffinity`` where the platform has it) and OpenCV and torch
on one thread. Protocols: the medical mask on the second image (the cheapest), sunglasses on the second image,
and the study's complementary ``mask+sunglasses`` (12,000 occluded images). Value = wall time; the notes also give
the process's CPU time, which is what one free core would take when other processes share it. Baseline = the
60 s target; ratio = target / time (> 1: within the target). The CPU model and torch's CPU capability are printed
with the figures.

Run: ``python -m benchmarks --only bench_occlude [--quick]``.
"""

from __future__ import annotations

import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import torch

from benchmarks._timing import module_main, time_once
from benchmarks.bench_validation import bench_cache_dir
from oaml.data.synthetic import make_synthetic
from oaml.data.verification_sets import load_bin
from oaml.tools.convert import pairs_to_bin
from oaml.tools.occlude import occlude_set

__all__ = ["cpu_description", "occlude_source", "run"]

PAIRS = 6000
TARGET_S = 60.0
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lfw_view2_arcface112"
PROTOCOLS = ("mask", "sunglasses", "mask+sunglasses")


def cpu_description() -> str:
    """The CPU model (``/proc/cpuinfo``, else ``platform.processor()``) and torch's CPU capability."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def occlude_source() -> tuple[Path, str]:
    """A cached 6,000-pair ``.bin`` and what it holds."""
    cache = bench_cache_dir()
    if SHARED.is_dir():
        path = cache / "lfw_view2.bin"
        if not path.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            pairs_to_bin(SHARED, SHARED / "pairs.txt", path)
        return path, "LFW View 2, real aligned faces (JPEG)"
    path = cache / "synthetic_6000.bin"
    if not path.is_file():
        synthetic = cache / "occlude_synthetic"
        make_synthetic(synthetic, identities=20, images=2, seed=0, val_pairs=PAIRS // 10)
        images, issame = load_bin(synthetic / "lfw.bin")
        path.write_bytes(pickle.dumps((images * 10, [bool(s) for s in issame] * 10), protocol=4))
    return path, "synthetic faces (the 600-pair lfw.bin of make_synthetic, ten times)"


def _one_core() -> str:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity here)"


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Time ``occlude_set`` on 6,000 pairs for each protocol (with ``quick``, the complementary one only).

    Returns:
        Rows with name, value (seconds), baseline (the 60 s target), unit, ratio and notes.
    """
    source, what = occlude_source()
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pinned = _one_core()
    rows = []
    try:
        for protocol in PROTOCOLS[-1:] if quick else PROTOCOLS:
            with tempfile.TemporaryDirectory(prefix="oaml_bench_occlude_") as tmp:
                cpu = time.process_time()
                seconds = time_once(lambda: occlude_set(source, Path(tmp) / "out", protocol, progress=False))
                cpu = time.process_time() - cpu
            rows.append({"name": f"oaml occlude {PAIRS:,} pairs, {protocol}", "value": seconds,
                         "baseline": TARGET_S, "unit": "s", "ratio": TARGET_S / seconds,
                         "notes": f"{what}; one core ({pinned}), {cpu:.1f} s of CPU time (wall time includes "
                                  f"waiting for a shared core); {cpu_description()}"})
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark rows."""
    return module_main(run, __doc__.splitlines()[0], "the complementary protocol only", argv)


if __name__ == "__main__":
    sys.exit(main())
