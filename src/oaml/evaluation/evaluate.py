"""Standalone evaluation of a checkpoint on any aligned dataset: ``oaml eval`` / ``main_eval.py`` (SPEC §9).

Pipeline: load the model (:func:`oaml.evaluation.api.load_model`), read the data (:mod:`oaml.evaluation.eval_data`),
extract flip-fused embeddings and both views' feature/visibility maps (:mod:`oaml.evaluation.embed`), score every
pair (:mod:`oaml.evaluation.scoring`, the path validation uses too) and turn the scores into metrics with the
shared pure functions of :mod:`oaml.evaluation.verification` (ROC, AUC, EER, TAR@FAR; for pair lists and ``.bin``
also the 10-fold accuracy through the same ``fused_ten_fold`` that validation uses).

Methods: ``adaface`` (cosine of flip-fused embeddings), ``qaconv`` (visibility-weighted QAConv, flip-averaged) and
``combined`` (label-free z-score fusion, see :data:`~oaml.evaluation.scoring.FUSION_NOTE`). QAConv and
combined are absent for backbone-only checkpoints; the reason is written to the outputs.

Occlusion protocols (:mod:`oaml.evaluation.protocols`): ``mask_probes`` repeats everything with the deterministic
medical mask (seeded by image index) on one side of every pair: the second image of listed pairs, the probe ``i`` of
every folder pair ``i < j`` (masked ``i`` vs clean ``j``); its methods carry the suffix ``_masked``. ``occluders``
adds any other protocol (``sunglasses``, ``mask+sunglasses``), each with its own suffix (``_sunglasses``). With an
occlusion head, each protocol also reports the head's calibration, and so does data written by ``oaml occlude``.

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
from oaml.evaluation.api import load_model
from oaml.evaluation.embed import extract_features
from oaml.evaluation.eval_data import EvalSet, load_eval_set
from oaml.evaluation.options import EvalOptions
from oaml.evaluation.protocols import (OCCLUSION_NPZ, eval_protocols, occlusion_npz_calibration,
                                       score_occlusion_protocol, score_protocol)
from oaml.evaluation.results import (ProtocolScores, build_results, console_rows, method_rocs, write_plots,
                                     write_report)
from oaml.evaluation.scoring import FUSION_NOTE
from oaml.evaluation.verification import KFoldResult, genuine_impostor_pairs

__all__ = ["EvalOptions", "EvalOutcome", "ProtocolScores", "evaluate", "score_protocol"]

logger = logging.getLogger(__name__)


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
    eval_protocols(options)  # an unknown occluder fails before any image is read
    data = load_eval_set(data_path, pairs_path, recognizer.info.input_size, options.resize, options.skip_bad,
                         options.pairs_format, options.landmarks)
    rows_i, rows_j, issame = _pairs(data, options.max_pairs)
    _check_counts(issame, data)
    logger.info("evaluating %d images, %d pairs (%s)", len(data.images), issame.shape[0], data.mode)
    t0 = time.perf_counter()
    clean = extract_features(recognizer, data.images, num_workers=options.num_workers, progress=options.progress,
                             with_maps=recognizer.qaconv is not None or recognizer.occlusion_head is not None)
    timings = {"features_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    protocols = {"clean": score_protocol(recognizer, clean, clean, rows_i, rows_j, issame, options)}
    calibration: dict[str, Any] = {}
    for protocol in eval_protocols(options):
        key = "masked" if protocol.is_mask else protocol.name
        occluded = score_occlusion_protocol(recognizer, data.images, clean, rows_i, rows_j, issame, protocol,
                                            options)
        protocols[key], calibration[key] = occluded.scores, occluded.calibration
    from_npz = occlusion_npz_calibration(data, clean)
    if from_npz is not None:
        calibration[OCCLUSION_NPZ] = from_npz
    timings["scoring_s"] = time.perf_counter() - t0
    rocs = method_rocs(protocols)
    results = build_results(recognizer, data, protocols, rocs, options=asdict(options), fars=options.fars,
                            started_at=started_at, timings=timings, resources=_peak_memory(),
                            fusion_note=FUSION_NOTE, calibration=calibration)
    files = write_plots(protocols, rocs, output_dir) if options.plots else {}
    results["timings"]["wall_time_s"] = time.perf_counter() - start  # everything but writing the two text files
    accuracies = {name: r for p in protocols.values() for name, r in p.ten_fold.items() if isinstance(r, KFoldResult)}
    files.update(write_report(results, rocs, accuracies, output_dir, options.fars))
    rows, headers = console_rows(results, options.fars)
    return EvalOutcome(results, files, rows, headers)
