"""IR / IR-SE backbones (improved residual networks), key-compatible with the released AdaFace weights.

Paper: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition" (CVPR 2019), whose
IR unit AdaFace (Kim et al., CVPR 2022) reuses. Layout and parameter names: SPEC §2.

One class, :class:`IResNet`, holds the code; the registered entrypoints (``ir_18`` ... ``ir_101``,
``ir_se_50``) only pass units per stage and the SE switch. At ``width=1.0`` the state-dict keys and shapes
equal the released AdaFace layout (``input_layer``, ``body.<i>.res_layer``, ``body.<i>.shortcut_layer``,
``output_layer``). A width multiplier scales the 64/128/256/512 stage widths for CPU tests and demos;
the embedding size stays 512 at every width so that heads, class counts, evaluation code and checkpoint
tooling never depend on the width.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from oaml._registry import Registry
from oaml.constants import FACE_SIZE

__all__ = [
    "BACKBONES",
    "BackboneOutput",
    "BasicBlockIR",
    "IResNet",
    "SEModule",
    "build_backbone",
    "feature_map_side",
    "scaled_widths",
]

BACKBONES: Registry[IResNet] = Registry("backbone")
"""Backbone factories by name; read through :func:`build_backbone`."""

_BASE_WIDTHS = (64, 128, 256, 512)
_NUM_STAGES = len(_BASE_WIDTHS)
_NORM_EPS = 1e-6  # floor of the embedding norm in the division z / ||z||


class BackboneOutput(NamedTuple):
    """What :meth:`IResNet.forward` returns.

    Attributes:
        embedding: B x E unit-L2 embedding (E = 512).
        norm: B x 1 L2 norm of the raw embedding (AdaFace's quality proxy).
        feature_map: B x C x H x W output of ``body``, taken before ``output_layer``
            (512 x 7 x 7 at full width and 112 x 112 input).
    """

    embedding: Tensor
    norm: Tensor
    feature_map: Tensor


def scaled_widths(width: float) -> tuple[int, ...]:
    """Stage widths for a width multiplier: round(base * width), at least 1.

    Args:
        width: multiplier of 64/128/256/512; 0.125 gives 8/16/32/64.

    Raises:
        ValueError: if ``width`` is not positive.
    """
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    return tuple(max(1, round(base * width)) for base in _BASE_WIDTHS)


def feature_map_side(input_size: int) -> int:
    """Side of the last feature map: four stride-2 stages, each mapping n to ceil(n / 2).

    112 gives 7, 64 gives 4, 56 gives 4.
    """
    side = input_size
    for _ in range(_NUM_STAGES):
        side = (side + 1) // 2
    return side


class SEModule(nn.Module):
    """Squeeze-and-excitation gate with 1x1 convolutions ``fc1``/``fc2`` and no bias (AdaFace naming)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel of ``x`` (B x C x H x W) by a gate in (0, 1)."""
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BasicBlockIR(nn.Module):
    """IR unit: ``res_layer(x) + shortcut_layer(x)``, no activation after the sum (SPEC §2).

    Args:
        in_channels: input channels.
        depth: output channels.
        stride: stride of the second 3x3 convolution and of the shortcut.
        use_se: append an SE block to ``res_layer`` under the name ``se_block``.
    """

    def __init__(self, in_channels: int, depth: int, stride: int, use_se: bool = False) -> None:
        super().__init__()
        if in_channels == depth:
            # No parameters: keeps the released key layout (no shortcut keys for these units).
            self.shortcut_layer: nn.Module = nn.MaxPool2d(kernel_size=1, stride=stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(depth),
        )
        if use_se:
            self.res_layer.add_module("se_block", SEModule(depth, 16))

    def forward(self, x: Tensor) -> Tensor:
        """B x in x H x W -> B x depth x ceil(H / stride) x ceil(W / stride)."""
        return self.res_layer(x) + self.shortcut_layer(x)


class IResNet(nn.Module):
    """The IR / IR-SE backbone family with a width multiplier (SPEC §2).

    Args:
        units: units per stage, e.g. (2, 2, 2, 2) for ir_18.
        use_se: use IR-SE units.
        width: multiplier of the 64/128/256/512 stage widths (1.0 = released layout).
        input_size: side of the square input; 112 gives 7 x 7 feature maps.
        embedding_size: size of the embedding (512; kept at every width, see the module docstring).
        dropout: dropout probability in ``output_layer``.

    Attributes:
        out_channels: channels of the feature map (512 at full width).
        feature_map_size: side of the feature map (7 for 112 x 112 input).
    """

    def __init__(
        self,
        units: tuple[int, ...],
        use_se: bool = False,
        width: float = 1.0,
        input_size: int = FACE_SIZE,
        embedding_size: int = 512,
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        if len(units) != _NUM_STAGES or any(n < 1 for n in units):
            raise ValueError(f"units must be {_NUM_STAGES} positive counts, got {units!r}")
        if input_size < 1:
            raise ValueError(f"input_size must be positive, got {input_size!r}")
        widths = scaled_widths(width)
        self.units = tuple(units)
        self.use_se = use_se
        self.width = width
        self.input_size = input_size
        self.embedding_size = embedding_size
        self.out_channels = widths[-1]
        self.feature_map_size = feature_map_side(input_size)

        self.input_layer = nn.Sequential(
            nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.PReLU(widths[0]),
        )
        blocks: list[nn.Module] = []
        in_channels = widths[0]
        for num_units, depth in zip(units, widths, strict=True):
            for index in range(num_units):
                blocks.append(BasicBlockIR(in_channels, depth, 2 if index == 0 else 1, use_se))
                in_channels = depth
        self.body = nn.Sequential(*blocks)
        side = self.feature_map_size
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(self.out_channels),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(self.out_channels * side * side, embedding_size),
            nn.BatchNorm1d(embedding_size, affine=False),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) conv and linear weights, zero biases, BN weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """B x 3 x S x S image -> B x C x s x s feature map (``body`` output)."""
        return self.body(self.input_layer(x))

    def forward(self, x: Tensor) -> BackboneOutput:
        """Embed a batch of normalised faces.

        Args:
            x: B x 3 x S x S input, (x / 255 - 0.5) / 0.5, S = ``input_size``.

        Returns:
            BackboneOutput with the unit embedding (B x 512), its norm (B x 1) and the feature map.
        """
        feature_map = self.forward_features(x)
        embedding, norm = self.embed(feature_map)
        return BackboneOutput(embedding, norm, feature_map)

    def embed(self, feature_map: Tensor) -> tuple[Tensor, Tensor]:
        """``output_layer`` on a (possibly visibility-gated) B x C x s x s feature map: (unit embedding, norm)."""
        raw = self.output_layer(feature_map)
        norm = torch.linalg.vector_norm(raw, ord=2, dim=1, keepdim=True)
        return raw / norm.clamp_min(_NORM_EPS), norm


def _create_iresnet(
    units: tuple[int, ...],
    use_se: bool,
    width: float = 1.0,
    input_size: int = FACE_SIZE,
    embedding_size: int = 512,
) -> IResNet:
    return IResNet(units, use_se=use_se, width=width, input_size=input_size, embedding_size=embedding_size)


@BACKBONES.register("ir_18")
def ir_18(width: float = 1.0, input_size: int = FACE_SIZE, embedding_size: int = 512) -> IResNet:
    """IR-18: units 2, 2, 2, 2 (24.0M parameters at full width)."""
    return _create_iresnet((2, 2, 2, 2), False, width, input_size, embedding_size)


@BACKBONES.register("ir_34")
def ir_34(width: float = 1.0, input_size: int = FACE_SIZE, embedding_size: int = 512) -> IResNet:
    """IR-34: units 3, 4, 6, 3 (34.1M parameters at full width)."""
    return _create_iresnet((3, 4, 6, 3), False, width, input_size, embedding_size)


@BACKBONES.register("ir_50")
def ir_50(width: float = 1.0, input_size: int = FACE_SIZE, embedding_size: int = 512) -> IResNet:
    """IR-50: units 3, 4, 14, 3 (43.6M parameters at full width)."""
    return _create_iresnet((3, 4, 14, 3), False, width, input_size, embedding_size)


@BACKBONES.register("ir_101")
def ir_101(width: float = 1.0, input_size: int = FACE_SIZE, embedding_size: int = 512) -> IResNet:
    """IR-101: units 3, 13, 30, 3 (65.2M parameters at full width)."""
    return _create_iresnet((3, 13, 30, 3), False, width, input_size, embedding_size)


@BACKBONES.register("ir_se_50")
def ir_se_50(width: float = 1.0, input_size: int = FACE_SIZE, embedding_size: int = 512) -> IResNet:
    """IR-SE-50: the ir_50 units with an SE block (reduction 16) in every unit."""
    return _create_iresnet((3, 4, 14, 3), True, width, input_size, embedding_size)


def build_backbone(arch: str, width: float = 1.0, input_size: int = FACE_SIZE) -> IResNet:
    """Build a registered backbone by name.

    Args:
        arch: one of ``BACKBONES.names()`` (ir_18, ir_34, ir_50, ir_101, ir_se_50).
        width: stage-width multiplier; 1.0 is the released layout.
        input_size: side of the square input image.

    Returns:
        A freshly initialised :class:`IResNet`.

    Raises:
        ValueError: if ``arch`` is unknown (the message lists the valid names) or ``width`` is not positive.
    """
    return BACKBONES.build(arch, width=width, input_size=input_size)

