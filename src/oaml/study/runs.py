"""``oaml study``: does occlusion-aware training help on masked real faces? A CPU-scale, reproducible ablation.

``python -m oaml.study`` runs the same study (the command line lives in :mod:`oaml.cli.study`). It

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
   compares the predicted 7x7 visibility with the true mask (:func:`oaml.evaluation.calibration.head_calibration`);
4. writes ``results.md``, ``results.json`` and the figures (:mod:`oaml.study.report`).

Runs go to ``--work-dir`` (each with its ``run.log``, ``metrics.csv`` and checkpoint); ``--jobs`` runs train side by
side, each on ``cpu_count // jobs`` threads (two single-thread runs beat one two-thread run at this width).
Nothing is tuned on the held-out identities: every setting is fixed before the study runs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from oaml.errors import ConfigError, DataError
from oaml.study.data import (DEFAULT_DATASETS, VIEW2_DATASET, BenchmarkPairs, HeldOutPairs, benchmark_pairs,
                             shared_data, Split, default_roots, discover_identities, held_out_pairs,
                             link_train_folder, split_identities)
from oaml.study.options import (BENCHMARK_PROTOCOLS, CALIBRATED_OCCLUDERS, FAR, IMAGES_PER_IDENTITY, METHODS,
                                PROTOCOLS, VARIANTS, StudyOptions, Variant, threads_per_run)
from oaml.study.report import write_study

__all__ = ["run_config", "run_study", "steps_per_epoch"]

logger = logging.getLogger(__name__)

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
    benchmark: HeldOutPairs | None
    options: StudyOptions
    threads: int
    figure_rows: tuple[int, ...] = dataclasses.field(default=())


def run_config(options: StudyOptions, variant: Variant, seed: int, train_dir: Path, run_dir: Path,
               num_train_identities: int) -> Any:
    """The :class:`~oaml.config.OamlConfig` of one run: the packaged ``tiny_cpu`` recipe with the study's settings,
    then the variant's overrides.

    There is no validation set: the held-out identities are scored only once, after training, with the last
    weights (choosing a checkpoint on them would tune on the test identities).
    """
    from oaml.config import config_from_dict, load_config_file, validate

    epochs = options.epochs
    study = {"data_root": str(train_dir.parent), "train_data_path": train_dir.name, "val_data_path": "no_validation",
             "epochs": epochs, "batch_size": options.batch_size, "lr": options.lr, "seed": seed,
             "lr_milestones": [max(1, epochs * 5 // 8), max(2, epochs * 7 // 8)],
             "warmup_epochs": max(1.0, epochs / 20), "arch": options.arch, "width": options.width,
             "k_nearest": min(16, num_train_identities - 1), "num_workers": 0, "prefix": variant.key,
             "output_dir": str(run_dir)}
    config = config_from_dict(load_config_file("tiny_cpu"), study | dict(variant.overrides))
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


def _occluded_features(recognizer: Any, paths: tuple[str, ...], occluders: set[str | None],
                       seed: int) -> dict[str | None, tuple[Any, np.ndarray]]:
    """Features and true 7x7 visible fractions of every image, clean (None) and under each occluder."""
    from oaml.evaluation.embed import extract_occluded
    from oaml.evaluation.eval_data import EvalImages

    images = EvalImages(names=list(paths), paths=list(paths))
    return {name: extract_occluded(recognizer, images, occluder=name, seed=seed, progress=False)
            for name in sorted(occluders, key=lambda o: (o is not None, o or ""))}


def _score_protocols(recognizer: Any, pairs: HeldOutPairs, protocols: dict[str, tuple[str | None, str | None]],
                     features: dict[str | None, tuple[Any, np.ndarray]]) -> dict[str, dict[str, dict]]:
    """Accuracy, its 10-fold std and TAR@FAR of every method under every protocol."""
    import torch

    from oaml.evaluation.evaluate import EvalOptions, score_protocol
    from oaml.evaluation.fusion import cross_fitted_scores, occlusion_amount, visibility_ten_fold
    from oaml.evaluation.scoring import squared_distances
    from oaml.evaluation.verification import KFoldResult, TarPoint, tar_at_far

    metrics: dict[str, dict[str, dict]] = {}
    for protocol, (occluder_a, occluder_b) in protocols.items():
        first, second = features[occluder_a][0], features[occluder_b][0]
        scored = score_protocol(recognizer, first, second, pairs.first, pairs.second, pairs.issame,
                                EvalOptions(progress=False))
        folds, scores = dict(scored.ten_fold), dict(scored.scores)
        if first.occlusion is not None and second.occlusion is not None and "qaconv" in scores:
            rows_a, rows_b = torch.as_tensor(pairs.first), torch.as_tensor(pairs.second)
            u = occlusion_amount(first.occlusion[rows_a].mean(dim=(1, 2, 3)).numpy(),
                                 second.occlusion[rows_b].mean(dim=(1, 2, 3)).numpy())
            dist = squared_distances(first.embedding[rows_a], second.embedding[rows_b]).numpy()
            folds["combined_vis"] = visibility_ten_fold(dist, scores["qaconv"], u, pairs.issame)
            scores["combined_vis"] = cross_fitted_scores(dist, scores["qaconv"], u, pairs.issame)
        metrics[protocol] = {}
        for method in METHODS:
            fold = folds[method]
            assert isinstance(fold, KFoldResult)  # >= 10 pairs, checked when the pairs are made
            tar = tar_at_far(scores[method], pairs.issame, fars=(FAR,))[FAR]
            metrics[protocol][method] = {"accuracy": fold.accuracy, "fold_std": fold.std,
                                         "tar": tar.tar if isinstance(tar, TarPoint) else None}
    return metrics


def _evaluate(checkpoint: Path, pairs: HeldOutPairs, benchmark: HeldOutPairs | None, mask_seed: int,
              occlusion: bool, figure_rows: tuple[int, ...]) -> dict[str, Any]:
    from oaml.evaluation.api import load_model
    from oaml.evaluation.calibration import head_calibration

    recognizer = load_model(checkpoint)
    occluders = {o for sides in PROTOCOLS.values() for o in sides} | set(CALIBRATED_OCCLUDERS)
    features = _occluded_features(recognizer, pairs.paths, occluders, mask_seed)
    metrics = _score_protocols(recognizer, pairs, PROTOCOLS, features)
    if benchmark is not None:
        view2 = {o for sides in BENCHMARK_PROTOCOLS.values() for o in sides}
        metrics |= _score_protocols(recognizer, benchmark, BENCHMARK_PROTOCOLS,
                                    _occluded_features(recognizer, benchmark.paths, view2, mask_seed))
    out: dict[str, Any] = {"metrics": metrics}
    clean = features[None][0]
    if not occlusion or clean.occlusion is None:
        return out
    pred_clean = clean.occlusion[:, 0].numpy()
    out["calibration"] = {name: head_calibration(features[name][0].occlusion[:, 0].numpy(), features[name][1],
                                                 pred_clean) for name in CALIBRATED_OCCLUDERS}
    out["occlusion"] = out["calibration"]["mask"]
    pred_masked, grids = features["mask"][0].occlusion[:, 0].numpy(), features["mask"][1]
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
        evaluation = _evaluate(result.last_checkpoint, task.pairs, task.benchmark, task.options.mask_seed,
                               variant.trains_occlusion, task.figure_rows)
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


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Optimizer steps of one PK epoch on the split's training identities (what the training sampler yields)."""
    from oaml.data.samplers import PKSampler

    labels = np.repeat(np.arange(len(split.train)), [len(identity.images) for identity in split.train])
    return len(PKSampler(labels, batch_size, IMAGES_PER_IDENTITY))


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


