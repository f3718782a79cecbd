"""Writing the synthetic dataset: :func:`make_synthetic`, its :class:`SyntheticSpec` and the cache check.

Output folder (see :func:`make_synthetic`):

* ``train.rec`` + ``train.idx`` + ``property`` in the insightface layout (SPEC §7), JPEG-encoded BGR;
* optionally ``images/id_00000/<n>.jpg`` identity folders;
* ``agedb_30.bin`` ... ``calfw.bin`` (SPEC §9): pickles of ``(list of 2N JPEG bytes, list of N bools)``.
  All five draw their own pairs from ONE shared pool of held-out identities (never in ``train``); pairs 2j
  and 2j+1 are one genuine and one impostor pair, so contiguous folds of even size are balanced. A pool image
  used by several pairs is one shared ``bytes`` object, which the pickle stores once;
* ``landmarks.tsv`` (5 points of every image) and ``synthetic.json`` (arguments, counts, version).

Randomness: identity ``g`` uses ``default_rng([seed, g, 2**32 - 1])`` and its image ``n`` uses
``default_rng([seed, g, n])``; held-out identities are numbered after the training ones. Output is therefore
byte-identical for a seed (given the same OpenCV and numpy builds), independent of order and of ``workers``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from oaml import __version__
from oaml.constants import VAL_SET_NAMES
from oaml.data.insightface import InsightfaceWriter
from oaml.data.synthetic.sampling import render_face, render_identity_params
from oaml.errors import ConfigError
from oaml.fileio import atomic_write_bytes

__all__ = ["FORMAT_VERSION", "SyntheticSpec", "SyntheticSummary", "make_synthetic"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump whenever the drawing or the layout changes, so cached folders are regenerated."""

_FORMATS = ("rec", "folder")
_IDENTITY_STREAM = 2**32 - 1  # third seed word of identity RNGs; image indices never reach it
_PAIR_STREAM = 2**32 - 2
_MAX_FLOAT_KEY = 2**24  # keys and labels are float32 in the header records
_Rendered = list[tuple[bytes, np.ndarray]]  # JPEG bytes and 5x2 landmarks of one identity's images
_LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class SyntheticSpec:
    """The resolved, validated arguments of :func:`make_synthetic`; equal specs give byte-identical folders.

    Attributes:
        identities: training identities (classes).
        images_per_identity: training images per identity.
        val_identities: held-out identities shared by the five ``.bin`` sets; ``None`` means
            ``max(4, identities // 4)``.
        val_images_per_identity: images rendered per held-out identity; ``None`` means
            ``min(10, max(2, images_per_identity))``.
        pairs_per_set: pairs N in each ``.bin`` (even, half of them genuine); 0 writes no ``.bin``.
        seed: the root seed (non-negative).
        formats: any of ``"rec"`` (insightface ``train.rec``) and ``"folder"`` (``images/id_xxxxx/n.jpg``).
        jpeg_quality: JPEG quality 1..100.

    Raises:
        ConfigError: naming the first invalid field.
    """

    identities: int = 200
    images_per_identity: int = 20
    val_identities: int | None = None
    val_images_per_identity: int | None = None
    pairs_per_set: int = 600
    seed: int = 0
    formats: tuple[str, ...] = ("rec",)
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        val_ids = max(4, self.identities // 4) if self.val_identities is None else self.val_identities
        val_images = (min(10, max(2, self.images_per_identity)) if self.val_images_per_identity is None
                      else self.val_images_per_identity)
        object.__setattr__(self, "val_identities", val_ids)
        object.__setattr__(self, "val_images_per_identity", val_images)
        object.__setattr__(self, "formats", tuple(sorted(set(self.formats))))
        checks = [("identities", self.identities >= 1, ">= 1"),
                  ("images_per_identity", self.images_per_identity >= 1, ">= 1"),
                  ("pairs_per_set", self.pairs_per_set >= 0 and self.pairs_per_set % 2 == 0, "even and >= 0"),
                  ("val_identities", self.pairs_per_set == 0 or val_ids >= 2, ">= 2"),
                  ("val_images_per_identity", self.pairs_per_set == 0 or val_images >= 2, ">= 2"),
                  ("seed", self.seed >= 0, ">= 0"),
                  ("formats", bool(self.formats) and set(self.formats) <= set(_FORMATS), f"a subset of {_FORMATS}"),
                  ("jpeg_quality", 1 <= self.jpeg_quality <= 100, "in 1..100"),
                  ("identities", self.identities * (self.images_per_identity + 1) < _MAX_FLOAT_KEY,
                   "small enough that every record key fits a float32 label (< 2**24)")]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"SyntheticSpec.{name} = {getattr(self, name)!r} is invalid; expected {expected}")

    @property
    def num_images(self) -> int:
        """Training images."""
        return self.identities * self.images_per_identity

    @property
    def num_val_images(self) -> int:
        """Images in the held-out pool (0 when no ``.bin`` is written)."""
        return int(self.val_identities or 0) * int(self.val_images_per_identity or 0) if self.pairs_per_set else 0

    def to_dict(self) -> dict[str, object]:
        """The resolved fields as JSON-ready values."""
        values = asdict(self)
        values["formats"] = list(self.formats)
        return values


