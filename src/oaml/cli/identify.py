"""``oaml gallery build``, ``oaml gallery info`` and ``oaml identify``: 1:N identification (SPEC §13.4).

Every default is the library's (:class:`~oaml.evaluation.options.IdentifyOptions`), so the command line and the
Python API identify alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oaml.cli.evaluate import add_runtime_arguments, check_runtime
from oaml.evaluation.options import PER_IDENTITY, SEARCH_BACKENDS, IdentifyOptions

__all__ = ["register"]

_DEFAULTS = IdentifyOptions()
_DTYPES = ("float16", "float32")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``gallery`` (``build``, ``info``) and ``identify`` subcommands."""
    gallery = sub.add_parser("gallery", help="build or describe a 1:N gallery file")
    actions = gallery.add_subparsers(dest="gallery_command", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="enrol an aligned identity folder into a gallery file",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    build.add_argument("--model-path", required=True, help="checkpoint: ours, or a released AdaFace .ckpt")
    build.add_argument("--data-path", required=True, help="aligned identity folders DIR/<identity>/.../<image>")
    build.add_argument("--output", required=True, help="gallery file to write (.npz, written atomically)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    build.add_argument("--dtype", choices=_DTYPES, default="float16", help="storage of the embeddings")
    build.add_argument("--with-maps", action="store_true", help="also store the QAConv feature maps and visibility "
                       "maps of every image and its mirror (needed by identify --rerank; ~13 kB per image at width "
                       "0.125, ~100 kB at full width)")
    add_runtime_arguments(build)
    build.set_defaults(handler=_build)
    info = actions.add_parser("info", help="print what a gallery file holds and which model built it")
    info.add_argument("gallery", help="gallery file")
    info.set_defaults(handler=_info)
    _register_identify(sub)


def _register_identify(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("identify", help="identify probe images against a gallery (rank-k, CMC, DIR@FPIR)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--gallery", required=True, help="gallery file of `oaml gallery build`")
    parser.add_argument("--probes", required=True, help="labelled identity folder DIR/<identity>/.../<image> "
                        "(metrics; identities not in the gallery are the open-set probes) or a text file listing "
                        "one image per line (no metrics)")
    parser.add_argument("--model-path", default=None, help="checkpoint (default: the one recorded in the gallery); "
                        "it must be the model that built the gallery")
    parser.add_argument("--output-dir", default="identify", help="folder for identify.csv, results.json and the "
                        "plots; an earlier run's files there are kept unless --overwrite is given")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --output-dir")
    parser.add_argument("--top-k", type=int, default=_DEFAULTS.k, help="identities listed per probe")
    parser.add_argument("--rerank", type=int, default=_DEFAULTS.rerank_n, metavar="N", help="re-score the top N "
                        "identities with QAConv (both images' visibility maps) and fuse with the global score; "
                        "0 = off; the gallery needs maps (gallery build --with-maps)")
    parser.add_argument("--per-identity", choices=PER_IDENTITY, default=_DEFAULTS.per_identity,
                        help="identity score: the best image's cosine (max) or the cosine to the mean template")
    parser.add_argument("--backend", choices=SEARCH_BACKENDS, default=_DEFAULTS.backend,
                        help='search backend; faiss is an optional extra (pip install "oaml[faiss]"), same results')
    parser.add_argument("--adaface-weight", type=float, default=_DEFAULTS.adaface_weight,
                        help="weight of the z-scored global score in the re-ranking fusion")
    parser.add_argument("--qaconv-weight", type=float, default=_DEFAULTS.qaconv_weight,
                        help="weight of the z-scored QAConv score in the re-ranking fusion")
    parser.add_argument("--mask-probes", action="store_true",
                        help="also identify every probe with a deterministic synthetic medical mask")
    parser.add_argument("--occluders", default="", metavar="NAME[,NAME...]",
                        help="also identify every probe under each named occluder (oaml occlude's names: kn95, "
                             "sunglasses, scarf, hand_mouth, eyes, upper_half, rect25, ...), one protocol each")
    parser.add_argument("--mask-seed", type=int, default=_DEFAULTS.mask_seed,
                        help="seed of the synthetic masks and other occluders (with the probe's index)")
    parser.add_argument("--no-plots", action="store_true", help="skip cmc.png and det.png")
    add_runtime_arguments(parser)
    parser.set_defaults(handler=_identify)


def _refuse_existing(path: Path, overwrite: bool, flag: str) -> None:
    from oaml.errors import ConfigError

    if path.exists() and not overwrite:
        raise ConfigError(f"{flag} {path.parent if flag == '--output-dir' else path}: {path.name} of an earlier run "
                          f"exists; pass --overwrite to replace it, or choose another {flag}")


def _build(args: argparse.Namespace) -> int:
    """Run ``oaml gallery build``."""
    from oaml.evaluation.api import load_model
    from oaml.evaluation.gallery import Gallery

    check_runtime(args)
    _refuse_existing(Path(args.output), args.overwrite, "--output")
    model = load_model(args.model_path, args.device, arch=args.arch, batch_size=args.batch_size, resize=args.resize)
    gallery = Gallery.from_folder(model, args.data_path, with_maps=args.with_maps, dtype=args.dtype,
                                  num_workers=args.num_workers, progress=not args.no_progress)
    path = gallery.save(args.output)
    print(f"enrolled {gallery.num_images} images of {gallery.num_identities} identities ({args.dtype}"
          f"{', with QAConv maps' if gallery.has_maps else ''}); wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _info(args: argparse.Namespace) -> int:
    """Run ``oaml gallery info``."""
    from oaml.evaluation.gallery import Gallery

    facts = Gallery.load(args.gallery).describe()
    model = facts.pop("model")
    for key, value in facts.items():
        print(f"{key}: {value}")
    print(f"model: {model.get('path')} (sha256 {model.get('sha256')}, {model.get('arch')} width {model.get('width')}, "
          f"occlusion {model.get('occlusion_method')})")
    return 0


def _options(args: argparse.Namespace) -> IdentifyOptions:
    """The options of the flags, or a ConfigError naming the flag."""
    from oaml.errors import ConfigError

    if args.top_k < 1 or not 0 <= args.rerank <= args.top_k:
        raise ConfigError(f"need --top-k >= 1 and 0 <= --rerank <= --top-k (only the top k can be re-ranked), got "
                          f"--top-k {args.top_k} --rerank {args.rerank}")
    try:
        return IdentifyOptions(k=args.top_k, per_identity=args.per_identity, backend=args.backend,
                               rerank_n=args.rerank, adaface_weight=args.adaface_weight,
                               qaconv_weight=args.qaconv_weight, mask_probes=args.mask_probes,
                               mask_seed=args.mask_seed, num_workers=args.num_workers,
                               progress=not args.no_progress, plots=not args.no_plots)
    except ValueError as error:  # the weights: --adaface-weight / --qaconv-weight
        raise ConfigError(f"--adaface-weight/--qaconv-weight: {error}") from error


def _occluders(names: str, seed: int) -> dict:
    """``--occluders`` as probe protocols (each named after its occluder), or a ConfigError naming the flag."""
    from oaml.errors import ConfigError
    from oaml.evaluation.embed import SeededOccluder

    protocols = {}
    for name in filter(None, (part.strip() for part in names.split(","))):
        try:
            protocols[name] = SeededOccluder(name, seed)
        except ValueError as error:
            raise ConfigError(f"--occluders: {error}") from None
    return protocols


def _identify(args: argparse.Namespace) -> int:
    """Run ``oaml identify``: check, load the gallery and its model, identify, print the table."""
    from oaml.errors import ConfigError
    from oaml.evaluation.api import load_model
    from oaml.evaluation.gallery import Gallery
    from oaml.evaluation.gallery_search import FAISS_HINT, import_faiss
    from oaml.evaluation.identify import identify
    from oaml.evaluation.identify_report import console_rows
    from oaml.evaluation.report import console_table

    check_runtime(args)
    options = _options(args)
    occluders = _occluders(args.occluders, args.mask_seed)
    _refuse_existing(Path(args.output_dir) / "results.json", args.overwrite, "--output-dir")
    if options.backend == "faiss":
        try:
            import_faiss()
        except ImportError as error:
            raise ConfigError(f"--backend faiss: {FAISS_HINT}") from error
    gallery = Gallery.load(args.gallery)
    model_path = args.model_path or gallery.model_info.get("path")
    if not model_path or not Path(model_path).is_file():
        raise ConfigError(f"--model-path: the gallery's model {model_path} is not on this machine; pass the "
                          f"checkpoint that built {args.gallery} with --model-path")
    model = load_model(model_path, args.device, arch=args.arch, batch_size=args.batch_size, resize=args.resize)
    outcome = identify(model, gallery, args.probes, args.output_dir, options, occluders)
    rows, headers = console_rows(outcome.results)
    if rows:
        print(console_table(rows, headers))
    probes = outcome.results["probes"]
    counts = (f"{probes['n_enrolled']} enrolled, {probes['n_non_enrolled']} not enrolled" if probes["labelled"]
              else "unlabelled: no metrics")
    print(f"\n{probes['num_probes']} probes ({counts}) against {gallery.num_identities} identities "
          f"({gallery.num_images} images); wrote {', '.join(sorted(p.name for p in outcome.files.values()))} "
          f"to {args.output_dir}")
    return 0
