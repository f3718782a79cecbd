"""Preview grids: de-normalised tiles, mask outlines where the visibility map is zero."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from oaml.constants import ChannelOrder
from oaml.data.preview import preview_grid, save_preview
from oaml.data.transforms import TrainTransform, image_to_tensor

GREEN = np.array([0, 255, 0], np.uint8)


def _is_green(grid: np.ndarray) -> np.ndarray:
    return (grid == GREEN).all(axis=2)


@pytest.mark.parametrize("order", list(ChannelOrder))
def test_grid_tiles_are_the_denormalised_images(order: ChannelOrder, image_factory: Callable[..., np.ndarray]) -> None:
    images = [image_factory(i) for i in range(3)]
    batch = torch.stack([image_to_tensor(img, order) for img in images])
    grid = preview_grid(batch, None, order, columns=2, padding=2)
    assert grid.shape == (2 * 114 + 2, 2 * 114 + 2, 3)
    assert np.array_equal(grid[2:114, 2:114], images[0]) and np.array_equal(grid[2:114, 116:228], images[1])
    assert np.array_equal(grid[116:228, 2:114], images[2]) and grid[116:228, 116:228].max() == 0


def test_saved_preview_outlines_masks(tmp_path: Path) -> None:
    gray = np.full((112, 112, 3), 120, np.uint8)
    transform = TrainTransform(mask_prob=1.0, flip_prob=0.0, seed=0)
    pairs = [transform(gray) for _ in range(4)]
    images = torch.stack([p[0] for p in pairs])
    masks = torch.stack([p[1] for p in pairs])
    path = save_preview(images, masks, tmp_path / "sub" / "preview.png", columns=4)
    grid = cv2.imread(str(path))
    assert grid.shape == (116, 4 * 114 + 2, 3)
    for i in range(4):
        tile_green = _is_green(grid[2:114, 2 + 114 * i:114 + 114 * i])
        occluded = (masks[i, 0].numpy() < 0.5).astype(np.uint8)
        inner = cv2.erode(occluded, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        boundary = occluded & (1 - inner)  # occluded pixels next to a visible pixel or the image border
        assert tile_green.sum() > 50 and boundary[tile_green].all()  # the outline sits on the mask edge
    plain = preview_grid(images, torch.ones_like(masks))
    assert not _is_green(plain).any()
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        preview_grid(torch.zeros(0, 3, 112, 112))
