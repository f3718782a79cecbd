"""Resuming a run: the checkpoint's own configuration, the settings a resume may change, and the run folder.

A Lightning checkpoint of oaml carries the resolved configuration of its run (``checkpoint["oaml"]["config"]``).
``oaml train --resume_from_checkpoint CKPT`` starts from that configuration, so the model is rebuilt exactly as it
was trained, whatever the defaults are; explicitly given settings override it where that is safe (more epochs,
other data paths or devices, validation settings). Settings that shape the model or whose state the checkpoint
restores (the architecture, the loss branches, the batch and the sampler seed, the optimizer's lr, momentum and
weight decay) must match it: a differing explicit value is a one-line error instead of a state-dict mismatch deep
in Lightning, or a value that the restored optimizer state would silently overrule.

The resumed run continues in the checkpoint's run folder (``<run>/checkpoints/last.ckpt``): ``metrics.csv`` and
``train.log`` are appended to, ``best.ckpt`` is only replaced by a better one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oaml.config import OamlConfig, config_from_dict, field_index
from oaml.errors import CheckpointError, ConfigError
from oaml.models.checkpoint import read_meta

__all__ = ["LOCKED_ON_RESUME", "check_resume", "check_resume_classes", "resume_config", "resume_folder", "saved_config"]

logger = logging.getLogger(__name__)

LOCKED_ON_RESUME: frozenset[str] = frozenset(
    [name for name, (section, _, _) in field_index().items() if section == "model"]
    + [name for name, (section, _, _) in field_index().items()
       if section == "loss" and name not in ("class_memory_on_cpu", "occlusion_detach")]
    + ["channel_order", "input_size", "train_data_subset", "subset_index", "batch_size", "seed", "lr", "momentum",
       "weight_decay", "accumulate_grad_batches"])
"""Flat config keys whose value must equal the checkpoint's when a run is resumed."""

_NOT_WITH_RESUME = ("start_from_model_statedict", "evaluate")


def saved_config(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The resolved configuration stored in an oaml checkpoint, or None when it has none (a foreign checkpoint).

    Raises:
        FileNotFoundError: if the file does not exist.
        CheckpointError: if it is not a readable checkpoint.
    """
    meta = read_meta(path)
    return None if meta is None or meta.config is None else dict(meta.config)


def _merge(base: Mapping[str, Any], nested: Mapping[str, Any]) -> dict[str, Any]:
    merged = {section: dict(values) for section, values in base.items() if isinstance(values, Mapping)}
    for section, values in nested.items():
        if isinstance(values, Mapping):
            merged.setdefault(section, {}).update(values)
        else:  # a flat key at the top of a YAML file
            merged.setdefault(field_index()[section][0], {})[section] = values
    return merged


def _explicit_keys(nested: Mapping[str, Any], flat: Mapping[str, Any]) -> set[str]:
    keys = {key.split(".", 1)[-1] for key in flat}
    for section, values in nested.items():
        keys.update(values) if isinstance(values, Mapping) else keys.add(section)
    return keys


def check_resume(config: OamlConfig, saved: OamlConfig, path: str, keys: set[str] | None = None) -> None:
    """Refuse settings that differ from the checkpoint's where a resume cannot change them.

    Args:
        config: the configuration of the resumed run.
        saved: the checkpoint's configuration.
        path: the checkpoint (for the message).
        keys: the keys to compare (default: all of :data:`LOCKED_ON_RESUME`).

    Raises:
        ConfigError: naming the first differing key, both values and the fix.
    """
    for flag in _NOT_WITH_RESUME:
        if getattr(config.system, flag):
            raise ConfigError(f"--{flag} cannot be combined with --resume_from_checkpoint {path}")
    index = field_index()
    for key in sorted(LOCKED_ON_RESUME if keys is None else keys & LOCKED_ON_RESUME):
        section = index[key][0]
        ours, theirs = getattr(getattr(config, section), key), getattr(getattr(saved, section), key)
        if ours != theirs:
            raise ConfigError(f"--{key} {_show(ours)}: the checkpoint {path} was trained with {key} {_show(theirs)}, "
                              f"which a resumed run keeps; drop --{key}, or start a new run from its weights with "
                              f"--start_from_model_statedict")


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else repr(value) if value == "" else str(value)


def resume_config(path: str, nested: Mapping[str, Any], flat: Mapping[str, Any]) -> OamlConfig:
    """The configuration of ``--resume_from_checkpoint path``: the checkpoint's, then YAML, then ``--set`` and flags.

    A checkpoint without a stored configuration (not written by oaml) falls back to the defaults, with a warning.

    Raises:
        ConfigError: if an explicit setting conflicts with the checkpoint (see :func:`check_resume`).
        FileNotFoundError: if the checkpoint does not exist.
        CheckpointError: if it is not a readable checkpoint.
    """
    saved = saved_config(path)
    if saved is None:
        logger.warning("%s stores no oaml configuration; resuming with the given flags and the defaults", path)
        return config_from_dict(dict(nested), dict(flat))
    stored = config_from_dict(saved)
    base = stored.replace(resume_from_checkpoint="", start_from_model_statedict="", evaluate=False).to_dict()
    config = config_from_dict(_merge(base, nested), dict(flat))
    check_resume(config, stored, path, _explicit_keys(nested, flat))
    return config


def resume_folder(path: str | os.PathLike[str]) -> Path | None:
    """The run folder of ``<run>/checkpoints/<name>.ckpt`` (it holds ``config.yaml``), or None for a loose file."""
    folder = Path(path).resolve().parent
    if folder.name == "checkpoints" and (folder.parent / "config.yaml").is_file():
        return folder.parent
    return None


def check_resume_classes(path: str, checkpoint_classes: int | None, data_classes: int, train_path: Path) -> None:
    """Refuse to resume on training data with another number of identities than the checkpoint's head.

    Raises:
        CheckpointError: naming both counts.
    """
    if checkpoint_classes is not None and checkpoint_classes != data_classes:
        raise CheckpointError(f"--resume_from_checkpoint {path}: the checkpoint was trained on {checkpoint_classes} "
                              f"identities, the training data {train_path} has {data_classes}; resume on the same "
                              f"data (or start a new run with --start_from_model_statedict)")
