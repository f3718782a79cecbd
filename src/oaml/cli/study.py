"""``oaml study`` (= ``python -m oaml.study``): the real-face ablation's arguments and handler."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``study`` subcommand; every default is :class:`~oaml.study.runs.StudyOptions`'."""
    from oaml.study.options import VARIANTS, StudyOptions

    d = StudyOptions()
    parser = sub.add_parser("study", help="real-face ablation: do masks, QAConv and the occlusion head help on "
                            "masked faces? (writes results.md)", description="Train the ablation's configurations "
                            "on aligned identity folders, score held-out identities clean and masked, write the "
                            "report.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("roots", nargs="*", help="aligned identity folders (default: the shared data sets present)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds), help="training seeds")
    parser.add_argument("--splits", nargs="+", type=int, default=list(d.splits), help="identity-split seeds")
    parser.add_argument("--variants", nargs="+", default=list(d.variants), choices=list(VARIANTS),
                        help="configurations: " + "; ".join(f"{k} {v.title}" for k, v in VARIANTS.items()))
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction,
                        help="fraction of each dataset's identities held out")
    parser.add_argument("--arch", default=d.arch, help="backbone")
    parser.add_argument("--width", type=float, default=d.width, help="backbone width multiplier")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (PK: each identity once)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch (P x K, K = 4)")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    parser.add_argument("--mask-seed", type=int, default=d.mask_seed, help="seed of the held-out probe occluders")
    parser.add_argument("--benchmark", default=d.benchmark, help="folder with an LFW pairs.txt whose pairs of people "
                        "unseen in training are scored too; auto: ../shared/data/lfw_view2_arcface112 with the "
                        "default data; '' for none")
    parser.add_argument("--jobs", type=int, default=d.jobs, help="runs trained side by side")
    parser.add_argument("--output-dir", default=d.output_dir, help="where results.md/.json and figures/ go (docs "
                        "regenerates the repository's docs/results.md)")
    parser.add_argument("--work-dir", default=d.work_dir, help="where the runs go")
    parser.set_defaults(handler=_study)


def _study(args: argparse.Namespace) -> int:
    from oaml.study.options import StudyOptions
    from oaml.study.runs import run_study

    options = StudyOptions(roots=tuple(args.roots), seeds=tuple(args.seeds), splits=tuple(args.splits),
                           variants=tuple(args.variants), test_fraction=args.test_fraction, arch=args.arch,
                           width=args.width, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           mask_seed=args.mask_seed, benchmark=args.benchmark, jobs=args.jobs,
                           output_dir=args.output_dir, work_dir=args.work_dir)
    for name, path in run_study(options).items():
        print(f"{name}: {path}")
    return 0
