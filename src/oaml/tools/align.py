"""``oaml align``: raw photos -> 112 x 112 crops aligned to the ArcFace five-point template (SPEC §8).

For every image under the source folder (identity sub-folders at any depth, or a flat folder) five landmarks
(eye centres, nose tip, mouth corners) are detected with MTCNN (:mod:`oaml.tools._mtcnn`, optional extra
``mtcnn``) or read from a landmarks TSV; the least-squares similarity transform that maps them onto
:data:`oaml.constants.ARCFACE_TEMPLATE` is fitted (Umeyama 1991,
:func:`oaml.data.landmarks.similarity_transform`), and the
image is warped with ``cv2.warpAffine`` (bilinear, black border). The folder structure is kept.

Outputs in the destination folder, besides the crops:

- ``failed.txt``: one ``path<TAB>reason`` line per image that produced no crop (unreadable, no face, face
  below ``min_prob``, no landmarks in the TSV); written on every run, empty when every image was aligned;
- ``landmarks.tsv``: per aligned image the crop and source paths, the detection probability, the five source
  landmarks (columns ``lex ley rex rey nx ny lmx lmy rmx rmy``) and the mean distance (px) between the warped
  landmarks and the template. The same file can be passed back as ``landmarks_tsv`` to re-crop without
  detection.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from oaml.constants import ARCFACE_TEMPLATE, FACE_SIZE
from oaml.data.images import PHOTO_EXTENSIONS, list_images
from oaml.data.landmarks import LANDMARK_COLUMNS, similarity_transform, transform_points
from oaml.errors import ConfigError, DataError
from oaml.fileio import atomic_write

if TYPE_CHECKING:
    from oaml.tools._mtcnn import MTCNN, Detections

__all__ = [
    "AlignSummary",
    "LANDMARK_COLUMNS",
    "align_folder",
    "align_image",
    "read_landmarks_tsv",
    "select_face",
    "similarity_transform",
    "transform_points",
]

logger = logging.getLogger(__name__)

_SYNTHETIC_COLUMNS = tuple(f"{name}_{axis}" for name in ("left_eye", "right_eye", "nose", "mouth_left",
                                                         "mouth_right") for axis in "xy")
_JPEG_QUALITY = 95
_MAX_LOGGED_FAILURES = 10  # the rest are in failed.txt
Select = Literal["largest", "central"]
_Locate = Callable[[str, np.ndarray], tuple[np.ndarray | None, float, str]]  # (path, image) -> landmarks


def align_image(image: np.ndarray, landmarks: np.ndarray, size: int = FACE_SIZE) -> tuple[np.ndarray, float]:
    """Warp one image so that its five landmarks land on the ArcFace template.

    Args:
        image: H x W x C uint8 image (any channel order; it is kept).
        landmarks: 5 x 2 (x, y) landmarks in ArcFace order (left eye, right eye, nose, left and right mouth
            corner, image left/right), in pixel coordinates of ``image``.
        size: output side; the template is scaled by ``size / 112``.

    Returns:
        ``(crop, distance)``: the ``size x size`` crop (bilinear, black border) and the mean distance in
        output pixels between the warped landmarks and the template.
    """
    template = ARCFACE_TEMPLATE.astype(np.float64) * (size / FACE_SIZE)
    matrix = similarity_transform(landmarks, template)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)
    distance = float(np.linalg.norm(transform_points(matrix, landmarks) - template, axis=1).mean())
    return crop, distance


def select_face(detections: Detections, image_shape: tuple[int, ...], select: Select = "central",
                min_prob: float = 0.9) -> tuple[int | None, str]:
    """Choose one face among the detections.

    Args:
        detections: MTCNN detections of one image.
        image_shape: the image's shape (H, W, ...).
        select: ``"largest"`` box area, or ``"central"``: box centre nearest the image centre.
        min_prob: faces below this probability are ignored.

    Returns:
        ``(index, reason)``: the chosen detection, or ``None`` and why no face qualified.
    """
    if len(detections) == 0:
        return None, "no face detected"
    candidates = np.flatnonzero(detections.probs >= min_prob)
    if candidates.size == 0:
        return None, f"no face with probability >= {min_prob:g} (best {float(detections.probs.max()):.3f})"
    boxes = detections.boxes[candidates]
    if select == "largest":
        score = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return int(candidates[int(np.argmax(score))]), ""
    centre = np.array([image_shape[1], image_shape[0]], np.float64) / 2.0
    distance = np.linalg.norm((boxes[:, :2] + boxes[:, 2:4]) / 2.0 - centre, axis=1)
    return int(candidates[int(np.argmin(distance))]), ""


def read_landmarks_tsv(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, float]]:
    """Read five landmarks per image from a TSV with a header row.

    The image column is ``source`` or ``path`` (relative to the source folder, POSIX separators); the
    landmark columns are :data:`LANDMARK_COLUMNS` (the format ``oaml align`` writes) or
    ``left_eye_x ... mouth_right_y`` (``oaml make-synthetic``'s ``landmarks.tsv``). An optional
    ``det_prob`` column is carried over.

    Returns:
        ``{relative path: (5 x 2 landmarks, probability or NaN)}``.

    Raises:
        FileNotFoundError: if the file is missing.
        DataError: naming the file and line of a missing column or a non-numeric value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmarks TSV not found: {path}")
    out: dict[str, tuple[np.ndarray, float]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        fields = set(reader.fieldnames or [])
        key = "source" if "source" in fields else "path" if "path" in fields else None
        columns = next((c for c in (LANDMARK_COLUMNS, _SYNTHETIC_COLUMNS) if set(c) <= fields), None)
        if key is None or columns is None:
            raise DataError(f"{path}: expected a header with a 'source' (or 'path') column and the columns "
                            f"{' '.join(LANDMARK_COLUMNS)}; found {sorted(fields)}")
        for line_no, row in enumerate(reader, start=2):
            try:
                points = np.array([float(row[c]) for c in columns], np.float64).reshape(5, 2)
                prob = float(row.get("det_prob") or "nan")
            except (TypeError, ValueError) as exc:
                raise DataError(f"{path}:{line_no}: non-numeric landmark ({exc})") from exc
            out[Path(row[key]).as_posix()] = (points, prob)
    return out


@dataclass(frozen=True)
class AlignSummary:
    """What :func:`align_folder` did.

    Attributes:
        num_images: image files found.
        num_aligned: crops written.
        failed: ``(relative path, reason)`` of every image without a crop (also in ``failed.txt``).
        mean_landmark_distance: mean over aligned images of the mean distance (px) between the warped
            landmarks and the template; NaN when nothing was aligned.
        max_landmark_distance: the largest per-image mean distance (px); NaN when nothing was aligned.
        seconds: wall time.
    """

    num_images: int
    num_aligned: int
    failed: tuple[tuple[str, str], ...]
    mean_landmark_distance: float
    max_landmark_distance: float
    seconds: float


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _output_name(rel: Path, ext: str) -> Path:
    return rel if ext == "keep" else rel.with_suffix("." + ext)


def _encode(crop: np.ndarray, suffix: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buffer = cv2.imencode(suffix.lower(), crop, params)
    if not ok:
        raise DataError(f"cannot encode a crop as {suffix}")
    return buffer.tobytes()


def _landmarks_for(rel: str, image: np.ndarray, detector: MTCNN | None,
                   table: dict[str, tuple[np.ndarray, float]] | None, select: Select,
                   min_prob: float) -> tuple[np.ndarray | None, float, str]:
    if table is not None:
        if rel not in table:
            return None, float("nan"), "no landmarks for this image in the landmarks TSV"
        points, prob = table[rel]
        return points, prob, ""
    if detector is None:
        raise ValueError("a detector is needed when no landmarks TSV is given")
    detections = detector.detect(np.ascontiguousarray(image[:, :, ::-1]))  # MTCNN expects RGB
    index, reason = select_face(detections, image.shape, select, min_prob)
    if index is None:
        return None, float("nan"), reason
    return detections.landmarks[index], float(detections.probs[index]), ""


def _check_args(src: Path, select: str, ext: str, min_prob: float) -> None:
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    if select not in ("largest", "central"):
        raise ConfigError(f"select = {select!r} is invalid; expected 'largest' or 'central'")
    if ext not in ("png", "jpg", "keep"):
        raise ConfigError(f"ext = {ext!r} is invalid; expected 'png', 'jpg' or 'keep'")
    if not 0.0 <= min_prob <= 1.0:
        raise ConfigError(f"min_prob = {min_prob!r} is invalid; expected a probability in [0, 1]")


def align_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str], select: Select = "central",
                 min_prob: float = 0.9, landmarks_tsv: str | os.PathLike[str] | None = None, ext: str = "png",
                 progress: bool = True, num_threads: int | None = 1, detector: MTCNN | None = None) -> AlignSummary:
    """Align every image under ``src`` into ``dst`` (layout and side files in the module docstring).

    No image is dropped silently: unreadable files and images without a usable face are listed in
    ``dst/failed.txt`` with the reason, and the run continues.

    Args:
        src: folder of raw photos (identity sub-folders at any depth, or flat).
        dst: output folder (created); may not be ``src`` itself.
        select: which face to keep when there are several: ``"central"`` (box centre nearest the image
            centre, as LFW-style crops need) or ``"largest"``.
        min_prob: minimum MTCNN face probability.
        landmarks_tsv: read landmarks from this TSV (:func:`read_landmarks_tsv`) instead of detecting them;
            MTCNN is then not needed.
        ext: ``"png"`` (lossless, default), ``"jpg"`` (quality 95) or ``"keep"`` (the source's suffix).
        progress: show a tqdm progress bar.
        num_threads: torch threads during detection (MTCNN's small convolutions gain little from more,
            and on a loaded machine extra threads slow it down); None leaves the setting alone.
        detector: a ready :class:`~oaml.tools._mtcnn.MTCNN` (default: built on first use).

    Returns:
        An :class:`AlignSummary`.

    Raises:
        FileNotFoundError: if ``src`` (or ``landmarks_tsv``) does not exist.
        ConfigError: for an invalid option, or ``dst`` equal to ``src``.
        ImportError: naming the ``mtcnn`` extra when detection is needed and facenet-pytorch is missing.
    """
    src_path, dst_path = Path(src), Path(dst)
    _check_args(src_path, select, ext, min_prob)
    if dst_path.resolve() == src_path.resolve():
        raise ConfigError(f"destination {dst_path} is the source folder; choose another folder")
    table = read_landmarks_tsv(landmarks_tsv) if landmarks_tsv is not None else None
    if table is None and detector is None:
        from oaml.tools._mtcnn import MTCNN

        detector = MTCNN()
    start = time.perf_counter()
    images = [p.relative_to(src_path) for p in list_images(src_path, PHOTO_EXTENSIONS, exclude=dst_path)]
    dst_path.mkdir(parents=True, exist_ok=True)
    with _torch_threads(num_threads if table is None else None):
        rows, failed, distances = _align_all(images, src_path, dst_path, ext, progress,
                                             lambda rel, image: _landmarks_for(rel, image, detector, table, select,
                                                                               min_prob))
    _write_side_files(dst_path, rows, failed)
    for key, reason in failed[:_MAX_LOGGED_FAILURES]:
        logger.warning("not aligned: %s (%s)", key, reason)
    if len(failed) > _MAX_LOGGED_FAILURES:
        logger.warning("... and %d more images not aligned", len(failed) - _MAX_LOGGED_FAILURES)
    summary = AlignSummary(len(images), len(rows), tuple(failed),
                           float(np.mean(distances)) if distances else float("nan"),
                           float(np.max(distances)) if distances else float("nan"), time.perf_counter() - start)
    logger.info("aligned %d of %d images into %s (%d failed, see failed.txt); mean landmark distance to the "
                "template %.2f px", summary.num_aligned, summary.num_images, dst_path, len(failed),
                summary.mean_landmark_distance)
    return summary


def _align_all(images: list[Path], src: Path, dst: Path, ext: str, progress: bool,
               locate: _Locate) -> tuple[list[str], list[tuple[str, str]], list[float]]:
    """Align ``images``; returns the landmarks.tsv rows, the failures and the per-image landmark distances."""
    from tqdm import tqdm

    failed: list[tuple[str, str]] = []
    rows: list[str] = []
    distances: list[float] = []
    written: dict[Path, str] = {}
    for rel in tqdm(images, desc="align", unit="img", disable=not progress):
        key, out_rel = rel.as_posix(), _output_name(rel, ext)
        if out_rel in written:
            failed.append((key, f"its crop {out_rel.as_posix()} would overwrite the crop of {written[out_rel]}"))
            continue
        outcome = _align_one(src / rel, key, locate)
        if isinstance(outcome, str):
            failed.append((key, outcome))
            continue
        crop, points, prob, distance = outcome
        (dst / out_rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / out_rel).write_bytes(_encode(crop, out_rel.suffix))
        written[out_rel] = key
        distances.append(distance)
        rows.append("\t".join([out_rel.as_posix(), key, f"{prob:.6f}", *(f"{v:.3f}" for v in points.ravel()),
                               f"{distance:.3f}"]))
    return rows, failed, distances


def _align_one(path: Path, key: str, locate: _Locate) -> tuple[np.ndarray, np.ndarray, float, float] | str:
    """``(crop, landmarks, probability, distance)``, or the reason why there is no crop."""
    try:
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except (OSError, cv2.error) as exc:
        return f"unreadable ({exc})"
    if image is None:
        return "unreadable (not a decodable image)"
    points, prob, reason = locate(key, image)
    if points is None:
        return reason
    try:
        crop, distance = align_image(image, points)
    except DataError as exc:
        return f"bad landmarks ({exc})"
    return crop, points, prob, distance


def _write_side_files(dst: Path, rows: list[str], failed: list[tuple[str, str]]) -> None:
    header = "\t".join(["aligned", "source", "det_prob", *LANDMARK_COLUMNS, "mean_dist_px_vs_template"])
    with atomic_write(dst / "landmarks.tsv", "w", encoding="utf-8") as handle:
        handle.write("\n".join([header, *rows]) + "\n")
    with atomic_write(dst / "failed.txt", "w", encoding="utf-8") as handle:
        handle.write("".join(f"{key}\t{reason}\n" for key, reason in failed))
