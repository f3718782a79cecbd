"""How well the occlusion head's 7x7 visibility maps match the true occlusion (SPEC §4, §13.2).

The one implementation behind ``oaml eval`` (per occlusion protocol, and against the ``occlusion.npz`` that
``oaml occlude`` writes), validation during training (``val/<prefix>head_*``) and the study. A cell is *occluded*
when its true visible fraction (:func:`oaml.data.masks.visibility_grid`) is below one half, *visible* otherwise.
"""

from __future__ import annotations

import numpy as np

from oaml.evaluation.verification import roc

__all__ = ["OCCLUDED_BELOW", "calibration_metrics", "head_calibration"]

OCCLUDED_BELOW = 0.5
"""A cell whose true visible fraction is below this counts as occluded."""


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def head_calibration(predicted: np.ndarray, true_grids: np.ndarray,
                     predicted_clean: np.ndarray | None = None) -> dict[str, float]:
    """Compare predicted visibility maps with the true visible fractions of the same images.

    Args:
        predicted: ``N x 7 x 7`` maps predicted on the occluded images (1 visible).
        true_grids: ``N x 7 x 7`` true visible fraction of each cell.
        predicted_clean: optional ``N x 7 x 7`` maps predicted on the same images without the occluder.

    Returns:
        ``auc`` (the probability that a visible cell is predicted more visible than an occluded one; ties count
        one half), ``mae`` and ``mse`` (predicted vs true fractions), ``mse_all_visible`` (the MSE of a head that
        always predicts 1), ``inside`` and ``outside`` (the mean prediction over the occluded and over the
        visible cells), ``cells`` and ``occluded_cells`` (counts); with ``predicted_clean`` also
        ``clean_same_cells`` (the clean maps over the cells the occluder hides: high when the head looks at the
        occluder rather than at the position) and ``clean_all``. Entries that need occluded or visible cells
        which are absent (``auc``, ``inside``, ``outside``, ``clean_same_cells``) are NaN.

    Raises:
        ValueError: if the arrays differ in shape or are empty.
    """
    predicted, true_grids = np.asarray(predicted, np.float64), np.asarray(true_grids, np.float64)
    if predicted.shape != true_grids.shape or predicted.size == 0:
        raise ValueError(f"predicted and true maps must have one non-empty shape, got {predicted.shape} and "
                         f"{true_grids.shape}")
    inside = true_grids < OCCLUDED_BELOW
    both = bool(inside.any()) and not bool(inside.all())
    stats = {"auc": roc(predicted.ravel(), ~inside.ravel()).auc if both else float("nan"),
             "mae": float(np.abs(predicted - true_grids).mean()),
             "mse": float(np.square(predicted - true_grids).mean()),
             "mse_all_visible": float(np.square(1.0 - true_grids).mean()),
             "inside": _mean(predicted[inside]), "outside": _mean(predicted[~inside]),
             "cells": float(inside.size), "occluded_cells": float(inside.sum())}
    if predicted_clean is not None:
        clean = np.asarray(predicted_clean, np.float64)
        if clean.shape != predicted.shape:
            raise ValueError(f"predicted_clean must have shape {predicted.shape}, got {clean.shape}")
        stats |= {"clean_same_cells": _mean(clean[inside]), "clean_all": float(clean.mean())}
    return stats


def calibration_metrics(predicted: np.ndarray, true_grids: np.ndarray, prefix: str = "") -> dict[str, float]:
    """The validation keys of :func:`head_calibration`: ``{prefix}head_auc``, ``head_mae``, ``head_inside`` and
    ``head_outside``."""
    stats = head_calibration(predicted, true_grids)
    return {f"{prefix}head_{key}": stats[key] for key in ("auc", "mae", "inside", "outside")}
