"""Results, report and plots of the standalone evaluator (SPEC §9): ``results.json``, ``report.md``, PNGs, console.

Every number in ``report.md`` and in the console table is read from the same ROC objects and result dict that
``results.json`` holds, so the three always agree (the report rounds: TAR/EER/accuracy as percentages with two
decimals, AUC with four).
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from oaml.evaluation.report import markdown_report, plot_roc, plot_score_histogram, write_json
from oaml.evaluation.verification import KFoldResult, Omitted, RocResult, TarPoint, roc, tar_at_far
from oaml.fileio import atomic_write

if TYPE_CHECKING:
    from oaml.evaluation.api import FaceRecognizer
    from oaml.evaluation.eval_data import EvalSet

__all__ = ["ProtocolScores", "build_results", "calibration_rows", "console_rows", "far_key", "method_rocs",
           "write_plots", "write_report"]

SCORE_DESCRIPTIONS = {
    "adaface": "cosine similarity of flip-fused AdaFace embeddings normalise(n1 e1 + n2 e2)",
    "qaconv": "QAConv logit with both images' predicted visibility maps, averaged over originals and mirror images",
    "combined": "label-free z-score fusion of adaface and qaconv (see fusion)",
}
_SHOW_MISSING = 20  # missing images named in report.md
_MASK_SIDE = {"all_pairs": "probe i of every pair i < j (masked i vs clean j)",
              "pairs_file": "second image of every listed pair", "bin": "second image (2k + 1) of every pair"}
_SIDES = {"all_pairs": ("probe i", "gallery j"), "pairs_file": ("first image", "second image"),
          "bin": ("first image (2k)", "second image (2k + 1)")}
_CALIBRATION_KEYS = ("auc", "mae", "inside", "outside")


@dataclass
class ProtocolScores:
    """Scores of one protocol (clean or masked) over the same pairs.

    Attributes:
        scores: Method name to N similarity scores.
        issame: N ground-truth flags.
        ten_fold: Method name to its 10-fold result or the reason it is omitted (empty in all-pairs mode).
        fusion: Per-method mean/std/weight of the label-free fusion (empty without QAConv).
    """

    scores: dict[str, np.ndarray]
    issame: np.ndarray
    ten_fold: dict[str, KFoldResult | Omitted] = field(default_factory=dict)
    fusion: dict[str, dict[str, float]] = field(default_factory=dict)


def far_key(far: float) -> str:
    """JSON key of a FAR point: ``1e-01`` ... ``1e-06``."""
    return f"{far:.0e}"


def method_rocs(protocols: Mapping[str, ProtocolScores]) -> dict[str, RocResult]:
    """The ROC of every method of every protocol, in protocol order (clean first)."""
    return {name: roc(scores, p.issame, higher_is_same=True)
            for p in protocols.values() for name, scores in p.scores.items()}


def _score_stats(values: np.ndarray) -> dict[str, float | int]:
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max())}


def _method_entry(name: str, protocol: str, scores: np.ndarray, issame: np.ndarray, curve: RocResult,
                  ten_fold: KFoldResult | Omitted | None, fars: Sequence[float]) -> dict[str, Any]:
    points: dict[str, Any] = {}
    for far, point in tar_at_far(curve, fars=fars).items():
        points[far_key(far)] = ({"tar": point.tar, "threshold": point.threshold, "far_achieved": point.far_achieved}
                                if isinstance(point, TarPoint) else {"omitted": point.reason})
    entry = {"protocol": protocol, "score": SCORE_DESCRIPTIONS[name.split("_", 1)[0]],
             **curve.to_dict(), "tar_at_far": points,
             "genuine_scores": _score_stats(scores[issame]), "impostor_scores": _score_stats(scores[~issame])}
    if ten_fold is not None:
        entry["ten_fold"] = ten_fold.to_dict() if isinstance(ten_fold, KFoldResult) else {"omitted": ten_fold.reason}
    return entry


def _data_facts(data: EvalSet, issame: np.ndarray) -> dict[str, Any]:
    genuine = int(np.count_nonzero(issame))
    return {"mode": data.mode, "path": data.source, "pairs_path": data.pairs_path, "n_images": len(data.images),
            "n_identities": data.num_identities if data.mode != "bin" else None, "n_pairs": int(issame.shape[0]),
            "n_genuine": genuine,
            "n_impostor": int(issame.shape[0]) - genuine, "pairs_skipped": data.skipped_pairs,
            "missing_images": list(data.missing_images), "bad_images": list(data.bad_images)}


def _protocol_facts(name: str, mode: str, seed: int) -> dict[str, Any]:
    """Which image of every pair each occluder of protocol ``name`` covers (``mask+sunglasses``, ``sunglasses``)."""
    first, _, second = name.rpartition("+")
    if not first and mode == "all_pairs":
        first, second = second, ""  # all pairs: a one-sided occluder goes on probe i
    sides = _SIDES[mode]
    covered = [f"{occluder} on the {side}" for occluder, side in zip((first, second), sides)
               if occluder and occluder != "none"]
    return {"first": first or None, "second": second or None, "seed": seed, "side": "; ".join(covered),
            "occluder": "oaml.data.occluders.seeded_occlusion(image, name, seed, image index, landmarks)"}


def build_results(recognizer: FaceRecognizer, data: EvalSet, protocols: Mapping[str, ProtocolScores],
                  rocs: Mapping[str, RocResult], *, options: Mapping[str, Any], fars: Sequence[float],
                  started_at: _dt.datetime, timings: Mapping[str, float], resources: Mapping[str, float],
                  fusion_note: str, calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``results.json`` (plain types after :func:`oaml.evaluation.report.to_jsonable`).

    ``calibration`` maps a protocol (or ``occlusion.npz``) to the occlusion head's calibration (see
    :mod:`oaml.evaluation.protocols`).
    """
    from oaml import __version__

    info = recognizer.info
    issame = next(iter(protocols.values())).issame
    methods: dict[str, Any] = {}
    for protocol, result in protocols.items():
        for name, scores in result.scores.items():
            methods[name] = _method_entry(name, protocol, scores, result.issame, rocs[name],
                                          result.ten_fold.get(name) if data.mode != "all_pairs" else None, fars)
    unavailable = {} if info.has_qaconv else {"qaconv": info.qaconv_unavailable, "combined": info.qaconv_unavailable}
    results: dict[str, Any] = {
        "oaml_version": __version__, "date": started_at.isoformat(timespec="seconds"),
        "timings": dict(timings), "resources": dict(resources),
        "provenance": {"model": info.to_dict(), "data_path": data.source, "pairs_path": data.pairs_path,
                       "device": str(recognizer.device), "torch_version": torch.__version__,
                       "python": platform.python_version(), "options": dict(options)},
        "data": _data_facts(data, issame),
        "methods_unavailable": unavailable,
        "fusion": {"note": fusion_note, "weights": {"adaface": options["adaface_weight"],
                                                    "qaconv": options["qaconv_weight"]},
                   "label_free_parameters": {p: r.fusion for p, r in protocols.items() if r.fusion}},
        "masked_protocol": ({"side": _MASK_SIDE[data.mode], "seed": options["mask_seed"],
                             "mask": "oaml.data.masks.apply_medical_mask, rng = default_rng((seed, image index))"}
                            if "masked" in protocols else None),
        "occlusion_protocols": {key: _protocol_facts("mask" if key == "masked" else key, data.mode,
                                                     options["mask_seed"]) for key in protocols if key != "clean"},
        "occlusion_head": dict(calibration or {}),
        "methods": methods,
    }
    if data.mode == "all_pairs":
        results["ten_fold_note"] = "10-fold accuracy is reported for pair files and .bin input only"
    return results


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_plots(protocols: Mapping[str, ProtocolScores], rocs: Mapping[str, RocResult],
                output_dir: str | Path) -> dict[str, Path]:
    """Write ``roc.png`` (every method, log-FAR axis) and ``score_hist_<method>.png``."""
    out = Path(output_dir)
    files = {"roc": plot_roc(rocs, out / "roc.png", title="ROC")}
    for result in protocols.values():
        for name, scores in result.scores.items():
            bins = int(np.clip(np.sqrt(scores.size), 10, 100))  # each bar is a patch: keep small sets quick
            files[f"score_hist_{name}"] = plot_score_histogram(
                scores[result.issame], scores[~result.issame], out / f"score_hist_{_safe(name)}.png",
                title=f"{name} scores", bins=bins)
    return files


