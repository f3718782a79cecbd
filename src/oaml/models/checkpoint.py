"""Loading backbone weights from the known checkpoint layouts, strictly and without unsafe unpickling.

SPEC §2 ("Released AdaFace .ckpt files") and §10. Accepted layouts, tried in this order:

1. ``{"state_dict": {...}}`` or a bare mapping of tensors (the state dict itself);
2. keys under ``model.backbone.`` (oaml's Lightning checkpoints: ``OamlSystem.model`` is a FaceModel),
   ``backbone.`` (a bare FaceModel state dict) or ``model.`` (released AdaFace / Lightning checkpoints),
   the first prefix whose keys contain ``input_layer.0.weight`` winning;
3. a raw backbone state dict (``input_layer.*``, ``body.*``, ``output_layer.*``).

Files are read with ``torch.load(..., map_location="cpu", weights_only=True)``; a file that needs
arbitrary unpickling is refused. Loading is strict: any missing or unexpected key is an error. When no
backbone is given, the architecture, width and input size are inferred from the weights themselves.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from oaml.errors import CheckpointError
from oaml.models.iresnet import BACKBONES, IResNet, feature_map_side, scaled_widths

__all__ = ["backbone_state_dict", "extract_prefixed", "infer_backbone_config", "load_backbone", "read_checkpoint"]

logger = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("model.backbone.", "backbone.", "model.")
_ANCHOR_KEY = "input_layer.0.weight"
_SHOW = 10  # keys listed per kind in a mismatch message


def extract_prefixed(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries whose key starts with ``prefix``, with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6: a zip archive
_PICKLE_PROTOCOL = 0x80  # the legacy format starts with a pickle (PROTO opcode)
_UNSAFE = re.compile(r"unsupported global:? +(?:GLOBAL +)?([\w.]+)", re.IGNORECASE)


def _format_problem(path: str) -> str | None:
    """Why ``path`` cannot be a torch checkpoint, judged from its bytes; None when it may be one."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        return "is empty"
    if head.startswith(_ZIP_MAGIC):
        return None if zipfile.is_zipfile(path) else "is a truncated or damaged checkpoint (its zip archive has no " \
                                                      "central directory)"
    if head[0] == _PICKLE_PROTOCOL:
        return None
    return f"is not a torch checkpoint (it starts with the bytes {head.hex(' ')}; torch.save writes a zip archive)"


