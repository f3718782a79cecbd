"""Pair scores of the standalone evaluator: AdaFace cosine, QAConv, and their label-free fusion (SPEC §9).

All scores are similarities (higher = same). Two pair layouts:

- **listed pairs** ``(rows_a[k], rows_b[k])`` (pairs files, ``.bin``): cosine per pair and paired QAConv;
- **all pairs i < j** of N images (folders): the upper triangle in ``numpy.triu_indices(N, 1)`` order, computed in
  row blocks so that only a ``block x N`` slice exists at a time (QAConv also chunks its own similarity tensor).
  Block ``[a, b)`` is scored against images ``a + 1 ...`` only, so no pair is computed twice and i = j never is.

QAConv scores are averaged over the originals and the mirror images, as in validation.

**Fusion without test labels.** ``combined = w_a z(cosine) + w_q z(qaconv)``, where ``z`` standardises each method
with the mean and std over *all* scored pairs of the protocol, regardless of their labels (a label-free,
transductive normalisation: no genuine/impostor information enters it). The 10-fold accuracy of the combined score
instead uses :func:`oaml.evaluation.verification.combined_ten_fold_accuracy`, which standardises on the training
folds only, exactly as validation does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from oaml.evaluation.api import BatchFeatures, FaceRecognizer

__all__ = ["FUSION_NOTE", "cosine_paired", "cosine_upper", "fuse_label_free", "qaconv_paired_scores",
           "qaconv_upper", "upper_blocks"]

logger = logging.getLogger(__name__)

FUSION_NOTE = ("combined = w_adaface * z(adaface cosine) + w_qaconv * z(qaconv), where z standardises each score "
               "with the mean and std (ddof=0) over all scored pairs of the protocol, computed without labels; the "
               "10-fold combined accuracy instead standardises on the training folds only (as validation does)")
"""How the combined score is built; written to results.json and report.md."""

_COSINE_BLOCK_PAIRS = 1 << 22  # entries of one cosine block (16 MiB of float32)


def upper_blocks(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    """Row blocks ``[a, b)`` of the strict upper triangle of an ``n x n`` matrix (the last row has no pairs)."""
    for a in range(0, n - 1, block_rows):
        yield a, min(a + block_rows, n - 1)


def _take_upper(block: np.ndarray) -> np.ndarray:
    """Row r of a block that starts at row a and column a + 1 keeps columns r..: the pairs (a + r, j > a + r)."""
    rows, cols = block.shape
    return block[np.triu_indices(rows, k=0, m=cols)]


def cosine_paired(emb_a: np.ndarray, emb_b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Cosine of unit embeddings ``emb_a[rows_a[k]]`` and ``emb_b[rows_b[k]]`` (float64, N)."""
    return np.einsum("nd,nd->n", emb_a[rows_a].astype(np.float64), emb_b[rows_b].astype(np.float64))


def cosine_upper(emb_probe: np.ndarray, emb_gallery: np.ndarray) -> np.ndarray:
    """Cosine of ``probe[i]`` and ``gallery[j]`` for all i < j (float64, ``n(n-1)/2`` in ``triu_indices`` order)."""
    n = emb_probe.shape[0]
    probe, gallery = emb_probe.astype(np.float64), emb_gallery.astype(np.float64)
    block = max(1, _COSINE_BLOCK_PAIRS // max(n, 1))
    parts = [_take_upper(probe[a:b] @ gallery[a + 1:].T) for a, b in upper_blocks(n, block)]
    return np.concatenate(parts) if parts else np.zeros(0)


def qaconv_paired_scores(recognizer: FaceRecognizer, feats_a: BatchFeatures, feats_b: BatchFeatures,
                         rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Flip-averaged paired QAConv scores of ``(feats_a[rows_a[k]], feats_b[rows_b[k]])`` (float64, N)."""
    scores = recognizer.qaconv_paired(feats_a, feats_b, torch.as_tensor(rows_a), torch.as_tensor(rows_b))
    return scores.numpy().astype(np.float64)


def qaconv_upper(recognizer: FaceRecognizer, probe: BatchFeatures, gallery: BatchFeatures, block_rows: int = 128,
                 progress: bool = True, desc: str = "qaconv") -> np.ndarray:
    """Flip-averaged QAConv of ``probe[i]`` against ``gallery[j]`` for all i < j (``triu_indices`` order).

    Args:
        recognizer: Model with a QAConv matcher.
        probe: Features of the probe side (e.g. masked copies), N images.
        gallery: Features of the gallery side, the same N images.
        block_rows: Probe rows per block; the output slice is ``block_rows x N``.
        progress: Show a tqdm bar on stderr.
        desc: The bar's label.

    Returns:
        ``n(n-1)/2`` float64 scores.
    """
    n = probe.embedding.shape[0]
    parts = []
    total = n * (n - 1) // 2
    with tqdm(total=total, desc=desc, unit="pair", unit_scale=True, disable=not progress, leave=False) as bar:
        for a, b in upper_blocks(n, block_rows):
            block = recognizer.qaconv_all(probe, gallery, slice(a, b), slice(a + 1, None)).numpy()
            parts.append(_take_upper(block).astype(np.float64))
            bar.update(int(parts[-1].size))
    return np.concatenate(parts) if parts else np.zeros(0)


def _standardise(scores: np.ndarray, name: str) -> tuple[np.ndarray, dict[str, float]]:
    mean, std = float(scores.mean()), float(scores.std())
    if std == 0.0:
        logger.warning("%s scores are constant over all %d pairs; they carry no weight in the fusion", name,
                       scores.size)
        return np.zeros_like(scores), {"mean": mean, "std": std}
    return (scores - mean) / std, {"mean": mean, "std": std}


def fuse_label_free(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]
                    ) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Weighted sum of label-free z-scores (see the module docstring).

    Args:
        scores: Method name to its N scores (higher = same).
        weights: Method name to its weight (the same keys).

    Returns:
        ``(combined, params)``: the N fused scores and, per method, its ``mean``, ``std`` and ``weight``.

    Raises:
        ValueError: If the keys differ, lengths differ, or a weight is negative or all are zero.
    """
    if set(scores) != set(weights) or not scores:
        raise ValueError(f"scores {sorted(scores)} and weights {sorted(weights)} must name the same methods")
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0 and not all 0, got {dict(weights)}")
    sizes = {name: s.shape for name, s in scores.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"score arrays differ in shape: {sizes}")
    combined = np.zeros(next(iter(sizes.values())), np.float64)
    params: dict[str, dict[str, float]] = {}
    for name, values in scores.items():
        z, stats = _standardise(np.asarray(values, np.float64), name)
        combined += weights[name] * z
        params[name] = {**stats, "weight": float(weights[name])}
    return combined, params
