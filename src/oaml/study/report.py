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
from oaml.study.options import METHODS, PROTOCOLS, VARIANTS, threads_per_run
from oaml.study.stats import aggregate, verdict

__all__ = ["OVERLAY_NAME", "render_markdown", "write_study"]

logger = logging.getLogger(__name__)

OVERLAY_NAME = "study_occlusion_overlay.png"
"""The figure with real faces: written by the study, not tracked by git (see ``.gitignore``)."""

_METHOD_TITLES = {"adaface": "AdaFace", "qaconv": "QAConv", "combined": "combined"}

_CHOICES = [
    "## How the settings were chosen", "",
    "Nothing was tuned on held-out identities. The recipe is the demo's (the packaged `tiny_cpu` configuration: "
    "width-0.125 "
    "ir_18, batch 64, lr 0.1, the loss weights of the SPEC); AdaFace alone keeps its own loss weight 1. The number "
    "of epochs was set from the wall time of timing runs of (a), (d) and (e) on another identity split (seed 99) so "
    "that the study fits in 45 minutes on two cores. Those runs showed the occlusion head of (d) saturating at 1 "
    "everywhere, which is why (e), the same objective with the maps detached in QAConv, was added before this study "
    "ran; their held-out accuracies were printed but no setting was picked by them. There is no validation set; the "
    "last weights are scored.", ""]


def _pct(cell: dict[str, float] | None, signed: bool = False) -> str:
    if cell is None:
        return "n/a"
    sign = "+" if signed else ""
    return f"{100 * cell['mean']:{sign}.1f} ± {100 * cell['std']:.1f}"


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
        "- Protocols: *clean* scores each pair as is; *masked* draws a synthetic medical mask on the second image "
        "of every pair (masked-vs-clean). Accuracy is the 10-fold accuracy (threshold chosen on nine folds), "
        "TAR at FAR=1e-2 is read off the pairs' ROC. *combined* fuses the z-scored AdaFace and QAConv scores "
        "with weights 0.5/0.5 (the evaluator's rule).",
        f"- Wall time: {setup['wall_time_s'] / 60:.1f} min for everything ({o['jobs']} runs side by side, "
        f"{setup['threads_per_run']} thread(s) each) on {setup['machine']}.",
        "",
    ]
    return lines


def _variant_lines(variants: Sequence[str], titles: dict[str, str], overrides: dict[str, dict]) -> list[str]:
    rows = [[f"({v})", titles[v], ", ".join(f"{k}={val}" for k, val in overrides[v].items()) or "defaults"]
            for v in variants]
    return ["## Configurations", "", *_table(["", "configuration", "overrides of the defaults"], rows),
            "", "Defaults: AdaFace 0.1, QAConv 0.7 (pairwise + 0.5 x (class-memory CE + triplet)), occlusion MSE 0.3, "
            "mask probability 0.5, occlusion_method scaling. For (a)-(c) the QAConv matcher and occlusion head are "
            "still evaluated: where their losses are off they are untrained layers on trained feature maps.", ""]


def _result_lines(summary: dict[str, Any], variants: Sequence[str], methods: Sequence[str]) -> list[str]:
    lines = ["## Results (held-out identities; mean ± std over runs, in %)", ""]
    for metric, title in (("accuracy", "10-fold accuracy"), ("tar", "TAR at FAR = 1e-2")):
        headers = ["variant", "protocol", *(_METHOD_TITLES[m] for m in methods)]
        rows = [[f"({v})", p, *(_pct(summary["cells"][v][p][m][metric]) for m in methods)]
                for v in variants for p in ("clean", "masked")]
        lines += [f"### {title}", "", *_table(headers, rows), ""]
    lines += ["### Paired differences (same split, seed and pairs; points)", "",
              "A difference is called *better*/*worse* only when every paired run agrees in sign and the mean "
              "exceeds two standard errors of the paired differences; otherwise *no clear difference*.", ""]
    rows = []
    for comp in summary["comparisons"]:
        for p in ("clean", "masked"):
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


