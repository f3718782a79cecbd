"""Fixtures of the tools tests: tiny checkpoints, the optional extras and the real-face fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oaml.constants import ChannelOrder
from oaml.models import build_face_model, build_head
from oaml.models.checkpoint import CheckpointMeta, save_checkpoint

TINY_WIDTH = 0.125


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and QAConv parameters, so eval-mode outputs are not degenerate."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(1.0 + 0.2 * torch.rand(m.running_var.shape, generator=gen))


def make_checkpoint(path: Path, width: float = TINY_WIDTH, occlusion_method: str = "scaling",
                    channel_order: str = "bgr", backbone_only: bool = False, seed: int = 0) -> Path:
    """An ir_18 checkpoint in our Lightning layout, or (``backbone_only``) in the released AdaFace layout."""
    torch.manual_seed(seed)
    model = build_face_model("ir_18", width=width)
    _randomise(model, seed)
    if backbone_only:
        state = {f"model.{k}": v for k, v in model.backbone.state_dict().items()}
        state["head.kernel"] = torch.randn(512, 5)
        return save_checkpoint(path, state, None)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"objective.head.{k}": v for k, v in build_head("adaface", 512, 5).state_dict().items()})
    meta = CheckpointMeta("ir_18", width, channel_order=ChannelOrder(channel_order),
                          occlusion_method=occlusion_method, num_classes=5, version="0.1.0")
    return save_checkpoint(path, state, meta)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-1/8 ir_18 checkpoint with occlusion head and QAConv."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture
def onnx_extra() -> None:
    """Skips the test when the ``onnx`` extra (onnx + onnxruntime) is not installed."""
    pytest.importorskip("onnx", reason='the "onnx" extra is not installed (pip install onnx onnxruntime)')
    pytest.importorskip("onnxruntime", reason='the "onnx" extra is not installed (pip install onnx onnxruntime)')


@pytest.fixture
def mtcnn_extra() -> None:
    """Skips the test when the MTCNN weights of the ``mtcnn`` extra (facenet-pytorch) are not installed."""
    from oaml.tools._mtcnn import mtcnn_weights_dir

    try:
        mtcnn_weights_dir()
    except ImportError:
        pytest.skip('the "mtcnn" extra is not installed (pip install --no-deps facenet-pytorch)')
