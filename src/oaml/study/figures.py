"""Figures of the real-face study (matplotlib on an Agg canvas, no display needed).

- :func:`plot_occlusion_overlay`: predicted 7x7 visibility maps over masked and clean held-out faces. It shows
  real people's faces, so the study writes it next to the report but the repository does not track it.
- :func:`plot_mean_maps`: the same maps averaged over all held-out images, without faces.
- :func:`plot_loss_curves`: per-epoch training losses, averaged over the runs of each variant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from oaml.data.masks import seeded_mask
from oaml.evaluation.report import new_figure, save_figure
from oaml.training.objective import LOSS_NAMES

__all__ = ["plot_loss_curves", "plot_mean_maps", "plot_occlusion_overlay"]

_DPI = 110
_CMAP = "RdYlGn"  # red = occluded (0), green = visible (1)


def _figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Any, np.ndarray]:
    fig = new_figure(size)
    return fig, np.asarray(fig.subplots(rows, cols, squeeze=False))


def _overlay(ax: Any, image_bgr: np.ndarray, grid: np.ndarray, title: str) -> None:
    ax.imshow(image_bgr[:, :, ::-1])
    ax.imshow(np.asarray(grid), cmap=_CMAP, vmin=0.0, vmax=1.0, alpha=0.45, extent=(0, 112, 112, 0),
              interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def plot_occlusion_overlay(paths: Sequence[str], figure: Mapping[str, Mapping[str, Any]], mask_seed: int,
                           path: Path) -> Path:
    """Rows: held-out faces. Columns: the true mask cells on the masked face, then per variant its prediction on
    the masked and on the clean face.

    Args:
        paths: Held-out image files (row ``k`` of a figure indexes them).
        figure: Variant key to the run's ``figure`` entry (``rows``, ``masked``, ``clean`` and ``true`` maps).
        mask_seed: The evaluator's mask seed (the masks are redrawn exactly).
        path: Output PNG.
    """
    variants = list(figure)
    rows = figure[variants[0]]["rows"]
    fig, axes = _figure(len(rows), 1 + 2 * len(variants), (1.6 * (1 + 2 * len(variants)), 1.7 * len(rows)))
    for r, index in enumerate(rows):
        image = cv2.imread(paths[index], cv2.IMREAD_COLOR)
        masked, _ = seeded_mask(image, mask_seed, index)
        _overlay(axes[r, 0], masked, figure[variants[0]]["true"][r], "true visible fraction")
        for c, key in enumerate(variants):
            _overlay(axes[r, 1 + 2 * c], masked, figure[key]["masked"][r], f"({key}) predicted, masked")
            _overlay(axes[r, 2 + 2 * c], image, figure[key]["clean"][r], f"({key}) predicted, clean")
    return save_figure(fig, path, dpi=_DPI)


def plot_mean_maps(maps: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Mean true visibility of the held-out masks, and per variant the mean predicted map on masked and on clean
    faces, each cell annotated with its value."""
    variants = list(maps)
    panels = [("true visible fraction\n(masked faces)", maps[variants[0]]["true"])]
    for key in variants:
        panels += [(f"({key}) predicted\nmasked faces", maps[key]["masked"]),
                   (f"({key}) predicted\nclean faces", maps[key]["clean"])]
    fig, axes = _figure(1, len(panels), (2.3 * len(panels), 2.6))
    for ax, (title, grid) in zip(axes[0], panels):
        grid = np.asarray(grid)
        ax.imshow(grid, cmap=_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
        for (y, x), value in np.ndenumerate(grid):
            ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=5)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    return save_figure(fig, path, dpi=_DPI)


def plot_loss_curves(curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]], path: Path) -> Path:
    """One panel per loss; per variant the mean over its runs of the per-epoch value."""
    names = [n for n in LOSS_NAMES if any(n in c for runs in curves.values() for c in runs)]
    fig, axes = _figure(1, len(names), (3.0 * len(names), 2.6))
    for ax, name in zip(axes[0], names):
        for index, (key, runs) in enumerate(curves.items()):
            series = [np.asarray(c[name]) for c in runs if c.get(name)]
            if not series:
                continue
            length = min(len(s) for s in series)
            ax.plot(np.arange(1, length + 1), np.mean([s[:length] for s in series], axis=0), label=f"({key})",
                    linewidth=1, color=f"C{index}")  # one colour per variant in every panel
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    return save_figure(fig, path, dpi=_DPI)
