"""Scoring one protocol of ``oaml eval``: clean, or under occlusion, with the occlusion head's calibration (SPEC §9,
§13.1-§13.2).

:func:`score_protocol` scores pairs with every available method (AdaFace cosine; QAConv and their label-free
fusion when the checkpoint has QAConv; the 10-fold accuracies of listed pairs).

Each protocol of :class:`~oaml.data.occluders.OcclusionProtocol` (``mask``, ``sunglasses``, ``mask+sunglasses``)
is scored like the clean one, on the same pairs, with its own method names (``adaface_sunglasses``; the medical
mask keeps ``adaface_masked``). Which images are occluded:

- **listed pairs** (pairs file, ``.bin``): the first image of every pair gets the protocol's first occluder (none
  for a one-sided protocol), the second image its second occluder;
- **all pairs** of a folder: probe ``i`` of every pair ``i < j`` gets the one-sided occluder (occluded ``i`` vs
  clean ``j``, as ``--mask-probes`` always did); a complementary ``A+B`` puts ``A`` on ``i`` and ``B`` on ``j``.

Image ``k`` is occluded with the seed and its own index (:func:`oaml.evaluation.embed.extract_occluded`), so it
gets the same occluder in every protocol and in ``oaml occlude``. When the model has an occlusion head, its
predicted maps of the occluded images are compared with the true visible fractions
(:func:`oaml.evaluation.calibration.head_calibration`); so are the maps of data written by ``oaml occlude``, whose
``occlusion.npz`` holds the truth (:func:`occlusion_npz_calibration`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oaml.data.occluders import OcclusionProtocol, parse_protocols
from oaml.evaluation.api import FaceRecognizer
from oaml.evaluation.calibration import head_calibration
from oaml.evaluation.embed import extract_occluded
from oaml.evaluation.eval_data import EvalImages, EvalSet
from oaml.evaluation.options import EvalOptions
from oaml.evaluation.results import ProtocolScores
from oaml.evaluation.scoring import (BatchFeatures, cosine_paired, cosine_upper, fuse_label_free, fused_ten_fold,
                                     qaconv_paired, qaconv_upper, squared_distances)
from oaml.evaluation.verification import KFoldResult, Omitted, ten_fold_accuracy

__all__ = ["OCCLUSION_NPZ", "OccludedScores", "eval_protocols", "image_keys", "occlusion_npz_calibration",
           "score_occlusion_protocol", "score_protocol"]

logger = logging.getLogger(__name__)

OCCLUSION_NPZ = "occlusion.npz"
"""The ground-truth file ``oaml occlude`` writes beside the occluded data (docs/formats.md)."""

_NO_HEAD = "the checkpoint has no occlusion head"
_MIN_FOLD_PAIRS = 10


@dataclass
class OccludedScores:
    """One occlusion protocol's scores and its occlusion-head calibration.

    Attributes:
        scores: The scores of every method, named with the protocol's suffix.
        calibration: :func:`~oaml.evaluation.calibration.head_calibration` over the occluded images, or
            ``{"omitted": reason}``.
    """

    scores: ProtocolScores
    calibration: dict[str, Any] = field(default_factory=dict)


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


def eval_protocols(options: EvalOptions) -> tuple[OcclusionProtocol, ...]:
    """The protocols an evaluation runs: the medical mask with ``mask_probes``, then ``options.occluders``.

    Raises:
        ValueError: For an unknown occluder or a malformed protocol (one line).
    """
    return parse_protocols((["mask"] if options.mask_probes else []) + list(options.occluders))


def _side(recognizer: FaceRecognizer, images: EvalImages, clean: BatchFeatures, rows: np.ndarray | None,
          occluder: str | None, options: EvalOptions, desc: str) -> tuple[BatchFeatures, np.ndarray | None, Any]:
    """``(features, rows into them, (predicted, true) maps or None)`` of one side of the pairs."""
    if occluder is None:
        return clean, rows, None
    unique, position = (None, None) if rows is None else np.unique(rows, return_inverse=True)
    with_maps = recognizer.qaconv is not None or recognizer.occlusion_head is not None
    feats, grids = extract_occluded(recognizer, images, unique, with_maps=with_maps, occluder=occluder,
                                    seed=options.mask_seed, num_workers=options.num_workers,
                                    progress=options.progress, desc=desc)
    maps = None if feats.occlusion is None else (feats.occlusion[:, 0].numpy(), grids)
    return feats, None if position is None else position.reshape(-1), maps


def score_occlusion_protocol(recognizer: FaceRecognizer, images: EvalImages, clean: BatchFeatures,
                             rows_i: np.ndarray | None, rows_j: np.ndarray | None, issame: np.ndarray,
                             protocol: OcclusionProtocol | str, options: EvalOptions) -> OccludedScores:
    """Score the pairs under ``protocol`` (sides as in the module docstring) and calibrate the occlusion head.

    The study calls it on its held-out pairs, e.g. with ``"mask+sunglasses"``.

    Args:
        recognizer: The model.
        images: The images (read again and occluded; image ``k`` is seeded by ``k``).
        clean: The clean features of every image (reused for a side the protocol leaves clean).
        rows_i: First image of each listed pair; None scores all pairs i < j.
        rows_j: Second image of each listed pair.
        issame: Ground truth per pair.
        protocol: The occlusion protocol, or its text.
        options: Seed (``mask_seed``), weights, workers and progress.
    """
    protocol = OcclusionProtocol.parse(protocol) if isinstance(protocol, str) else protocol
    first, second = protocol.first, protocol.second
    if rows_i is None:  # all pairs: a one-sided occluder goes on probe i
        first, second = (second, None) if first is None else (first, second)
    feats_a, rows_a, maps_a = _side(recognizer, images, clean, rows_i, first, options, f"{protocol.name} first")
    feats_b, rows_b, maps_b = _side(recognizer, images, clean, rows_j, second, options, f"{protocol.name} second")
    scores = score_protocol(recognizer, feats_a, feats_b, rows_a, rows_b, issame, options, protocol.suffix)
    drawn = [maps for maps in (maps_a, maps_b) if maps is not None]
    if not drawn:
        return OccludedScores(scores, {"omitted": _NO_HEAD})
    return OccludedScores(scores, head_calibration(np.concatenate([p for p, _ in drawn]),
                                                   np.concatenate([t for _, t in drawn])))


def image_keys(data: EvalSet) -> list[str]:
    """The key of every image in an ``occlusion.npz``: its index in a ``.bin``, else its path below the folder."""
    if data.mode == "bin":
        return [name[name.rindex("[") + 1:-1] for name in data.images.names]
    root = Path(data.source).resolve()
    paths = data.images.paths or []
    return [Path(p).resolve().relative_to(root).as_posix() if Path(p).resolve().is_relative_to(root) else p
            for p in paths]


def _npz_path(data: EvalSet) -> Path:
    source = Path(data.source)
    return source.with_name(OCCLUSION_NPZ) if data.mode == "bin" else source / OCCLUSION_NPZ


def occlusion_npz_calibration(data: EvalSet, clean: BatchFeatures) -> dict[str, Any] | None:
    """The head's calibration on data written by ``oaml occlude``, against the ``occlusion.npz`` beside it.

    Returns:
        None without the file (or for a ``.bin`` the file does not describe); else the calibration over the
        occluded images the evaluation scored (``images``, ``file`` added), or ``{"omitted": reason}``.
    """
    path = _npz_path(data)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        source, keys = str(npz["source"]), [str(k) for k in npz["keys"]]
        occluders, grids = [str(o) for o in npz["occluder"]], npz["grid"]
    if data.mode == "bin" and source != Path(data.source).name:
        logger.info("%s describes %s, not %s; not used", path, source, Path(data.source).name)
        return None
    row = {key: k for k, key in enumerate(keys)}
    pairs = [(i, row[key]) for i, key in enumerate(image_keys(data)) if key in row and occluders[row[key]]]
    if clean.occlusion is None:
        return {"omitted": _NO_HEAD, "file": str(path)}
    if not pairs:
        return {"omitted": f"none of the evaluated images is occluded in {path}", "file": str(path)}
    mine, theirs = (np.array(k, np.int64) for k in zip(*pairs))
    stats = head_calibration(clean.occlusion[mine, 0].numpy(), grids[theirs])
    return {**stats, "images": int(mine.size), "file": str(path)}
