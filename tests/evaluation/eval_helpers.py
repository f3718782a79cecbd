"""Helpers of the standalone-evaluation tests: tiny checkpoints in our layout and in the released AdaFace layout,
and synthetic aligned-face folders (imported by ``conftest.py`` and the test modules)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from oaml.constants import ChannelOrder
from oaml.models import build_face_model, build_head
from oaml.models.checkpoint import CheckpointMeta, save_checkpoint

TINY_WIDTH = 0.125
TINY_ARCH = "ir_18"


def _randomise_bn(module: torch.nn.Module, seed: int) -> None:
    """Give BN layers non-trivial running statistics so eval-mode outputs are not degenerate."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(1.0 + 0.2 * torch.rand(m.running_var.shape, generator=gen))


def make_oaml_checkpoint(path: Path, arch: str = TINY_ARCH, width: float = TINY_WIDTH, num_classes: int = 7,
                         channel_order: str = "bgr", occlusion_method: str = "scaling", seed: int = 0,
                         embedding_gate: bool = False) -> Path:
    """Save a checkpoint in our layout (model.*, objective.head.*, objective.class_memory.* and the "oaml" entry)
    with the library's writer."""
    torch.manual_seed(seed)
    model = build_face_model(arch, width=width)
    _randomise_bn(model, seed)
    head = build_head("adaface", 512, num_classes)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"objective.head.{k}": v for k, v in head.state_dict().items()})
    state["objective.class_memory.memory"] = torch.zeros(num_classes, model.backbone.out_channels, 7, 7,
                                                         dtype=torch.float16)
    meta = CheckpointMeta(arch, width, channel_order=ChannelOrder(channel_order), occlusion_method=occlusion_method,
                          num_classes=num_classes, class_names=tuple(f"id{k}" for k in range(num_classes)),
                          version="0.1.0", embedding_gate=embedding_gate)
    return save_checkpoint(path, state, meta, epoch=1, global_step=10)


def make_released_checkpoint(path: Path, arch: str = TINY_ARCH, width: float = TINY_WIDTH, seed: int = 1) -> Path:
    """Save a checkpoint in the released AdaFace layout: {"state_dict": {"model.<backbone>", "head.*"}}."""
    torch.manual_seed(seed)
    backbone = build_face_model(arch, width=width).backbone
    _randomise_bn(backbone, seed)
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    state["head.kernel"] = torch.randn(512, 5)
    state["head.batch_mean"] = torch.full((1,), 20.0)
    state["head.batch_std"] = torch.full((1,), 100.0)
    state["head.t"] = torch.zeros(1)
    return save_checkpoint(path, state, None)  # the released layout: no "oaml" entry


def write_face_folder(root: Path, counts: list[int], size: int = 112, seed: int = 0, ext: str = ".png",
                      nested: bool = False) -> Path:
    """Identity folders id00, id01 ... with counts[k] random images each (optionally one level deeper)."""
    rng = np.random.default_rng(seed)
    for k, count in enumerate(counts):
        folder = root / f"id{k:02d}" / ("session" if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for n in range(count):
            noise = rng.integers(-20, 21, base.shape)
            image = np.clip(base.astype(np.int64) + noise, 0, 255).astype(np.uint8)
            assert cv2.imwrite(str(folder / f"img{n:03d}{ext}"), image)
    return root


def write_bin_of_faces(path: Path, pairs: int, seed: int = 0) -> Path:
    """A verification ``.bin`` of ``pairs`` pairs of random 112x112 faces (PNG), every second pair genuine
    (the two images of a genuine pair differ by noise only)."""
    import pickle

    rng = np.random.default_rng(seed)
    images, issame = [], []
    for k in range(pairs):
        first = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        same = k % 2 == 0
        second = (np.clip(first.astype(np.int64) + rng.integers(-25, 26, first.shape), 0, 255).astype(np.uint8)
                  if same else rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
        images += [cv2.imencode(".png", first)[1].tobytes(), cv2.imencode(".png", second)[1].tobytes()]
        issame.append(same)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps((images, issame), protocol=4))
    return path