def _is_zip(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == _ZIP_MAGIC


def read_checkpoint(path: str | os.PathLike[str], mmap: bool = False) -> Mapping[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``, on the CPU).

    Args:
        path: the file.
        mmap: map the tensors instead of reading them (cheap when only metadata is needed; zip format only).

    Raises:
        FileNotFoundError: if the file does not exist.
        CheckpointError: if the file is not a checkpoint (empty, truncated, another format), needs unsafe
            unpickling (it names the refused global), or does not hold a mapping. The message never suggests
            loading it unsafely.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    problem = _format_problem(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path!r} {problem}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and _is_zip(path))
    except pickle.UnpicklingError as exc:
        unsafe = _UNSAFE.search(str(exc))
        if unsafe is None:  # torch's text also advises weights_only=False: never pass that on
            raise CheckpointError(f"checkpoint {path!r} is damaged: its pickled content cannot be read") from None
        raise CheckpointError(
            f"checkpoint {path!r} needs unsafe unpickling (it holds an object of type {unsafe.group(1)}; only "
            f"tensors and plain containers are allowed); refused. Re-save it with plain values only"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/KeyError... for truncated or foreign files
        raise CheckpointError(f"checkpoint {path!r} is not a readable torch checkpoint (truncated or another "
                              f"format): {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(obj).__name__}, expected a mapping")
    return obj


def backbone_state_dict(checkpoint: Mapping[str, Any], source: str = "<state dict>") -> dict[str, Tensor]:
    """Select the backbone's entries from any accepted layout (see the module docstring).

    Raises:
        CheckpointError: if no layout matches; the message names ``source`` and shows a few keys.
    """
    inner = checkpoint.get("state_dict")
    state = inner if isinstance(inner, Mapping) else checkpoint
    for prefix in BACKBONE_PREFIXES:
        selected = extract_prefixed(state, prefix)
        if _ANCHOR_KEY in selected:
            return selected
    if _ANCHOR_KEY in state:
        return dict(state)
    sample = ", ".join(list(map(str, state))[:_SHOW])
    raise CheckpointError(
        f"{source}: no backbone weights found; expected {_ANCHOR_KEY!r} bare or under one of "
        f"{', '.join(BACKBONE_PREFIXES)} (optionally inside 'state_dict'); first keys: {sample}"
    )


def infer_backbone_config(state: Mapping[str, Tensor], source: str = "<state dict>") -> dict[str, Any]:
    """Infer ``arch``, ``width`` and ``input_size`` from a backbone state dict.

    Returns:
        ``{"arch": ..., "width": ..., "input_size": ...}``; the input size is 16 x the feature-map side
        (112 for 7 x 7 maps).

    Raises:
        CheckpointError: if the unit layout matches no registered backbone.
    """
    depths: list[int] = []
    while f"body.{len(depths)}.res_layer.1.weight" in state:
        depths.append(int(state[f"body.{len(depths)}.res_layer.1.weight"].shape[0]))
    stages: list[list[int]] = []
    for depth in depths:
        if stages and stages[-1][0] == depth:
            stages[-1][1] += 1
        else:
            stages.append([depth, 1])
    widths = tuple(depth for depth, _ in stages)
    units = tuple(count for _, count in stages)
    use_se = any(".res_layer.se_block." in key for key in state)
    width = widths[0] / 64 if widths else 0.0
    arch = next((name for name in BACKBONES.names() if _layout(name) == (units, use_se)), None)
    if arch is None or scaled_widths(width) != widths:
        raise CheckpointError(
            f"{source}: backbone layout (units {units}, widths {widths}, SE {use_se}) matches no registered "
            f"backbone ({', '.join(BACKBONES.names())})"
        )
    linear_in = int(state["output_layer.3.weight"].shape[1]) if "output_layer.3.weight" in state else 0
    side = round((linear_in / widths[-1]) ** 0.5)
    input_size = side * 16
    if side < 1 or side * side * widths[-1] != linear_in or feature_map_side(input_size) != side:
        raise CheckpointError(f"{source}: output_layer.3.weight has {linear_in} inputs, not C x side²")
    return {"arch": arch, "width": width, "input_size": input_size}


@functools.cache
def _layout(arch: str) -> tuple[tuple[int, ...], bool]:
    with torch.device("meta"):
        model = BACKBONES.build(arch, width=0.125, input_size=16)
    return model.units, model.use_se


def load_backbone(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    backbone: IResNet | None = None,
    arch: str | None = None,
    width: float | None = None,
    input_size: int | None = None,
) -> IResNet:
    """Load backbone weights strictly from a file or an in-memory checkpoint.

    Args:
        path_or_state_dict: a checkpoint path, or a loaded checkpoint / state dict (any accepted layout).
        backbone: the backbone to load into; None builds one.
        arch: backbone name to build when ``backbone`` is None; None infers it from the weights.
        width: width multiplier to build with; None infers it.
        input_size: input side to build with; None infers it (112 for 7 x 7 maps).

    Returns:
        The backbone holding the loaded weights (in training mode, like any new module).

    Raises:
        FileNotFoundError: if the path does not exist.
        CheckpointError: unsafe pickle, unknown layout, or key/shape mismatch (lists the first missing
            and unexpected keys with their counts).
    """
    if isinstance(path_or_state_dict, Mapping):
        source, checkpoint = "<state dict>", path_or_state_dict
    else:
        source = os.fspath(path_or_state_dict)
        checkpoint = read_checkpoint(source)
    state = backbone_state_dict(checkpoint, source)
    if backbone is None:
        inferred = infer_backbone_config(state, source) if None in (arch, width, input_size) else {}
        backbone = BACKBONES.build(
            arch or inferred["arch"],
            width=inferred["width"] if width is None else width,
            input_size=inferred["input_size"] if input_size is None else input_size,
        )
    _load_strict(backbone, state, source)
    logger.info("loaded %d backbone tensors from %s", len(state), source)
    return backbone


def _load_strict(backbone: IResNet, state: Mapping[str, Tensor], source: str) -> None:
    expected = set(backbone.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: backbone keys do not match: {len(missing)} missing {missing[:_SHOW]}, "
            f"{len(unexpected)} unexpected {unexpected[:_SHOW]}"
        )
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{source}: {exc}") from exc
