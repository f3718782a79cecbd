"""The training configuration on the command line: one flag per config field, ``--config`` and ``--set``."""

from __future__ import annotations

import argparse
from typing import Any

from oaml.config import OamlConfig, config_from_dict, field_index, load_config_file, registered_names, validate
from oaml.errors import ConfigError

__all__ = ["add_config_arguments", "config_from_args", "parameter_summary"]


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else repr(value) if value == "" else str(value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--set`` and one flag per field of :class:`OamlConfig`, grouped by section."""
    parser.add_argument("--config", metavar="FILE.yaml|NAME", help="YAML file with config sections, or the name of "
                        "a packaged one (tiny_cpu, ir50_adaface_qaconv); flags override it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults = OamlConfig().to_dict()
    for key, (section, item, kind) in field_index().items():
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        registry = item.metadata.get("registry")
        names = f": {', '.join(registered_names(registry))}" if registry else ""
        help_text = f"{item.metadata['help']}{names} (default: {_shown(defaults[section][key])})"
        if kind is bool:
            group.add_argument(f"--{key}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(f"--{key}", default=None, metavar=key.upper(), help=help_text)


def config_from_args(args: argparse.Namespace) -> OamlConfig:
    """Resolve defaults < ``--config`` < ``--set`` < explicit flags, then run the cross-section checks.

    With ``--resume_from_checkpoint`` the checkpoint's stored configuration takes the place of the defaults
    (:func:`oaml.training.resume.resume_config`), so a resumed run rebuilds the model it trained.

    Raises:
        ConfigError: on any bad key or value, or a setting that conflicts with the resumed checkpoint.
    """
    nested = load_config_file(args.config) if args.config else {}
    flat: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set: expected SECTION.KEY=VALUE, found {item!r}")
        flat[key.strip()] = value.strip()
    for key in field_index():
        value = getattr(args, key, None)
        if value is not None:
            flat[key] = value
    resume = flat.get("resume_from_checkpoint") or flat.get("system.resume_from_checkpoint")
    if resume:
        from oaml.training.resume import resume_config

        config = resume_config(str(resume), nested, flat)
    else:
        config = config_from_dict(nested, flat)
    validate(config)
    return config


def parameter_summary() -> str:
    """Every training parameter with its default, by section (``oaml train --help`` explains each one)."""
    lines = ["training parameters and their defaults (details: oaml train --help):"]
    for section, values in OamlConfig().to_dict().items():
        lines.append(f"  {section}: " + "; ".join(f"--{k} {_shown(v)}" for k, v in values.items()))
    return "\n".join(lines)
