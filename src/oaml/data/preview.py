"""A PNG grid of augmented training samples with the occluded regions outlined, for eyeballing a pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from oaml.constants import ChannelOrder
from oaml.data.transforms import tensor_to_image

__all__ = ["preview_grid", "save_preview"]

_OUTLINE_BGR = (0, 255, 0)


def _as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().float().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def preview_grid(images: torch.Tensor | np.ndarray, visibilities: torch.Tensor | np.ndarray | None = None,
                 channel_order: ChannelOrder = ChannelOrder.BGR, max_images: int = 64, columns: int = 8,
                 padding: int = 2) -> np.ndarray:
    """De-normalise a batch into a uint8 BGR grid, outlining where each visibility map is < 0.5.

    Args:
        images: ``B x 3 x H x W`` normalised images in ``channel_order``.
        visibilities: ``B x 1 x H x W`` or ``B x H x W`` maps (1 visible); ``None`` draws no outlines.
        channel_order: channel order of ``images``.
        max_images: at most this many images are drawn.
        columns: images per row.
        padding: black pixels between tiles.

    Raises:
        ValueError: if the batch is empty or the shapes disagree.
    """
    batch = _as_numpy(images)
    if batch.ndim != 4 or batch.shape[1] != 3 or len(batch) == 0:
        raise ValueError(f"expected a non-empty B x 3 x H x W batch, got shape {batch.shape}")
    count = min(len(batch), max_images)
    vis = None if visibilities is None else _as_numpy(visibilities).reshape(len(batch), *batch.shape[2:])
    height, width = batch.shape[2:]
    rows = -(-count // columns)
    cols = min(columns, count)
    grid = np.zeros((rows * (height + padding) + padding, cols * (width + padding) + padding, 3), np.uint8)
    for i in range(count):
        tile = tensor_to_image(batch[i], channel_order)
        if vis is not None:
            occluded = (vis[i] < 0.5).astype(np.uint8)
            contours, _ = cv2.findContours(occluded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, contours, -1, _OUTLINE_BGR, 1)
        top = padding + (i // columns) * (height + padding)
        left = padding + (i % columns) * (width + padding)
        grid[top:top + height, left:left + width] = tile
    return grid


def save_preview(images: torch.Tensor | np.ndarray, visibilities: torch.Tensor | np.ndarray | None,
                 path: str | os.PathLike[str], channel_order: ChannelOrder = ChannelOrder.BGR,
                 max_images: int = 64, columns: int = 8) -> Path:
    """Write :func:`preview_grid` of a batch as a PNG (creating the folder).

    Returns:
        The written path.

    Raises:
        OSError: if the file cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = preview_grid(images, visibilities, channel_order, max_images, columns)
    ok, encoded = cv2.imencode(".png", grid)
    if not ok:
        raise OSError(f"cannot encode the preview grid for {path}")
    path.write_bytes(encoded.tobytes())
    return path