def _answer(summary: dict[str, Any], variants: Sequence[str], occlusion_variants: Sequence[str]) -> list[str]:
    """The headline: does an occlusion-aware variant beat the AdaFace baseline on masked probes?"""
    cells = summary["cells"]
    best = max(variants, key=lambda v: cells[v]["masked"]["combined"]["accuracy"]["mean"])
    best_method = {v: max(("adaface", "qaconv", "combined"), key=lambda m: cells[v]["masked"][m]["accuracy"]["mean"])
                   for v in variants}
    lines = [f"- **Answer**: the highest masked-vs-clean accuracy of the fused score is ({best}) "
             f"{_pct(cells[best]['masked']['combined']['accuracy'])}%; per variant the best masked method is " +
             ", ".join(f"({v}) {_METHOD_TITLES[best_method[v]]} {_pct(cells[v]['masked'][best_method[v]]['accuracy'])}"
                       for v in variants) + "."]
    against_a = {c["variant"]: c for c in summary["comparisons"] if c["reference"] == "a"}
    verdicts = {v: verdict(against_a[v]["cells"]["masked"]["combined"]["accuracy"])
                for v in occlusion_variants if v in against_a}
    if verdicts:
        wins = [v for v, result in verdicts.items() if result == "better"]
        if wins:
            lines.append(f"- The occlusion-aware variant(s) {', '.join(f'({v})' for v in wins)} beat the AdaFace "
                         f"baseline (a) on masked probes (combined score, every seed).")
            lines += _attribution(summary, wins)
        else:
            lines.append("- No occlusion-aware variant beats the AdaFace baseline (a) on masked probes beyond the "
                         "noise (combined score; " + ", ".join(f"({v}) vs (a): {r}" for v, r in verdicts.items()) +
                         "). The evidence for why is below: the occlusion head's maps, and QAConv vs AdaFace within "
                         "each variant: " + ", ".join(
                             f"({v}) masked QAConv {_pct(cells[v]['masked']['qaconv']['accuracy'])} vs AdaFace "
                             f"{_pct(cells[v]['masked']['adaface']['accuracy'])}" for v in verdicts) + ".")
    return lines


def _attribution(summary: dict[str, Any], wins: Sequence[str]) -> list[str]:
    """Where a win over (a) comes from: the steps (b)-(a), (c)-(b) and (occlusion variant)-(c) on masked probes."""
    steps = {(c["variant"], c["reference"]): c["cells"]["masked"]["combined"]["accuracy"]
             for c in summary["comparisons"]}
    named = [(("b", "a"), "masks (b)-(a)"), (("c", "b"), "QAConv losses (c)-(b)")] + \
            [((v, "c"), f"occlusion head ({v})-(c)") for v in wins]
    parts = [f"{label} {_pct(steps[key], signed=True)} ({verdict(steps[key])})" for key, label in named
             if key in steps]
    head = [v for v in wins if (v, "c") in steps]
    if not head:
        return []
    useful = [v for v in head if verdict(steps[(v, "c")]) == "better"]
    return ["- Where the masked-probe gain over (a) comes from (combined score, paired): " + "; ".join(parts) + ". " +
            (f"The occlusion head adds a measurable gain in {', '.join(f'({v})' for v in useful)}." if useful else
             "The occlusion head itself adds no measurable gain over (c), the same objective without it: the gain "
             "comes from training with synthetic masks and from the QAConv losses.")]


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
             *_answer(summary, variants, list(summary["occlusion"]))]
    for comp in summary["comparisons"]:
        parts = []
        for m in ("adaface", "qaconv", "combined"):
            cell = comp["cells"]["masked"][m]["accuracy"]
            parts.append(f"{_METHOD_TITLES[m]} {_pct(cell, signed=True)} ({verdict(cell)})")
        lines.append(f"- **{comp['meaning']}** (({comp['variant']}) vs ({comp['reference']})), masked-vs-clean "
                     f"accuracy: " + "; ".join(parts) + ".")
    lines += _occlusion_verdicts(summary)
    fold = max(max(p.values()) for p in summary["fold_std"].values())
    spreads = {metric: [cell[metric]["std"] for v in variants for p in ("clean", "masked")
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
    methods = ("adaface", "qaconv", "combined")
    pairs_per_run = min(s["genuine"] + s["impostor"] for s in setup["splits"])
    lines = ["# Does occlusion-aware training help on masked real faces?", "",
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
    summary = aggregate(results, variants, METHODS, PROTOCOLS)
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
