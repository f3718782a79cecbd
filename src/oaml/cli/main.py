"""``oaml`` command line: argument parsing only; each subcommand calls the library through ``commands``.

Exit status: 0 on success, 2 on bad input (one line naming the argument, the value and what is allowed)
or for a subcommand that is not available yet, 1 on a runtime failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from oaml import __version__
from oaml.cli.eval_commands import add_embed_arguments
from oaml.cli.tool_commands import add_align_arguments, add_convert_arguments, add_export_arguments
from oaml.config import OamlConfig, config_from_dict, field_index, load_yaml, validate
from oaml.errors import ConfigError, OamlError
from oaml.evaluation.options import EvalOptions
from oaml.study.runs import add_study_arguments

__all__ = ["add_config_arguments", "build_parser", "config_from_args", "main"]

log = logging.getLogger("oaml")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--set`` and one flag per field of :class:`OamlConfig`, grouped by section."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file with config sections; flags override it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults = OamlConfig().to_dict()
    for key, (section, item, kind) in field_index().items():
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        default = defaults[section][key]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{item.metadata['help']} (default: {shown!r})" if shown == "" else \
            f"{item.metadata['help']} (default: {shown})"
        if kind is bool:
            group.add_argument(f"--{key}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(f"--{key}", default=None, metavar=key.upper(), help=help_text)


def config_from_args(args: argparse.Namespace) -> OamlConfig:
    """Resolve defaults < YAML file < ``--set`` < explicit flags, then run the cross-section checks.

    With ``--resume_from_checkpoint`` the checkpoint's stored configuration takes the place of the defaults
    (:func:`oaml.training.resume.resume_config`), so a resumed run rebuilds the model it trained.

    Raises:
        ConfigError: on any bad key or value, or a setting that conflicts with the resumed checkpoint.
    """
    nested = load_yaml(args.config) if args.config else {}
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


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", required=True, help="checkpoint: ours, or a released AdaFace .ckpt")
    parser.add_argument("--data-path", required=True,
                        help="aligned identity folders, or a .bin verification file")
    parser.add_argument("--output-dir", default="results", help="folder for results.json, report.md and plots; an "
                        "earlier evaluation there is kept unless --overwrite is given")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation in "
                        "--output-dir")
    parser.add_argument("--skip-bad", action="store_true", help="leave out unreadable images and the pairs that use "
                        "them (listed in results.json and report.md) instead of stopping at the first one")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--adaface-weight", type=float, default=0.5, help="weight of the AdaFace score")
    parser.add_argument("--qaconv-weight", type=float, default=0.5, help="weight of the QAConv score")
    parser.add_argument("--pairs", default=None, help="LFW pairs.txt-format file listing the pairs to score")
    parser.add_argument("--resize", action="store_true", help="resize images that are not 112x112")
    parser.add_argument("--mask-probes", action="store_true",
                        help="also evaluate with deterministic synthetic masks on one side of every pair")
    parser.add_argument("--arch", default=None, help="override the architecture read from the checkpoint")
    parser.add_argument("--num-workers", type=int, default=EvalOptions.num_workers, help="data-loader workers")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    parser.add_argument("--mask-seed", type=int, default=0, help="seed of the deterministic synthetic masks")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--no-plots", action="store_true", help="skip roc.png and the score histograms")


def _add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--identities", type=int, default=200, help="training identities")
    parser.add_argument("--images", type=int, default=20, help="images per identity")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives identical files)")
    parser.add_argument("--format", choices=("rec", "folder", "both"), default="rec",
                        help="training data as insightface train.rec/.idx, identity folders, or both")
    parser.add_argument("--val-pairs", type=int, default=600, help="pairs per validation .bin file")
    parser.add_argument("--workers", type=int, default=1, help="processes used to draw the faces")


def _parameter_summary() -> str:
    """Every training parameter with its default, by section (``oaml train --help`` explains each one)."""
    lines = ["training parameters and their defaults (details: oaml train --help):"]
    for section, values in OamlConfig().to_dict().items():
        shown = [f"--{k} {','.join(map(str, v)) if isinstance(v, list) else repr(v) if v == '' else v}"
                 for k, v in values.items()]
        lines.append(f"  {section}: " + "; ".join(shown))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``oaml`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="oaml", description="Occlusion-robust face recognition: train, "
                                     "evaluate and deploy AdaFace + QAConv + occlusion-head models.",
                                     epilog=_parameter_summary(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"oaml {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser("train", help="train (or --evaluate) a model", description="Train a model.")
    add_config_arguments(train)
    evaluate = sub.add_parser("eval", help="evaluate a model on any aligned dataset (ROC, VR@FAR, report)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_eval_arguments(evaluate)
    demo = sub.add_parser("demo", help="train a small model on built-in synthetic faces and print accuracies",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--cache-dir", default=None, help="where the synthetic data and the run go")
    demo.add_argument("--epochs", type=int, default=16, help="training epochs")
    synthetic = sub.add_parser("make-synthetic", help="draw a procedural face dataset (train.rec + .bin files)",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_synthetic_arguments(synthetic)
    add_embed_arguments(sub.add_parser("embed", help="write embeddings of a folder of aligned faces",
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    study = sub.add_parser("study", help="real-face ablation: do masks, QAConv and the occlusion head help on "
                           "masked faces? (writes results.md)", description="Train the ablation's configurations "
                           "on aligned identity folders, score held-out identities clean and masked, write the report.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_study_arguments(study)
    for name, text, add_arguments in (
            ("convert", "convert datasets (folder <-> rec, bin -> memfile, pairs -> bin)", add_convert_arguments),
            ("export", "export a checkpoint to ONNX or TorchScript", add_export_arguments),
            ("align", "detect and align faces to the ArcFace 112x112 template", add_align_arguments)):
        add_arguments(sub.add_parser(name, help=text, description=text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``oaml`` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command is None:
        parser.print_help()
        return 2
    from oaml.cli import commands

    try:
        return commands.run(args)
    except (OamlError, FileNotFoundError) as error:
        print(f"oaml {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

