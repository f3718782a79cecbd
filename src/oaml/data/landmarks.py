"""Five-point landmark geometry: the similarity fit of SPEC §8 and the landmarks of aligned crops.

:func:`similarity_transform` is the alignment ``oaml align`` warps with; :func:`aligned_landmarks` reads the
``landmarks.tsv`` that ``oaml align`` writes next to its crops and maps each image's SOURCE landmarks through the
same transform, which puts them where they are in the crop: near, but for turned or expressive faces not on, the
template. The occluders (:mod:`oaml.data.occluders`) and ``oaml occlude`` place themselves on those points.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from oaml.constants import ARCFACE_TEMPLATE, FACE_SIZE
from oaml.errors import DataError

__all__ = ["LANDMARK_COLUMNS", "aligned_landmarks", "similarity_transform", "transform_points"]

LANDMARK_COLUMNS: tuple[str, ...] = ("lex", "ley", "rex", "rey", "nx", "ny", "lmx", "lmy", "rmx", "rmy")
"""TSV columns of the five landmarks: left eye, right eye, nose tip, left and right mouth corner (x, y)."""

_KEY = "aligned"


def similarity_transform(src: np.ndarray, dst: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns", IEEE
    TPAMI 1991: with centred point sets, the rotation comes from the SVD of their covariance (a reflection
    is excluded by flipping the sign of the last singular direction when the determinant is negative), the
    scale is trace(D S) / var(src) and the translation maps the centroids onto each other.

    Args:
        src: N x 2 source points (N >= 2).
        dst: N x 2 target points.

    Returns:
        2 x 3 float64 matrix ``M`` with ``dst ~ M[:, :2] @ p + M[:, 2]``, as ``cv2.warpAffine`` expects.

    Raises:
        DataError: if the points are not N x 2 with N >= 2, are not finite, or all coincide.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise DataError(f"similarity_transform needs two N x 2 point sets (N >= 2), got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise DataError("similarity_transform: landmarks contain NaN or infinity")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = float((src_c**2).sum() / len(src))
    if src_var <= 1e-12:
        raise DataError("similarity_transform: all source landmarks coincide")
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ np.diag(sign) @ vt
    scale = float((sigma * sign).sum() / src_var)
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2 x 3 affine matrix to N x 2 points."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def aligned_landmarks(folder: str | os.PathLike[str], size: int = FACE_SIZE) -> dict[str, np.ndarray]:
    """The landmarks of each crop of an aligned folder, keyed by the crop's relative (POSIX) path.

    Args:
        folder: a folder written by ``oaml align`` (it holds ``landmarks.tsv`` with the columns ``aligned``
            and ``lex ley rex rey nx ny lmx lmy rmx rmy``).
        size: the crops' side (the template is scaled by ``size / 112``, as the aligner does).

    Returns:
        ``{crop path: 5 x 2 float64 (x, y) in crop pixels}``, in the file's order.

    Raises:
        FileNotFoundError: if ``folder/landmarks.tsv`` does not exist.
        DataError: (a ``ValueError``) for a header without those columns, or a row (named by file and line)
            with a missing path, a non-numeric or non-finite value, or landmarks that all coincide.
    """
    path = Path(folder) / "landmarks.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (an aligned folder written by `oaml align` has one)")
    template = ARCFACE_TEMPLATE.astype(np.float64) * (size / FACE_SIZE)
    out: dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in (_KEY, *LANDMARK_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}:1: header lacks the column(s) {' '.join(missing)}; "
                            f"found {' '.join(reader.fieldnames or []) or 'nothing'}")
        for line, row in enumerate(reader, start=2):
            out[_crop_key(row, path, line)] = _map_row(row, template, path, line)
    return out


def _crop_key(row: dict[str, str | None], path: Path, line: int) -> str:
    key = (row.get(_KEY) or "").strip()
    if not key:
        raise DataError(f"{path}:{line}: empty '{_KEY}' path")
    return Path(key).as_posix()


def _map_row(row: dict[str, str | None], template: np.ndarray, path: Path, line: int) -> np.ndarray:
    try:
        values = [float(row[column]) for column in LANDMARK_COLUMNS]  # type: ignore[arg-type]
        source = np.array(values, np.float64).reshape(5, 2)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}:{line}: expected 10 numeric landmark values ({exc})") from exc
    if not np.isfinite(source).all():
        raise DataError(f"{path}:{line}: landmarks contain NaN or infinity")
    try:
        matrix = similarity_transform(source, template)
    except DataError as exc:
        raise DataError(f"{path}:{line}: {exc}") from exc
    return transform_points(matrix, source)
