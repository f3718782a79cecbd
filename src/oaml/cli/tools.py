"""``oaml align``, ``oaml export``, ``oaml convert`` and ``oaml occlude``: their arguments and handlers.

Each handler resolves the arguments, calls :mod:`oaml.tools` and returns an exit status: 0 on success, 2 on
bad input or a missing optional extra (one line on stderr saying how to install it), 1 on a runtime failure
(no image aligned, a failed parity check).
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["register"]

log = logging.getLogger("oaml")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``convert``, ``export``, ``align`` and ``occlude`` subcommands."""
    for name, text, add_arguments, handler in (
            ("convert", "convert datasets (folder <-> rec, bin -> memfile, pairs -> bin)", _add_convert_arguments,
             convert_command),
            ("export", "export a checkpoint to ONNX or TorchScript", _add_export_arguments, export_command),
            ("align", "detect and align faces to the ArcFace 112x112 template", _add_align_arguments, align_command),
            ("occlude", "write an occluded copy of a verification set with its true visibility maps",
             _add_occlude_arguments, occlude_command)):
        parser = sub.add_parser(name, help=text, description=text)
        add_arguments(parser)
        parser.set_defaults(handler=handler)


def _error(command: str, message: object) -> None:
    print(f"oaml {command}: error: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------- align
def _add_align_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``oaml align`` arguments to ``parser``."""
    parser.add_argument("src", metavar="SRC", help="folder of photos: identity sub-folders (any depth) or flat")
    parser.add_argument("dst", metavar="DST", help="output folder; keeps SRC's folder structure and gets "
                        "failed.txt and landmarks.tsv")
    parser.add_argument("--select", choices=("central", "largest"), default="central",
                        help="face to keep when there are several: nearest the image centre, or the largest "
                             "(default: central)")
    parser.add_argument("--min-prob", type=float, default=0.9, help="minimum face probability (default: 0.9)")
    parser.add_argument("--landmarks-tsv", metavar="FILE", default=None,
                        help="read the five landmarks from this TSV (columns source, lex ley rex rey nx ny lmx lmy "
                             "rmx rmy, as DST/landmarks.tsv) instead of detecting them; no MTCNN needed")
    parser.add_argument("--ext", choices=("png", "jpg", "keep"), default="png",
                        help="crop format: png (lossless), jpg (quality 95) or keep the source's extension "
                             "(default: png)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for detection (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def align_command(args: argparse.Namespace) -> int:
    """Run ``oaml align``."""
    from oaml.errors import ConfigError
    from oaml.tools.align import align_folder

    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    try:
        summary = align_folder(args.src, args.dst, select=args.select, min_prob=args.min_prob,
                               landmarks_tsv=args.landmarks_tsv, ext=args.ext, progress=not args.no_progress,
                               num_threads=args.threads)
    except ImportError as exc:
        _error("align", exc)
        return 2
    if summary.num_images == 0:
        _error("align", f"no images found under {args.src}")
        return 2
    print(f"aligned {summary.num_aligned} of {summary.num_images} images into {args.dst} in "
          f"{summary.seconds:.1f} s; {len(summary.failed)} failed (listed in {args.dst}/failed.txt)")
    print(f"landmark distance to the template after warping: mean {summary.mean_landmark_distance:.2f} px, "
          f"worst image {summary.max_landmark_distance:.2f} px")
    return 0 if summary.num_aligned else 1


# ------------------------------------------------------------------------------------------------ export
def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``oaml export`` arguments to ``parser``."""
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint: ours, or a released AdaFace .ckpt")
    parser.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx",
                        help="output format (default: onnx)")
    parser.add_argument("--output", required=True, metavar="FILE",
                        help="file to write; QAConv parameters go to FILE.qaconv.npz and FILE.qaconv.json")
    parser.add_argument("--arch", default=None, help="override the architecture read from the checkpoint")
    parser.add_argument("--check-images", metavar="DIR", default=None,
                        help="aligned faces for the real-input parity check (first 7 images)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted max |exported - PyTorch| / max(1, max |PyTorch|) (default: 1e-4)")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check")


