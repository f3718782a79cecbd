"""``oaml occlude``: an occluded copy of a verification set, with its ground truth and a manifest (SPEC §13.2).

The source is a ``.bin`` (pair k is images 2k and 2k + 1), an aligned folder with a pairs file (LFW ``pairs.txt``
or a "path_a path_b label" list, :mod:`oaml.data.pairs`; ``SRC/pairs.txt`` unless ``pairs`` names another), or,
with ``side="both"``, an aligned folder without one (every image is occluded). The protocol is
:class:`~oaml.data.occluders.OcclusionProtocol`: ``NAME`` with ``side="second"`` puts the occluder on the second
image of every pair, with ``side="both"`` on both images; ``FIRST+SECOND`` puts one on each (``mask+sunglasses``).
Image ``k`` of the set is occluded by :func:`~oaml.data.occluders.seeded_occlusion` with ``(seed, k)``, where ``k``
is the index ``oaml eval`` gives it (its position in the ``.bin``, or its first appearance in the pairs file), and
placed on its own landmarks when the folder has ``landmarks.tsv`` (``oaml align``'s), so ``oaml eval --occluders``
on the source and ``oaml eval`` on the copy see the same pixels.

Outputs in ``out_dir`` (docs/formats.md):

- the set in the source's format: ``<name>.bin``, or the folder's images at their relative paths plus
  ``pairs.txt``. Clean images keep their bytes; occluded ones are PNG (lossless; ``encode="jpg"`` writes JPEG
  quality 95). An image a pairs file needs both clean and occluded (or under two occluders) is written once per
  variant, the occluded ones as ``<stem>.<occluder>.png``; ``pairs.txt`` is the source's own LFW file, byte for
  byte, when every image has one variant, and otherwise a "path_a path_b label" list naming the variants;
- ``occlusion.npz``: per output image, in the set's order, ``keys`` (index in the ``.bin``, or path below
  ``out_dir``), ``source_keys``, ``occluder`` ("" when clean), ``visibility`` (``N x 112 x 112`` uint8, 255 visible,
  0 hidden), ``grid`` (``N x 7 x 7`` float32 visible fractions, :func:`~oaml.data.masks.visibility_grid`),
  ``landmarks`` (``N x 5 x 2``, where the occluder was placed), and ``source``, ``protocol``, ``seed``;
- ``manifest.json``: the exact command, the protocol, counts, the source's SHA-256 and the SHA-256 of every output.

Nothing depends on time or on the machine's load: the same command writes byte-identical files. The ``.bin``,
``pairs.txt``, ``occlusion.npz`` and ``manifest.json`` are written atomically, the manifest last: an ``out_dir``
without one is an interrupted run.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from oaml.constants import ARCFACE_TEMPLATE, FACE_SIZE
from oaml.data.images import decode_image, list_images
from oaml.data.masks import visibility_grid
from oaml.data.occluders import OcclusionProtocol, seeded_occlusion
from oaml.data.pairs import Pair, detect_pairs_format, write_pair_list
from oaml.errors import ConfigError, DataError
from oaml.evaluation.eval_data import EvalImages, attach_landmarks, load_eval_set
from oaml.evaluation.protocols import OCCLUSION_NPZ
from oaml.fileio import atomic_write_bytes, sha256_file

__all__ = ["MANIFEST", "SIDES", "OccludeSummary", "occlude_set", "occlusion_protocol"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SIDES: tuple[str, ...] = ("second", "both")
"""Where a single occluder goes: on the second image of every pair, or on both images."""

_ENCODINGS = {"png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
                               cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]),  # 20 % faster than level 1, no larger
              "jpg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed member date: the .npz must not depend on when it was written


@dataclass(frozen=True)
class OccludeSummary:
    """What :func:`occlude_set` wrote.

    Attributes:
        out_dir: The output folder.
        kind: ``"bin"`` or ``"folder"``.
        protocol: The protocol's name (``sunglasses``, ``mask+sunglasses``).
        num_pairs: Pairs of the set (0 for a folder without a pairs file).
        num_images: Images written.
        num_occluded: Images written with an occluder.
        files: Every output file (relative path) with its SHA-256, as in the manifest.
        seconds: Wall time.
    """

    out_dir: Path
    kind: str
    protocol: str
    num_pairs: int
    num_images: int
    num_occluded: int
    files: dict[str, str]
    seconds: float


@dataclass
class _Source:
    kind: str
    path: Path
    images: EvalImages
    keys: list[str]  # index in the .bin, or path below the folder
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    pairs_path: Path | None = None
    pairs_kind: str | None = None


def occlusion_protocol(occluder: str, side: str = "second") -> OcclusionProtocol:
    """The protocol of ``--occluder NAME --side second|both`` or ``--occluder FIRST+SECOND``.

    Raises:
        ConfigError: naming ``--occluder`` or ``--side``, for an unknown occluder or side, or ``--side both`` with
            ``FIRST+SECOND`` (which already names both sides).
    """
    if side not in SIDES:
        raise ConfigError(f"--side: invalid value {side!r}; choose one of {', '.join(SIDES)}")
    try:
        protocol = OcclusionProtocol.parse(occluder)
    except ValueError as error:
        raise ConfigError(f"--occluder: {error}") from None
    if side == "both":
        if protocol.first is not None:
            raise ConfigError(f"--side both: --occluder {occluder} already names the occluder of each image; "
                              f"drop --side, or give one occluder")
        protocol = OcclusionProtocol(protocol.second, protocol.second)
    return protocol


def _read_source(src: Path, pairs: str | os.PathLike[str] | None, pairs_format: str, landmarks: bool,
                 side: str) -> _Source:
    """The images and pairs of ``src`` (see the module docstring), sizes checked."""
    if not src.exists():
        raise FileNotFoundError(f"source not found: {src}")
    if src.is_file():
        if src.suffix.lower() != ".bin":
            raise DataError(f"{src}: not a .bin file; the source must be a .bin or an aligned folder")
        if pairs is not None:
            raise ConfigError(f"--pairs cannot be combined with a .bin source ({src}); it lists its own pairs")
        data = load_eval_set(src)
        return _Source("bin", src, data.images, [str(k) for k in range(len(data.images))],
                       (data.pair_i, data.pair_j, data.issame))  # type: ignore[arg-type]
    pairs_path = Path(pairs) if pairs is not None else src / "pairs.txt"
    if not pairs_path.is_file():
        if pairs is not None:
            raise FileNotFoundError(f"pairs file not found: {pairs_path}")
        if side != "both":
            raise ConfigError(f"{src} has no pairs.txt: occluding one side of each pair needs a pairs file "
                              f"(--pairs FILE); --side both occludes every image of a folder")
        files = list_images(src)
        if not files:
            raise DataError(f"{src}: no images found")
        images = EvalImages(names=[str(p) for p in files], paths=[str(p) for p in files])
        images = attach_landmarks(images, src) if landmarks else images
        return _Source("folder", src, images, [p.relative_to(src).as_posix() for p in files])
    data = load_eval_set(src, pairs_path, pairs_format=pairs_format, landmarks=landmarks)
    root = src.resolve()
    outside = [p for p in data.images.paths or [] if not Path(p).is_relative_to(root)]
    if outside:
        raise DataError(f"{pairs_path}: {len(outside)} images lie outside {src} (e.g. {outside[0]}); the copy keeps "
                        f"paths relative to the source folder")
    keys = [Path(p).relative_to(root).as_posix() for p in data.images.paths or []]
    kind = detect_pairs_format(pairs_path) if pairs_format == "auto" else pairs_format
    return _Source("folder", src, data.images, keys, (data.pair_i, data.pair_j, data.issame),  # type: ignore[arg-type]
                   pairs_path, kind)


def _variants(source: _Source, protocol: OcclusionProtocol) -> dict[int, list[str | None]]:
    """Image index -> the variants (occluder or None) the pairs need, in the order they are first needed."""
    if source.pairs is None:
        return {k: [protocol.second] for k in range(len(source.images))}
    needed: dict[int, list[str | None]] = {}
    first, second, _ = source.pairs
    for i, j in zip(first.tolist(), second.tolist()):
        for index, side in ((i, 0), (j, 1)):
            variants = needed.setdefault(index, [])
            if protocol.occluder(side) not in variants:
                variants.append(protocol.occluder(side))
    return needed


def _output_keys(source: _Source, items: list[tuple[int, str | None]], variants: dict[int, list[str | None]],
                 suffix: str) -> list[str]:
    """The key of every output image: its ``.bin`` index, or its path below the output folder (module docstring).

    Raises:
        DataError: If two outputs would get the same path (e.g. ``a.jpg`` occluded and ``a.png`` clean).
    """
    if source.kind == "bin":
        return [source.keys[index] for index, _ in items]
    keys = []
    for index, variant in items:
        key = Path(source.keys[index])
        if variant is None:
            keys.append(key.as_posix())
        elif len(variants[index]) == 1:
            keys.append(key.with_suffix(suffix).as_posix())
        else:
            keys.append(f"{key.with_suffix('').as_posix()}.{variant}{suffix}")
    if len(set(keys)) != len(keys):
        clash = next(key for key in keys if keys.count(key) > 1)
        raise DataError(f"{source.path}: two output images would both be written to {clash}; rename one source "
                        f"image")
    return keys


def _raw(images: EvalImages, index: int) -> bytes:
    if images.blobs is not None:
        return images.blobs[index]
    path = Path(images.paths[index])  # type: ignore[index]
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def _render(source: _Source, items: list[tuple[int, str | None]], seed: int, encode: str,
            progress: bool) -> Iterator[tuple[bytes, np.ndarray, np.ndarray, np.ndarray]]:
    """``(encoded image, uint8 visibility, 7x7 grid, landmarks)`` of every ``(image, variant)``, in order."""
    from tqdm import tqdm

    suffix, params = _ENCODINGS[encode]
    template = ARCFACE_TEMPLATE.astype(np.float64)
    visible = np.full((FACE_SIZE, FACE_SIZE), 255, np.uint8)
    all_visible = visibility_grid(np.ones((FACE_SIZE, FACE_SIZE), np.float32))
    for index, variant in tqdm(items, desc="occlude", unit="img", disable=not progress):
        raw = _raw(source.images, index)
        points = template if source.images.landmarks is None else source.images.landmarks[index]
        if variant is None:
            yield raw, visible, all_visible, points
            continue
        image, visibility = seeded_occlusion(decode_image(raw, source.images.names[index]), variant, seed, index,
                                             points)
        ok, buffer = cv2.imencode(suffix, image, params)
        if not ok:
            raise DataError(f"{source.images.names[index]}: the occluded image could not be encoded as {encode}")
        yield buffer.tobytes(), (visibility * 255).astype(np.uint8), visibility_grid(visibility), points


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``numpy.savez_compressed`` with fixed member dates, so that equal arrays give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def _prepare_output(out: Path, src: Path, overwrite: bool) -> None:
    """Refuse to write over the source, or over an earlier result unless ``overwrite``; then remove the files the
    earlier manifest lists."""
    inside = src.is_dir() and (out.resolve() == src.resolve() or src.resolve() in out.resolve().parents)
    if inside or (src.is_file() and (out / src.name).resolve() == src.resolve()):
        raise ConfigError(f"OUT {out} would write into the source {src}; choose another folder")
    if out.is_file():
        raise ConfigError(f"OUT {out} is a file; choose a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        raise ConfigError(f"OUT {out} already exists and is not empty; pass --overwrite to replace an earlier "
                          f"oaml occlude output there, or choose another folder")
    manifest = out / MANIFEST
    if manifest.is_file():
        for rel in json.loads(manifest.read_text(encoding="utf-8")).get("files", {}):
            (out / rel).unlink(missing_ok=True)
        manifest.unlink()


def _write_set(source: _Source, out: Path, keys: list[str], payloads: list[bytes],
               items: list[tuple[int, str | None]], protocol: OcclusionProtocol, single: bool) -> list[str]:
    """Write the images (a ``.bin`` or files) and the pairs file; return the paths written below ``out``."""
    if source.kind == "bin":
        buffer = io.BytesIO()
        pickle.dump((payloads, [bool(s) for s in source.pairs[2]]), buffer, protocol=4)  # type: ignore[index]
        atomic_write_bytes(out / source.path.name, buffer.getvalue())
        return [source.path.name]
    for key, payload in zip(keys, payloads):  # not fsynced one by one: the manifest, written last, vouches for them
        (out / key).parent.mkdir(parents=True, exist_ok=True)
        (out / key).write_bytes(payload)
    if source.pairs is None:
        return list(keys)
    if source.pairs_kind == "lfw" and single:  # every image has one variant: LFW's own names still hold
        atomic_write_bytes(out / "pairs.txt", source.pairs_path.read_bytes())  # type: ignore[union-attr]
    else:
        key_of = dict(zip(items, keys))
        first, second, issame = source.pairs
        write_pair_list(out / "pairs.txt", [Pair(key_of[(i, protocol.first)], key_of[(j, protocol.second)], bool(same))
                                            for i, j, same in zip(first.tolist(), second.tolist(), issame.tolist())])
    return [*keys, "pairs.txt"]


def _manifest(source: _Source, protocol: OcclusionProtocol, side: str | None, seed: int, encode: str,
              command: str | None, counts: dict[str, int], files: dict[str, str]) -> dict[str, Any]:
    from oaml import __version__

    hashed = source.path if source.kind == "bin" else source.pairs_path
    return {"oaml_version": __version__, "command": command,
            "source": {"path": str(source.path), "kind": source.kind,
                       "pairs": None if source.pairs_path is None else str(source.pairs_path),
                       "pairs_format": source.pairs_kind,
                       "sha256": None if hashed is None else sha256_file(hashed)},
            "protocol": {"name": protocol.name, "first": protocol.first, "second": protocol.second, "side": side,
                         "seed": seed, "placement": "landmarks.tsv" if source.images.landmarks is not None
                         else "ArcFace template"},
            "encoding": encode, "counts": counts, "files": dict(sorted(files.items()))}


def occlude_set(src: str | os.PathLike[str], out_dir: str | os.PathLike[str], occluder: str, *,
                side: str = "second", seed: int = 0, pairs: str | os.PathLike[str] | None = None,
                pairs_format: str = "auto", encode: str = "png", landmarks: bool = True, overwrite: bool = False,
                command: str | None = None, progress: bool = True) -> OccludeSummary:
    """Write the occluded copy of ``src`` to ``out_dir`` (layout in the module docstring).

    Args:
        src: A ``.bin``, or an aligned folder (with ``pairs.txt`` or ``pairs``; without, only ``side="both"``).
        out_dir: The output folder (created); it may not be inside ``src``.
        occluder: ``NAME`` or ``FIRST+SECOND`` (:func:`occlusion_protocol`).
        side: ``"second"`` or ``"both"``: where a single ``NAME`` goes.
        seed: The occluder seed (with each image's index).
        pairs: A pairs file for a folder (default ``src/pairs.txt``).
        pairs_format: ``auto``, ``lfw`` or ``list``.
        encode: ``png`` (lossless) or ``jpg`` (quality 95) for the occluded images.
        landmarks: Place occluders on the folder's ``landmarks.tsv``; False: the ArcFace template.
        overwrite: Replace an earlier output in a non-empty ``out_dir``.
        command: The command line recorded in the manifest.
        progress: Show a progress bar.

    Raises:
        FileNotFoundError: If ``src`` or the pairs file does not exist.
        ConfigError: For an unknown occluder or side, or an ``out_dir`` that holds an earlier output.
        DataError: For an unusable source (not a ``.bin`` or folder, bad images, a malformed pairs file).
    """
    start = time.perf_counter()
    if encode not in _ENCODINGS:
        raise ConfigError(f"--encode: invalid value {encode!r}; choose one of {', '.join(_ENCODINGS)}")
    protocol = occlusion_protocol(occluder, side)
    source_path, out = Path(src), Path(out_dir)
    source = _read_source(source_path, pairs, pairs_format, landmarks, side)
    _prepare_output(out, source_path, overwrite)
    variants = _variants(source, protocol)
    items = [(index, variant) for index, options in variants.items() for variant in options]
    keys = _output_keys(source, items, variants, _ENCODINGS[encode][0])
    rendered = list(_render(source, items, seed, encode, progress))
    payloads = [payload for payload, _, _, _ in rendered]
    written = _write_set(source, out, keys, payloads, items, protocol, all(len(v) == 1 for v in variants.values()))
    _save_npz(out / OCCLUSION_NPZ, {
        "keys": np.array(keys), "source_keys": np.array([source.keys[index] for index, _ in items]),
        "occluder": np.array([variant or "" for _, variant in items]),
        "visibility": np.stack([r[1] for r in rendered]), "grid": np.stack([r[2] for r in rendered]),
        "landmarks": np.stack([r[3] for r in rendered]),
        "source": np.array(source.path.name if source.kind == "bin" else "."), "protocol": np.array(protocol.name),
        "seed": np.array(seed, np.int64)})
    files = {rel: sha256_file(out / rel) for rel in [*written, OCCLUSION_NPZ]}
    counts = {"pairs": 0 if source.pairs is None else int(source.pairs[2].shape[0]), "images": len(items),
              "occluded": sum(variant is not None for _, variant in items)}
    manifest = _manifest(source, protocol, None if "+" in occluder else side, seed, encode, command, counts, files)
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    summary = OccludeSummary(out, source.kind, protocol.name, counts["pairs"], counts["images"], counts["occluded"],
                             files, time.perf_counter() - start)
    logger.info("wrote %s: %d images (%d occluded by %s) of %d pairs in %.1f s", out, summary.num_images,
                summary.num_occluded, protocol.name, summary.num_pairs, summary.seconds)
    return summary
