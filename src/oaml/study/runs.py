"""``oaml study``: does occlusion-aware training help on masked real faces? A CPU-scale, reproducible ablation.

``python -m oaml.study.runs`` runs the same study. It

1. reads aligned identity folders (by default those of ``../shared/data`` listed in
   :data:`~oaml.study.data.DEFAULT_DATASETS`) and splits them by identity, per dataset, into training
   and held-out identities (one split per ``--splits`` seed);
2. trains the same small backbone under the :data:`VARIANTS` with the same budget (epochs, batch, schedule), once
   per training seed, through the same :func:`~oaml.training.run.run_training` as ``oaml train``: (a) AdaFace, (b)
   + synthetic masks, (c) + QAConv losses, (d) the full objective, and (e) the full objective with
   ``occlusion_detach`` (the QAConv losses do not train the occlusion head);
3. scores the held-out identities with the standalone evaluator's functions in two protocols, clean-vs-clean and
   masked-vs-clean (a deterministic synthetic mask on the second image of every pair): 10-fold accuracy and
   TAR@FAR=1e-2 for AdaFace, QAConv and their fusion; for the variant that trains the occlusion head it also
   compares the predicted 7x7 visibility with the true mask;
4. writes ``results.md``, ``results.json`` and the figures (:mod:`oaml.study.report`).

Runs go to ``--work-dir`` (each with its ``run.log``, ``metrics.csv`` and checkpoint); ``--jobs`` runs train side by
side, each on ``cpu_count // jobs`` threads (two single-thread runs beat one two-thread run at this width).
Nothing is tuned on the held-out identities: every setting is fixed before the study runs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import logging
import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from oaml.config import LossConfig
from oaml.errors import ConfigError, DataError, OamlError
from oaml.study.data import (HeldOutPairs, Split, default_roots, discover_identities, held_out_pairs,
                                         link_train_folder, split_identities)

__all__ = ["FAR", "METHODS", "StudyOptions", "VARIANTS", "Variant", "add_study_arguments", "main",
           "occlusion_separation", "options_from_args", "run_config", "run_study", "steps_per_epoch",
           "threads_per_run"]

logger = logging.getLogger(__name__)

FAR = 1e-2
"""The FAR of the reported TAR."""

METHODS = ("adaface", "qaconv", "combined")
PROTOCOLS = ("clean", "masked")
_K = LossConfig().instances_per_identity  # images per identity in a PK batch (the study does not change it)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One training configuration of the ablation: flat config overrides on top of the study's settings."""

    key: str
    title: str
    overrides: dict[str, Any]

    @property
    def trains_occlusion(self) -> bool:
        return self.overrides.get("occlusion_loss_weight", 1.0) > 0


