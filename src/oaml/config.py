"""The one typed configuration tree of a training run.

Every default lives here and only here. ``OamlConfig`` is a frozen tree of section dataclasses; each field
name is also its command-line flag (``--batch_size``), so the flat names of the seed's command lines keep
working. Values are layered: dataclass defaults < ``--config file.yaml`` < ``--set section.key=value`` and
plain flags. ``__post_init__`` of each section checks ranges and names the bad key; cross-section rules are
in :func:`validate`.

Note on the AdaFace margin: the predecessor's defaults m=0.5, h=0.0 make ŝ ≡ 0, which turns AdaFace into
CosFace(m). The defaults here are the AdaFace paper's m=0.4, h=0.333 (SPEC §3).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from oaml.constants import ChannelOrder
from oaml.errors import ConfigError

__all__ = ["AugmentConfig", "DataConfig", "EvalConfig", "LossConfig", "ModelConfig", "OamlConfig", "SystemConfig",
           "TrainConfig", "config_from_dict", "load_config_file", "load_yaml", "packaged_configs", "parse_value",
           "registered_names", "validate"]

OCCLUSION_METHODS = ("scaling", "normalised", "none")
_AUTO_WORKERS = 8  # beyond this the decoders of 112x112 JPEGs out-run any single device


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


def registered_names(registry: str) -> list[str]:
    """The names of ``oaml.models.BACKBONES`` (``"backbone"``) or ``oaml.models.HEADS`` (``"head"``).

    The registries are the one list of these names; reading them imports the model code (and torch).
    """
    from oaml.models import BACKBONES, HEADS

    return {"backbone": BACKBONES, "head": HEADS}[registry].names()


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"--{key}: invalid value {value!r}; {allowed}")


def _prob(key: str, value: float) -> None:
    _require(0.0 <= value <= 1.0, key, value, "expected a probability in [0, 1]")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how images are presented to the backbone (SPEC §7, §9)."""

    data_root: str = _opt("", "root folder that holds train_data_path and val_data_path")
    train_data_path: str = _opt("faces_emore", "training data under data_root: a folder with train.rec/train.idx, "
                                "or identity folders")
    val_data_path: str = _opt("faces_emore", "folder under data_root with the verification .bin files")
    use_mxrecord: bool = _opt(False, "require train.rec/train.idx (insightface RecordIO); without the flag the "
                              "format is detected (train.rec if present, else identity folders)")
    train_data_subset: bool = _opt(False, "MS1MV2 subset: keep the images listed in subset_index, drop identities "
                                   "with fewer than 5 images, relabel")
    subset_index: str = _opt("", "subset index file (default: <train dir>/ms1mv2_train_subset_index.txt)")
    channel_order: str = _opt("bgr", "channel order the backbone expects: bgr (AdaFace weights) or rgb "
                              "(insightface weights)")
    input_size: int = _opt(112, "side of the aligned input face in pixels")
    max_bad_fraction: float = _opt(0.001, "abort training when more than this fraction of the training images is "
                                   "unreadable (each one is skipped, logged and replaced by another image of its "
                                   "identity until then)")

    def __post_init__(self) -> None:
        _require(self.channel_order in {c.value for c in ChannelOrder}, "channel_order", self.channel_order,
                 "choose bgr or rgb")
        _prob("max_bad_fraction", self.max_bad_fraction)
        _require(self.input_size >= 32 and self.input_size % 16 == 0, "input_size", self.input_size,
                 "expected a multiple of 16, at least 32")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule (SPEC §6; weight_decay is honoured, unlike the predecessor's)."""

    epochs: int = _opt(24, "number of training epochs")
    batch_size: int = _opt(256, "total batch size over all devices (divided per device under DDP)")
    lr: float = _opt(0.1, "initial SGD learning rate")
    lr_milestones: tuple[int, ...] = _opt((8, 12, 14), "epochs at which the lr is multiplied by lr_gamma, "
                                          "e.g. 8,12,14")
    lr_gamma: float = _opt(0.1, "lr decay factor at each milestone")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "weight decay of conv/linear/PReLU weights, head kernel and QAConv fc")
    warmup_epochs: float = _opt(0.0, "linear lr warm-up length in epochs (0 = off)")
    seed: int = _opt(42, "global random seed")
    accumulate_grad_batches: int = _opt(1, "gradient accumulation steps")
    gradient_clip_val: float = _opt(0.0, "clip the gradient norm to this value (0 = off)")
    max_nonfinite_steps: int = _opt(10, "abort after this many consecutive steps with a non-finite loss")
    limit_train_batches: float = _opt(1.0, "fraction (<=1) or number (>1) of training batches per epoch")
    log_every_n_steps: int = _opt(50, "log the losses every N steps")

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", self.epochs, "expected a positive integer")
        _require(self.batch_size >= 2, "batch_size", self.batch_size, "expected an integer >= 2")
        _require(self.lr > 0, "lr", self.lr, "expected a positive number")
        _require(all(a < b for a, b in zip(self.lr_milestones, self.lr_milestones[1:])), "lr_milestones",
                 ",".join(map(str, self.lr_milestones)), "expected strictly increasing epochs, e.g. 8,12,14")
        _require(all(m > 0 for m in self.lr_milestones), "lr_milestones", self.lr_milestones,
                 "expected positive epochs")
        _require(0 < self.lr_gamma <= 1, "lr_gamma", self.lr_gamma, "expected a number in (0, 1]")
        _require(0 <= self.momentum < 1, "momentum", self.momentum, "expected a number in [0, 1)")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "expected a number >= 0")
        _require(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "expected a number >= 0")
        _require(self.accumulate_grad_batches >= 1, "accumulate_grad_batches", self.accumulate_grad_batches,
                 "expected a positive integer")
        _require(self.gradient_clip_val >= 0, "gradient_clip_val", self.gradient_clip_val, "expected >= 0")
        _require(self.max_nonfinite_steps >= 1, "max_nonfinite_steps", self.max_nonfinite_steps, "expected >= 1")
        _require(self.limit_train_batches > 0, "limit_train_batches", self.limit_train_batches, "expected > 0")
        _require(self.log_every_n_steps >= 1, "log_every_n_steps", self.log_every_n_steps, "expected >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and margin head (SPEC §2, §3)."""

    arch: str = _opt("ir_50", "backbone", registry="backbone")
    width: float = _opt(1.0, "channel width multiplier of the IR family (e.g. 0.125 for CPU tests)")
    head: str = _opt("adaface", "margin head", registry="head")
    m: float | None = _opt(None, "margin; unset: the head's paper value (adaface 0.4, arcface 0.5, cosface 0.4; "
                           "oaml.models.PAPER_MARGINS)")
    h: float = _opt(0.333, "AdaFace feature-norm concentration (h=0 makes AdaFace a CosFace)")
    s: float = _opt(64.0, "logit scale")
    t_alpha: float = _opt(0.01, "AdaFace EMA momentum of the feature-norm statistics")
    embedding_gate: bool = _opt(False, "gate the feature map by the predicted visibility before the embedding layer "
                                "(FROM-style), so hidden regions leave the global embedding too")

    def __post_init__(self) -> None:
        for key in ("arch", "head"):
            names = registered_names(self.__dataclass_fields__[key].metadata["registry"])
            _require(getattr(self, key) in names, key, getattr(self, key), "choose one of " + ", ".join(names))
        _require(0.0625 <= self.width <= 4.0, "width", self.width, "expected a multiplier in [0.0625, 4]")
        _require(self.m is None or self.m >= 0, "m", self.m, "expected a margin >= 0")
        _require(self.h >= 0, "h", self.h, "expected h >= 0")
        _require(self.s > 0, "s", self.s, "expected a positive scale")
        _require(0 < self.t_alpha <= 1, "t_alpha", self.t_alpha, "expected a number in (0, 1]")


@dataclass(frozen=True)
class LossConfig:
    """QAConv, class memory and the weights of the combined objective (SPEC §5, §6)."""

    k_nearest: int = _opt(32, "QAConv class graph: number of nearest classes per class")
    adaface_loss_weight: float = _opt(0.1, "weight of the margin-head cross-entropy")
    qaconv_loss_weight: float = _opt(0.7, "weight of the QAConv losses (pairwise + triplet_weight * softmax-triplet)")
    occlusion_loss_weight: float = _opt(0.3, "weight of the occlusion-map MSE")
    triplet_weight: float = _opt(0.5, "weight of the softmax-triplet losses inside the QAConv term")
    triplet_margin: float = _opt(1.0, "batch-hard triplet margin")
    occlusion_method: str = _opt("scaling", "how visibility maps weight QAConv: scaling (the seed's), normalised "
                                 "(hidden locations neither match nor mismatch) or none")
    occlusion_detach: bool = _opt(True, "QAConv losses send no gradient into the visibility maps (the occlusion "
                                  "head then learns from its MSE alone)")
    instances_per_identity: int = _opt(4, "K of the PK sampler: images per identity in a batch")
    class_memory_on_cpu: bool = _opt(False, "keep the fp16 class memory on the CPU (saves GPU memory)")
    graph_sampler: bool = _opt(False, "QAConv-GS: each batch is a seed class and its nearest classes in the class "
                               "graph (every class seeds one batch per epoch, so an epoch has P times more batches)")
    sample_rate: float = _opt(1.0, "Partial FC: fraction of each rank's margin-head classes in a step's softmax "
                              "(every class of the global batch, plus random negatives; 1 = all)")

    def __post_init__(self) -> None:
        for key in ("adaface_loss_weight", "qaconv_loss_weight", "occlusion_loss_weight", "triplet_weight"):
            _require(getattr(self, key) >= 0, key, getattr(self, key), "expected a weight >= 0")
        _require(self.k_nearest >= 1, "k_nearest", self.k_nearest, "expected a positive integer")
        _require(self.triplet_margin >= 0, "triplet_margin", self.triplet_margin, "expected >= 0")
        _require(self.occlusion_method in OCCLUSION_METHODS, "occlusion_method", self.occlusion_method,
                 "choose one of " + ", ".join(OCCLUSION_METHODS))
        _require(self.instances_per_identity >= 2, "instances_per_identity", self.instances_per_identity,
                 "expected at least 2 (positives are needed)")
        _require(0 < self.sample_rate <= 1, "sample_rate", self.sample_rate, "expected a fraction in (0, 1]")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation probabilities (SPEC §8)."""

    mask_prob: float = _opt(0.5, "probability of drawing a synthetic medical mask")
    flip_prob: float = _opt(0.5, "probability of a horizontal flip")
    low_res_augmentation_prob: float = _opt(0.0, "probability of the low-resolution augmentation")
    crop_augmentation_prob: float = _opt(0.0, "probability of the in-place crop augmentation")
    photometric_augmentation_prob: float = _opt(0.0, "probability of the photometric augmentation")
    occluders: str = _opt("", "occluder mixture name:probability,... (one occluder per image at most, e.g. "
                          "mask:0.5,sunglasses:0.2) in place of the medical mask of mask_prob")

    def __post_init__(self) -> None:
        for name in (item.name for item in dataclasses.fields(self) if item.name.endswith("_prob")):
            _prob(name, getattr(self, name))


@dataclass(frozen=True)
class EvalConfig:
    """Validation protocol (SPEC §9)."""

    eval_adaface_weight: float = _opt(0.5, "weight of the standardised AdaFace score in the combined score")
    eval_qaconv_weight: float = _opt(0.5, "weight of the standardised QAConv score in the combined score")
    masked_protocol: bool = _opt(True, "also validate with a synthetic mask on the second image of each pair")
    val_occluders: str = _opt("", "more protocols to validate, each logged as val/occ_<protocol>_*: NAME (on the "
                              "second image) or FIRST+SECOND, comma-separated, e.g. sunglasses,mask+sunglasses")
    val_batch_size: int = _opt(128, "images per validation batch (per device)")
    val_every_n_epochs: int = _opt(1, "validate every N epochs (the interval within an epoch follows the seed's "
                                   "rule: once per epoch for runs over 4 epochs, else every tenth)")

    def __post_init__(self) -> None:
        for key in ("eval_adaface_weight", "eval_qaconv_weight"):
            _require(getattr(self, key) >= 0, key, getattr(self, key), "expected a weight >= 0")
        _require(self.val_every_n_epochs >= 1, "val_every_n_epochs", self.val_every_n_epochs, "expected >= 1")
        _require(self.val_batch_size >= 2 and self.val_batch_size % 2 == 0, "val_batch_size",
                 self.val_batch_size, "expected an even integer >= 2 (pairs stay together)")


@dataclass(frozen=True)
class SystemConfig:
    """Devices, precision, logging and run control."""

    gpus: int = _opt(0, "number of GPUs per node (0 = CPU)")
    num_processes: int = _opt(1, "CPU processes per node when gpus is 0 (DDP over gloo when > 1)")
    num_nodes: int = _opt(1, "number of nodes for multi-node DDP")
    distributed_backend: str = _opt("ddp", "strategy when more than one device is used: ddp")
    use_16bit: bool = _opt(False, "mixed precision: 16-mixed on GPU, bf16-mixed on CPU")
    num_workers: int = _opt(-1, "data-loader workers per device; -1 = the CPU cores this process may use, shared "
                            "by the devices of the node, at most 8")
    prefix: str = _opt("default", "experiment name prefix: experiments/{prefix}_{MM-DD}_{n}")
    output_dir: str = _opt("experiments", "folder that holds the experiment folders")
    resume_from_checkpoint: str = _opt("", "Lightning checkpoint to resume training from")
    start_from_model_statedict: str = _opt("", "weights to start from (ours or a released AdaFace .ckpt)")
    evaluate: bool = _opt(False, "only evaluate start_from_model_statedict on the validation sets")
    fast_dev_run: bool = _opt(False, "run one training and one validation batch, then stop")
    tensorboard: bool = _opt(False, "also log to TensorBoard in <run>/tensorboard (needs the tensorboard extra)")
    wandb: bool = _opt(False, "log to Weights & Biases (needs the wandb extra)")
    wandb_offline: bool = _opt(False, "W&B offline mode (no network needed; sync later)")
    wandb_project: str = _opt("oaml", "W&B project name")
    deterministic: bool = _opt(False, "use deterministic algorithms (slower; for exact resumes)")

    def __post_init__(self) -> None:
        _require(self.gpus >= 0, "gpus", self.gpus, "expected an integer >= 0")
        _require(self.num_processes >= 1, "num_processes", self.num_processes, "expected an integer >= 1")
        _require(self.num_nodes >= 1, "num_nodes", self.num_nodes, "expected an integer >= 1")
        _require(self.distributed_backend != "dp" and self.distributed_backend != "ddp2", "distributed_backend",
                 self.distributed_backend, "dp and ddp2 were removed in Lightning 2; use ddp")
        _require(self.distributed_backend in ("ddp", "ddp_spawn", "ddp_find_unused_parameters_true"),
                 "distributed_backend", self.distributed_backend,
                 "choose ddp, ddp_spawn or ddp_find_unused_parameters_true")
        _require(self.num_workers >= -1, "num_workers", self.num_workers, "expected an integer >= 0, or -1 (auto)")
        _require(bool(self.prefix) and "/" not in self.prefix, "prefix", self.prefix,
                 "expected a non-empty name without '/'")

    @property
    def devices(self) -> int:
        """Devices per node: the GPU count, or the CPU process count."""
        return self.gpus if self.gpus > 0 else self.num_processes

    @property
    def workers(self) -> int:
        """Data-loader workers per device: ``num_workers`` capped at the usable cores, or for -1 the usable cores
        shared by the node's devices, at most 8."""
        from oaml.devices import cpu_count

        cores = cpu_count()
        if self.num_workers >= 0:
            return min(self.num_workers, cores)
        return max(1, min(_AUTO_WORKERS, cores // self.devices))


@dataclass(frozen=True)
class OamlConfig:
    """The resolved configuration of a run: one section per concern."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (tuples become lists), suitable for YAML and checkpoints."""
        return {
            section.name: {key: list(v) if isinstance(v, tuple) else v
                           for key, v in dataclasses.asdict(getattr(self, section.name)).items()}
            for section in dataclasses.fields(self)
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    def replace(self, **flat: Any) -> OamlConfig:
        """A copy with flat keys (``batch_size=64``) or dotted keys (``train.batch_size``) replaced."""
        return config_from_dict(self.to_dict(), flat)

    @property
    def channel_order(self) -> ChannelOrder:
        return ChannelOrder(self.data.channel_order)


SECTIONS: dict[str, type] = {item.name: item.type for item in dataclasses.fields(OamlConfig)}  # type: ignore[misc]


def _section_types() -> dict[str, type]:
    hints = get_type_hints(OamlConfig)
    return {name: hints[name] for name in SECTIONS}


def field_index() -> dict[str, tuple[str, dataclasses.Field[Any], Any]]:
    """Map each flat key to (section, field, resolved type). Flat keys are unique across sections."""
    index: dict[str, tuple[str, dataclasses.Field[Any], Any]] = {}
    for section, cls in _section_types().items():
        hints = get_type_hints(cls)
        for item in dataclasses.fields(cls):
            index[item.name] = (section, item, hints[item.name])
    return index


def parse_value(key: str, raw: Any, kind: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, naming the key on failure."""
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == (float | None):
            return None if raw is None or str(raw).strip().lower() in ("", "none", "null") else float(raw)
        if kind == tuple[int, ...]:
            if isinstance(raw, (list, tuple)):
                return tuple(int(v) for v in raw)
            text = str(raw).strip()
            return tuple(int(v) for v in text.split(",") if v.strip()) if text else ()
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if kind is float:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        expected = {bool: "true or false", int: "an integer", float: "a number", float | None: "a number or none"
                    }.get(kind, "comma-separated integers")
        raise ConfigError(f"--{key}: invalid value {raw!r}; expected {expected}") from None


def config_from_dict(nested: dict[str, Any] | None = None, flat: dict[str, Any] | None = None) -> OamlConfig:
    """Build a config from a nested dict (YAML layout) and flat or dotted overrides, in that precedence.

    Raises:
        ConfigError: on an unknown section or key, a value of the wrong type, or a value out of range.
    """
    index = field_index()
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for section, entries in (nested or {}).items():
        if section not in SECTIONS:
            if section in index and not isinstance(entries, dict):
                values[index[section][0]][section] = entries
                continue
            raise ConfigError(f"unknown config section {section!r}; sections are: {', '.join(SECTIONS)}")
        if not isinstance(entries, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, found {type(entries).__name__}")
        for key, raw in entries.items():
            if key not in index or index[key][0] != section:
                raise ConfigError(f"unknown config key {section}.{key}")
            values[section][key] = raw
    for key, raw in (flat or {}).items():
        name = key.split(".", 1)[-1]
        if name not in index or ("." in key and key.split(".", 1)[0] != index[name][0]):
            raise ConfigError(f"unknown config key {key!r}")
        values[index[name][0]][name] = raw
    sections = {}
    for section, cls in _section_types().items():
        typed = {key: parse_value(key, raw, index[key][2]) for key, raw in values[section].items()}
        sections[section] = cls(**typed)
    return OamlConfig(**sections)


def packaged_configs() -> list[str]:
    """Names of the configurations shipped with oaml (``oaml/configs/<name>.yaml``)."""
    folder = importlib.resources.files("oaml") / "configs"
    return sorted(item.name.removesuffix(".yaml") for item in folder.iterdir() if item.name.endswith(".yaml"))


def load_config_file(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML configuration: a file path, or the name of a packaged configuration (``tiny_cpu``).

    Raises:
        ConfigError: if it is neither an existing file nor a packaged name (the message lists the names), or the
            YAML is invalid.
    """
    path = Path(name_or_path)
    if path.is_file():
        return load_yaml(path)
    name = path.name.removesuffix(".yaml")
    if str(name_or_path).removesuffix(".yaml") == name and name in packaged_configs():
        with importlib.resources.as_file(importlib.resources.files("oaml") / "configs" / f"{name}.yaml") as packaged:
            return load_yaml(packaged)
    raise ConfigError(f"--config: {name_or_path} is neither a file nor a packaged configuration; packaged: "
                      f"{', '.join(packaged_configs())}")


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file into a nested dict.

    Raises:
        ConfigError: if the file is missing, is not valid YAML, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"--config: {path} is not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of sections, found {type(content).__name__}")
    return content


def validate(config: OamlConfig) -> None:
    """Cross-section checks that no single section can make.

    Raises:
        ConfigError: naming the argument at fault.
    """
    k = config.loss.instances_per_identity
    world = config.system.devices * config.system.num_nodes
    if config.train.batch_size % (k * world):
        raise ConfigError(f"--batch_size: invalid value {config.train.batch_size}; it must be divisible by "
                          f"instances_per_identity x devices = {k} x {world} = {k * world}")
    loss = config.loss
    if loss.graph_sampler and not (loss.qaconv_loss_weight > 0 and loss.triplet_weight > 0):
        raise ConfigError("--graph_sampler samples by the class memory's graph, which needs the class-memory loss: "
                          "set --qaconv_loss_weight and --triplet_weight above 0, or drop --graph_sampler")
