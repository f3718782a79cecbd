"""LFW ``pairs.txt`` parsing and resolution to image files (SPEC §9, standalone evaluation).

Format (Huang et al., LFW, UMass TR 07-49): an optional header, ``<folds> <pairs per half-fold>`` (View 2,
"10 300") or ``<pairs per half>`` (View 1), then one pair per line: ``name n1 n2`` for the same person and
``name1 n1 name2 n2`` for different people, fields separated by tabs or other whitespace. Image ``n`` of
``name`` is ``name/name_%04d.<ext>``; :func:`resolve_pairs` finds the actual extension (.jpg or .png).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from oaml.data.images import IMAGE_EXTENSIONS
from oaml.errors import DataError

__all__ = ["Pair", "image_relpath", "parse_pairs", "resolve_pairs"]

logger = logging.getLogger(__name__)

_FORMAT = "'name<TAB>n1<TAB>n2' (same) or 'name1<TAB>n1<TAB>name2<TAB>n2' (different)"


@dataclass(frozen=True)
class Pair:
    """One verification pair.

    Attributes:
        path_a: First image, relative to the image root (``name/name_0001.jpg``), or absolute once resolved.
        path_b: Second image, as ``path_a``.
        same: True if both images show the same person.
        fold: 0-based fold from the header's fold layout (contiguous blocks), or None without a header.
    """

    path_a: str
    path_b: str
    same: bool
    fold: int | None = None


def image_relpath(name: str, number: int, ext: str = ".jpg") -> str:
    """LFW file name of image ``number`` of ``name``: ``name/name_%04d<ext>`` (POSIX separators)."""
    return f"{name}/{name}_{number:04d}{ext}"


def _split(line: str) -> list[str]:
    # Tabs when present, so that a name with a space survives; any whitespace otherwise.
    return [f.strip() for f in line.split("\t")] if "\t" in line else line.split()


def _natural(field: str) -> int | None:
    """``int(field)`` for 1-18 ASCII digits, else None (``str.isdigit`` accepts '²', which ``int`` rejects)."""
    return int(field) if field.isascii() and field.isdigit() and len(field) <= 18 else None


def _image_number(field: str, path: Path, lineno: int, line: str) -> int:
    number = _natural(field)
    if number is None or number < 1:
        raise DataError(f"{path}:{lineno}: image number must be a positive integer, got {field!r} in {line!r}")
    return number


def _parse_line(fields: list[str], path: Path, lineno: int, line: str, ext: str) -> tuple[str, str, bool]:
    if len(fields) == 3:
        name, n1, n2 = fields
        return (image_relpath(name, _image_number(n1, path, lineno, line), ext),
                image_relpath(name, _image_number(n2, path, lineno, line), ext), True)
    if len(fields) == 4:
        name1, n1, name2, n2 = fields
        # The 4-field form is LFW's "different" line; truth still follows the names.
        return (image_relpath(name1, _image_number(n1, path, lineno, line), ext),
                image_relpath(name2, _image_number(n2, path, lineno, line), ext), name1 == name2)
    raise DataError(f"{path}:{lineno}: expected {_FORMAT}, got {len(fields)} fields in {line!r}")


def _parse_header(fields: list[str]) -> tuple[int, int] | None:
    """``(folds, pairs per fold)`` if ``fields`` is a header line, else None."""
    numbers = [_natural(f) for f in fields]
    if 1 <= len(fields) <= 2 and None not in numbers:
        n_folds, per_half = (1, numbers[0]) if len(numbers) == 1 else (numbers[0], numbers[1])
        return n_folds, 2 * per_half  # type: ignore[operator]
    return None


def parse_pairs(path: str | Path, ext: str = ".jpg") -> list[Pair]:
    """Parse an LFW-format pairs file.

    Blank lines and lines starting with ``#`` are skipped. With a header, the pair count must equal
    ``folds * 2 * per_half`` and each pair gets its fold (contiguous blocks of ``2 * per_half``).

    Args:
        path: The pairs file.
        ext: Extension of the relative paths produced (:func:`resolve_pairs` searches others).

    Returns:
        The pairs in file order, with relative paths.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: On a malformed line (naming the file, the 1-based line number and the content), a header
            that disagrees with the pair count, or a file with no pairs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc})") from exc
    header: tuple[int, int] | None = None
    rows: list[tuple[str, str, bool]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = _split(stripped)
        if not rows and header is None and (parsed := _parse_header(fields)) is not None:
            header = parsed
            continue
        rows.append(_parse_line(fields, path, lineno, stripped, ext))
    if not rows:
        raise DataError(f"{path}: no pairs found (expected lines of the form {_FORMAT})")
    if header is None:
        return [Pair(a, b, same) for a, b, same in rows]
    n_folds, per_fold = header
    if len(rows) != n_folds * per_fold:
        raise DataError(f"{path}: header announces {n_folds} folds x {per_fold} pairs = {n_folds * per_fold}, "
                        f"found {len(rows)} pairs")
    return [Pair(a, b, same, fold=k // per_fold) for k, (a, b, same) in enumerate(rows)]


def _find(root: Path, rel: str, extensions: Sequence[str]) -> Path | None:
    stem = Path(rel).with_suffix("")
    for ext in extensions:
        candidate = root / stem.with_suffix(ext)
        if candidate.is_file():
            return candidate
    return None


def resolve_pairs(pairs: Iterable[Pair], root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                  on_missing: Literal["raise", "skip"] = "raise") -> list[Pair]:
    """Find the image files of ``pairs`` under ``root``, trying each extension in order.

    Args:
        pairs: Pairs with relative paths (from :func:`parse_pairs`).
        root: Image root holding one folder per identity.
        extensions: Extensions to try, in order of preference.
        on_missing: ``"raise"`` fails on any missing image; ``"skip"`` drops those pairs and logs a warning.

    Returns:
        The pairs with absolute paths of existing files, in input order.

    Raises:
        FileNotFoundError: If ``root`` is not a directory.
        DataError: If images are missing and ``on_missing="raise"``; the message gives the count and the first
            ten missing paths with the extensions tried.
        ValueError: On an unknown ``on_missing``.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root not found: {root}")
    cache: dict[str, Path | None] = {}
    resolved: list[Pair] = []
    for pair in pairs:
        for rel in (pair.path_a, pair.path_b):
            if rel not in cache:
                cache[rel] = _find(root, rel, extensions)
        a, b = cache[pair.path_a], cache[pair.path_b]
        if a is not None and b is not None:
            resolved.append(replace(pair, path_a=str(a.resolve()), path_b=str(b.resolve())))
    unique = sorted(rel for rel, found in cache.items() if found is None)
    if unique:
        shown = ", ".join(str(Path(m).with_suffix("")) for m in unique[:10])
        msg = (f"{len(unique)} images missing under {root} (tried {', '.join(extensions)}): {shown}"
               + (" ..." if len(unique) > 10 else ""))
        if on_missing == "raise":
            raise DataError(msg)
        logger.warning("%s; skipped the pairs that use them", msg)
    return resolved