_NO_OCCLUSION = {"occlusion_loss_weight": 0.0, "occlusion_method": "none"}
VARIANTS: dict[str, Variant] = {v.key: v for v in (
    # AdaFace alone is trained with its own loss weight 1 (its original recipe): with the full objective's 0.1 and
    # the same learning rate the baseline would take ten times smaller steps.
    Variant("a", "AdaFace only", {"adaface_loss_weight": 1.0, "qaconv_loss_weight": 0.0, **_NO_OCCLUSION,
                                  "mask_prob": 0.0}),
    Variant("b", "AdaFace + synthetic masks", {"adaface_loss_weight": 1.0, "qaconv_loss_weight": 0.0,
                                               **_NO_OCCLUSION}),
    Variant("c", "+ QAConv losses", dict(_NO_OCCLUSION)),
    Variant("d", "full: + occlusion head, occlusion-weighted QAConv", {}),
    Variant("e", "full, maps detached in QAConv", {"occlusion_detach": True}),
)}
"""(a) AdaFace only; (b) + synthetic masks (p 0.5); (c) + QAConv pairwise/triplet/class-memory losses (default
weights 0.1 AdaFace, 0.7 QAConv); (d) + occlusion-head MSE (0.3) with the predicted maps weighting QAConv; (e) (d)
with the maps detached where they weight QAConv, so that only the MSE trains the occlusion head."""


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    """Settings of one study (the flags of ``oaml study``); every run uses all of them.

    Attributes:
        roots: Aligned identity folders; empty means :func:`~oaml.study.data.default_roots`.
        seeds: Training seeds (initialisation, sampling, augmentation).
        splits: Identity-split seeds; the held-out pairs depend on the split only.
        variants: Keys of :data:`VARIANTS` to train.
        test_fraction: Fraction of every dataset's identities held out.
        arch: Backbone.
        width: Width multiplier of the backbone.
        epochs: Training epochs (a PK epoch shows every training identity once, K images each).
        batch_size: P x K training batch.
        lr: Peak SGD learning rate (warm-up over the first 5% of the epochs, x0.1 at 5/8 and 7/8 of them).
        mask_seed: Seed of the deterministic masks on the held-out probes.
        jobs: Runs trained side by side.
        output_dir: Where ``results.md``, ``results.json`` and ``figures/`` go: the work folder by default;
            ``--output-dir docs`` regenerates the repository's ``docs/results.md``.
        work_dir: Where the runs go.
    """

    roots: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    splits: tuple[int, ...] = (0,)
    variants: tuple[str, ...] = tuple(VARIANTS)
    test_fraction: float = 0.3
    arch: str = "ir_18"
    width: float = 0.125
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1
    mask_seed: int = 0
    jobs: int = 2
    output_dir: str = "experiments/study"
    work_dir: str = "experiments/study"

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        checks = [("--variants", self.variants, not unknown and len(set(self.variants)) == len(self.variants)
                   and bool(self.variants), f"choose distinct keys of {', '.join(VARIANTS)}"),
                  ("--seeds", self.seeds, bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
                   "expected distinct integers"),
                  ("--splits", self.splits, bool(self.splits) and len(set(self.splits)) == len(self.splits),
                   "expected distinct integers"),
                  ("--epochs", self.epochs, self.epochs >= 1, "expected >= 1"),
                  ("--batch-size", self.batch_size, self.batch_size >= _K and self.batch_size % _K == 0,
                   f"expected a positive multiple of {_K} (images per identity)"),
                  ("--jobs", self.jobs, self.jobs >= 1, "expected >= 1")]
        for flag, value, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{flag}: {value!r} is invalid; {expected}")

    def command(self) -> str:
        """The ``oaml study`` command line that reproduces these options (flags only where not the default)."""
        words = ["oaml", "study", *self.roots]
        default = StudyOptions()
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "roots" or value == getattr(default, item.name):
                continue
            values = value if isinstance(value, tuple) else (value,)
            words += [f"--{item.name.replace('_', '-')}", *map(str, values)]
        return shlex.join(words)


@dataclasses.dataclass(frozen=True)
class RunTask:
    """One training run and its evaluation, as sent to a worker process."""

    variant: str
    seed: int
    split: int
    train_dir: str
    run_dir: str
    num_train_identities: int
    pairs: HeldOutPairs
    options: StudyOptions
    threads: int
    figure_rows: tuple[int, ...] = dataclasses.field(default=())


