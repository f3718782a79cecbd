"""Standalone evaluation of a checkpoint on any aligned dataset: ``oaml eval`` / ``main_eval.py`` (SPEC §9).

Pipeline: load the model (:func:`oaml.evaluation.api.load_model`), read the data (:mod:`oaml.evaluation.eval_data`),
extract flip-fused embeddings and both views' feature/visibility maps (:mod:`oaml.evaluation.embed`), score every
pair (:mod:`oaml.evaluation.scoring`, the path validation uses too) and turn the scores into metrics with the
shared pure functions of :mod:`oaml.evaluation.verification` (ROC, AUC, EER, TAR@FAR; for pair lists and ``.bin``
also the 10-fold accuracy through the same ``fused_ten_fold`` that validation uses).

Methods: ``adaface`` (cosine of flip-fused embeddings), ``qaconv`` (visibility-weighted QAConv, flip-averaged) and
``combined`` (label-free z-score fusion, see :data:`~oaml.evaluation.scoring.FUSION_NOTE`). QAConv and
combined are absent for backbone-only checkpoints; the reason is written to the outputs.

``mask_probes`` repeats everything with a deterministic synthetic mask (seeded by image index) on one side of every
pair: the second image of listed pairs, the probe ``i`` of every folder pair ``i < j`` (masked ``i`` vs clean ``j``).
The methods of that protocol carry the suffix ``_masked``.

Outputs (:mod:`oaml.evaluation.results`): ``results.json``, ``report.md``, ``roc.png`` and
``score_hist_<method>.png``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oaml.errors import DataError
from oaml.evaluation.api import FaceRecognizer, load_model
from oaml.evaluation.embed import extract_features
from oaml.evaluation.eval_data import EvalSet, load_eval_set
from oaml.evaluation.options import EvalOptions
from oaml.evaluation.scoring import (FUSION_NOTE, BatchFeatures, cosine_paired, cosine_upper, fuse_label_free,
                                     fused_ten_fold, qaconv_paired, qaconv_upper, squared_distances)
from oaml.evaluation.results import (ProtocolScores, build_results, console_rows, method_rocs, write_plots,
                                     write_report)
from oaml.evaluation.verification import KFoldResult, Omitted, genuine_impostor_pairs, ten_fold_accuracy

__all__ = ["EvalOptions", "EvalOutcome", "ProtocolScores", "evaluate", "score_protocol"]

logger = logging.getLogger(__name__)

_MIN_FOLD_PAIRS = 10


@dataclass
class EvalOutcome:
    """What :func:`evaluate` produced.

    Attributes:
        results: The content of ``results.json``.
        files: Output name to path.
        rows: Console table rows, one per method.
        headers: Console table headers.
    """

    results: dict[str, Any]
    files: dict[str, Path]
    rows: list[list[Any]]
    headers: list[str]


def _ten_fold(dist: np.ndarray, scores: dict[str, np.ndarray], issame: np.ndarray, suffix: str,
              options: EvalOptions) -> dict[str, KFoldResult | Omitted]:
    if issame.shape[0] < _MIN_FOLD_PAIRS:
        reason = Omitted(f"needs >= {_MIN_FOLD_PAIRS} pairs for 10 folds, have {issame.shape[0]}")
        return {name: reason for name in scores}
    out: dict[str, KFoldResult | Omitted] = {
        "adaface" + suffix: ten_fold_accuracy(dist, issame, higher_is_same=False)}
    if "qaconv" + suffix in scores:
        qa = scores["qaconv" + suffix]
        qaconv = out["qaconv" + suffix] = ten_fold_accuracy(qa, issame, higher_is_same=True)
        out["combined" + suffix] = fused_ten_fold(dist, qa, issame, (options.adaface_weight, options.qaconv_weight),
                                                  options.dynamic_weights, qaconv.accuracy)[0]
    return out


def score_protocol(recognizer: FaceRecognizer, first: BatchFeatures, second: BatchFeatures,
                   rows_first: np.ndarray | None, rows_second: np.ndarray | None, issame: np.ndarray,
                   options: EvalOptions, suffix: str = "") -> ProtocolScores:
    """Score pairs with every available method (AdaFace cosine; QAConv and combined when QAConv exists).

    Args:
        recognizer: The model.
        first: Features of the first side (all images in all-pairs mode).
        second: Features of the second side.
        rows_first: Row of each listed pair's first image in ``first``; None scores all pairs i < j instead.
        rows_second: Row of each listed pair's second image in ``second``.
        issame: Ground truth per pair.
        options: Weights, block sizes and progress.
        suffix: Appended to the method names (``"_masked"``).

    Returns:
        The :class:`ProtocolScores`.
    """
    listed = rows_first is not None and rows_second is not None
    emb_a, emb_b = first.embedding, second.embedding
    scores = {"adaface" + suffix: cosine_paired(emb_a, emb_b, rows_first, rows_second) if listed
              else cosine_upper(emb_a, emb_b)}
    qaconv, aware = recognizer.qaconv, recognizer.uses_occlusion
    if qaconv is not None:
        scores["qaconv" + suffix] = (
            qaconv_paired(qaconv, first, second, torch.as_tensor(rows_first), torch.as_tensor(rows_second),
                          aware).numpy().astype(np.float64) if listed
            else qaconv_upper(qaconv, first, second, aware, options.qaconv_block_rows, options.progress,
                              desc="qaconv" + suffix))
    result = ProtocolScores(scores, issame)
    if recognizer.qaconv is not None:
        combined, result.fusion = fuse_label_free(
            {"adaface": scores["adaface" + suffix], "qaconv": scores["qaconv" + suffix]},
            {"adaface": options.adaface_weight, "qaconv": options.qaconv_weight})
        scores["combined" + suffix] = combined
    if listed:
        dist = squared_distances(emb_a[torch.as_tensor(rows_first)], emb_b[torch.as_tensor(rows_second)]).numpy()
        result.ten_fold = _ten_fold(dist, scores, issame, suffix, options)
    return result


def _pairs(data: EvalSet, max_pairs: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    if data.mode != "all_pairs":
        return data.pair_i, data.pair_j, data.issame  # type: ignore[return-value]
    if data.num_pairs > max_pairs:
        raise DataError(f"{data.source}: {len(data.images)} images give {data.num_pairs} pairs (> max {max_pairs}); "
                        f"evaluate a pairs file (--pairs) or a subset instead")
    _, _, same = genuine_impostor_pairs(data.labels, max_pairs=max_pairs)  # type: ignore[arg-type]
    return None, None, same


def _check_counts(issame: np.ndarray, data: EvalSet) -> None:
    genuine = int(np.count_nonzero(issame))
    if genuine == 0 or genuine == issame.shape[0]:
        raise DataError(f"{data.source}: {issame.shape[0]} pairs with {genuine} genuine and "
                        f"{issame.shape[0] - genuine} impostor pairs; ROC needs both (folders need identities with "
                        f">= 2 images and >= 2 identities)")


def _masked_protocol(recognizer: FaceRecognizer, data: EvalSet, clean: BatchFeatures, rows_i: np.ndarray | None,
                     rows_j: np.ndarray | None, issame: np.ndarray, options: EvalOptions) -> ProtocolScores:
    with_maps = recognizer.qaconv is not None
    common = dict(with_maps=with_maps, mask_seed=options.mask_seed, num_workers=options.num_workers,
                  progress=options.progress, desc="masked features")
    if rows_i is None or rows_j is None:  # all pairs: masked probe i vs clean j
        masked = extract_features(recognizer, data.images, **common)  # type: ignore[arg-type]
        return score_protocol(recognizer, masked, clean, None, None, issame, options, "_masked")
    second, position = np.unique(rows_j, return_inverse=True)
    masked = extract_features(recognizer, data.images, second, **common)  # type: ignore[arg-type]
    return score_protocol(recognizer, clean, masked, rows_i, position.reshape(-1), issame, options,
                          "_masked")


def _peak_memory() -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        import resource

        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except ImportError:  # not on Windows
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def evaluate(model_path: str | os.PathLike[str], data_path: str | os.PathLike[str],
             output_dir: str | os.PathLike[str], pairs_path: str | os.PathLike[str] | None = None,
             options: EvalOptions | None = None) -> EvalOutcome:
    """Evaluate a checkpoint on a dataset and write ``results.json``, ``report.md`` and the plots.

    Args:
        model_path: Our checkpoint or a released AdaFace ``.ckpt``.
        data_path: A folder of identity folders (aligned faces) or a ``.bin`` verification file.
        output_dir: Output folder (created if needed).
        pairs_path: Optional pairs file (LFW ``pairs.txt`` or a "path_a path_b label" list), paths relative to
            ``data_path``.
        options: Evaluation settings.

    Returns:
        An :class:`EvalOutcome` (results, written files and the console table).

    Raises:
        FileNotFoundError: If an input does not exist.
        CheckpointError: If the model cannot be loaded.
        DataError: On unusable data (wrong image sizes without ``resize``, no genuine or impostor pairs ...).
    """
    options = options or EvalOptions()
    start, started_at = time.perf_counter(), _dt.datetime.now(_dt.timezone.utc)
    recognizer = load_model(model_path, options.device, arch=options.arch, batch_size=options.batch_size,
                            resize=options.resize)
    data = load_eval_set(data_path, pairs_path, recognizer.info.input_size, options.resize, options.skip_bad,
                         options.pairs_format)
    rows_i, rows_j, issame = _pairs(data, options.max_pairs)
    _check_counts(issame, data)
    logger.info("evaluating %d images, %d pairs (%s)", len(data.images), issame.shape[0], data.mode)
    t0 = time.perf_counter()
    clean = extract_features(recognizer, data.images, with_maps=recognizer.qaconv is not None,
                             num_workers=options.num_workers, progress=options.progress)
    timings = {"features_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    protocols = {"clean": score_protocol(recognizer, clean, clean, rows_i, rows_j, issame, options)}
    if options.mask_probes:
        protocols["masked"] = _masked_protocol(recognizer, data, clean, rows_i, rows_j, issame, options)
    timings["scoring_s"] = time.perf_counter() - t0
    rocs = method_rocs(protocols)
    results = build_results(recognizer, data, protocols, rocs, options=asdict(options), fars=options.fars,
                            started_at=started_at, timings=timings, resources=_peak_memory(),
                            fusion_note=FUSION_NOTE)
    files = write_plots(protocols, rocs, output_dir) if options.plots else {}
    results["timings"]["wall_time_s"] = time.perf_counter() - start  # everything but writing the two text files
    accuracies = {name: r for p in protocols.values() for name, r in p.ten_fold.items() if isinstance(r, KFoldResult)}
    files.update(write_report(results, rocs, accuracies, output_dir, options.fars))
    rows, headers = console_rows(results, options.fars)
    return EvalOutcome(results, files, rows, headers)
