"""The one checkpoint module: reading every layout, writing ours, and the typed metadata record (SPEC §2, §10).

Every reader of checkpoints goes through here: inference (``oaml.load_model``, ``oaml eval``/``embed``/``export``),
training (``--start_from_model_statedict``, ``--evaluate``, resume) and the tests, which write checkpoints with
:func:`save_checkpoint` instead of by hand.

- **Ours** (Lightning checkpoints of ``OamlSystem``): ``state_dict`` keys ``model.backbone.*``,
  ``model.occlusion_head.*``, ``model.qaconv.*`` and ``objective.head.*``, ``objective.class_memory.*``, plus the
  entry ``checkpoint["oaml"]``: a :class:`CheckpointMeta` (format 2: arch, width, input size, channel order,
  occlusion method, classes, version and the run's resolved config). Format 1 (before the objective owned the
  head: ``head.*``, ``class_memory.*`` and a config-only entry) is read too (:func:`system_state_dict`).
- **FaceModel weights** without the entry (``backbone.*``/``occlusion_head.*``/``qaconv.*``, optionally under
  ``model.``): the architecture is inferred from the weights, the channel order assumed BGR.
- **Backbone only** (released AdaFace ``{"state_dict": {"model.<backbone>", "head.kernel", ...}}`` or a raw backbone
  state dict): only the backbone loads; QAConv and the occlusion head do not exist.

Backbone keys are found in this order:

1. ``{"state_dict": {...}}`` or a bare mapping of tensors (the state dict itself);
2. keys under ``model.backbone.`` (oaml's Lightning checkpoints: ``OamlSystem.model`` is a FaceModel),
   ``backbone.`` (a bare FaceModel state dict) or ``model.`` (released AdaFace / Lightning checkpoints),
   the first prefix whose keys contain ``input_layer.0.weight`` winning;
3. a raw backbone state dict (``input_layer.*``, ``body.*``, ``output_layer.*``).

Files are read with ``torch.load(..., map_location="cpu", weights_only=True)``: a file that needs arbitrary
unpickling is refused. Loading is strict. Without metadata, arch, width and input size are inferred from the weights.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from oaml.constants import FACE_SIZE, ChannelOrder
from oaml.errors import CheckpointError
from oaml.fileio import atomic_write
from oaml.models.face_model import build_face_model
from oaml.models.iresnet import BACKBONES, IResNet, feature_map_side, scaled_widths
from oaml.models.occlusion import OcclusionHead
from oaml.models.qaconv import QAConv

__all__ = ["CHECKPOINT_FORMAT", "CheckpointMeta", "LoadedFaceModel", "backbone_state_dict", "extract_prefixed",
           "infer_backbone_config", "load_backbone", "load_face_model", "read_checkpoint", "read_meta",
           "save_checkpoint", "system_state_dict"]

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
    _load_strict(backbone, state, f"{source}: backbone keys do not match:")
    logger.info("loaded %d backbone tensors from %s", len(state), source)
    return backbone


def _load_strict(module: nn.Module, weights: Mapping[str, Any], message: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists the first missing/unexpected/mismatched keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(weights)
                        if tuple(expected[k].shape) != tuple(getattr(weights[k], "shape", ())))
    if missing or unexpected or mismatched:
        shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:_SHOW]]
        raise CheckpointError(f"{message} {len(missing)} missing keys {missing[:_SHOW]}, {len(unexpected)} unexpected "
                              f"{unexpected[:_SHOW]}, {len(mismatched)} with other shapes {shapes}")
    module.load_state_dict(weights, strict=True)


# ----------------------------------------------------------------------------------------------- metadata
CHECKPOINT_FORMAT = 2
"""Version of the ``oaml`` entry and the key layout; 1 = the head and memory at the top level, config only."""

_FORMAT1_KEYS = (("head.", "objective.head."), ("class_memory.", "objective.class_memory."))


def _section(config: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
    value = config.get(name) if isinstance(config, Mapping) else None
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class CheckpointMeta:
    """What our checkpoints say about themselves (``checkpoint["oaml"]``); training writes it, everyone reads it.

    Attributes:
        arch: backbone name.
        width: width multiplier.
        input_size: side of the square input.
        channel_order: channel order the backbone expects.
        occlusion_method: how visibility maps weight QAConv (``scaling``, ``normalised``, ``none``; ``unavailable``
            without QAConv).
        embedding_gate: the predicted visibility gates the feature map before the embedding layer.
        num_classes: training identities (the margin head's columns), if known.
        class_names: the training identity names.
        version: oaml version that wrote the checkpoint.
        config: the run's resolved configuration (nested sections), for resume and ``--evaluate``.
    """

    arch: str
    width: float
    input_size: int = FACE_SIZE
    channel_order: ChannelOrder = ChannelOrder.BGR
    occlusion_method: str = "scaling"
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    version: str | None = None
    embedding_gate: bool = False
    config: dict[str, Any] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``oaml`` entry (plain types only, loadable with ``weights_only=True``)."""
        return {"format": CHECKPOINT_FORMAT, "arch": self.arch, "width": float(self.width),
                "input_size": int(self.input_size), "channel_order": self.channel_order.value,
                "occlusion_method": self.occlusion_method, "num_classes": self.num_classes,
                "class_names": list(self.class_names), "version": self.version,
                "embedding_gate": bool(self.embedding_gate), "config": self.config}

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], source: str, inferred: Mapping[str, Any] | None = None
                   ) -> CheckpointMeta:
        """Parse an ``oaml`` entry of format 2, or of format 1 (the values read from its config sections).

        ``inferred`` (from :func:`infer_backbone_config`) fills an architecture the entry does not name.

        Raises:
            CheckpointError: on a missing architecture or a bad channel order.
        """
        config = entry.get("config") if isinstance(entry.get("config"), Mapping) else None
        model, data, loss = (_section(config, name) for name in ("model", "data", "loss"))
        values = {**(inferred or {}), **{k: v for k, v in (("arch", model.get("arch")), ("width", model.get("width")),
                                                            ("input_size", data.get("input_size"))) if v is not None}}
        values.update({k: entry[k] for k in ("arch", "width", "input_size") if entry.get(k) is not None})
        if "arch" not in values:
            raise CheckpointError(f"{source}: its 'oaml' entry names no architecture")
        order = entry.get("channel_order", data.get("channel_order", ChannelOrder.BGR.value))
        try:
            channel_order = ChannelOrder(str(order).lower())
        except ValueError:
            raise CheckpointError(f"{source}: unknown channel order {order!r} in the 'oaml' entry; expected bgr or "
                                  f"rgb") from None
        classes = entry.get("num_classes")
        return cls(str(values["arch"]), float(values.get("width", 1.0)), int(values.get("input_size", FACE_SIZE)),
                   channel_order, str(entry.get("occlusion_method", loss.get("occlusion_method", "scaling"))),
                   int(classes) if isinstance(classes, int) and not isinstance(classes, bool) else None,
                   tuple(str(n) for n in entry.get("class_names") or ()),
                   None if entry.get("version") is None else str(entry["version"]),
                   bool(entry.get("embedding_gate", model.get("embedding_gate", False))),
                   dict(config) if config is not None else None)