def _provenance_lines(results: Mapping[str, Any]) -> dict[str, Any]:
    model, data = results["provenance"]["model"], results["data"]
    lines = {
        "model": model["path"], "model sha256": model["sha256"],
        "checkpoint": f"{model['source_layout']} ({model['kind']})",
        "architecture": f"{model['arch']}, width {model['width']:g}, input {model['input_size']}, "
                        f"channel order {model['channel_order']}, occlusion {model['occlusion_method']}",
        "data": f"{data['path']} ({data['mode']})", "pairs file": data["pairs_path"] or "-",
        "images": data["n_images"],
        "identities": data["n_identities"] if data["n_identities"] is not None else "unknown (.bin input)",
        "pairs": f"{data['n_pairs']} ({data['n_genuine']} genuine, {data['n_impostor']} impostor)",
        "pairs skipped (missing or unreadable images)": data["pairs_skipped"],
        "oaml version": results["oaml_version"], "date": results["date"],
        "device": results["provenance"]["device"], "wall time (s)": f"{results['timings']['wall_time_s']:.1f}",
    }
    return lines


def _notes(results: Mapping[str, Any]) -> list[str]:
    notes = ["", "## Evaluation notes", ""]
    for method, reason in results["methods_unavailable"].items():
        notes.append(f"- **{method} unavailable**: {reason}.")
    if results["methods_unavailable"].get("qaconv"):
        notes.append("- QAConv is unavailable for this checkpoint; only AdaFace is evaluated.")
    missing = results["data"]["missing_images"]
    if missing:
        shown = ", ".join(missing[:_SHOW_MISSING]) + (f" ... ({len(missing)} in all; results.json lists them)"
                                                      if len(missing) > _SHOW_MISSING else "")
        notes.append(f"- {results['data']['pairs_skipped']} pairs skipped because {len(missing)} images are absent: "
                     f"{shown}.")
    bad = results["data"]["bad_images"]
    if bad:
        shown = "; ".join(bad[:_SHOW_MISSING]) + (f" ... ({len(bad)} in all)" if len(bad) > _SHOW_MISSING else "")
        notes.append(f"- {len(bad)} unreadable images left out (--skip-bad), with their pairs: {shown}.")
    if not results["methods_unavailable"]:
        weights = results["fusion"]["weights"]
        notes.append(f"- Fusion (weights adaface {weights['adaface']}, qaconv {weights['qaconv']}): "
                     f"{results['fusion']['note']}.")
    if results.get("masked_protocol"):
        masked = results["masked_protocol"]
        notes.append(f"- `_masked` methods: synthetic mask on the {masked['side']}; seed {masked['seed']}.")
    for key, facts in results.get("occlusion_protocols", {}).items():
        if key != "masked":
            notes.append(f"- `_{key}` methods: {facts['side']}; seed {facts['seed']}.")
    if results.get("ten_fold_note"):
        notes.append(f"- {results['ten_fold_note']}.")
    notes.append("- Genuine pairs are i < j with the same identity (never i = j); impostors i < j otherwise.")
    return notes