@dataclass(frozen=True)
class SyntheticSummary:
    """What :func:`make_synthetic` produced (or found cached).

    Attributes:
        out_dir: the output folder.
        spec: the resolved spec.
        files: the files written, relative to ``out_dir`` (``images/`` stands for the folder tree).
        num_images: training images.
        num_val_images: held-out images in the shared validation pool.
        seconds: wall time of this call.
        cached: True if an identical earlier run was found and nothing was written.
    """

    out_dir: Path
    spec: SyntheticSpec
    files: tuple[str, ...]
    num_images: int
    num_val_images: int
    seconds: float
    cached: bool


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe


def _render_identity(task: tuple[int, int, int, int]) -> _Rendered:
    """JPEG bytes and landmarks of images ``0..count-1`` of identity number ``identity``."""
    seed, identity, count, quality = task
    params = render_identity_params(np.random.default_rng([seed, identity, _IDENTITY_STREAM]))
    results = []
    for n in range(count):
        image, landmarks = render_face(params, np.random.default_rng([seed, identity, n]))
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"cv2.imencode failed for synthetic identity {identity} image {n}")
        results.append((buffer.tobytes(), landmarks))
    return results


def _render_all(spec: SyntheticSpec, workers: int) -> Generator[_Rendered, None, None]:
    """Rendered training identities, then held-out identities, in order, from one process pool."""
    tasks = [(spec.seed, i, spec.images_per_identity, spec.jpeg_quality) for i in range(spec.identities)]
    if spec.pairs_per_set:
        tasks += [(spec.seed, spec.identities + j, int(spec.val_images_per_identity or 0), spec.jpeg_quality)
                  for j in range(int(spec.val_identities or 0))]
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_render_identity, tasks)
        return
    # spawn, not fork: a forked child deadlocks in OpenCV if the parent has already used its thread pool.
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
        yield from pool.imap(_render_identity, tasks, chunksize=max(1, min(8, len(tasks) // (4 * workers))))


def _landmark_row(split: str, key: int, path: str, identity: int, landmarks: np.ndarray) -> str:
    return "\t".join([split, str(key), path, str(identity), *(f"{v:.3f}" for v in landmarks.ravel())])


def _write_train(out: Path, spec: SyntheticSpec, rendered: Iterator[_Rendered], rows: list[str]) -> list[str]:
    """Render the training identities into ``train.rec``/``.idx``/``property`` and/or ``images/``."""
    n, k = spec.identities, spec.images_per_identity
    folder = out / "images" if "folder" in spec.formats else None
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(InsightfaceWriter(out, n * k, n)) if "rec" in spec.formats else None
        for i in range(n):
            results = next(rendered)
            if folder is not None:
                (folder / f"id_{i:05d}").mkdir(parents=True, exist_ok=True)
            for j, (jpeg, landmarks) in enumerate(results):
                key, path = 1 + i * k + j, f"images/id_{i:05d}/{j}.jpg" if folder is not None else "-"
                if writer is not None:
                    writer.add(i, jpeg)
                if folder is not None:
                    (out / path).write_bytes(jpeg)
                rows.append(_landmark_row("train", key, path, i, landmarks))
    files = ["images/"] if folder is not None else []
    if writer is not None:  # closing the writer wrote the per-identity records and property
        files += ["train.rec", "train.idx", "property"]
    return files


def _pairs(pool: list[list[bytes]], count: int, rng: np.random.Generator) -> tuple[list[bytes], list[bool]]:
    """``count`` pairs from the held-out pool; each consecutive couple holds one genuine, one impostor pair."""
    images: list[bytes] = []
    issame: list[bool] = []
    for _ in range(count // 2):
        for same in (True, False) if rng.random() < 0.5 else (False, True):
            if same:
                g = int(rng.integers(len(pool)))
                a, b = (int(v) for v in rng.choice(len(pool[g]), 2, replace=False))
                images += [pool[g][a], pool[g][b]]
            else:
                g, h = (int(v) for v in rng.choice(len(pool), 2, replace=False))
                images += [pool[g][int(rng.integers(len(pool[g])))], pool[h][int(rng.integers(len(pool[h])))]]
            issame.append(same)
    return images, issame


def _write_val(out: Path, spec: SyntheticSpec, rendered: Iterator[_Rendered], rows: list[str]) -> list[str]:
    """Render the held-out pool and write the five ``.bin`` sets (SPEC §9) from it."""
    if spec.pairs_per_set == 0:
        return []
    m = int(spec.val_images_per_identity or 0)
    pool: list[list[bytes]] = []
    for j, results in enumerate(rendered):
        pool.append([jpeg for jpeg, _ in results])
        rows += [_landmark_row("val", j * m + n, "-", spec.identities + j, lm) for n, (_, lm) in enumerate(results)]
    files = []
    for index, name in enumerate(VAL_SET_NAMES):
        pairs = _pairs(pool, spec.pairs_per_set, np.random.default_rng([spec.seed, _PAIR_STREAM, index]))
        atomic_write_bytes(out / f"{name}.bin", pickle.dumps(pairs, protocol=4))
        files.append(f"{name}.bin")
    return files


def _manifest(spec: SyntheticSpec, files: list[str]) -> dict[str, object]:
    n = spec.identities
    return {
        "generator": "oaml.data.synthetic", "format_version": FORMAT_VERSION, "oaml_version": __version__,
        "arguments": spec.to_dict(),
        "counts": {"train_identities": n, "train_images": spec.num_images, "val_images": spec.num_val_images},
        "validation": "the five .bin sets draw their own pairs from one shared pool of held-out identities, "
                      f"numbered from {n} (training identities are 0..{n - 1})",
        "landmarks": "landmarks.tsv: split, key (record key or pool index), path, identity number, then x, y of "
                     "the left eye, right eye, nose tip, left and right mouth corner",
        "files": files,
    }


def _cached(out: Path, spec: SyntheticSpec) -> list[str] | None:
    """The files of an identical, complete earlier run in ``out``, or None."""
    try:
        manifest = json.loads((out / "synthetic.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    expected = json.loads(json.dumps(_manifest(spec, [])))
    if any(manifest.get(k) != expected[k] for k in ("generator", "format_version", "oaml_version", "arguments")):
        return None
    files = [str(f) for f in manifest.get("files", [])]
    return files if all((out / f).exists() for f in files) else None


def _clear_stale(out: Path, spec: SyntheticSpec) -> None:
    """Remove the files of an earlier, different run in ``out``, so none of them outlives it."""
    try:
        old = json.loads((out / "synthetic.json").read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError):
        old = None
    images = out / "images"
    if old is None and "folder" in spec.formats and images.is_dir() and any(images.iterdir()):
        raise FileExistsError(f"{images} exists but {out} has no synthetic.json, so make_synthetic did not "
                              f"write it; refusing to overwrite it")
    (out / "synthetic.json").unlink(missing_ok=True)
    for name in old or []:
        if name == "images/":
            shutil.rmtree(images, ignore_errors=True)
        elif "/" not in str(name) and name != "synthetic.json":
            (out / str(name)).unlink(missing_ok=True)


def _generate(out: Path, spec: SyntheticSpec, workers: int) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    _clear_stale(out, spec)
    rows: list[str] = []
    rendered = _render_all(spec, workers)
    try:
        files = _write_train(out, spec, rendered, rows) + _write_val(out, spec, rendered, rows)
    finally:
        rendered.close()  # shuts the pool down if writing failed half-way
    header = "split\tkey\tpath\tidentity\t" + "\t".join(f"{a}_{c}" for a in _LANDMARK_NAMES for c in "xy")
    atomic_write_bytes(out / "landmarks.tsv", ("\n".join([header, *rows]) + "\n").encode("ascii"))
    files += ["landmarks.tsv", "synthetic.json"]
    # Written last: its presence means the folder is complete.
    atomic_write_bytes(out / "synthetic.json", (json.dumps(_manifest(spec, files), indent=2) + "\n").encode("utf-8"))
    return files


def make_synthetic(out_dir: str | os.PathLike[str], identities: int = 200, images: int = 20, seed: int = 0,
                   formats: Iterable[str] = ("rec",), val_identities: int | None = None, val_pairs: int = 600,
                   jpeg_quality: int = 95, workers: int = 1) -> SyntheticSummary:
    """Generate the synthetic dataset in ``out_dir`` (layout in the module docstring), or reuse it.

    Returns at once, writing nothing, if ``out_dir/synthetic.json`` records the same arguments and version
    and all its files exist.

    Args:
        out_dir: output folder, created if missing.
        identities: training identities.
        images: images per training identity.
        seed: root seed; the same seed gives byte-identical files.
        formats: ``"rec"`` and/or ``"folder"``.
        val_identities: held-out identities for the ``.bin`` sets (default ``max(4, identities // 4)``).
        val_pairs: pairs per ``.bin`` set (even; 0 writes none).
        jpeg_quality: JPEG quality.
        workers: rendering processes; the output does not depend on it.

    Returns:
        A :class:`SyntheticSummary`.

    Raises:
        ConfigError: for an invalid argument, naming it.
        FileExistsError: if ``out_dir/images`` exists and was not written by this function.
    """
    if workers < 1:
        raise ConfigError(f"workers = {workers!r} is invalid; expected >= 1")
    spec = SyntheticSpec(identities=identities, images_per_identity=images, val_identities=val_identities,
                         pairs_per_set=val_pairs, seed=seed, formats=tuple(formats), jpeg_quality=jpeg_quality)
    start, out = time.perf_counter(), Path(out_dir)
    files = _cached(out, spec)
    cached = files is not None
    if files is None:
        files = _generate(out, spec, workers)
    seconds = time.perf_counter() - start
    logger.info("%s %d training images of %d identities and %d held-out images in %s (%.1f s)",
                "reused" if cached else "wrote", spec.num_images, identities, spec.num_val_images, out, seconds)
    return SyntheticSummary(out, spec, tuple(files), spec.num_images, spec.num_val_images, seconds, cached)
