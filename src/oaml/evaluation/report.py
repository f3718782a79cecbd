"""Report writers for verification results: ROC plots, score histograms, Markdown and console tables, JSON.

SPEC §9 (standalone evaluation): "Write score histograms and ROC plots, plus machine-readable results."
matplotlib is imported inside the plotting functions, which draw on a private Agg canvas (no pyplot, so no
display is needed and the caller's backend is left alone); importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oaml.evaluation.verification import DEFAULT_FARS, KFoldResult, Omitted, RocResult, TarPoint, tar_at_far
from oaml.fileio import atomic_write

__all__ = ["console_table", "markdown_report", "new_figure", "plot_roc", "plot_score_histogram", "save_figure",
           "to_jsonable", "write_json"]

logger = logging.getLogger(__name__)


def new_figure(size: tuple[float, float] = (6, 4.5)) -> Any:
    """A matplotlib Figure on its own Agg canvas: no pyplot, no global backend switch, works without a display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as ``path`` (parent folders created), cropped to its content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    logger.info("wrote %s", path)
    return path


def plot_roc(results_by_method: Mapping[str, RocResult], path: str | Path, title: str = "ROC") -> Path:
    """Plot every method's ROC on one axis: TAR against FAR on a log scale.

    FAR = 0 cannot be drawn on a log axis, so the curve starts at the smallest resolvable FAR, 1 / n_impostor.

    Args:
        results_by_method: Method name to its ROC.
        path: Output image (PNG by extension); parent folders are created.
        title: Plot title.

    Returns:
        ``path``.

    Raises:
        ValueError: If ``results_by_method`` is empty.
    """
    if not results_by_method:
        raise ValueError("results_by_method is empty")
    fig = new_figure()
    ax = fig.subplots()
    floor = 1.0
    for name, res in results_by_method.items():
        floor = min(floor, 1.0 / res.n_impostor)
        far = np.maximum(res.fpr, 1.0 / res.n_impostor)
        ax.plot(far, res.tpr, label=f"{name} (AUC {res.auc:.4f}, EER {100 * res.eer:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, path)


def plot_score_histogram(genuine: np.ndarray, impostor: np.ndarray, path: str | Path,
                         title: str = "Score distribution", bins: int = 100) -> Path:
    """Overlay normalised histograms of genuine and impostor scores.

    Args:
        genuine: Scores of genuine pairs.
        impostor: Scores of impostor pairs.
        path: Output image; parent folders are created.
        title: Plot title.
        bins: Number of shared bins.

    Returns:
        ``path``.

    Raises:
        ValueError: If either array is empty or non-finite.
    """
    arrays = []
    for name, x in (("genuine", genuine), ("impostor", impostor)):
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
        if arr.size == 0 or not np.isfinite(arr).all():
            raise ValueError(f"{name} must be non-empty and finite, got {arr.size} values")
        arrays.append(arr)
    edges = np.histogram_bin_edges(np.concatenate(arrays), bins=bins)
    fig = new_figure()
    ax = fig.subplots()
    for (name, color), arr in zip((("genuine", "tab:green"), ("impostor", "tab:red")), arrays):
        ax.hist(arr, bins=edges, density=True, alpha=0.5, color=color, label=f"{name} (n={arr.size})")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def _far_label(far: float) -> str:
    return f"TAR@FAR={far:.0e}".replace("e-0", "e-")


def markdown_report(roc_by_method: Mapping[str, RocResult], *, fars: Sequence[float] = DEFAULT_FARS,
                    accuracy_by_method: Mapping[str, KFoldResult] | None = None,
                    provenance: Mapping[str, Any] | None = None, title: str = "oaml verification report") -> str:
    """Markdown report: a VR@FAR table per method, pair counts, 10-fold accuracies and provenance.

    TAR, EER and accuracies are percentages with two decimals, AUC has four decimals. An omitted FAR point is
    shown as ``n/a`` with its reason in the notes.

    Args:
        roc_by_method: Method name to its ROC.
        fars: FAR targets (columns).
        accuracy_by_method: Optional method name to 10-fold result.
        provenance: Optional key/value facts: model, checkpoint, data, commit, date ...
        title: Level-1 heading.

    Returns:
        The Markdown text.
    """
    headers = ["method", "AUC", "EER %", *(_far_label(f) + " %" for f in fars)]
    lines = [f"# {title}", "", "## Verification rate at fixed FAR", "",
             "| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    notes: list[str] = []
    for name, res in roc_by_method.items():
        cells = [name, f"{res.auc:.4f}", f"{100 * res.eer:.2f}"]
        for far, point in tar_at_far(res, fars=fars).items():
            if isinstance(point, TarPoint):
                cells.append(f"{100 * point.tar:.2f}")
            else:
                cells.append("n/a")
                notes.append(f"- {name}, {_far_label(far)}: omitted, {point.reason}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Pair counts", "", "| method | genuine | impostor |", "|---|---:|---:|"]
    lines += [f"| {name} | {res.n_genuine} | {res.n_impostor} |" for name, res in roc_by_method.items()]
    if accuracy_by_method:
        lines += ["", "## 10-fold accuracy", "", "| method | accuracy % | std % |", "|---|---:|---:|"]
        lines += [f"| {name} | {100 * r.accuracy:.2f} | {100 * r.std:.2f} |"
                  for name, r in accuracy_by_method.items()]
    if notes:
        lines += ["", "## Notes", "", *notes]
    if provenance:
        lines += ["", "## Provenance", ""]
        lines += [f"- **{key}**: {value}" for key, value in provenance.items()]
    return "\n".join(lines) + "\n"


def _cell(value: Any, float_fmt: str) -> str:
    if isinstance(value, (float, np.floating)):
        return format(float(value), float_fmt)
    return str(value)


def console_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], float_fmt: str = ".4f") -> str:
    """Plain-text table with aligned columns: numbers right-aligned, text left-aligned.

    Raises:
        ValueError: If a row's length differs from ``headers``.
    """
    for k, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"rows[{k}] has {len(row)} cells, headers has {len(headers)}")
    text = [[_cell(v, float_fmt) for v in row] for row in rows]
    numeric = [all(isinstance(row[c], (int, float, np.number)) and not isinstance(row[c], bool) for row in rows)
               and bool(rows) for c in range(len(headers))]
    widths = [max([len(h)] + [len(r[c]) for r in text]) for c, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(s.rjust(w) if num else s.ljust(w) for s, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([fmt(list(headers)), "  ".join("-" * w for w in widths), *(fmt(r) for r in text)])


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` to JSON types: numpy scalars and arrays, dataclasses (via ``to_dict`` when present),
    paths, tuples and sets. Non-finite floats become the strings ``"inf"``, ``"-inf"`` and ``"nan"`` so the
    output stays strict JSON without hiding them; mapping keys become strings.
    """
    if isinstance(obj, (Omitted, TarPoint)) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return to_jsonable(obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (:func:`oaml.fileio.atomic_write`: the usual permissions, fsync).

    A reader never sees a half-written file, and a crash leaves the previous version intact.

    Returns:
        ``path``.

    Raises:
        TypeError: If ``obj`` holds a value :func:`to_jsonable` cannot convert (nothing is written).
    """
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    logger.info("wrote %s", path)
    return path
