"""Tests for oaml.data.pairs: the official LFW pairs.txt, header variants, malformed lines, file resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from oaml.data.pairs import (Pair, detect_pairs_format, image_relpath, parse_pair_list, parse_pairs, read_pairs,
                             resolve_pair_list, resolve_pairs, write_pair_list)
from oaml.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} is absent")


@pytest.mark.shared_data
@needs_shared
def test_official_lfw_pairs() -> None:
    pairs = parse_pairs(SHARED / "lfw_pairs_official" / "pairs.txt")
    assert len(pairs) == 6000
    assert sum(p.same for p in pairs) == 3000
    for fold in range(10):
        block = pairs[600 * fold: 600 * (fold + 1)]
        assert {p.fold for p in block} == {fold}
        assert [p.same for p in block] == [True] * 300 + [False] * 300
    assert pairs[0] == Pair("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", True, 0)


@pytest.mark.shared_data
@needs_shared
@pytest.mark.parametrize("folder, ext", [("lfw_subset10", ".jpg"), ("lfw_subset10_arcface112", ".png")])
def test_resolve_subset(folder: str, ext: str) -> None:
    # The subset's generated pairs.txt names Jacques_Chirac 6 and 10, which the subset does not hold (it has 19
    # and 20 instead); 8 pairs use them. The resolver must say so, and "skip" must keep the other 292.
    pairs = parse_pairs(SHARED / "lfw_subset10" / "pairs.txt")
    assert len(pairs) == 300 and sum(p.same for p in pairs) == 150
    with pytest.raises(DataError, match=r"2 images missing .*Jacques_Chirac_0006, Jacques_Chirac/Jacques_Chirac_0010"):
        resolve_pairs(pairs, SHARED / folder)
    resolved = resolve_pairs(pairs, SHARED / folder, on_missing="skip")
    assert len(resolved) == 292
    assert all(Path(p.path_a).is_file() and p.path_b.endswith(ext) for p in resolved)


def test_headerless_whitespace_and_comments(tmp_path: Path) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text("# my pairs\nAl_Gore 1 2\n\n  Al_Gore   3 Bo_Li 12  \nCy\t7\tCy\t8\n")
    assert parse_pairs(f, ext=".png") == [
        Pair("Al_Gore/Al_Gore_0001.png", "Al_Gore/Al_Gore_0002.png", True),
        Pair("Al_Gore/Al_Gore_0003.png", "Bo_Li/Bo_Li_0012.png", False),
        Pair(image_relpath("Cy", 7, ".png"), image_relpath("Cy", 8, ".png"), True),  # truth follows the names
    ]


def test_tab_separated_names_may_contain_spaces(tmp_path: Path) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text("1\nJean Luc\t4\t5\nJean Luc\t1\tAnn\t2\n")
    pairs = parse_pairs(f)
    assert pairs == [Pair("Jean Luc/Jean Luc_0004.jpg", "Jean Luc/Jean Luc_0005.jpg", True, 0),
                     Pair("Jean Luc/Jean Luc_0001.jpg", "Ann/Ann_0002.jpg", False, 0)]


@pytest.mark.parametrize("text, match", [
    ("10\t300\nAl_Gore\t1\n", r"pairs\.txt:2: expected .* got 2 fields in 'Al_Gore\\t1'"),
    ("Al_Gore\t1\t2\nAl_Gore\tone\t2\n", r"pairs\.txt:2: image number must be a positive integer, got 'one'"),
    ("Al_Gore 1 2\nAl_Gore 0 2\n", r"pairs\.txt:2: image number .* got '0'"),
    ("\n\nA 1 B 2 C 3\n", r"pairs\.txt:3: expected .* got 6 fields"),
    ("2\t1\nA\t1\t2\nA\t1\tB\t2\n", r"header announces 2 folds x 2 pairs = 4, found 2 pairs"),
    ("10\t300\n", r"no pairs found"),
    ("A 1 2\n3 4\n", r"pairs\.txt:2: expected .* got 2 fields"),
])
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text(text)
    with pytest.raises(DataError, match=match):
        parse_pairs(f)


def test_missing_file_and_missing_images(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        parse_pairs(tmp_path / "nope.txt")
    (tmp_path / "img" / "A").mkdir(parents=True)
    (tmp_path / "img" / "A" / "A_0001.png").write_bytes(b"x")
    (tmp_path / "img" / "A" / "A_0002.jpg").write_bytes(b"x")
    pairs = [Pair("A/A_0001.jpg", "A/A_0002.jpg", True), Pair("A/A_0001.jpg", "B/B_0001.jpg", False)]
    tried = r"\(tried \.jpg, \.jpeg, \.png, \.bmp, \.pgm\)"
    with pytest.raises(DataError, match=rf"1 images missing under .*img {tried}: B/B_0001"):
        resolve_pairs(pairs, tmp_path / "img")
    kept = resolve_pairs(pairs, tmp_path / "img", on_missing="skip")
    assert len(kept) == 1 and kept[0].path_a.endswith("A_0001.png") and kept[0].path_b.endswith("A_0002.jpg")
    with pytest.raises(FileNotFoundError, match="image root"):
        resolve_pairs(pairs, tmp_path / "absent")


# ---------------------------------------------------------------- "path_a path_b label" lists


def test_pair_list_round_trips(tmp_path: Path) -> None:
    pairs = [Pair("Al Gore/a.jpg", "Al Gore/b.png", True), Pair("x/1.png", "y/2.png", False),
             Pair("/abs/c.jpg", "rel.jpg", True)]
    write_pair_list(tmp_path / "list.txt", pairs)
    assert parse_pair_list(tmp_path / "list.txt") == pairs
    assert read_pairs(tmp_path / "list.txt") == (pairs, "list")
    assert [p.line for p in parse_pair_list(tmp_path / "list.txt")] == [2, 3, 4]  # line 1 is the comment header
    with pytest.raises(ValueError, match="tab, comma or line break"):
        write_pair_list(tmp_path / "bad.txt", [Pair("a,b.jpg", "c.jpg", True)])


def test_pair_list_separators_labels_and_comments(tmp_path: Path) -> None:
    f = tmp_path / "pairs.csv"
    f.write_text("# MFR2-style list\n\na/1.jpg,b/2.jpg,1\n c/3.jpg , c/4.jpg , same \nd/5.jpg\te f/6.jpg\tDIFF\n"
                 "g/7.jpg h/8.jpg 0\n")
    assert parse_pair_list(f) == [Pair("a/1.jpg", "b/2.jpg", True), Pair("c/3.jpg", "c/4.jpg", True),
                                  Pair("d/5.jpg", "e f/6.jpg", False), Pair("g/7.jpg", "h/8.jpg", False)]


@pytest.mark.parametrize("text, match", [
    ("a.jpg b.jpg 1\na.jpg b.jpg\n", r"list\.txt:2: expected 'path_a path_b label'.* got 2 fields"),
    ("a.jpg b.jpg 1\n\na.jpg b.jpg maybe\n", r"list\.txt:3: label must be 1/0 or same/diff, got 'maybe'"),
    ("a.jpg,,1\n", r"list\.txt:1: expected .* got 3 fields"),
    ("a.jpg b.jpg 1 extra\n", r"list\.txt:1: expected .* got 4 fields"),
    ("# only a comment\n", r"list\.txt: no pairs found"),
])
def test_bad_list_rows_are_one_line_errors_naming_the_line(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "list.txt"
    f.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        parse_pair_list(f)
    assert "\n" not in str(info.value)


def test_format_detection(tmp_path: Path) -> None:
    cases = {"10\t300\nA\t1\t2\n": "lfw", "A 1 2\n": "lfw", "A\t1\tB\t2\n": "lfw", "# c\nA 1 B 3\n": "lfw",
             "a/1.jpg b/2.jpg 1\n": "list", "a.jpg,b.jpg,same\n": "list", "A 1 b.jpg\n": "list"}
    for k, (text, expected) in enumerate(cases.items()):
        f = tmp_path / f"{k}.txt"
        f.write_text(text)
        assert detect_pairs_format(f) == expected, text
    f = tmp_path / "forced.txt"
    f.write_text("A 1 2\n")
    with pytest.raises(DataError, match=r"forced\.txt:1: label must be"):
        read_pairs(f, "list")
    with pytest.raises(ValueError, match="pairs_format"):
        read_pairs(f, "csv")


def test_pair_list_resolution_names_the_line_of_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "img" / "A").mkdir(parents=True)
    for name in ("1.png", "2.png"):
        (tmp_path / "img" / "A" / name).write_bytes(b"x")
    f = tmp_path / "list.txt"
    f.write_text("A/1.png A/2.png 1\n# gap\nA/1.png B/9.png 0\nA/3.png B/9.png 0\n")
    pairs = parse_pair_list(f)
    assert resolve_pair_list(pairs[:1], tmp_path / "img", f)[0].path_b == str((tmp_path / "img/A/2.png").resolve())
    with pytest.raises(DataError, match=r"list\.txt:3: image B/9\.png not found under .*img \(2 missing image"):
        resolve_pair_list(pairs, tmp_path / "img", f)
    with pytest.raises(FileNotFoundError, match="image root"):
        resolve_pair_list(pairs, tmp_path / "absent", f)
