"""Tests of ``identify`` (protocols, outputs, occluders), the Python API and the ``oaml gallery``/``oaml identify``
command line, including the one-line errors on bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import oaml
from eval_helpers import write_face_folder
from oaml.cli.main import main
from oaml.errors import ConfigError, DataError
from oaml.evaluation.api import FaceRecognizer, load_model
from oaml.evaluation.embed import SeededOccluder, extract_features
from oaml.evaluation.eval_data import EvalImages
from oaml.evaluation.gallery import Gallery
from oaml.evaluation.identify import identify, probe_protocols
from oaml.evaluation.options import IdentifyOptions
from oaml.evaluation.probes import load_probes

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False


@pytest.fixture(scope="module")
def model(gallery_model: FaceRecognizer) -> FaceRecognizer:
    return gallery_model


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory, enrol_folder: Path) -> Path:
    """Copies of two enrolled faces (id00, id02) and of id01's face filed as a non-enrolled "stranger"."""
    root = tmp_path_factory.mktemp("probes")
    source = {"id00": enrol_folder / "id00" / "img000.png", "id02": enrol_folder / "id02" / "img001.png",
              "stranger": enrol_folder / "id01" / "img000.png"}
    for ident, path in source.items():
        (root / ident).mkdir()
        (root / ident / "a.png").write_bytes(path.read_bytes())
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------------------------------------------- identify
def test_identify_writes_outputs(model: FaceRecognizer, gallery: Gallery, probes: Path, tmp_path: Path) -> None:
    out = identify(model, gallery, probes, tmp_path, IdentifyOptions(k=2, rerank_n=2, mask_probes=True,
                                                                     progress=False))
    assert {p.name for p in tmp_path.iterdir()} == {"identify.csv", "identify_masked.csv", "results.json", "cmc.png",
                                                    "det.png"}
    rows = _rows(tmp_path / "identify.csv")
    assert len(rows) == 3 * 2 and list(rows[0]) == ["probe", "rank", "identity", "score", "global_score",
                                                     "qaconv_score"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["probes"] == {"source": str(probes), "kind": "folder", "num_probes": 3, "labelled": True,
                                 "n_enrolled": 2, "n_non_enrolled": 1}
    assert list(results["metrics"]) == ["clean", "masked"] and list(results["metrics"]["clean"]) == ["global",
                                                                                                     "rerank"]
    clean = results["metrics"]["clean"]["global"]
    assert clean["closed_set"]["rank_1"] == 1.0 and clean["n_non_enrolled"] == 1  # exact copies of enrolled faces
    assert clean["open_set"]["dir_at_fpir"]["0.1"] == {"reason": "needs >= 10 non-enrolled probes, have 1"}
    assert results["protocols"]["masked"] == {"occluder": "SeededOccluder(name='mask', seed=0)"}
    assert results["gallery"]["model"]["sha256"] == model.info.sha256
    assert set(results["fusion"]["params"]) == {"clean", "masked"}
    assert out.reranked is not None and out.reranked.indices.shape == (3, 2)


def test_the_masked_protocol_searches_the_masked_probes(model: FaceRecognizer, gallery: Gallery, probes: Path,
                                                        tmp_path: Path) -> None:
    out = identify(model, gallery, probes, tmp_path, IdentifyOptions(k=3, mask_probes=True, mask_seed=4,
                                                                     progress=False, plots=False))
    files = [str(p) for p in load_probes(probes, 112).images.paths]  # type: ignore[union-attr]
    masked = extract_features(model, EvalImages(names=files, paths=files), occluder=SeededOccluder("mask", 4),
                              with_maps=False,
                              progress=False)
    expected = gallery.search(masked.embedding.numpy(), k=3)
    np.testing.assert_array_equal(out.runs["masked"].search.indices, expected.indices)
    assert not np.array_equal(out.runs["masked"].search.scores, out.search.scores)


def test_another_occluder_plugs_in(model: FaceRecognizer, gallery: Gallery, probes: Path, tmp_path: Path) -> None:
    seen: list[int] = []

    def lower_half(image: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        seen.append(index)
        occluded, visibility = image.copy(), np.ones(image.shape[:2], np.float32)
        occluded[56:], visibility[56:] = 0, 0.0
        return occluded, visibility

    out = identify(model, gallery, probes, tmp_path, IdentifyOptions(k=2, rerank_n=2, progress=False, plots=False),
                   occluders={"lower_half": lower_half})
    assert sorted(seen) == [0, 1, 2] and list(out.runs) == ["clean", "lower_half"]
    assert (tmp_path / "identify_lower_half.csv").is_file() and "lower_half" in out.results["metrics"]
    for name in ("clean", "masked x", "Upper"):
        with pytest.raises(ConfigError, match="occluder name"):
            probe_protocols(IdentifyOptions(), {name: lower_half})


def test_rerank_head_then_search_tail(model: FaceRecognizer, gallery: Gallery, probes: Path, tmp_path: Path) -> None:
    out = identify(model, gallery, probes, tmp_path, IdentifyOptions(k=3, rerank_n=2, progress=False, plots=False))
    rows = _rows(tmp_path / "identify.csv")
    assert [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    assert rows[2]["score"] == "" and rows[2]["qaconv_score"] == "" and rows[2]["global_score"] != ""
    assert rows[2]["identity"] == out.search.names()[0, 2]  # rank 3 is the search's
    assert {rows[0]["identity"], rows[1]["identity"]} == set(out.search.names()[0, :2])
    assert out.results["metrics"]["clean"]["rerank"]["closed_set"]["cmc"][-1] == 1.0  # 3 ranks over 3 identities


def test_global_weight_only_keeps_the_search_order(model: FaceRecognizer, gallery: Gallery, probes: Path,
                                                   tmp_path: Path) -> None:
    out = identify(model, gallery, probes, tmp_path, IdentifyOptions(k=3, rerank_n=3, qaconv_weight=0.0,
                                                                     progress=False, plots=False))
    np.testing.assert_array_equal(out.reranked.indices, out.search.indices)  # type: ignore[union-attr]


def test_identify_with_a_probe_list_has_no_metrics(model: FaceRecognizer, gallery: Gallery, enrol_folder: Path,
                                                   tmp_path: Path) -> None:
    listing = tmp_path / "probes.txt"
    listing.write_text(f"# probes\n{enrol_folder / 'id01' / 'img000.png'}\n\n", encoding="utf-8")
    out = identify(model, gallery, listing, tmp_path / "out", IdentifyOptions(k=3, progress=False))
    assert out.results["metrics"] is None and out.results["probes"]["labelled"] is False
    assert out.search.names()[0, 0] == "id01"
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"identify.csv", "results.json"}


@pytest.mark.skipif(not HAVE_FAISS, reason='faiss is not installed (optional extra: pip install "oaml[faiss]")')
def test_identify_with_faiss_equals_exact(model: FaceRecognizer, gallery: Gallery, probes: Path,
                                          tmp_path: Path) -> None:
    exact = identify(model, gallery, probes, tmp_path / "exact", IdentifyOptions(k=3, progress=False, plots=False))
    fast = identify(model, gallery, probes, tmp_path / "faiss", IdentifyOptions(k=3, backend="faiss",
                                                                               progress=False, plots=False))
    np.testing.assert_array_equal(fast.search.indices, exact.search.indices)
    np.testing.assert_allclose(fast.search.scores, exact.search.scores, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- Python API
def test_top_level_gallery_api(model: FaceRecognizer, enrol_folder: Path, tmp_path: Path) -> None:
    images = [str(p) for p in sorted(enrol_folder.rglob("*.png"))]
    names = [Path(p).parent.name for p in images]
    gallery = oaml.Gallery.build(model, images, names)
    assert oaml.Gallery is Gallery and gallery.recognizer is model
    top = gallery.search(images[:2], k=2)  # the model the gallery was built with embeds the images
    assert top.names()[:, 0].tolist() == ["id00", "id00"]
    loaded = oaml.Gallery.load(gallery.save(tmp_path / "g.npz"), model=model)
    np.testing.assert_array_equal(loaded.search(images[:2], k=2).indices, top.indices)
    with pytest.raises(ValueError, match="images with a model"):
        oaml.Gallery.load(tmp_path / "g.npz").search(images[:1])


# ---------------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_one_line_errors(model: FaceRecognizer, gallery: Gallery, released_ckpt: Path,
                                          other_model: FaceRecognizer, tmp_path: Path) -> None:
    (tmp_path / "empty" / "id00").mkdir(parents=True)
    (tmp_path / "list.txt").write_text("missing.png\n", encoding="utf-8")
    no_maps = Gallery.from_arrays(gallery.embeddings, gallery.identities(), model=gallery.model_info)
    calls = [
        (lambda: Gallery.from_arrays(np.zeros((0, 512)), []), ValueError, "empty gallery"),
        (lambda: Gallery.build(model, [], []), ValueError, "empty gallery"),
        (lambda: Gallery.from_arrays(np.eye(2), ["a"]), ValueError, "2 non-empty identity names"),
        (lambda: Gallery.from_arrays(np.eye(2), ["a", ""]), ValueError, "non-empty identity names"),
        (lambda: Gallery.from_arrays(np.eye(2), ["a", "b"], dtype="int8"), ValueError, "dtype"),
        (lambda: Gallery.from_arrays(2 * np.eye(2), ["a", "b"]), ValueError, "unit rows"),
        (lambda: Gallery.from_folder(model, tmp_path / "empty"), DataError, "no images in identity folders"),
        (lambda: load_probes(tmp_path / "empty", 112), DataError, "no images in identity folders"),
        (lambda: load_probes(tmp_path / "list.txt", 112), DataError, "do not exist"),
        (lambda: load_probes(tmp_path / "absent", 112), FileNotFoundError, "not found"),
        (lambda: identify(model, gallery, tmp_path / "empty", tmp_path / "out"), DataError, "no images"),
        (lambda: identify(other_model, gallery, tmp_path / "empty", tmp_path / "out"), DataError, "built with"),
        (lambda: identify(model, no_maps, tmp_path / "empty", tmp_path / "out", IdentifyOptions(rerank_n=2)),
         ConfigError, "holds no QAConv maps"),
        (lambda: IdentifyOptions(per_identity="median"), ValueError, "per_identity"),
        (lambda: gallery.rows_of("nobody"), ValueError, "unknown identity name 'nobody'"),
        (lambda: IdentifyOptions(k=5, rerank_n=10), ValueError, "cannot exceed k"),
        (lambda: IdentifyOptions(fpirs=(0.0,)), ValueError, "fpirs"),
        (lambda: Gallery.build(load_model(released_ckpt), [gallery.paths[0]], ["a"], with_maps=True), ValueError,
         "needs a model with a QAConv matcher"),
    ]
    for call, error, match in calls:
        with pytest.raises(error, match=match) as info:
            call()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_build_info_identify(oaml_ckpt: Path, enrol_folder: Path, probes: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gallery.npz"
    assert main(["gallery", "build", "--model-path", str(oaml_ckpt), "--data-path", str(enrol_folder),
                 "--output", str(path), "--with-maps", "--no-progress"]) == 0
    assert "enrolled 6 images of 3 identities" in capsys.readouterr().out
    assert main(["gallery", "info", str(path)]) == 0
    assert "num_identities: 3" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["identify", "--gallery", str(path), "--probes", str(probes), "--top-k", "3", "--rerank", "2",
                 "--mask-probes", "--occluders", "sunglasses,rect25", "--output-dir", str(out), "--no-progress",
                 "--no-plots"]) == 0  # model from gallery
    printed = capsys.readouterr().out
    rows = [line.split()[:2] for line in printed.splitlines()]
    assert ["masked", "rerank"] in rows and ["rect25", "global"] in rows
    assert "3 probes (2 enrolled, 1 not enrolled)" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["rerank_n"] == 2 and results["model"]["path"] == str(oaml_ckpt.resolve())
    assert list(results["protocols"]) == ["clean", "masked", "sunglasses", "rect25"]


@pytest.mark.parametrize("case, expected", [
    ("empty_gallery", "no images in identity folders"),
    ("empty_probes", "no images in identity folders"),
    ("other_model", "rebuild the gallery with this model"),
    ("no_maps", "holds no QAConv maps"),
    ("rerank_above_k", "0 <= --rerank <= --top-k"),
    ("earlier_run", "pass --overwrite"),
    ("model_gone", "is not on this machine"),
    ("unknown_occluder", "--occluders: unknown occluder 'tophat'"),
])
def test_cli_bad_inputs_are_one_line(case: str, expected: str, oaml_ckpt: Path, enrol_folder: Path, probes: Path,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eval_helpers import make_oaml_checkpoint

    model_path = tmp_path / "model.ckpt"
    model_path.write_bytes(oaml_ckpt.read_bytes())
    gallery = tmp_path / "g.npz"
    build = ["gallery", "build", "--model-path", str(model_path), "--output", str(gallery), "--no-progress"]
    write_face_folder(tmp_path / "empty_folder", [0])
    if case == "empty_gallery":
        assert main([*build, "--data-path", str(tmp_path / "empty_folder")]) == 2
        assert expected in _one_line(capsys)
        return
    assert main([*build, "--data-path", str(enrol_folder), *([] if case == "no_maps" else ["--with-maps"])]) == 0
    capsys.readouterr()
    command = ["identify", "--gallery", str(gallery), "--probes", str(probes), "--output-dir", str(tmp_path / "out"),
               "--no-progress", "--no-plots"]
    extra = {"empty_probes": ["--probes", str(tmp_path / "empty_folder")], "no_maps": ["--rerank", "2"],
             "other_model": ["--model-path", str(make_oaml_checkpoint(tmp_path / "other.ckpt", seed=2))],
             "rerank_above_k": ["--top-k", "2", "--rerank", "3"],
             "unknown_occluder": ["--occluders", "sunglasses,tophat"]}.get(case, [])
    if case == "earlier_run":
        assert main(command) == 0
        capsys.readouterr()
    if case == "model_gone":
        model_path.unlink()
    assert main([*command, *extra]) == 2
    line = _one_line(capsys)
    assert expected in line and "Traceback" not in line


# ---------------------------------------------------------------------------------------------------- real faces
@pytest.mark.shared_data
def test_real_faces_enrolled_images_find_themselves(shared_data: Path, model: FaceRecognizer,
                                                    tmp_path: Path) -> None:
    lfw = shared_data / "lfw_min10_arcface112"
    if not lfw.is_dir():
        pytest.skip(f"{lfw} is absent (real LFW faces, not part of the repository)")
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[:6]
    for person in people:  # symbolic links only: the real images stay where they are
        for root, images in ((tmp_path / "enrol", sorted(person.iterdir())[:2]),
                             (tmp_path / "probes", sorted(person.iterdir())[:1])):
            (root / person.name).mkdir(parents=True, exist_ok=True)
            for image in images:
                (root / person.name / image.name).symlink_to(image)
    (tmp_path / "probes" / "stranger").symlink_to(sorted(p for p in lfw.iterdir() if p.is_dir())[-1])
    gallery = Gallery.from_folder(model, tmp_path / "enrol", with_maps=True)
    out = identify(model, gallery, tmp_path / "probes", tmp_path / "out",
                   IdentifyOptions(k=3, rerank_n=3, mask_probes=True, progress=False, plots=False))
    clean = out.results["metrics"]["clean"]
    assert out.results["probes"]["n_enrolled"] == 6 and out.results["probes"]["n_non_enrolled"] >= 10
    assert clean["global"]["closed_set"]["rank_1"] == 1.0  # an enrolled image is its own best match
    assert isinstance(clean["global"]["open_set"]["dir_at_fpir"]["0.1"]["dir"], float)
    assert len(_rows(tmp_path / "out" / "identify_masked.csv")) == 3 * out.results["probes"]["num_probes"]
