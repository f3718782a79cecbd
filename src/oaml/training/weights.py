"""Starting a system from a checkpoint: ``--start_from_model_statedict`` and ``--evaluate`` (SPEC §2, §10).

The checkpoint is read through :mod:`oaml.models.checkpoint`; our checkpoints load into the whole system strictly
(format-1 keys renamed), a released AdaFace checkpoint loads the backbone strictly and the margin head when its
class count matches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from oaml.config import OamlConfig, config_from_dict
from oaml.errors import CheckpointError
from oaml.models import FaceModel, extract_prefixed
from oaml.models.checkpoint import CheckpointMeta, backbone_state_dict, read_checkpoint, system_state_dict
from oaml.training.objective import TrainingObjective

__all__ = ["checkpoint_classes", "evaluation_config", "load_start_weights"]

logger = logging.getLogger(__name__)

_MEMORY = "objective.class_memory."
_HEAD = "objective.head."


class StartableSystem(Protocol):
    """What :func:`load_start_weights` needs of a system (``OamlSystem``): its model, objective and state."""

    model: FaceModel
    objective: TrainingObjective

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...


def load_start_weights(system: StartableSystem, path: str | os.PathLike[str]) -> None:
    """Initialise ``system`` from ``--start_from_model_statedict``.

    Our checkpoints load strictly (the class memory only when the system has one). A released AdaFace checkpoint
    (backbone under ``model.``, ``head.*``) loads the backbone strictly and the head when its class count matches;
    the occlusion head and QAConv keep their fresh initialisation, with a warning that lists them.

    Raises:
        CheckpointError: on an unknown layout or mismatching keys.
    """
    checkpoint = read_checkpoint(path, mmap=True)  # each rank copies only its own head columns and memory rows
    state = system_state_dict(checkpoint)
    if any(key.startswith("model.backbone.") for key in state):
        keep = system.objective.class_memory is not None
        own = {k: v for k, v in state.items() if keep or not k.startswith(_MEMORY)}
        missing, unexpected = system.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.startswith(_MEMORY)]
        if missing or unexpected:
            raise CheckpointError(f"{path}: does not match this model; missing keys {missing[:10]} "
                                  f"({len(missing)}), unexpected keys {unexpected[:10]} ({len(unexpected)})")
        return
    try:
        system.model.backbone.load_state_dict(backbone_state_dict(checkpoint, str(path)), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: backbone weights do not match --arch/--width: {error}") from None
    head, head_state = system.objective.head, extract_prefixed(state, _HEAD)
    kernel = head_state.get("kernel")
    full_shape = (head.embedding_size, head.num_classes)
    if kernel is not None and tuple(kernel.shape) == full_shape:
        head.load_state_dict(head_state, strict=False)  # each rank keeps its columns
    else:
        logger.warning("%s: head not loaded (%s); it starts fresh", path,
                       "absent" if kernel is None else f"{tuple(kernel.shape)} vs {full_shape}")
    fresh = [f"model.occlusion_head.{n}" for n, _ in system.model.occlusion_head.named_parameters()] + \
            [f"model.qaconv.{n}" for n, _ in system.model.qaconv.named_parameters()]
    logger.warning("%s is a backbone-only checkpoint: initialised fresh: %s", path, ", ".join(fresh))


def evaluation_config(config: OamlConfig, meta: CheckpointMeta | None) -> OamlConfig:
    """``config`` with the model, the loss branches and the input convention of the checkpoint (``--evaluate``)."""
    if meta is None or meta.config is None:
        return config
    merged: dict[str, Any] = config.to_dict()
    merged["model"], merged["loss"] = meta.config["model"], meta.config["loss"]
    merged["data"] |= {"channel_order": meta.channel_order.value, "input_size": meta.input_size}
    return config_from_dict(merged)


def checkpoint_classes(path: str | os.PathLike[str], meta: CheckpointMeta | None) -> int:
    """The checkpoint's training class count: from its metadata, else the released head's kernel (2 without one)."""
    if meta is not None and meta.num_classes:
        return meta.num_classes
    kernel = system_state_dict(read_checkpoint(path, mmap=True)).get(_HEAD + "kernel")
    return int(kernel.shape[1]) if isinstance(kernel, torch.Tensor) and kernel.dim() == 2 else 2
