"""``results.md`` and ``results.json`` of the real-face study, with the figures.

Every sentence of the interpretation is derived from the numbers of this run (:func:`oaml.study.stats.
verdict`), so a rerun that comes out differently says so itself.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from oaml import __version__
from oaml.evaluation.report import write_json
from oaml.fileio import atomic_write
from oaml.study.data import Identity
from oaml.study.figures import plot_loss_curves, plot_mean_maps, plot_occlusion_overlay
from oaml.study.options import BENCHMARK_PROTOCOLS, METHODS, PROTOCOLS, VARIANTS, threads_per_run
from oaml.study.stats import aggregate, verdict

__all__ = ["OVERLAY_NAME", "render_markdown", "write_study"]

logger = logging.getLogger(__name__)

OVERLAY_NAME = "study_occlusion_overlay.png"
"""The figure with real faces: written by the study, not tracked by git (see ``.gitignore``)."""

_METHOD_TITLES = {"adaface": "AdaFace", "qaconv": "QAConv", "combined": "combined", "combined_vis": "combined (vis)"}
_DEFAULT, _REFERENCE = "e", "c"
"""The default objective and the variant it must beat: (c), the same losses without the occlusion branch."""
_AUC_TARGET = 0.90

_CHOICES = [
    "## How the settings were chosen", "",
    "Nothing was tuned on held-out identities or on LFW View-2. Every design choice was made on a validation split "
    "of the *training* identities of split 0 (25% of them held out of training: 106 training and 36 validation "
    "people, 12,104 validation pairs; one seed, 40 epochs), scored clean, with the mask, complementary "
    "(mask + sunglasses), sunglasses, hand, scarf and upper-half occluders. What was tried there and what it gave "
    "is in [docs/occlusion_design.md](occlusion_design.md): the occluder mixture in training, visibility-"
    "normalised matching, the visibility-gated embedding, query-only weights, and detaching the maps. The recipe "
    "is the demo's (the packaged `tiny_cpu` configuration: width-0.125 ir_18, batch 64, lr 0.1, the loss weights "
    "of the SPEC); the number of epochs was set from wall time so that the default study fits in about an hour on "
    "two cores. There is no validation set in these runs; the last weights are scored.", ""]


def _pct(cell: dict[str, float] | None, signed: bool = False) -> str:
    if cell is None:
        return "n/a"
    sign = "+" if signed else ""
    return f"{100 * cell['mean']:{sign}.1f} ± {100 * cell['std']:.1f}"


def _mean_std(cell: dict[str, float], digits: int) -> str:
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _setup_lines(setup: dict[str, Any]) -> list[str]:
    lines = ["## Set-up", ""]
    for name, info in setup["datasets"].items():
        lines.append(f"- Data `{name}`: {info['identities']} identities, {info['images']} images.")
    for split in setup["splits"]:
        lines.append(f"- Split {split['seed']}: train on {split['train_identities']} identities "
                     f"({split['train_images']} images); hold out {split['test_identities']} identities "
                     f"({split['test_images']} images, per dataset: {split['test_per_dataset']}). Held-out pairs: "
                     f"{split['genuine']} genuine (all) + {split['impostor']} impostor (drawn with the split seed).")
    o = setup["options"]
    lines += [
        f"- Model: {o['arch']} at width {o['width']:g}, 112x112 input (7x7 feature maps), fp32, trained from "
        f"scratch; the same for every variant.",
        f"- Budget, identical for every variant: {o['epochs']} PK epochs of {setup['steps_per_epoch']} steps "
        f"(batch {o['batch_size']} = {o['batch_size'] // 4} identities x 4 images; {setup['steps']} steps, "
        f"{setup['steps'] * o['batch_size']} images), SGD lr {o['lr']:g}, warm-up then x0.1 at 5/8 and 7/8 of the "
        f"epochs. No validation set: the last weights are scored once.",
        f"- Seeds: {', '.join(map(str, o['seeds']))} (initialisation, sampling, augmentation); held-out probe masks "
        f"seeded by image index (seed {o['mask_seed']}).",
        "- Protocols (occluder of the first / second image of every pair): " + ", ".join(
            f"*{name}* {a or 'none'} / {b or 'none'}" for name, (a, b) in PROTOCOLS.items()) + ". The medical mask "
        "is the training occluder; sunglasses and the hand over the mouth are never seen in training. Accuracy is "
        "the 10-fold accuracy (threshold chosen on nine folds), TAR at FAR=1e-2 is read off the pairs' ROC. "
        "*combined* fuses the z-scored AdaFace and QAConv scores with weights 0.5/0.5 (the evaluator's rule); "
        "*combined (vis)* is the visibility-aware fusion of `oaml.evaluation.fusion`, a logistic regression on the "
        "two z-scores and the pair's predicted occlusion, fitted on the nine training folds of every fold.",
        *_benchmark_lines(setup),
        f"- Wall time: {setup['wall_time_s'] / 60:.1f} min for everything ({o['jobs']} runs side by side, "
        f"{setup['threads_per_run']} thread(s) each) on {setup['machine']}.",
        "",
    ]
    return lines


def _benchmark_lines(setup: dict[str, Any]) -> list[str]:
    lines = []
    for split in setup["splits"]:
        bench = split.get("benchmark")
        if bench:
            lines.append(f"- Split {split['seed']}, {bench['name']}: {bench['kept']} of its {bench['total']} pairs "
                         f"have both people unseen in training ({bench['dropped']} pairs dropped), over "
                         f"{bench['images']} images; scored as " + ", ".join(f"*{p}*" for p in BENCHMARK_PROTOCOLS)
                         + " for the first seed only (its features cost more than a training run here).")
    return lines


def _variant_lines(variants: Sequence[str], titles: dict[str, str], overrides: dict[str, dict]) -> list[str]:
    rows = [[f"({v})", titles[v], ", ".join(f"{k}={val}" for k, val in overrides[v].items()) or "defaults"]
            for v in variants]
    return ["## Configurations", "", *_table(["", "configuration", "overrides of the defaults"], rows),
            "", "Defaults: AdaFace 0.1, QAConv 0.7 (pairwise + 0.5 x (class-memory CE + triplet)), occlusion MSE 0.3, "
            "mask probability 0.5, occlusion_method scaling, occlusion_detach true. For (a)-(c) the QAConv matcher "
            "and occlusion head are "
            "still evaluated: where their losses are off they are untrained layers on trained feature maps.", ""]


def _protocols(summary: dict[str, Any]) -> list[str]:
    return list(next(iter(summary["cells"].values())))


def _result_lines(summary: dict[str, Any], variants: Sequence[str], methods: Sequence[str]) -> list[str]:
    lines = ["## Results (held-out identities; mean ± std over runs, in %)", ""]
    for metric, title in (("accuracy", "10-fold accuracy"), ("tar", "TAR at FAR = 1e-2")):
        headers = ["variant", "protocol", *(_METHOD_TITLES[m] for m in methods)]
        rows = [[f"({v})", p, *(_pct(summary["cells"][v][p][m][metric]) for m in methods)]
                for v in variants for p in _protocols(summary)]
        lines += [f"### {title}", "", *_table(headers, rows), ""]
    lines += ["### Paired differences (same split, seed and pairs; points)", "",
              "A difference is called *better*/*worse* only when every paired run agrees in sign and the mean "
              "exceeds two standard errors of the paired differences; otherwise *no clear difference*.", ""]
    rows = []
    for comp in summary["comparisons"]:
        for p in _protocols(summary):
            for m in methods:
                cell = comp["cells"][p][m]["accuracy"]
                if cell is None:
                    continue
                rows.append([f"({comp['variant']}) - ({comp['reference']})", comp["meaning"], p, _METHOD_TITLES[m],
                             _pct(cell, signed=True), f"{cell['better']}/{cell['n']}", verdict(cell)])
    lines += _table(["difference", "what it measures", "protocol", "method", "accuracy", "runs better",
                     "verdict"], rows)
    return lines + [""]


def _occlusion_lines(summary: dict[str, Any], figures: dict[str, Path], out: Path) -> list[str]:
    occ = summary["occlusion"]
    if not occ:
        return []
    lines = ["## Occlusion head on held-out faces", "",
             "Mean predicted visibility (1 = visible) in the 7x7 cells that the probe mask covers (less than half "
             "visible: *inside*) and the others (*outside*); the same *inside* cells on the clean image; the mean "
             "absolute error against the true visible fractions; MSE of the prediction and of a head that always "
             "says 'visible'; and the AUC of telling visible from occluded cells.", ""]
    keys = (("inside", "inside mask"), ("outside", "outside mask"), ("clean_same_cells", "same cells, clean"),
            ("mae", "MAE"), ("mse", "MSE"), ("mse_all_visible", "MSE if all visible"), ("auc", "cell AUC"))
    rows = [[f"({v})", *(f"{occ[v][k]['mean']:.3f} ± {occ[v][k]['std']:.3f}" for k, _ in keys)] for v in occ]
    lines += _table(["variant", *(t for _, t in keys)], rows) + [""]
    calibration = summary.get("calibration", {})
    if calibration:
        names = list(next(iter(calibration.values())))
        lines += ["Per occluder (held-out images with the occluder drawn, its true 7x7 visible fractions): cell AUC "
                  "and MAE, mean ± std over runs. Only the medical mask is seen in training.", "",
                  *_table(["variant", *(f"{n} AUC" for n in names), *(f"{n} MAE" for n in names)],
                          [[f"({v})", *(_mean_std(calibration[v][n]["auc"], 2) for n in names),
                            *(_mean_std(calibration[v][n]["mae"], 3) for n in names)] for v in calibration]), ""]
    if "mean_maps" in figures:
        lines += [f"![mean maps]({os.path.relpath(figures['mean_maps'], out)})", "",
                  "Mean maps over all held-out images (no faces shown)."]
    if "overlay" in figures:
        lines += ["", f"Predicted maps over held-out faces: `{os.path.relpath(figures['overlay'], out)}` (written by "
                  "the study next to this file; it shows real people's faces, so the repository does not track it)."]
    return lines + [""]


def _loss_lines(summary: dict[str, Any], variants: Sequence[str], figures: dict[str, Path], out: Path) -> list[str]:
    names = sorted({n for v in variants for n in summary["final_losses"][v]})
    rows = [[f"({v})", *(f"{summary['final_losses'][v][n]['mean']:.3f}" if n in summary["final_losses"][v] else "-"
                         for n in names)] for v in variants]
    lines = ["## Training (last-epoch means over runs)", "",
             "`loss` is the weighted total that is optimised; the other losses are the unweighted terms, the "
             "accuracies are training-batch accuracies.", "", *_table(["variant", *names], rows), ""]
    if "loss_curves" in figures:
        lines += [f"![loss curves]({os.path.relpath(figures['loss_curves'], out)})", ""]
    return lines


def _answer(summary: dict[str, Any], variants: Sequence[str]) -> list[str]:
    """The headline: does the default objective (e) beat (c) on occluded probes, clean not worse, head calibrated?"""
    comps = {(c["variant"], c["reference"]): c for c in summary["comparisons"]}
    if (_DEFAULT, _REFERENCE) not in comps:
        return []
    cells = comps[(_DEFAULT, _REFERENCE)]["cells"]
    occluded = [p for p in _protocols(summary) if not p.endswith("clean")]
    parts = {p: {m: verdict(cells[p][m]["accuracy"]) for m in ("combined", "combined_vis")} for p in occluded}
    text = "; ".join(f"*{p}* {_pct(cells[p]['combined']['accuracy'], signed=True)} ({parts[p]['combined']}), vis "
                     f"{_pct(cells[p]['combined_vis']['accuracy'], signed=True)} ({parts[p]['combined_vis']})"
                     for p in occluded)
    clean = {p: verdict(cells[p]["combined"]["accuracy"]) for p in _protocols(summary) if p.endswith("clean")}
    auc = summary["occlusion"].get(_DEFAULT, {}).get("auc", {}).get("mean", float("nan"))
    wins = [p for p in occluded if "better" in parts[p].values()]
    goal = wins and "worse" not in clean.values() and auc >= _AUC_TARGET
    lines = [f"- **Answer** (({_DEFAULT}), the default objective, vs ({_REFERENCE}), the same losses without the "
             f"occlusion branch; combined score, paired, points): {text}. Clean: " +
             ", ".join(f"*{p}* {_pct(cells[p]['combined']['accuracy'], signed=True)} ({v})" for p, v in clean.items())
             + f". The head's cell AUC on masked held-out faces is {auc:.2f} (target {_AUC_TARGET:.2f})."]
    if goal:
        lines.append(f"- The occlusion branch pays off: ({_DEFAULT}) is better on {', '.join(wins)}, not worse on "
                     f"clean probes, with a calibrated head.")
    else:
        lines.append(f"- The goal is **not** reached: ({_DEFAULT}) is better than ({_REFERENCE}) on "
                     f"{', '.join(wins) or 'no occluded protocol'}" + (", but worse on clean probes" if "worse" in
                     clean.values() else "") + (f", and its head is not calibrated (AUC < {_AUC_TARGET:.2f})" if
                     auc < _AUC_TARGET else "") + ". The branch stays in the default objective because it is the "
                     "only design of those tried that keeps the head calibrated; see the head's analysis below and "
                     "docs/occlusion_design.md for the designs that did not help.")
    return lines


def _occlusion_verdicts(summary: dict[str, Any]) -> list[str]:
    """Per occlusion variant: does the head separate mask from face, has it collapsed, does it only know where?"""
    lines = []
    learned = [v for v, st in summary["occlusion"].items() if st["auc"]["mean"] >= 0.8]
    for v, stats in summary["occlusion"].items():
        inside, outside, clean = (stats[k]["mean"] for k in ("inside", "outside", "clean_same_cells"))
        auc, mse, base = stats["auc"]["mean"], stats["mse"]["mean"], stats["mse_all_visible"]["mean"]
        text = (f"- **Occlusion head ({v})**: predicted visibility {inside:.2f} inside the mask vs {outside:.2f} "
                f"outside (the same cells on clean faces: {clean:.2f}); cell AUC {auc:.2f}; MSE {mse:.3f} vs "
                f"{base:.3f} for 'always visible'. ")
        if auc >= 0.8 and outside - inside >= 0.2:
            text += "It separates masked from visible regions on held-out faces."
            if clean < outside - 0.05:
                text += (f" Part of that is a prior on where masks sit (clean faces get {clean:.2f} there); the "
                         f"remaining {clean - inside:.2f} is the response to the mask itself.")
        else:
            text += "It does **not** separate masked from visible regions here."
            if min(inside, outside) >= 0.99:
                text += (" It has collapsed to 'everything visible' (a saturated sigmoid, the MSE of a constant 1), "
                         "so occlusion weighting changes nothing. Besides its MSE, the only gradient into the head "
                         "comes from the QAConv losses through the maps that weight QAConv; once they have pushed "
                         "the sigmoid into saturation, the MSE cannot pull it back.")
                if learned:
                    text += (f" With exactly that gradient removed (maps detached in QAConv: "
                             f"{', '.join(f'({w})' for w in learned)}) the head learns.")
        lines.append(text)
    steps = {c["variant"]: c["cells"]["masked"]["combined"]["accuracy"] for c in summary["comparisons"]
             if c["reference"] == "c"}
    idle = [v for v in learned if v in steps and verdict(steps[v]) != "better"]
    if idle:
        inside = min(summary["occlusion"][v]["inside"]["mean"] for v in idle)
        lines.append(f"- A head that separates the mask ({', '.join(f'({v})' for v in idle)}) did not make masked "
                     f"matching measurably better than (c). Possible reasons, not tested here: QAConv's max over "
                     f"locations may already favour visible regions; masked cells keep a weight of {inside:.2f} or "
                     f"more, so the mask still counts; and the feature maps of the masked region are trained on "
                     f"masked faces in (c) as well.")
    return lines


def _interpretation(summary: dict[str, Any], variants: Sequence[str], pairs_per_run: int) -> list[str]:
    lines = ["## Interpretation (generated from the numbers above)", "",
             *_answer(summary, variants)]
    for comp in summary["comparisons"]:
        parts = []
        for p in _protocols(summary):
            cell = comp["cells"][p]["combined"]["accuracy"]
            parts.append(f"*{p}* {_pct(cell, signed=True)} ({verdict(cell)})")
        lines.append(f"- **{comp['meaning']}** (({comp['variant']}) vs ({comp['reference']})), combined-score "
                     f"accuracy: " + "; ".join(parts) + ".")
    lines += _occlusion_verdicts(summary)
    fold = max(max(p.values()) for p in summary["fold_std"].values())
    spreads = {metric: [cell[metric]["std"] for v in variants for p in _protocols(summary)
                        for cell in summary["cells"][v][p].values() if cell[metric] is not None]
               for metric in ("accuracy", "tar")}
    tar = (f" TAR at FAR=1e-2 is set by the few highest impostor scores (1% of {pairs_per_run // 2}), so its std over "
           f"seeds is {100 * min(spreads['tar']):.1f}-{100 * max(spreads['tar']):.1f} points: read it as a rough "
           f"check, not as the ranking." if spreads["tar"] else "")
    lines.append(f"- **Noise**: the std over seeds of an accuracy cell is {100 * min(spreads['accuracy']):.1f}-"
                 f"{100 * max(spreads['accuracy']):.1f} points; the 10-fold std within a run is up to {100 * fold:.1f} "
                 f"points; with {pairs_per_run} pairs per run the binomial standard error of a 90% accuracy is "
                 f"{100 * (0.9 * 0.1 / pairs_per_run) ** 0.5:.1f} points. Differences smaller than that are noise."
                 + tar)
    lines += ["- **Scale**: a few hundred training images from a few dozen people, trained from scratch at 1/64 of "
              "the full network's compute: these numbers compare the variants with each other under one budget; "
              "they say nothing about the accuracy of full-size models trained on MS1MV2.", ""]
    return lines


def render_markdown(setup: dict[str, Any], summary: dict[str, Any], variants: Sequence[str], titles: dict[str, str],
                    overrides: dict[str, dict], figures: dict[str, Path], out: Path) -> str:
    """The whole ``results.md``."""
    methods = METHODS
    pairs_per_run = min(s["genuine"] + s["impostor"] for s in setup["splits"])
    lines = ["# Does occlusion-aware training help on occluded real faces?", "",
             f"Generated by `{setup['command']}` (oaml {setup['version']}, {setup['date']}). Rerun that command to "
             "reproduce this page; raw numbers per run are in `results.json`.", ""]
    lines += _setup_lines(setup) + _variant_lines(variants, titles, overrides)
    lines += _result_lines(summary, variants, methods) + _occlusion_lines(summary, figures, out)
    lines += _loss_lines(summary, variants, figures, out) + _CHOICES + _interpretation(summary, variants,
                                                                                        pairs_per_run)
    return "\n".join(lines)


def _setup(options: Any, roots: Sequence[Path], identities: Sequence[Identity], splits: Sequence[dict[str, Any]],
           wall_s: float, command: str) -> dict[str, Any]:
    datasets = {root.name: {"path": str(root), "identities": sum(i.dataset == root.name for i in identities),
                            "images": sum(len(i.images) for i in identities if i.dataset == root.name)}
                for root in roots}
    split_info = []
    for entry in splits:
        split, pairs = entry["split"], entry["pairs"]
        per = {d: sum(i.dataset == d for i in split.test) for d in datasets}
        split_info.append({"seed": split.seed, "train_identities": len(split.train),
                           "train_images": sum(len(i.images) for i in split.train),
                           "test_identities": len(split.test), "test_images": len(pairs.paths),
                           "test_per_dataset": ", ".join(f"{d} {n}" for d, n in per.items()),
                           "genuine": pairs.num_genuine, "impostor": pairs.num_impostor,
                           "test_keys": [i.key for i in split.test]})
        bench = entry.get("benchmark")
        if bench is not None:
            split_info[-1]["benchmark"] = {"name": bench.name, "kept": int(bench.pairs.issame.shape[0]),
                                           "total": bench.total, "dropped": bench.dropped,
                                           "images": len(bench.pairs.paths)}

    steps_per_epoch = min(entry["steps_per_epoch"] for entry in splits)
    return {"command": command, "version": __version__, "date": _dt.date.today().isoformat(),
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()})",
            "threads_per_run": threads_per_run(options.jobs), "wall_time_s": wall_s, "datasets": datasets,
            "splits": split_info, "options": asdict(options), "steps_per_epoch": steps_per_epoch,
            "steps": steps_per_epoch * options.epochs}


def write_study(options: Any, roots: Sequence[Path], identities: Sequence[Identity], splits: Sequence[dict[str, Any]],
                results: Sequence[dict[str, Any]], wall_s: float, command: str) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and the figures into ``options.output_dir``; returns them by name."""

    out = Path(options.output_dir)
    figures_dir = out / "figures"
    variants = list(options.variants)
    protocols = list(dict.fromkeys(p for r in results for p in r["metrics"]))
    summary = aggregate(results, variants, METHODS, protocols)
    setup = _setup(options, roots, identities, splits, wall_s, command)
    files: dict[str, Path] = {}
    first = {r["variant"]: r for r in reversed(results)}  # the first split's first seed of every variant
    with_maps = {v: first[v] for v in variants if "occlusion_maps" in first[v]}
    if with_maps:
        files["mean_maps"] = plot_mean_maps({v: r["occlusion_maps"] for v, r in with_maps.items()},
                                            figures_dir / "study_occlusion_maps.png")
        first_split = next(s for s in splits if s["split"].seed == results[0]["split"])
        files["overlay"] = plot_occlusion_overlay(first_split["pairs"].paths,
                                                  {v: r["figure"] for v, r in with_maps.items()},
                                                  options.mask_seed, out / OVERLAY_NAME)
    files["loss_curves"] = plot_loss_curves({v: [r["curves"] for r in results if r["variant"] == v]
                                             for v in variants}, figures_dir / "study_loss_curves.png")
    titles = {k: VARIANTS[k].title for k in variants}
    overrides = {k: VARIANTS[k].overrides for k in variants}
    files["json"] = write_json(out / "results.json", {"setup": setup, "variants": {k: {"title": titles[k],
                               "overrides": overrides[k]} for k in variants}, "summary": summary, "runs": results})
    markdown = render_markdown(setup, summary, variants, titles, overrides, files, out)
    files["markdown"] = out / "results.md"
    with atomic_write(files["markdown"], "w", encoding="utf-8") as handle:
        handle.write(markdown + "\n")
    logger.info("wrote %s", files["markdown"])
    return files
