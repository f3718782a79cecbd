"""``oaml make-synthetic``: the built-in procedural face dataset."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``make-synthetic`` subcommand."""
    parser = sub.add_parser("make-synthetic", help="draw a procedural face dataset (train.rec + .bin files)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--identities", type=int, default=200, help="training identities")
    parser.add_argument("--images", type=int, default=20, help="images per identity")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives identical files)")
    parser.add_argument("--format", choices=("rec", "folder", "both"), default="rec",
                        help="training data as insightface train.rec/.idx, identity folders, or both")
    parser.add_argument("--val-pairs", type=int, default=600, help="pairs per validation .bin file")
    parser.add_argument("--workers", type=int, default=1, help="processes used to draw the faces")
    parser.set_defaults(handler=_make_synthetic)


def _make_synthetic(args: argparse.Namespace) -> int:
    from oaml.data.synthetic import make_synthetic

    formats = ("rec", "folder") if args.format == "both" else (args.format,)
    summary = make_synthetic(args.out, identities=args.identities, images=args.images, seed=args.seed,
                             formats=formats, val_pairs=args.val_pairs, workers=args.workers)
    spec = summary.spec
    state = "reused (already made with these settings)" if summary.cached else f"made in {summary.seconds:.1f} s"
    print(f"{summary.out_dir}: {summary.num_images} training images of {spec.identities} identities "
          f"({', '.join(spec.formats)}), {summary.num_val_images} held-out images in 5 verification sets of "
          f"{spec.pairs_per_set} pairs; seed {spec.seed}; {state}")
    return 0