def read_meta(path: str | os.PathLike[str]) -> CheckpointMeta | None:
    """The :class:`CheckpointMeta` of an oaml checkpoint (tensors are memory-mapped, not read), or None for a
    checkpoint without one (released AdaFace, a raw state dict).

    Raises:
        FileNotFoundError, CheckpointError: as :func:`read_checkpoint`.
    """
    path = os.fspath(path)
    entry = read_checkpoint(path, mmap=True).get("oaml")
    return CheckpointMeta.from_entry(entry, path) if isinstance(entry, Mapping) else None


def system_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The ``state_dict`` of an oaml checkpoint in the current key layout (format-1 keys renamed)."""
    state = dict(checkpoint.get("state_dict", checkpoint))
    entry = checkpoint.get("oaml")
    if isinstance(entry, Mapping) and int(entry.get("format", 1)) >= CHECKPOINT_FORMAT:
        return state
    renamed = {}
    for key, value in state.items():
        old = next((prefix for prefix, _ in _FORMAT1_KEYS if key.startswith(prefix)), None)
        renamed[key if old is None else dict(_FORMAT1_KEYS)[old] + key[len(old):]] = value
    return renamed


def save_checkpoint(path: str | os.PathLike[str], state_dict: Mapping[str, Tensor], meta: CheckpointMeta | None,
                    **extra: Any) -> Path:
    """Write a checkpoint in our layout atomically: ``{"state_dict": ..., "oaml": meta, **extra}``.

    ``state_dict`` holds the system's keys (``model.*``, ``objective.*``); None for ``meta`` writes a checkpoint
    without the entry (as foreign tools do).
    """
    checkpoint: dict[str, Any] = {"state_dict": dict(state_dict), **extra}
    if meta is not None:
        checkpoint["oaml"] = meta.to_dict()
    with atomic_write(path, "wb") as handle:
        torch.save(checkpoint, handle)
    return Path(path)


# ----------------------------------------------------------------------------------------------- inference
class LoadedFaceModel(NamedTuple):
    """The inference modules of a checkpoint (eval mode, CPU) and what it says about them.

    Attributes:
        backbone: the IR backbone.
        occlusion_head: None for backbone-only checkpoints.
        qaconv: None for backbone-only checkpoints.
        meta: the checkpoint's metadata (inferred from the weights when it has none), with the architecture that
            was built.
        layout: ``"oaml"``, ``"face_model"`` (FaceModel weights without metadata), ``"adaface_released"`` (``model.*``
            keys plus ``head.kernel``) or ``"backbone"``.
    """

    backbone: IResNet
    occlusion_head: OcclusionHead | None
    qaconv: QAConv | None
    meta: CheckpointMeta
    layout: str


def _face_model_prefix(state: Mapping[str, Any]) -> str | None:
    for prefix in ("model.", ""):
        if f"{prefix}backbone.{_ANCHOR_KEY}" in state and f"{prefix}qaconv.fc.weight" in state:
            return prefix
    return None


def load_face_model(path: str | os.PathLike[str], arch: str | None = None) -> LoadedFaceModel:
    """Load the inference modules of any accepted layout (module docstring), strictly.

    Args:
        path: the checkpoint.
        arch: backbone to build; None reads it from the metadata or infers it from the weights.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if the file is unreadable or unsafe, has an unknown layout, or its weights do not fit.
    """
    source = os.fspath(path)
    checkpoint = read_checkpoint(source)
    state = checkpoint.get("state_dict") if isinstance(checkpoint.get("state_dict"), Mapping) else checkpoint
    prefix = _face_model_prefix(state)
    if prefix is None:
        return _load_backbone_only(checkpoint, state, source, arch)
    weights = {k: v for k, v in extract_prefixed(state, prefix).items()
               if k.startswith(("backbone.", "occlusion_head.", "qaconv."))}
    entry = checkpoint.get("oaml") if isinstance(checkpoint.get("oaml"), Mapping) else {}
    inferred = infer_backbone_config(extract_prefixed(weights, "backbone."), source)
    meta = CheckpointMeta.from_entry(entry, source, inferred)
    model = build_face_model(arch or meta.arch, width=meta.width, input_size=meta.input_size,
                             visibility="normalised" if meta.occlusion_method == "normalised" else "scaling",
                             embedding_gate=meta.embedding_gate)
    hint = (f" The checkpoint was trained as {meta.arch} (width {meta.width:g}); --arch {arch} does not match it."
            if arch and arch != meta.arch else "")
    _load_strict(model, weights, f"{source}: the weights do not fit {arch or meta.arch} width "
                                        f"{meta.width:g}.{hint}")
    model.eval()
    return LoadedFaceModel(model.backbone, model.occlusion_head, model.qaconv, replace(meta, arch=arch or meta.arch),
                           "oaml" if entry else "face_model")


def _load_backbone_only(checkpoint: Mapping[str, Any], state: Mapping[str, Any], source: str,
                        arch: str | None) -> LoadedFaceModel:
    weights = backbone_state_dict(checkpoint, source)
    layout = "adaface_released" if "head.kernel" in state else "backbone"
    if arch is None:
        arch = infer_backbone_config(weights, source)["arch"]
        logger.warning("%s records no architecture; inferred %s from the weights (pass --arch to override)", source,
                       arch)
    try:
        backbone = load_backbone(weights, arch=arch)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: --arch {arch} does not fit the weights: {exc}") from exc
    logger.warning("%s holds a backbone only (%s layout): channel order BGR assumed (released AdaFace convention); "
                   "QAConv and the occlusion head are unavailable", source, layout)
    meta = CheckpointMeta(arch, float(backbone.width), backbone.input_size, ChannelOrder.BGR, "unavailable")
    return LoadedFaceModel(backbone.eval(), None, None, meta, layout)