def run_config(options: StudyOptions, variant: Variant, seed: int, train_dir: Path, run_dir: Path,
               num_train_identities: int) -> Any:
    """The :class:`~oaml.config.OamlConfig` of one run: the study's settings plus the variant's overrides.

    There is no validation set: the held-out identities are scored only once, after training, with the last
    weights (choosing a checkpoint on them would tune on the test identities).
    """
    from oaml.config import config_from_dict, validate

    epochs = options.epochs
    nested = {
        "data": {"data_root": str(train_dir.parent), "train_data_path": train_dir.name,
                 "val_data_path": "no_validation"},
        "train": {"epochs": epochs, "batch_size": options.batch_size, "lr": options.lr, "seed": seed,
                  "lr_milestones": [max(1, epochs * 5 // 8), max(2, epochs * 7 // 8)],
                  "warmup_epochs": max(1.0, epochs / 20), "log_every_n_steps": 10},
        "model": {"arch": options.arch, "width": options.width},
        "loss": {"k_nearest": min(16, num_train_identities - 1)},
        "system": {"use_16bit": False, "num_workers": 0, "prefix": variant.key, "output_dir": str(run_dir)},
    }
    config = config_from_dict(nested, dict(variant.overrides))
    validate(config)
    return config


# ------------------------------------------------------------------------------------------------ worker side
@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C code and tqdm too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def occlusion_separation(predicted_masked: np.ndarray, predicted_clean: np.ndarray,
                         true_grids: np.ndarray) -> dict[str, float]:
    """How well predicted 7x7 visibility maps separate the mask from the visible face.

    Args:
        predicted_masked: N x 7 x 7 maps predicted on the masked images.
        predicted_clean: N x 7 x 7 maps predicted on the same images without the mask.
        true_grids: N x 7 x 7 visible fraction of each cell under the mask (:func:`visibility_to_grid`).

    Returns:
        ``inside`` (mean prediction over cells less than half visible), ``outside`` (cells at least half
        visible), ``clean_same_cells`` (the ``inside`` cells of the clean images: high when the head looks at the
        mask rather than at the position), ``clean_all``, ``mae`` and ``mse`` (masked maps vs the true grids),
        ``mse_all_visible`` (the MSE of a head that always predicts 1) and ``auc`` (the probability that a visible
        cell is predicted more visible than an occluded one; ties count one half).
    """
    from oaml.evaluation.verification import roc

    inside = true_grids < 0.5
    if not inside.any() or inside.all():
        raise ValueError("the true grids need both occluded and visible cells")
    return {"inside": float(predicted_masked[inside].mean()), "outside": float(predicted_masked[~inside].mean()),
            "clean_same_cells": float(predicted_clean[inside].mean()), "clean_all": float(predicted_clean.mean()),
            "mae": float(np.abs(predicted_masked - true_grids).mean()),
            "mse": float(np.square(predicted_masked - true_grids).mean()),
            "mse_all_visible": float(np.square(1.0 - true_grids).mean()),
            "auc": roc(predicted_masked.ravel(), ~inside.ravel()).auc}


def true_mask_grids(images: Any, mask_seed: int) -> np.ndarray:
    """The 7x7 visible fraction of the evaluator's deterministic mask on every image (same draw, same seed)."""
    from oaml.data.masks import seeded_mask, visibility_to_grid

    return np.stack([visibility_to_grid(seeded_mask(images.read(k), mask_seed, k)[1]) for k in range(len(images))])


def _evaluate(checkpoint: Path, pairs: HeldOutPairs, mask_seed: int, occlusion: bool,
              figure_rows: tuple[int, ...]) -> dict[str, Any]:
    from oaml.evaluation.api import load_model
    from oaml.evaluation.embed import extract_features
    from oaml.evaluation.eval_data import EvalImages
    from oaml.evaluation.evaluate import EvalOptions, score_protocol
    from oaml.evaluation.verification import KFoldResult, TarPoint, tar_at_far

    recognizer = load_model(checkpoint)
    images = EvalImages(names=list(pairs.paths), paths=list(pairs.paths))
    clean = extract_features(recognizer, images, progress=False)
    masked = extract_features(recognizer, images, mask_seed=mask_seed, progress=False)
    options = EvalOptions(progress=False)
    args = (pairs.first, pairs.second, pairs.issame, options)
    protocols = {"clean": score_protocol(recognizer, clean, clean, *args),
                 "masked": score_protocol(recognizer, clean, masked, *args, "_masked")}
    metrics: dict[str, dict[str, dict[str, float | None]]] = {}
    for protocol, scored in protocols.items():
        suffix = "" if protocol == "clean" else "_masked"
        metrics[protocol] = {}
        for method in METHODS:
            fold, tar = scored.ten_fold[method + suffix], tar_at_far(scored.scores[method + suffix], pairs.issame,
                                                                     fars=(FAR,))[FAR]
            assert isinstance(fold, KFoldResult)  # >= 10 pairs, checked when the pairs are made
            metrics[protocol][method] = {"accuracy": fold.accuracy, "fold_std": fold.std,
                                         "tar": tar.tar if isinstance(tar, TarPoint) else None}
    out: dict[str, Any] = {"metrics": metrics}
    if occlusion and masked.occlusion is not None and clean.occlusion is not None:
        grids = true_mask_grids(images, mask_seed)
        pred_masked, pred_clean = masked.occlusion[:, 0].numpy(), clean.occlusion[:, 0].numpy()
        out["occlusion"] = occlusion_separation(pred_masked, pred_clean, grids)
        out["occlusion_maps"] = {"masked": pred_masked.mean(0).tolist(), "clean": pred_clean.mean(0).tolist(),
                                 "true": grids.mean(0).tolist()}
        rows = list(figure_rows)
        out["figure"] = {"rows": rows, "masked": pred_masked[rows].tolist(), "clean": pred_clean[rows].tolist(),
                         "true": grids[rows].tolist()}
    return out


def read_loss_curves(metrics_csv: Path) -> dict[str, list[float]]:
    """Per-epoch means of the logged training losses (``train/<name>_epoch`` columns of Lightning's CSV)."""
    curves: dict[str, list[float]] = {}
    with open(metrics_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not row.get("train/loss_epoch"):
                continue
            for column, value in row.items():
                if column.startswith("train/") and column.endswith("_epoch") and value:
                    curves.setdefault(column[len("train/"):-len("_epoch")], []).append(float(value))
    return curves


def _run_task(task: RunTask) -> dict[str, Any]:
    """Train one variant and evaluate it on the held-out pairs (in a worker process; output to ``run.log``)."""
    import torch

    from oaml.training.run import run_training

    run_dir = Path(task.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    variant = VARIANTS[task.variant]
    with _output_to(run_dir / "run.log"):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr, force=True)
        torch.set_num_threads(task.threads)
        config = run_config(task.options, variant, task.seed, Path(task.train_dir), run_dir,
                            task.num_train_identities)
        start = time.perf_counter()
        result = run_training(config)
        train_s = time.perf_counter() - start
        if result.last_checkpoint is None:
            raise RuntimeError(f"run {task.variant} seed {task.seed} left no checkpoint; see {run_dir / 'run.log'}")
        start = time.perf_counter()
        evaluation = _evaluate(result.last_checkpoint, task.pairs, task.options.mask_seed, variant.trains_occlusion,
                               task.figure_rows)
        eval_s = time.perf_counter() - start
    return {"variant": task.variant, "seed": task.seed, "split": task.split, "train_s": train_s, "eval_s": eval_s,
            "experiment_dir": str(result.experiment_dir), "checkpoint": str(result.last_checkpoint),
            "curves": read_loss_curves(result.experiment_dir / "metrics.csv"), **evaluation}


# ------------------------------------------------------------------------------------------------ driver side
def _figure_rows(pairs: HeldOutPairs, count: int = 6) -> tuple[int, ...]:
    """The first image of up to ``count`` held-out identities, spread over the identity list."""
    firsts = np.flatnonzero(np.r_[True, pairs.labels[1:] != pairs.labels[:-1]])
    picks = np.linspace(0, firsts.size - 1, min(count, firsts.size)).round().astype(int)
    return tuple(int(firsts[k]) for k in np.unique(picks))


def threads_per_run(jobs: int) -> int:
    """Torch threads of each of ``jobs`` runs trained side by side: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // jobs)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Optimizer steps of one PK epoch on the split's training identities (what the training sampler yields)."""
    from oaml.data.samplers import PKSampler

    labels = np.repeat(np.arange(len(split.train)), [len(identity.images) for identity in split.train])
    return len(PKSampler(labels, batch_size, _K))


def _execute(tasks: list[RunTask], jobs: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context) as pool:
        futures = {pool.submit(_run_task, task): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                result = future.result()
            except Exception as error:
                for other in futures:
                    other.cancel()
                raise RuntimeError(f"study run {task.variant} seed {task.seed} split {task.split} failed: {error}; "
                                   f"see {Path(task.run_dir) / 'run.log'}") from error
            results.append(result)
            masked = result["metrics"]["masked"]["combined"]["accuracy"]
            logger.info("[%d/%d] %s seed %d split %d: train %.0f s, eval %.0f s; masked combined %.1f%%",
                        len(results), len(tasks), task.variant, task.seed, task.split, result["train_s"],
                        result["eval_s"], 100 * masked)
    order = {(t.split, t.seed, t.variant): k for k, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order[(r["split"], r["seed"], r["variant"])])


def run_study(options: StudyOptions) -> dict[str, Path]:
    """Run every split x seed x variant, then write the report; returns the written files by name.

    The runs train in worker processes started with ``spawn``: a script that calls this function needs the
    ``if __name__ == "__main__":`` guard.

    Raises:
        DataError: If there is no study data.
        ConfigError: On a split without enough identities.
        RuntimeError: If a run fails (the message names its log).
    """
    from oaml.study.report import write_study

    start = time.perf_counter()
    roots = [Path(r) for r in options.roots] or default_roots()
    if not roots:
        raise DataError("no study data: pass aligned identity folders, or provide ../shared/data (or set "
                        "OAML_SHARED_DATA) with att_faces_arcface112, lfw_subset10_arcface112, dlib_johns_arcface112")
    identities = discover_identities(roots)
    work = Path(options.work_dir).resolve()
    threads = threads_per_run(options.jobs)
    tasks, splits = [], []
    for split_seed in options.splits:
        split = split_identities(identities, options.test_fraction, split_seed)
        pairs = held_out_pairs(split.test, split_seed)
        if pairs.issame.shape[0] < 20:
            raise DataError(f"split {split_seed}: only {pairs.issame.shape[0]} held-out pairs; 10 folds need more "
                            f"(add identities with more images or raise --test-fraction)")
        steps = steps_per_epoch(split, options.batch_size)
        if steps == 0:
            raise ConfigError(f"--batch-size: {options.batch_size} takes {options.batch_size // _K} identities per "
                              f"batch, but split {split_seed} trains on {len(split.train)}; lower --batch-size")
        train_dir = link_train_folder(split.train, work / f"split{split_seed}" / "train")
        splits.append({"split": split, "pairs": pairs, "steps_per_epoch": steps})
        for seed in options.seeds:
            for key in options.variants:
                tasks.append(RunTask(key, seed, split_seed, str(train_dir), str(work / f"split{split_seed}" /
                                     f"{key}_seed{seed}"), len(split.train), pairs, options, threads,
                                     _figure_rows(pairs)))
    logger.info("study: %d identities from %s; %d runs (%d split(s) x %d seed(s) x %d variant(s)), %d at a time",
                len(identities), ", ".join(str(r) for r in roots), len(tasks), len(options.splits),
                len(options.seeds), len(options.variants), options.jobs)
    results = _execute(tasks, options.jobs)
    return write_study(options, roots, identities, splits, results, time.perf_counter() - start,
                       options.command())


# ------------------------------------------------------------------------------------------------ command line
def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``oaml study`` (also used by ``python -m oaml.study.runs``)."""
    d = StudyOptions()
    parser.add_argument("roots", nargs="*", help="aligned identity folders (default: the shared data sets present)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds), help="training seeds")
    parser.add_argument("--splits", nargs="+", type=int, default=list(d.splits), help="identity-split seeds")
    parser.add_argument("--variants", nargs="+", default=list(d.variants), choices=list(VARIANTS),
                        help="configurations: a AdaFace, b +masks, c +QAConv, d full, e full with detached maps")
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction,
                        help="fraction of each dataset's identities held out")
    parser.add_argument("--arch", default=d.arch, help="backbone")
    parser.add_argument("--width", type=float, default=d.width, help="backbone width multiplier")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (PK: each identity once)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch (P x K, K = 4)")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    parser.add_argument("--mask-seed", type=int, default=d.mask_seed, help="seed of the held-out probe masks")
    parser.add_argument("--jobs", type=int, default=d.jobs, help="runs trained side by side")
    parser.add_argument("--output-dir", default=d.output_dir, help="where results.md/.json and figures/ go (docs "
                        "regenerates the repository's docs/results.md)")
    parser.add_argument("--work-dir", default=d.work_dir, help="where the runs go")


def options_from_args(args: argparse.Namespace) -> StudyOptions:
    return StudyOptions(roots=tuple(args.roots), seeds=tuple(args.seeds), splits=tuple(args.splits),
                        variants=tuple(args.variants), test_fraction=args.test_fraction, arch=args.arch,
                        width=args.width, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        mask_seed=args.mask_seed, jobs=args.jobs, output_dir=args.output_dir, work_dir=args.work_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m oaml.study.runs``: the same as ``oaml study``."""
    parser = argparse.ArgumentParser(prog="python -m oaml.study.runs", description=__doc__.split("\n")[0])
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        files = run_study(options_from_args(args))
    except (OamlError, FileNotFoundError) as error:
        print(f"oaml study: error: {error}", file=sys.stderr)
        return 2
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
