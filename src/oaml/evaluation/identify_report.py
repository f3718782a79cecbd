"""Writers of the identification outputs: ``identify.csv``, ``cmc.png``, ``det.png`` and the console table
(SPEC §13.4).

``identify.csv`` has one row per (probe, rank) for the top k: ``probe`` (the image path), ``rank`` (1 = best),
``identity`` and ``score``, the cosine of the global search. With re-ranking it has two more columns, and the first
N ranks are the re-ranked ones: ``score`` is then the fused score, ``global_score`` the search's cosine and
``qaconv_score`` the QAConv score; ranks N + 1 .. k keep the search's order, with ``global_score`` only (``score``
and ``qaconv_score`` empty: they were not re-scored). Scores have 7 significant digits. Plots draw on a private Agg
canvas (:func:`oaml.evaluation.report.new_figure`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oaml.evaluation.gallery_search import SearchResult
from oaml.evaluation.identification import CmcResult, IdentificationResult, OpenSetResult
from oaml.evaluation.report import new_figure, save_figure
from oaml.evaluation.rerank import RerankResult, ranked_identities
from oaml.fileio import atomic_write

__all__ = ["console_rows", "plot_cmc", "plot_det", "write_identify_csv", "write_plots"]


def _fmt(value: float) -> str:
    return f"{float(value):.7g}"


def write_identify_csv(path: str | Path, probe_paths: Sequence[str], search: SearchResult,
                       reranked: RerankResult | None = None) -> Path:
    """Write ``identify.csv`` atomically (columns in the module docstring).

    Raises:
        ValueError: If ``probe_paths`` and the search's rows differ in number.
    """
    if len(probe_paths) != search.num_probes:
        raise ValueError(f"{len(probe_paths)} probe paths but {search.num_probes} result rows")
    names = np.asarray(search.identity_names, dtype=object)
    indices = search.indices if reranked is None else ranked_identities(search, reranked)
    head = 0 if reranked is None else reranked.indices.shape[1]
    path = Path(path)
    with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["probe", "rank", "identity", "score"] + ([] if reranked is None else
                                                                   ["global_score", "qaconv_score"]))
        for p, probe in enumerate(probe_paths):
            for j in range(indices.shape[1]):
                if reranked is None:
                    extra = [_fmt(search.scores[p, j])]
                elif j < head:
                    extra = [_fmt(reranked.scores[p, j]), _fmt(reranked.global_scores[p, j]),
                             _fmt(reranked.qaconv_scores[p, j])]
                else:
                    extra = ["", _fmt(search.scores[p, j]), ""]
                writer.writerow([probe, j + 1, names[indices[p, j]], *extra])
    return path


def plot_cmc(curves: Mapping[str, CmcResult], path: str | Path, title: str = "CMC") -> Path:
    """Rank-k accuracy against k, one line per method.

    Raises:
        ValueError: If ``curves`` is empty.
    """
    if not curves:
        raise ValueError("curves is empty")
    from matplotlib.ticker import MaxNLocator

    fig = new_figure()
    ax = fig.subplots()
    for name, cmc in curves.items():
        ranks = np.arange(1, cmc.max_rank + 1)
        ax.plot(ranks, cmc.rates, marker="o" if cmc.max_rank <= 20 else None, markersize=3,
                label=f"{name} (rank-1 {100 * cmc.rates[0]:.2f}%, n={cmc.n_probes})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rank k")
    ax.set_ylabel("identification rate (rank-k)")
    ax.set_ylim(0.0, 1.01)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, path)


def plot_det(curves: Mapping[str, OpenSetResult], path: str | Path, title: str = "DET (open set)") -> Path:
    """FNIR against FPIR (log axis), one line per method; FPIR = 0 is drawn at 1 / n_non_enrolled.

    Raises:
        ValueError: If ``curves`` is empty.
    """
    if not curves:
        raise ValueError("curves is empty")
    fig = new_figure()
    ax = fig.subplots()
    floor = 1.0
    for name, res in curves.items():
        lowest = 1.0 / res.n_non_enrolled
        floor = min(floor, lowest)
        ax.plot(np.maximum(res.fpir, lowest), res.fnir, drawstyle="steps-post",
                label=f"{name} (enrolled {res.n_enrolled}, non-enrolled {res.n_non_enrolled})")
    ax.set_xscale("log")
    ax.set_xlim(min(floor, 0.1), 1.0)  # fewer than 10 non-enrolled probes: still a readable axis
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false positive identification rate (FPIR)")
    ax.set_ylabel("false negative identification rate (FNIR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    return save_figure(fig, path)


def write_plots(metrics: Mapping[str, Mapping[str, IdentificationResult]], out: Path) -> dict[str, Path]:
    """``cmc.png`` and ``det.png`` in ``out``, one line per protocol and method (those with the metrics to draw)."""
    files: dict[str, Path] = {}
    flat = {f"{protocol} {method}": m for protocol, per in metrics.items() for method, m in per.items()}
    cmc = {k: m.closed_set for k, m in flat.items() if isinstance(m.closed_set, CmcResult)}
    det = {k: m.open_set for k, m in flat.items() if isinstance(m.open_set, OpenSetResult)}
    if cmc:
        files["cmc"] = plot_cmc(cmc, out / "cmc.png", title="CMC (enrolled probes)")
    if det:
        files["det"] = plot_det(det, out / "det.png")
    return files


def _percent(entry: Any) -> str:
    return f"{100 * entry:.2f}" if isinstance(entry, (int, float)) else "-"


def console_rows(results: Mapping[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """Rows of the console table of ``identify``'s ``results.json`` (in %): per protocol and method, rank-1, rank-5
    and DIR at each FPIR target ("-" where omitted); empty without metrics."""
    fpirs = [f"{f:g}" for f in results["settings"]["fpirs"]]
    headers = ["protocol", "method", "rank-1", "rank-5", *(f"DIR@FPIR={f}" for f in fpirs)]
    rows: list[list[Any]] = []
    for protocol, per in (results.get("metrics") or {}).items():
        for method, m in per.items():
            closed, opened = m["closed_set"], m["open_set"]
            points = opened.get("dir_at_fpir", {})
            rows.append([protocol, method, _percent(closed.get("rank_1")), _percent(closed.get("rank_5")),
                         *(_percent(points.get(f, {}).get("dir")) for f in fpirs)])
    return rows, headers
