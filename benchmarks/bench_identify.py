"""Benchmark: 1:N gallery search (exact torch vs faiss) and QAConv re-ranking cost (SPEC §13.4).

Data: random unit 512-d embeddings stored as float16 (:class:`oaml.evaluation.gallery.Gallery`), two images per
identity (so the per-identity maximum is exercised), galleries of 10k and 100k images (``--quick``) and also 1M
(full mode: 1 GB of float16 embeddings; the faiss index adds a 2 GB float32 copy). Probes are random unit rows.

- **search latency** per probe batch (B = 1 and 64 probes, k = 10, ``per_identity="max"``): median wall seconds of
  :meth:`Gallery.search` with ``backend="exact"`` (blocked torch matmul, per-identity ``scatter_reduce`` maximum,
  running top-k) on the float16 gallery and on a float32 copy of it (no per-search conversion, twice the memory)
  and, when faiss is installed, ``backend="faiss"`` (``IndexFlatIP``; its one-off index build is not timed here but
  in the memory row). They run interleaved and must return the same identities. The fp32 and faiss rows have
  baseline = the exact fp16 time and ratio = exact fp16 / that row (> 1: faster than exact fp16).
- **memory**: the gallery's storage (analytic, N x 512 x 2 bytes) and the peak-RSS growth of one 64-probe search in
  a fresh process (``benchmarks._timing.peak_rss_growth``), exact against faiss (index build + search; ratio =
  faiss / exact).
- **re-rank cost per probe**: QAConv of each probe against N = 10 / 50 candidate maps (7 x 7, C = 64 at width 0.125
  and C = 512 at full width), random features with visibility maps, as :mod:`oaml.evaluation.rerank` runs it: two
  :meth:`QAConv.match_groups` calls (plain and mirrored views). Baseline: the same pairs through ``match_pairs``
  with each probe's maps repeated N times (ratio = baseline / ours). Timings interleave the two layouts.

Rows follow ``benchmarks/__main__.py`` (name, value, baseline, unit, ratio, notes); the notes name the CPU and the
thread counts. Run: ``python -m benchmarks.bench_identify [--quick]``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks._timing import MIB, cpu_note, interleaved_seconds, module_main, peak_rss_growth
from oaml.evaluation.gallery import Gallery
from oaml.evaluation.gallery_search import import_faiss
from oaml.models.qaconv import QAConv

__all__ = ["random_gallery", "run"]

DIM, K = 512, 10
IMAGES_PER_IDENTITY = 2
_GEN_ROWS = 1 << 17  # rows generated at a time (float32 scratch stays at 256 MiB)


def _have_faiss() -> bool:
    try:
        import_faiss()
    except ImportError:
        return False
    return True


def _note() -> str:
    """The CPU, its torch capability and the thread counts (torch, and faiss's OpenMP when installed)."""
    note = cpu_note()
    if _have_faiss():
        note += f", faiss {import_faiss().omp_get_max_threads()} OpenMP thread(s)"
    return note


def random_gallery(n: int, seed: int = 0) -> Gallery:
    """``n`` random unit 512-d float16 embeddings, ``IMAGES_PER_IDENTITY`` per identity."""
    gen = torch.Generator().manual_seed(seed)
    emb = np.empty((n, DIM), np.float16)
    for start in range(0, n, _GEN_ROWS):
        block = torch.randn(min(_GEN_ROWS, n - start), DIM, generator=gen)
        emb[start:start + block.shape[0]] = torch.nn.functional.normalize(block, dim=1).numpy()
    names = [f"id{k:07d}" for k in np.arange(n) // IMAGES_PER_IDENTITY]
    return Gallery.from_arrays(emb, names, dtype="float16")


def _probes(batch: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(batch, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def _row(name: str, value: float, baseline: float | None, batch: int, notes: str) -> dict[str, Any]:
    return {"name": name, "value": value, "baseline": baseline, "unit": "s",
            "ratio": None if baseline is None else baseline / value,
            "notes": f"{1e3 * value / batch:.2f} ms/probe; {notes}"}


def _search_rows(gallery: Gallery, batches: tuple[int, ...], repeats: int, note: str) -> list[dict[str, Any]]:
    """Exact search of the float16 gallery, of its float32 copy, and faiss; interleaved, checked for agreement."""
    rows, faiss_ok = [], _have_faiss()
    size = _label(gallery.num_images)
    wide = Gallery.from_arrays(gallery.embeddings.astype(np.float32), gallery.identities(), dtype="float32")
    for batch in batches:
        probes = _probes(batch)
        fns: dict[str, Callable[[], Any]] = {"exact": lambda: gallery.search(probes, k=K),
                                             "exact_fp32": lambda: wide.search(probes, k=K)}
        if faiss_ok:
            fns["faiss"] = lambda: gallery.search(probes, k=K, backend="faiss")
        found = {name: fn() for name, fn in fns.items()}  # also builds the faiss index before timing
        if any(not np.array_equal(found["exact"].indices, other.indices) for other in found.values()):
            raise RuntimeError(f"the search backends disagree (N={size}, B={batch})")
        times = {name: float(np.median(t)) for name, t in interleaved_seconds(fns, repeats).items()}
        rows.append(_row(f"search exact fp16 (N={size}, B={batch})", times["exact"], None, batch,
                         note if faiss_ok else "faiss not installed; " + note))
        rows.append(_row(f"search exact fp32 (N={size}, B={batch})", times["exact_fp32"], times["exact"], batch,
                         "a float32 gallery (twice the memory); baseline = exact fp16; same top-10"))
        if faiss_ok:
            rows.append(_row(f"search faiss IndexFlatIP (N={size}, B={batch})", times["faiss"], times["exact"], batch,
                             f"baseline = exact fp16; same top-{K}"))
    return rows


def _memory_setup(n: int, backend: str) -> Callable[[], Any]:
    """Child-process workload of :func:`peak_rss_growth`: one 64-probe search (faiss: index build included)."""
    gallery = random_gallery(n)
    probes = _probes(64)
    random_gallery(1000).search(probes[:2], k=K, backend=backend)  # load kernels/libraries before the reading
    return lambda: gallery.search(probes, k=K, backend=backend)


def _memory_rows(n: int) -> list[dict[str, Any]]:
    size = _label(n)
    rows = [{"name": f"gallery storage fp16 (N={size})", "value": n * DIM * 2 / MIB, "baseline": None, "unit": "MiB",
             "ratio": None, "notes": "embeddings only (N x 512 x 2 bytes); float32 would be twice that"}]
    exact = peak_rss_growth(_memory_setup, n, "exact").peak_bytes
    row = {"name": f"search peak memory exact (N={size}, B=64)", "value": max(exact, 1) / MIB, "baseline": None,
           "unit": "MiB", "ratio": None, "notes": "peak RSS growth in a fresh process"}
    if _have_faiss():
        fast = peak_rss_growth(_memory_setup, n, "faiss").peak_bytes
        row.update(baseline=fast / MIB, ratio=fast / max(exact, 1),
                   notes="peak RSS growth in a fresh process; baseline = faiss index build + search")
    else:
        row["notes"] += "; faiss not installed"
    return rows + [row]


def _rerank_rows(batch: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for width, channels in (("0.125", 64), ("1.0", 512)):
        torch.manual_seed(0)
        q = QAConv(channels, 7, 7).eval()
        for n in (10, 50):
            probe = [torch.randn(batch, channels, 7, 7) for _ in range(2)]
            gal = [torch.randn(batch, n, channels, 7, 7) for _ in range(2)]
            p_occ, g_occ = torch.rand(batch, 1, 7, 7), torch.rand(batch, n, 1, 7, 7)

            def groups() -> None:
                with torch.inference_mode():
                    for v in range(2):
                        q.match_groups(probe[v], gal[v], p_occ, g_occ)

            def pairs() -> None:
                with torch.inference_mode():
                    for v in range(2):
                        q.match_pairs(probe[v].repeat_interleave(n, 0), gal[v].reshape(-1, channels, 7, 7),
                                      p_occ.repeat_interleave(n, 0), g_occ.reshape(-1, 1, 7, 7))

            with torch.inference_mode():
                ours = q.match_groups(probe[0], gal[0], p_occ, g_occ).reshape(-1)
                theirs = q.match_pairs(probe[0].repeat_interleave(n, 0), gal[0].reshape(-1, channels, 7, 7),
                                       p_occ.repeat_interleave(n, 0), g_occ.reshape(-1, 1, 7, 7))
            if not torch.allclose(ours, theirs, atol=1e-4):
                raise RuntimeError("match_groups and match_pairs disagree")
            times = interleaved_seconds({"groups": groups, "pairs": pairs}, repeats)
            t_ours, t_base = (float(np.median(times[key])) / batch for key in ("groups", "pairs"))
            rows.append({"name": f"rerank QAConv per probe (N={n}, width {width}, C={channels})", "value": t_ours,
                         "baseline": t_base, "unit": "s", "ratio": t_base / t_ours,
                         "notes": f"B={batch} probes, 2 views, visibility maps; baseline = match_pairs on "
                                  f"repeated probes"})
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run the identification benchmark.

    Args:
        quick: galleries of 10k and 100k images, 3 repeats (12 for re-ranking), memory at 100k, re-rank over 8
            probes (< 1 minute here); otherwise also 1M images, 5 repeats (20), memory at 100k and 1M, 32 probes.

    Returns:
        Rows with name, value, baseline, unit, ratio and notes.

    Raises:
        RuntimeError: If the exact and faiss searches, or the two QAConv layouts, disagree.
    """
    note = _note()
    sizes, repeats = ((10_000, 100_000), 3) if quick else ((10_000, 100_000, 1_000_000), 5)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        rows += _search_rows(random_gallery(n), (1, 64), repeats, note)
    for n in (100_000,) if quick else (100_000, 1_000_000):
        rows += _memory_rows(n)
    rows += _rerank_rows(8 if quick else 32, 4 * repeats)  # milliseconds each: more repeats against load noise
    rows[-1]["notes"] += f"; {note}"
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print one line per row."""
    return module_main(run, __doc__.splitlines()[0], "10k and 100k galleries only, fewer repeats", argv)


if __name__ == "__main__":
    sys.exit(main())
