"""``oaml eval`` (= ``python main_eval.py``) and ``oaml embed``: their arguments and handlers.

Every default is the library's (:class:`~oaml.evaluation.options.EvalOptions`), so the command line and the Python
API evaluate alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oaml.constants import PAIRS_FORMATS
from oaml.evaluation.options import EvalOptions

__all__ = ["add_runtime_arguments", "check_runtime", "register"]

_DEFAULTS = EvalOptions()


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """How a model runs (``eval``, ``embed``, ``gallery build``, ``identify``): batching, resizing, device."""
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="images per forward pass")
    parser.add_argument("--resize", action="store_true", help="resize images that are not 112x112")
    parser.add_argument("--arch", default=None, help="override the architecture read from the checkpoint")
    parser.add_argument("--num-workers", type=int, default=_DEFAULTS.num_workers, help="data-loader workers")
    parser.add_argument("--device", default=_DEFAULTS.device, help="torch device: cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_model_arguments(parser: argparse.ArgumentParser, output: str, written: str) -> None:
    """The arguments ``eval`` and ``embed`` share: model, data, output, batching, device."""
    parser.add_argument("--model-path", required=True, help="checkpoint: ours, or a released AdaFace .ckpt")
    parser.add_argument("--output-dir", default=output, help=f"folder for {written}; an earlier run's files there "
                        f"are kept unless --overwrite is given")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --output-dir")
    parser.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (and their pairs), "
                        "listing them, instead of stopping at the first one")
    add_runtime_arguments(parser)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` and ``embed`` subcommands."""
    evaluate = sub.add_parser("eval", help="evaluate a model on any aligned dataset (ROC, VR@FAR, report)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluate.add_argument("--data-path", required=True, help="aligned identity folders, or a .bin verification file")
    _add_model_arguments(evaluate, "results", "results.json, report.md and the plots")
    evaluate.add_argument("--adaface-weight", type=float, default=_DEFAULTS.adaface_weight,
                          help="weight of the AdaFace score")
    evaluate.add_argument("--qaconv-weight", type=float, default=_DEFAULTS.qaconv_weight,
                          help="weight of the QAConv score")
    evaluate.add_argument("--dynamic-weights", action="store_true", help="the seed's validation rule for the 10-fold "
                          "combined accuracy: weights 0.8/0.2 while QAConv is below chance")
    evaluate.add_argument("--pairs", default=None, help="file listing the pairs to score: LFW pairs.txt, or one "
                          "'path_a path_b label' row per pair (label 1/0 or same/diff)")
    evaluate.add_argument("--pairs-format", choices=PAIRS_FORMATS, default=_DEFAULTS.pairs_format,
                          help="format of --pairs: auto (detected from its first line), lfw or list")
    evaluate.add_argument("--mask-probes", action="store_true",
                          help="also evaluate with deterministic synthetic masks on one side of every pair (the "
                               "same as --occluders mask; its methods are named <method>_masked)")
    evaluate.add_argument("--occluders", default="", metavar="PROTOCOL[,PROTOCOL...]",
                          help="also evaluate under each occlusion protocol, each reported as its own methods "
                               "<method>_<protocol>: NAME puts occluder NAME on the second image of every pair "
                               "(probe i in all-pairs mode), FIRST+SECOND one on each image (mask+sunglasses); "
                               "names: mask, kn95, cloth_mask, sunglasses, glasses, scarf, hand_mouth, hand_eyes, "
                               "eyes, nose, mouth, upper_half, lower_half, left_half, right_half, rect<1-90>")
    evaluate.add_argument("--mask-seed", type=int, default=_DEFAULTS.mask_seed,
                          help="seed of the deterministic masks and other occluders (with the image index)")
    evaluate.add_argument("--no-landmarks", action="store_true",
                          help="place occluders on the ArcFace template even where the folder's landmarks.tsv "
                               "(written by oaml align) gives each image's own landmarks")
    evaluate.add_argument("--no-plots", action="store_true", help="skip roc.png and the score histograms")
    evaluate.set_defaults(handler=_eval, overwrite_guard="results.json")
    embed = sub.add_parser("embed", help="write embeddings of a folder of aligned faces",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    embed.add_argument("--data-path", required=True,
                       help="folder of aligned faces (any depth; the first folder level is the identity)")
    _add_model_arguments(embed, "embeddings", "embeddings.npy, index.csv and (with --save-maps) features.npz")
    embed.add_argument("--save-maps", action="store_true",
                       help="also write features.npz: feature maps (float16) and visibility maps")
    embed.set_defaults(handler=_embed, overwrite_guard="embeddings.npy")


def check_runtime(args: argparse.Namespace) -> None:
    """The checks of :func:`add_runtime_arguments`' flags made before a model or data is read: counts, the device.

    Raises:
        ConfigError: naming the flag and the value.
    """
    from oaml.devices import resolve_device
    from oaml.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {args.num_workers}")
    resolve_device(args.device, "--device")


def _check(args: argparse.Namespace) -> None:
    """The checks made before a model or data is read: counts, the device, an earlier run's files.

    Raises:
        ConfigError: naming the flag and the value.
    """
    from oaml.errors import ConfigError

    check_runtime(args)
    if getattr(args, "occluders", ""):
        from oaml.data.occluders import parse_protocols

        try:
            parse_protocols(args.occluders)
        except ValueError as error:
            raise ConfigError(f"--occluders: {error}") from None
    earlier = Path(args.output_dir) / args.overwrite_guard
    if earlier.exists() and not args.overwrite:
        raise ConfigError(f"--output-dir {args.output_dir}: it already holds {args.overwrite_guard} of an earlier "
                          f"run; pass --overwrite to replace it, or choose another --output-dir")


def _eval(args: argparse.Namespace) -> int:
    """Run ``oaml eval``: evaluate, write the outputs, print the console table."""
    from oaml.errors import ConfigError
    from oaml.evaluation.evaluate import evaluate
    from oaml.evaluation.report import console_table
    from oaml.evaluation.results import calibration_rows

    _check(args)
    try:
        options = EvalOptions(batch_size=args.batch_size, adaface_weight=args.adaface_weight,
                              qaconv_weight=args.qaconv_weight, resize=args.resize, mask_probes=args.mask_probes,
                              mask_seed=args.mask_seed, arch=args.arch, device=args.device,
                              num_workers=args.num_workers, progress=not args.no_progress, plots=not args.no_plots,
                              skip_bad=args.skip_bad, dynamic_weights=args.dynamic_weights,
                              pairs_format=args.pairs_format, landmarks=not args.no_landmarks,
                              occluders=tuple(e.strip() for e in args.occluders.split(",") if e.strip()))
    except ValueError as error:
        raise ConfigError(str(error)) from error
    outcome = evaluate(args.model_path, args.data_path, args.output_dir, pairs_path=args.pairs, options=options)
    print(console_table(outcome.rows, outcome.headers, float_fmt=".4f"))
    calibration, headers = calibration_rows(outcome.results)
    if calibration:
        print("\n" + console_table(calibration, headers, float_fmt=".4f"))
    data = outcome.results["data"]
    identities = data["n_identities"] if data["n_identities"] is not None else "unknown"
    print(f"\n{data['n_images']} images, {identities} identities, {data['n_pairs']} pairs "
          f"({data['n_genuine']} genuine, {data['n_impostor']} impostor); {data['pairs_skipped']} pairs skipped")
    for entry in data["bad_images"]:
        print(f"skipped unreadable image {entry}")
    for method, reason in outcome.results["methods_unavailable"].items():
        print(f"{method}: unavailable ({reason})")
    print(f"wrote {', '.join(sorted(p.name for p in outcome.files.values()))} to {args.output_dir}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    """Run ``oaml embed``: write embeddings.npy, index.csv and optionally features.npz."""
    from oaml.evaluation.api import load_model
    from oaml.evaluation.embed import embed_folder

    _check(args)
    recognizer = load_model(args.model_path, args.device, arch=args.arch, batch_size=args.batch_size,
                            resize=args.resize)
    summary = embed_folder(recognizer, args.data_path, args.output_dir, save_maps=args.save_maps,
                           num_workers=args.num_workers, progress=not args.no_progress, skip_bad=args.skip_bad)
    written = [summary.embeddings, summary.index] + [p for p in (summary.features, summary.skipped_list) if p]
    for entry in summary.skipped:
        print(f"skipped unreadable image {entry}")
    print(f"embedded {summary.num_images} images; wrote {', '.join(str(p) for p in written)}")
    return 0