def export_command(args: argparse.Namespace) -> int:
    """Run ``oaml export`` and print the parity table."""
    from oaml.errors import CheckpointError, ConfigError, DataError, OamlError
    from oaml.tools.export import export_model

    try:
        result = export_model(args.checkpoint, args.output, fmt=args.fmt, arch=args.arch, check=not args.no_check,
                              check_images=args.check_images, tolerance=args.tolerance)
    except ImportError as exc:
        _error("export", exc)
        return 2
    except OamlError as exc:
        if isinstance(exc, (CheckpointError, ConfigError, DataError)):
            raise
        _error("export", exc)  # the parity check failed
        return 1
    print(f"wrote {result.path} ({result.format}; outputs {', '.join(result.outputs)}; channel order "
          f"{result.metadata['channel_order']})")
    print(f"note: {result.metadata['embedding_recipe']}")
    if result.qaconv_files:
        print(f"wrote {result.qaconv_files[0]} and {result.qaconv_files[1]} (QAConv parameters)")
    if result.parity:
        print(f"parity per output: max |exported - PyTorch|, and in brackets that divided by max(1, max |PyTorch|),"
              f" which must stay <= {args.tolerance:g}:")
        for case in result.parity:
            cells = "  ".join(f"{name} {value:.2e} ({case.max_scaled[name]:.1e})"
                              for name, value in case.max_abs.items())
            print(f"  {case.name:6s} batch {case.batch}: {cells}")
    return 0


# ----------------------------------------------------------------------------------------------- convert
def _add_write_flags(parser: argparse.ArgumentParser, overwrite: str, skip_bad: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=overwrite)
    parser.add_argument("--skip-bad", action="store_true", help=skip_bad)


