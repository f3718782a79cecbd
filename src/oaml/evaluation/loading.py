"""Inference-only model loading from oaml checkpoints and released AdaFace ``.ckpt`` files (SPEC §2, §10).

Two layouts are recognised:

- **oaml** (our Lightning checkpoints): ``state_dict`` keys ``model.backbone.*``, ``model.occlusion_head.*`` and
  ``model.qaconv.*`` (a bare FaceModel state dict with ``backbone.*`` ... keys is accepted too), plus an
  ``"oaml"`` entry whose ``config`` gives the architecture, width, input size, channel order and occlusion
  method. Training-only entries (``head.*``, ``class_memory.*``, optimizer state) are ignored. Loading is strict.
- **backbone only** (released AdaFace: ``{"state_dict": {"model.<backbone keys>", "head.kernel", ...}}``, or any
  layout :func:`oaml.models.checkpoint.load_backbone` accepts): only the backbone is loaded; the occlusion head
  and QAConv do not exist, so only AdaFace scores are available. The channel order is BGR (the released
  AdaFace convention) and the architecture is inferred from the weights unless given.

An explicit ``arch`` is always honoured; when it disagrees with the weights the strict load fails with a
:class:`~oaml.errors.CheckpointError` that names both.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from oaml.constants import FACE_SIZE, ChannelOrder
from oaml.errors import CheckpointError, ConfigError
from oaml.fileio import sha256_file
from oaml.models import (BACKBONES, IResNet, OcclusionHead, QAConv, build_face_model, extract_prefixed,
                         load_backbone)
from oaml.models.checkpoint import backbone_state_dict, infer_backbone_config, read_checkpoint

__all__ = ["LoadedModel", "ModelInfo", "QACONV_UNAVAILABLE_REASON", "load_face_modules"]

logger = logging.getLogger(__name__)

_FACE_MODEL_PARTS = ("backbone.", "occlusion_head.", "qaconv.")
_FACE_MODEL_ANCHOR = "backbone.input_layer.0.weight"
QACONV_UNAVAILABLE_REASON = ("the checkpoint holds only a backbone (e.g. a released AdaFace .ckpt): no QAConv "
                             "or occlusion-head weights, so only the AdaFace cosine score is evaluated")
"""Why QAConv scores are missing for backbone-only checkpoints (written to results.json and report.md)."""


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, for provenance and for the callers' decisions.

    Attributes:
        path: The checkpoint path.
        sha256: SHA-256 of the checkpoint file.
        kind: ``"oaml"`` (backbone + occlusion head + QAConv) or ``"backbone_only"``.
        source_layout: ``"oaml"``, ``"face_model"`` (FaceModel weights without the ``oaml`` entry),
            ``"adaface_released"`` (``model.*`` keys plus ``head.kernel``) or ``"backbone"``.
        arch: Backbone name.
        width: Width multiplier.
        input_size: Side of the square input in pixels.
        channel_order: Channel order the backbone expects.
        occlusion_method: ``"scaling"`` (visibility maps weight QAConv), ``"none"``, or ``"unavailable"``.
        qaconv_unavailable: Why QAConv is unavailable, or None when it is available.
        num_classes: Training class count recorded in the checkpoint, if any.
        checkpoint_version: oaml version that wrote the checkpoint, if recorded.
    """

    path: str
    sha256: str
    kind: str
    source_layout: str
    arch: str
    width: float
    input_size: int
    channel_order: ChannelOrder
    occlusion_method: str
    qaconv_unavailable: str | None
    num_classes: int | None
    checkpoint_version: str | None

    @property
    def has_qaconv(self) -> bool:
        """True when the QAConv matcher was loaded."""
        return self.qaconv_unavailable is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the channel order as its value string)."""
        out = asdict(self)
        out["channel_order"] = self.channel_order.value
        return out


@dataclass
class LoadedModel:
    """The loaded modules (eval mode, on the CPU) and their description."""

    backbone: IResNet
    occlusion_head: OcclusionHead | None
    qaconv: QAConv | None
    info: ModelInfo


def _read(path: str) -> Mapping[str, Any]:
    try:
        return read_checkpoint(path)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc


def _face_model_prefix(state: Mapping[str, Any]) -> str | None:
    for prefix in ("model.", ""):
        if prefix + _FACE_MODEL_ANCHOR in state and prefix + "qaconv.fc.weight" in state:
            return prefix
    return None


def _config_section(meta: Mapping[str, Any] | None, section: str) -> Mapping[str, Any]:
    config = meta.get("config") if isinstance(meta, Mapping) else None
    value = config.get(section) if isinstance(config, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _load_face_model(path: str, state: Mapping[str, Any], prefix: str, meta: Mapping[str, Any] | None,
                     arch: str | None) -> tuple[nn.Module, dict[str, Any]]:
    weights = {key: value for key, value in extract_prefixed(state, prefix).items()
               if key.startswith(_FACE_MODEL_PARTS)}
    model_cfg, data_cfg, loss_cfg = (_config_section(meta, s) for s in ("model", "data", "loss"))
    if model_cfg.get("arch") is None:
        inferred = infer_backbone_config(extract_prefixed(weights, "backbone."), path)
        model_cfg = {**inferred, **model_cfg}
        data_cfg = {"input_size": inferred["input_size"], **data_cfg}
    built_arch = arch or str(model_cfg["arch"])
    width = float(model_cfg.get("width", 1.0))
    input_size = int(data_cfg.get("input_size", FACE_SIZE))
    model = build_face_model(built_arch, width=width, input_size=input_size)
    hint = (f" The checkpoint was trained as {model_cfg['arch']} (width {width:g}); --arch {arch} does not match "
            f"it." if arch and arch != model_cfg["arch"] else "")
    _load_strict(model, weights, f"{path}: the weights do not fit {built_arch} width {width:g}.{hint}")
    try:
        order = ChannelOrder(str(data_cfg.get("channel_order", ChannelOrder.BGR.value)).lower())
    except ValueError as exc:
        raise CheckpointError(f"{path}: unknown channel order {data_cfg.get('channel_order')!r} in the 'oaml' "
                              f"entry; expected bgr or rgb") from exc
    facts = {"arch": built_arch, "width": width, "input_size": input_size,
             "channel_order": order,
             "occlusion_method": str(loss_cfg.get("occlusion_method", "scaling"))}
    return model, facts


def _load_strict(model: nn.Module, weights: Mapping[str, Any], message: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists the first missing/unexpected/mismatched keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(weights)
                        if tuple(expected[k].shape) != tuple(getattr(weights[k], "shape", ())))
    if missing or unexpected or mismatched:
        shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:3]]
        raise CheckpointError(f"{message} {len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected "
                              f"{unexpected[:3]}, {len(mismatched)} with other shapes {shapes}")
    model.load_state_dict(weights, strict=True)


def load_face_modules(path: str | os.PathLike[str], arch: str | None = None) -> LoadedModel:
    """Load the inference modules of a checkpoint (see the module docstring for the layouts).

    Args:
        path: An oaml checkpoint or a released AdaFace ``.ckpt``.
        arch: Backbone name to build; None reads it from the ``oaml`` entry or infers it from the weights.

    Returns:
        The modules in eval mode on the CPU, and a :class:`ModelInfo`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ConfigError: If ``arch`` is not a registered backbone.
        CheckpointError: If the file is unreadable, needs unsafe unpickling, has an unknown layout, or its
            weights do not fit the architecture (strict loading).
    """
    path = os.fspath(path)
    if arch is not None and arch not in BACKBONES.names():
        raise ConfigError(f"arch {arch!r} is not a known backbone; choose one of {', '.join(BACKBONES.names())}")
    checkpoint = _read(path)
    inner = checkpoint.get("state_dict")
    state: Mapping[str, Any] = inner if isinstance(inner, Mapping) else checkpoint
    meta = checkpoint.get("oaml") if isinstance(checkpoint.get("oaml"), Mapping) else None
    prefix = _face_model_prefix(state)
    if prefix is not None:
        model, facts = _load_face_model(path, state, prefix, meta, arch)
        if meta is None:
            logger.warning("%s has FaceModel weights but no 'oaml' entry: channel order assumed %s", path,
                           facts["channel_order"].value)
        backbone, occlusion_head, qaconv = model.backbone, model.occlusion_head, model.qaconv
        kind, layout, reason = "oaml", "oaml" if meta is not None else "face_model", None
    else:
        backbone, facts = _load_backbone_only(path, checkpoint, state, arch)
        occlusion_head = qaconv = None
        kind, reason = "backbone_only", QACONV_UNAVAILABLE_REASON
        layout = "adaface_released" if "head.kernel" in state else "backbone"
    info = ModelInfo(path=str(Path(path).resolve()), sha256=sha256_file(path), kind=kind, source_layout=layout,
                     **facts, qaconv_unavailable=reason,
                     num_classes=_int_or_none(meta.get("num_classes")) if meta else None,
                     checkpoint_version=str(meta["version"]) if meta and "version" in meta else None)
    modules = [m for m in (backbone, occlusion_head, qaconv) if m is not None]
    for module in modules:
        module.eval()
    logger.info("loaded %s (%s, %s width %g, %s, QAConv %s)", path, layout, info.arch, info.width,
                info.channel_order.value, "available" if info.has_qaconv else "unavailable")
    return LoadedModel(backbone, occlusion_head, qaconv, info)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _load_backbone_only(path: str, checkpoint: Mapping[str, Any], state: Mapping[str, Any],
                        arch: str | None) -> tuple[IResNet, dict[str, Any]]:
    weights = backbone_state_dict(checkpoint, path)
    inferred = infer_backbone_config(weights, path) if arch is None else None
    if inferred is not None:
        logger.warning("%s records no architecture; inferred %s (width %g) from the weights (pass --arch to "
                       "override)", path, inferred["arch"], inferred["width"])
    try:
        backbone = load_backbone(weights, arch=arch)
    except CheckpointError as exc:
        hint = f"--arch {arch} does not fit the weights: " if arch else ""
        raise CheckpointError(f"{path}: {hint}{exc}") from exc
    logger.warning("%s holds a backbone only (%s layout): channel order BGR assumed (released AdaFace "
                   "convention); QAConv and the occlusion head are unavailable", path,
                   "released AdaFace" if "head.kernel" in state else "raw backbone")
    facts = {"arch": arch or inferred["arch"], "width": float(backbone.width), "input_size": backbone.input_size,
             "channel_order": ChannelOrder.BGR, "occlusion_method": "unavailable"}
    return backbone, facts
