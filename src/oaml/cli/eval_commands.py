"""``oaml eval`` (also ``python main_eval.py``) and ``oaml embed``: resolve the arguments and call the library.

The ``eval`` arguments are declared in :func:`oaml.cli.main._add_eval_arguments`; ``embed``'s in
:func:`add_embed_arguments`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oaml.evaluation.options import EvalOptions
from oaml.evaluation.report import console_table

__all__ = ["add_embed_arguments", "embed_command", "eval_command"]

log = logging.getLogger("oaml")


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``oaml embed`` arguments to ``parser``."""
    parser.add_argument("--model-path", required=True, help="checkpoint: ours, or a released AdaFace .ckpt")
    parser.add_argument("--data-path", required=True,
                        help="folder of aligned faces (any depth; the first folder level is the identity)")
    parser.add_argument("--output-dir", default="embeddings",
                        help="folder for embeddings.npy, index.csv and (with --save-maps) features.npz; earlier "
                             "embeddings there are kept unless --overwrite is given")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier embeddings in --output-dir")
    parser.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (listed in "
                        "skipped.txt) instead of stopping at the first one")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--save-maps", action="store_true",
                        help="also write features.npz: feature maps (float16) and visibility maps")
    parser.add_argument("--resize", action="store_true", help="resize images that are not 112x112")
    parser.add_argument("--arch", default=None, help="override the architecture read from the checkpoint")
    parser.add_argument("--num-workers", type=int, default=EvalOptions.num_workers, help="data-loader workers")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _check_common(args: argparse.Namespace, output: str) -> None:
    """The checks every run makes before it reads a model or data: counts, the device, earlier results.

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
    earlier = Path(args.output_dir) / output
    if earlier.exists() and not args.overwrite:
        raise ConfigError(f"--output-dir {args.output_dir}: it already holds {output} of an earlier run; pass "
                          f"--overwrite to replace it, or choose another --output-dir")


def eval_command(args: argparse.Namespace) -> int:
    """Run ``oaml eval``: evaluate, write the outputs, print the console table; 0 on success."""
    from oaml.errors import ConfigError
    from oaml.evaluation.evaluate import evaluate

    _check_common(args, "results.json")
    try:
        options = EvalOptions(batch_size=args.batch_size, adaface_weight=args.adaface_weight,
                              qaconv_weight=args.qaconv_weight, resize=args.resize, mask_probes=args.mask_probes,
                              mask_seed=args.mask_seed, arch=args.arch, device=args.device,
                              num_workers=args.num_workers, progress=not args.no_progress, plots=not args.no_plots,
                              skip_bad=args.skip_bad)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    outcome = evaluate(args.model_path, args.data_path, args.output_dir, pairs_path=args.pairs, options=options)
    print(console_table(outcome.rows, outcome.headers, float_fmt=".4f"))
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


def embed_command(args: argparse.Namespace) -> int:
    """Run ``oaml embed``: write embeddings.npy, index.csv and optionally features.npz; 0 on success."""
    from oaml.evaluation.api import load_model
    from oaml.evaluation.embed import embed_folder

    _check_common(args, "embeddings.npy")
    recognizer = load_model(args.model_path, args.device, arch=args.arch, batch_size=args.batch_size,
                            resize=args.resize)
    summary = embed_folder(recognizer, args.data_path, args.output_dir, save_maps=args.save_maps,
                           num_workers=args.num_workers, progress=not args.no_progress, skip_bad=args.skip_bad)
    written = [summary.embeddings, summary.index] + [p for p in (summary.features, summary.skipped_list) if p]
    for entry in summary.skipped:
        print(f"skipped unreadable image {entry}")
    print(f"embedded {summary.num_images} images; wrote {', '.join(str(p) for p in written)}")
    return 0
