"""Landmarks of aligned crops (``landmarks.tsv`` of ``oaml align``), mapped into the crop (SPEC §8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oaml.constants import ARCFACE_TEMPLATE
from oaml.data.landmarks import aligned_landmarks
from oaml.errors import DataError

TEMPLATE = ARCFACE_TEMPLATE.astype(np.float64)

def _write_tsv(folder: Path, rows: list[str], header: str | None = None) -> None:
    header = header or "aligned\tsource\tdet_prob\tlex\tley\trex\trey\tnx\tny\tlmx\tlmy\trmx\trmy\tmean_dist"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "landmarks.tsv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def test_aligned_landmarks_maps_source_points_into_the_crop(tmp_path: Path) -> None:
    angle, scale = np.deg2rad(20.0), 2.3
    to_source = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 140.0],
                          [scale * np.sin(angle), scale * np.cos(angle), 60.0]])
    wobble = np.array([[1.5, -1.0], [-0.5, 2.0], [3.0, 1.0], [0.0, -2.0], [-1.0, 0.5]])  # not a pure similarity
    crop_points = TEMPLATE + wobble
    source = crop_points @ to_source[:, :2].T + to_source[:, 2]
    values = "\t".join(f"{v:.6f}" for v in source.ravel())
    _write_tsv(tmp_path, [f"id/a.png\tid/a.pgm\t0.99\t{values}\t1.0"])
    mapped = aligned_landmarks(tmp_path)
    assert list(mapped) == ["id/a.png"]
    # The least-squares similarity of crop_points onto the template, by an independent linear solve.
    rows, rhs = [], []
    for (x, y), (u, v) in zip(source, TEMPLATE):
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    expected = source @ np.array([[a, -b], [b, a]]).T + (tx, ty)
    assert np.allclose(mapped["id/a.png"], expected, atol=1e-4)
    # Where they are in the crop (near the wobbled points), not snapped onto the template.
    assert np.abs(mapped["id/a.png"] - crop_points).max() < 3.0 and np.abs(mapped["id/a.png"] - TEMPLATE).max() > 1.0


def test_aligned_landmarks_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="landmarks.tsv"):
        aligned_landmarks(tmp_path / "nowhere")
    good = "\t".join(f"{v:.3f}" for v in TEMPLATE.ravel())
    bad = "b.png\tb.jpg\t1\t1\tx\t3\t4\t5\t6\t7\t8\t9\t10\t0"
    _write_tsv(tmp_path / "bad_value", [f"a.png\ta.jpg\t1\t{good}\t0", bad])
    with pytest.raises(DataError, match=r"landmarks.tsv:3: ") as info:
        aligned_landmarks(tmp_path / "bad_value")
    assert "\n" not in str(info.value)
    _write_tsv(tmp_path / "short", ["a.png\ta.jpg\t1\t1\t2"])
    with pytest.raises(DataError, match=r"landmarks.tsv:2: "):
        aligned_landmarks(tmp_path / "short")
    _write_tsv(tmp_path / "header", [good], header="path\tlex\tley")
    with pytest.raises(DataError, match=r"landmarks.tsv:1: .*aligned"):
        aligned_landmarks(tmp_path / "header")
    same = "\t".join(["5.0"] * 10)
    _write_tsv(tmp_path / "degenerate", [f"a.png\ta.jpg\t1\t{same}\t0"])
    with pytest.raises(DataError, match=r"landmarks.tsv:2: "):
        aligned_landmarks(tmp_path / "degenerate")