def _calibration_cells(stats: Mapping[str, Any]) -> list[str]:
    if "omitted" in stats:
        return ["n/a"] * len(_CALIBRATION_KEYS) + [f"omitted: {stats['omitted']}"]
    cells = ["n/a" if not np.isfinite(stats[key]) else f"{stats[key]:.4f}" for key in _CALIBRATION_KEYS]
    return cells + [f"{int(stats['occluded_cells'])} of {int(stats['cells'])} cells occluded"]


def _calibration_lines(calibration: Mapping[str, Any]) -> list[str]:
    """The report's table of the occlusion head against the true occlusion (empty without one)."""
    if not calibration:
        return []
    lines = ["", "## Occlusion head against the true occlusion", "",
             "Cells of the 7x7 map under less than half visible are occluded. AUC: occluded vs visible cells "
             "ranked by predicted visibility; MAE: |predicted - true visible fraction|; inside / outside: mean "
             "predicted visibility over the occluded / visible cells.", "",
             "| protocol | AUC | MAE | inside | outside | cells |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {name} | " + " | ".join(_calibration_cells(stats)) + " |" for name, stats in calibration.items()]
    return lines


def calibration_rows(results: Mapping[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """Rows and headers of the console table of the occlusion head's calibration (empty without one)."""
    rows = [[name, *(stats.get(key, "n/a") for key in _CALIBRATION_KEYS),
             stats.get("omitted", f"{int(stats['occluded_cells'])}/{int(stats['cells'])} cells occluded")]
            for name, stats in results.get("occlusion_head", {}).items()]
    return rows, ["occlusion head", "AUC", "MAE", "inside", "outside", "note"]


def write_report(results: Mapping[str, Any], rocs: Mapping[str, RocResult],
                 accuracies: Mapping[str, KFoldResult], output_dir: str | Path,
                 fars: Sequence[float]) -> dict[str, Path]:
    """Write ``report.md`` and ``results.json`` (both atomically)."""
    out = Path(output_dir)
    text = markdown_report(rocs, fars=fars, accuracy_by_method=accuracies or None,
                           provenance=_provenance_lines(results), title="oaml evaluation report")
    text += "\n".join(_calibration_lines(results.get("occlusion_head", {})) + _notes(results)) + "\n"
    report = out / "report.md"
    with atomic_write(report, "w", encoding="utf-8") as handle:
        handle.write(text)
    return {"report": report, "results": write_json(out / "results.json", results)}


def console_rows(results: Mapping[str, Any], fars: Sequence[float]) -> tuple[list[list[Any]], list[str]]:
    """Rows and headers of the console summary (percentages; ``n/a`` for omitted points)."""
    headers = ["method", "genuine", "impostor", "AUC", "EER %",
               *(f"TAR@{far_key(f)} %" for f in fars), "10-fold acc %"]
    rows: list[list[Any]] = []
    for name, entry in results["methods"].items():
        tars = [100 * p["tar"] if "tar" in p else "n/a" for p in entry["tar_at_far"].values()]
        fold = entry.get("ten_fold", {})
        rows.append([name, entry["n_genuine"], entry["n_impostor"], entry["auc"], 100 * entry["eer"], *tars,
                     100 * fold["accuracy"] if "accuracy" in fold else "n/a"])
    return rows, headers