def _benchmark(options: StudyOptions, split: Split) -> BenchmarkPairs | None:
    """The benchmark pairs of people unseen in ``split``'s training identities, or None (see
    :attr:`StudyOptions.benchmark`)."""
    if options.benchmark == "auto":
        root = shared_data() / VIEW2_DATASET
        if options.roots or not (root / "pairs.txt").is_file():
            return None
    elif not options.benchmark:
        return None
    else:
        root = Path(options.benchmark)
    bench = benchmark_pairs(root, split.train)
    logger.info("benchmark %s: %d of %d pairs have both people unseen in training (%d dropped)", bench.name,
                bench.pairs.issame.shape[0], bench.total, bench.dropped)
    return bench


def run_study(options: StudyOptions) -> dict[str, Path]:
    """Run every split x seed x variant, then write the report; returns the written files by name.

    The runs train in worker processes started with ``spawn``: a script that calls this function needs the
    ``if __name__ == "__main__":`` guard.

    Raises:
        DataError: If there is no study data.
        ConfigError: On a split without enough identities.
        RuntimeError: If a run fails (the message names its log).
    """
    start = time.perf_counter()
    roots = [Path(r) for r in options.roots] or default_roots()
    if not roots:
        raise DataError("no study data: pass aligned identity folders, or provide ../shared/data (or set "
                        "OAML_SHARED_DATA) with " + ", ".join(DEFAULT_DATASETS))
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
            per_batch = options.batch_size // IMAGES_PER_IDENTITY
            raise ConfigError(f"--batch-size: {options.batch_size} takes {per_batch} identities per "
                              f"batch, but split {split_seed} trains on {len(split.train)}; lower --batch-size")
        train_dir = link_train_folder(split.train, work / f"split{split_seed}" / "train")
        bench = _benchmark(options, split)
        splits.append({"split": split, "pairs": pairs, "steps_per_epoch": steps, "benchmark": bench})
        for seed in options.seeds:
            for key in options.variants:
                tasks.append(RunTask(key, seed, split_seed, str(train_dir), str(work / f"split{split_seed}" /
                                     f"{key}_seed{seed}"), len(split.train), pairs,
                                     None if bench is None or seed != options.seeds[0] else bench.pairs,
                                     options, threads,
                                     _figure_rows(pairs)))
    logger.info("study: %d identities from %s; %d runs (%d split(s) x %d seed(s) x %d variant(s)), %d at a time",
                len(identities), ", ".join(str(r) for r in roots), len(tasks), len(options.splits),
                len(options.seeds), len(options.variants), options.jobs)
    results = _execute(tasks, options.jobs)
    return write_study(options, roots, identities, splits, results, time.perf_counter() - start,
                       options.command())
