"""Pair lists: LFW ``pairs.txt`` and the "path_a path_b label" list, parsing, writing and resolution (SPEC §9).

Two formats are read, told apart by their first data line (:func:`detect_pairs_format`) or named explicitly:

- ``lfw`` (Huang et al., LFW, UMass TR 07-49): an optional header, ``<folds> <pairs per half-fold>`` (View 2,
  "10 300") or ``<pairs per half>`` (View 1), then one pair per line: ``name n1 n2`` for the same person and
  ``name1 n1 name2 n2`` for different people, fields separated by tabs or other whitespace. Image ``n`` of
  ``name`` is ``name/name_%04d.<ext>``; :func:`resolve_pairs` finds the actual extension (.jpg or .png).
- ``list`` (the lists MLFW, MFR2 and OCFR-2022 distribute): one pair per line, ``path_a path_b label``, the
  paths relative to the image folder (or absolute), separated by commas when the line has one, else by tabs
  when it has one, else by whitespace; the label is ``1``/``0`` or ``same``/``diff`` (``different``, ``genuine``
  and ``impostor`` are read too). :func:`resolve_pair_list` checks that every file exists.

In both, blank lines and lines starting with ``#`` are skipped, and every error names the file and the line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from oaml.constants import PAIRS_FORMATS
from oaml.data.images import IMAGE_EXTENSIONS
from oaml.errors import DataError
from oaml.fileio import atomic_write

__all__ = ["PAIRS_FORMATS", "Pair", "detect_pairs_format", "image_relpath", "parse_pair_list", "parse_pairs",
           "read_pairs", "resolve_pair_list", "resolve_pairs", "write_pair_list"]


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
        line: 1-based line of the pairs file the pair was read from, for error messages (not compared).
    """

    path_a: str
    path_b: str
    same: bool
    fold: int | None = None
    line: int | None = field(default=None, compare=False)


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
    header: tuple[int, int] | None = None
    rows: list[Pair] = []
    for lineno, stripped in _data_lines(path):
        fields = _split(stripped)
        if not rows and header is None and (parsed := _parse_header(fields)) is not None:
            header = parsed
            continue
        rows.append(Pair(*_parse_line(fields, path, lineno, stripped, ext), line=lineno))
    if not rows:
        raise DataError(f"{path}: no pairs found (expected lines of the form {_FORMAT})")
    if header is None:
        return rows
    n_folds, per_fold = header
    if len(rows) != n_folds * per_fold:
        raise DataError(f"{path}: header announces {n_folds} folds x {per_fold} pairs = {n_folds * per_fold}, "
                        f"found {len(rows)} pairs")
    return [replace(pair, fold=k // per_fold) for k, pair in enumerate(rows)]


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of the non-blank, non-comment lines of a UTF-8 text file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: If it is not UTF-8 text.
    """
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc})") from exc
    lines = ((number, line.strip()) for number, line in enumerate(text.splitlines(), start=1))
    return [(number, line) for number, line in lines if line and not line.startswith("#")]


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


_LABELS = {"1": True, "0": False, "same": True, "diff": False, "different": False, "genuine": True,
           "impostor": False}
_LIST_FORMAT = "'path_a path_b label' (label 1/0 or same/diff; comma-, tab- or space-separated)"


def _list_fields(line: str) -> list[str]:
    separator = "," if "," in line else "\t" if "\t" in line else None
    return [f.strip() for f in line.split(separator)] if separator else line.split()


def detect_pairs_format(path: str | os.PathLike[str]) -> str:
    """``"lfw"`` or ``"list"``, from the first data line of a pairs file (see the module docstring).

    An LFW header (one or two integers) or an LFW pair line (``name n1 n2`` or ``name1 n1 name2 n2`` with
    integer image numbers) is ``lfw``; anything else is ``list``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: If it is not UTF-8 text or holds no data line.
    """
    lines = _data_lines(Path(path))
    if not lines:
        raise DataError(f"{path}: no pairs found (expected LFW pairs.txt lines or {_LIST_FORMAT})")
    fields = _split(lines[0][1])
    numbers = [_natural(f) is not None for f in fields]
    lfw = (_parse_header(fields) is not None or (len(fields) == 3 and numbers[1] and numbers[2])
           or (len(fields) == 4 and numbers[1] and numbers[3]))
    return "lfw" if lfw else "list"


def parse_pair_list(path: str | os.PathLike[str]) -> list[Pair]:
    """Parse a "path_a path_b label" pair list (the module docstring gives the format).

    Returns:
        The pairs in file order, paths as written (POSIX separators), each with its line number.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: Naming the file and line of a row without exactly three fields, an empty path or an unknown
            label; or a file without pairs.
    """
    path = Path(path)
    pairs: list[Pair] = []
    for lineno, line in _data_lines(path):
        fields = _list_fields(line)
        if len(fields) != 3 or not fields[0] or not fields[1]:
            raise DataError(f"{path}:{lineno}: expected {_LIST_FORMAT}, got {len(fields)} fields in {line!r}")
        label = _LABELS.get(fields[2].lower())
        if label is None:
            raise DataError(f"{path}:{lineno}: label must be 1/0 or same/diff, got {fields[2]!r} in {line!r}")
        pairs.append(Pair(Path(fields[0]).as_posix(), Path(fields[1]).as_posix(), label, line=lineno))
    if not pairs:
        raise DataError(f"{path}: no pairs found (expected lines of the form {_LIST_FORMAT})")
    return pairs


def read_pairs(path: str | os.PathLike[str], pairs_format: str = "auto",
               ext: str = ".jpg") -> tuple[list[Pair], str]:
    """Read a pairs file in either format.

    Args:
        path: The pairs file.
        pairs_format: One of :data:`PAIRS_FORMATS`; ``"auto"`` uses :func:`detect_pairs_format`.
        ext: Extension of the LFW paths produced (:func:`parse_pairs`).

    Returns:
        ``(pairs, format read)``, the format being ``"lfw"`` or ``"list"``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: On a malformed file (naming the line).
        ValueError: On an unknown ``pairs_format``.
    """
    if pairs_format not in PAIRS_FORMATS:
        raise ValueError(f"pairs_format must be one of {', '.join(PAIRS_FORMATS)}, got {pairs_format!r}")
    chosen = detect_pairs_format(path) if pairs_format == "auto" else pairs_format
    return (parse_pairs(path, ext) if chosen == "lfw" else parse_pair_list(path)), chosen


def resolve_pair_list(pairs: Iterable[Pair], root: str | os.PathLike[str],
                      source: str | os.PathLike[str] = "pairs list") -> list[Pair]:
    """The pairs of a "path_a path_b label" list with absolute paths of existing files (relative to ``root``).

    Raises:
        FileNotFoundError: If ``root`` is not a directory.
        DataError: If a named file does not exist: one line naming ``source``, the line of the first missing
            file, the file, and how many files are missing in all.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root not found: {root}")
    resolved, missing = [], []
    for pair in pairs:
        a, b = (root / pair.path_a).resolve(), (root / pair.path_b).resolve()
        missing += [(pair.line, rel) for rel, full in ((pair.path_a, a), (pair.path_b, b)) if not full.is_file()]
        resolved.append(replace(pair, path_a=str(a), path_b=str(b)))
    if missing:
        line, rel = missing[0]
        count = len({rel for _, rel in missing})
        raise DataError(f"{source}:{line}: image {rel} not found under {root} ({count} missing image(s) in all)")
    return resolved


def write_pair_list(path: str | os.PathLike[str], pairs: Iterable[Pair]) -> None:
    """Write ``pairs`` as a tab-separated "path_a path_b label" list (label 1/0) with a comment header, atomically.

    :func:`parse_pair_list` reads it back to the same pairs; paths must not hold tabs or line breaks.

    Raises:
        ValueError: If a path holds a tab, a comma or a line break (the list would not read back).
    """
    rows = ["# path_a\tpath_b\tlabel (1 same person, 0 different); read by oaml.data.pairs.parse_pair_list"]
    for pair in pairs:
        for rel in (pair.path_a, pair.path_b):
            if any(c in rel for c in "\t,\n\r") or not rel.strip():
                raise ValueError(f"path {rel!r} cannot be written to a pair list (empty, or a tab, comma or "
                                 f"line break in it)")
        rows.append(f"{pair.path_a}\t{pair.path_b}\t{int(pair.same)}")
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\n".join(rows) + "\n")