def _add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``oaml convert`` conversions (sub-subcommands) to ``parser``."""
    sub = parser.add_subparsers(dest="conversion", metavar="CONVERSION", required=True)
    rec = sub.add_parser("folder-to-rec", help="identity folders -> insightface train.rec/.idx/property")
    rec.add_argument("src", metavar="SRC", help="root with one folder per identity")
    rec.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    rec.add_argument("--encode", choices=("keep", "jpeg"), default="keep",
                     help="keep: JPEG and PNG bytes are copied as they are, other formats become PNG; jpeg: every "
                          "non-JPEG image is re-encoded as JPEG (default: keep)")
    rec.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality for --encode jpeg (default: 95)")
    rec.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_write_flags(rec, "replace an existing OUT_DIR/train.rec", "leave out images that cannot be read or decoded "
                     "(listed) instead of stopping at the first one")
    folder = sub.add_parser("rec-to-folder", help=".rec -> OUT_DIR/<label>/<key>.jpg (payload bytes as they are)")
    folder.add_argument("rec", metavar="REC", help="the .rec file (its .idx next to it) or a folder with train.rec")
    folder.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    folder.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_write_flags(folder, "write into a non-empty OUT_DIR", "leave out image records that do not decode (listed) "
                     "instead of stopping at the first one")
    memfile = sub.add_parser("bin-to-memfile", help="verification .bin -> uint8 memfile + issame + JSON sidecar")
    memfile.add_argument("bin", metavar="BIN", help="the .bin file")
    memfile.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    memfile.add_argument("--channel-order", choices=("bgr", "rgb"), default="bgr",
                         help="channel order of the stored images; that of the model (default: bgr)")
    memfile.add_argument("--name", default=None, help="set name (default: the file stem, e.g. lfw)")
    pairs = sub.add_parser("pairs-to-bin", help="aligned folder + LFW pairs.txt -> verification .bin")
    pairs.add_argument("aligned_dir", metavar="ALIGNED_DIR", help="aligned 112x112 faces, one folder per identity")
    pairs.add_argument("pairs", metavar="PAIRS_TXT", help="pairs file in LFW's pairs.txt format")
    pairs.add_argument("out", metavar="OUT_BIN", help="the .bin to write; name it after a set (lfw.bin) to use it "
                       "in validation")
    pairs.add_argument("--skip-missing", action="store_true",
                       help="drop the pairs whose images are missing (with a warning) instead of failing")
    _add_write_flags(pairs, "replace an existing OUT_BIN", "drop the pairs whose images cannot be decoded or are not "
                     "112x112 (listed) instead of failing")


def _print_skipped(entries: tuple[str, ...]) -> None:
    for entry in entries:
        print(f"skipped {entry}")


def convert_command(args: argparse.Namespace) -> int:
    """Run one ``oaml convert`` conversion."""
    from oaml.tools import convert

    if args.conversion == "folder-to-rec":
        summary = convert.folder_to_rec(args.src, args.out_dir, encode=args.encode, jpeg_quality=args.jpeg_quality,
                                        progress=not args.no_progress, overwrite=args.overwrite,
                                        skip_bad=args.skip_bad)
        _print_skipped(summary.skipped)
        print(f"wrote {summary.rec_path} (+ .idx, property, labels.tsv): {summary.num_images} images of "
              f"{summary.num_classes} identities, {summary.copied} copied byte for byte, {summary.reencoded} "
              f"re-encoded" + (f", {len(summary.skipped)} unreadable skipped" if summary.skipped else ""))
    elif args.conversion == "rec-to-folder":
        result = convert.rec_to_folder(args.rec, args.out_dir, progress=not args.no_progress,
                                       overwrite=args.overwrite, skip_bad=args.skip_bad)
        _print_skipped(tuple(f"key {key}: {why}" for key, why in result.skipped))
        print(f"wrote {result.num_images} images of {result.num_classes} labels to {result.out_dir}"
              + (f"; skipped {len(result.skipped)} records" if result.skipped else ""))
    elif args.conversion == "bin-to-memfile":
        path = convert.bin_to_memfile(args.bin, args.out_dir, args.channel_order, args.name)
        print(f"wrote {path} and its issame array and JSON sidecar ({args.channel_order})")
    else:
        written = convert.pairs_to_bin(args.aligned_dir, args.pairs, args.out, skip_missing=args.skip_missing,
                                       overwrite=args.overwrite, skip_bad=args.skip_bad)
        _print_skipped(written.skipped)
        print(f"wrote {written.out_path}: {written.num_pairs} pairs ({written.num_genuine} genuine) from "
              f"{written.num_images} images" + (f"; dropped {written.num_dropped} pairs with missing or unreadable "
                                                f"images" if written.num_dropped else ""))
    return 0


# ----------------------------------------------------------------------------------------------- occlude
def _add_occlude_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``oaml occlude`` arguments to ``parser``."""
    from oaml.constants import PAIRS_FORMATS

    parser.add_argument("src", metavar="SRC", help="a .bin, or an aligned folder with pairs.txt (LFW format or "
                        "'path_a path_b label' rows); without one, --side both occludes every image")
    parser.add_argument("out", metavar="OUT", help="output folder: the set in SRC's format, occlusion.npz (true "
                        "visibility maps) and manifest.json")
    parser.add_argument("--occluder", required=True, metavar="NAME[+NAME]",
                        help="occluder of the second image (with --side both: of both images), or FIRST+SECOND: one "
                             "for each image (mask+sunglasses); names: mask, kn95, cloth_mask, sunglasses, glasses, "
                             "scarf, hand_mouth, hand_eyes, eyes, nose, mouth, upper_half, lower_half, left_half, "
                             "right_half, rect<1-90>")
    parser.add_argument("--side", choices=("second", "both"), default="second",
                        help="where a single occluder goes (default: second)")
    parser.add_argument("--seed", type=int, default=0, help="occluder seed, with each image's index (default: 0)")
    parser.add_argument("--pairs", metavar="FILE", default=None, help="pairs file of a folder (default: SRC/pairs.txt)")
    parser.add_argument("--pairs-format", choices=PAIRS_FORMATS, default="auto",
                        help="format of the pairs file: auto (detected), lfw or list (default: auto)")
    parser.add_argument("--encode", choices=("png", "jpg"), default="png",
                        help="format of the occluded images: png (lossless) or jpg (quality 95) (default: png)")
    parser.add_argument("--no-landmarks", action="store_true",
                        help="place occluders on the ArcFace template even when SRC/landmarks.tsv gives each image's "
                             "own landmarks")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier oaml occlude output in OUT")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def occlude_command(args: argparse.Namespace) -> int:
    """Run ``oaml occlude``."""
    import shlex

    from oaml.tools.occlude import occlude_set

    summary = occlude_set(args.src, args.out, args.occluder, side=args.side, seed=args.seed, pairs=args.pairs,
                          pairs_format=args.pairs_format, encode=args.encode, landmarks=not args.no_landmarks,
                          overwrite=args.overwrite, command=shlex.join(["oaml", *args.argv]),
                          progress=not args.no_progress)
    pairs = f"{summary.num_pairs} pairs, " if summary.num_pairs else ""
    print(f"wrote {summary.out_dir}: {pairs}{summary.num_images} images, {summary.num_occluded} occluded "
          f"({summary.protocol}); occlusion.npz and manifest.json ({len(summary.files)} files hashed) in "
          f"{summary.seconds:.1f} s")
    return 0
