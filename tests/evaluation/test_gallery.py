"""Tests of the gallery (building, file format, model check, search backends) and of QAConv re-ranking."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oaml.errors import DataError
from oaml.evaluation.api import FaceRecognizer
from oaml.evaluation.embed import extract_features
from oaml.evaluation.eval_data import EvalImages
from oaml.evaluation.gallery import Gallery
from oaml.evaluation.gallery_search import FAISS_HINT, identity_templates, import_faiss
from oaml.evaluation.identify import identify
from oaml.evaluation.rerank import rerank
from oaml.evaluation.scoring import BatchFeatures, qaconv_paired

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False
NO_FAISS = 'faiss is not installed (optional extra: pip install "oaml[faiss]")'


@pytest.fixture(scope="module")
def model(gallery_model: FaceRecognizer) -> FaceRecognizer:
    return gallery_model


def _random_gallery(rng: np.random.Generator, n: int, n_ids: int, dim: int = 16, dtype: str = "float32") -> Gallery:
    emb = rng.normal(size=(n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.r_[np.arange(n_ids), rng.integers(0, n_ids, n - n_ids)]  # every identity enrolled, unsorted
    rng.shuffle(labels)
    return Gallery.from_arrays(emb, [f"p{k:03d}" for k in labels], dtype=dtype)


def _brute_force(gallery: Gallery, probes: np.ndarray, per_identity: str) -> np.ndarray:
    """P x I per-identity scores in float64, straight from the definition."""
    probes = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    emb = gallery.embeddings.astype(np.float64)
    out = np.empty((probes.shape[0], gallery.num_identities))
    for i in range(gallery.num_identities):
        rows = emb[gallery.labels == i]
        if per_identity == "max":
            out[:, i] = (probes @ rows.T).max(axis=1)
        else:
            template = rows.mean(axis=0)
            out[:, i] = probes @ (template / np.linalg.norm(template))
    return out


# ---------------------------------------------------------------------------------------------------- building
def test_build_from_folder_matches_embed(gallery: Gallery, model: FaceRecognizer, enrol_folder: Path) -> None:
    assert gallery.identity_names == ("id00", "id01", "id02")
    assert gallery.identities() == ["id00"] * 3 + ["id01"] + ["id02"] * 2
    assert gallery.embeddings.dtype == np.float16 and gallery.embeddings.shape == (6, 512)
    assert gallery.maps.shape == (6, 64, 7, 7) and gallery.maps.dtype == np.float16
    assert gallery.occlusion is not None and gallery.occlusion_flip.shape == (6, 1, 7, 7)
    emb, norms = model.embed(list(gallery.paths))
    np.testing.assert_allclose(gallery.embeddings, emb, atol=1e-3)  # float16 storage
    np.testing.assert_allclose(gallery.norms, norms, rtol=1e-5)
    assert all(Path(p).parent.parent == enrol_folder for p in gallery.paths)
    assert gallery.model_info["sha256"] == model.info.sha256 and gallery.model_info["arch"] == "ir_18"


def test_build_float32_from_arrays(model: FaceRecognizer) -> None:
    faces = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    g = Gallery.build(model, faces, ["b", "a", "b"], dtype="float32")
    np.testing.assert_array_equal(g.embeddings, model.embed(faces)[0])
    assert g.identity_names == ("a", "b") and g.labels.tolist() == [1, 0, 1] and g.paths == ("", "", "")
    assert not g.has_maps


# ---------------------------------------------------------------------------------------------------- file format
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_save_load_round_trip_is_bit_exact(gallery: Gallery, tmp_path: Path, dtype: str) -> None:
    g = dataclasses.replace(gallery, embeddings=gallery.embeddings.astype(dtype))
    path = g.save(tmp_path / "gallery.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.npz"]  # no temporary file left
    loaded = Gallery.load(path)
    for name in ("embeddings", "norms", "labels", "maps", "maps_flip", "occlusion", "occlusion_flip"):
        a, b = getattr(g, name), getattr(loaded, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    assert loaded.identity_names == g.identity_names and loaded.paths == g.paths and loaded.model_info == g.model_info
    assert loaded.source == str(path)
    with np.load(path, allow_pickle=False) as raw:  # readable without oaml and without pickle
        header = json.loads(bytes(raw["header"]).decode("utf-8"))
    assert header["format"] == "oaml.gallery" and header["version"] == 1 and header["dtype"] == dtype


def test_failed_save_keeps_the_old_file(gallery: Gallery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = gallery.save(tmp_path / "g.npz")
    before = path.read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        gallery.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["g.npz"]


def test_truncated_and_foreign_files_are_refused(gallery: Gallery, tmp_path: Path) -> None:
    data = gallery.save(tmp_path / "g.npz").read_bytes()
    bad = {"truncated.npz": data[: len(data) // 2], "text.npz": b"hello, not a gallery\n"}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "array.npy", np.zeros(3))
    np.savez(tmp_path / "foreign.npz", embeddings=np.zeros((2, 4)))
    for name in [*bad, "array.npy", "foreign.npz"]:
        with pytest.raises(DataError) as info:
            Gallery.load(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="gallery file not found"):
        Gallery.load(tmp_path / "absent.npz")


# ---------------------------------------------------------------------------------------------------- model check
def test_another_model_is_refused(gallery: Gallery, model: FaceRecognizer, other_model: FaceRecognizer,
                                  tmp_path: Path) -> None:
    gallery.check_model(model)
    path = gallery.save(tmp_path / "g.npz")
    loaded = Gallery.load(path)
    for call in (lambda: loaded.check_model(other_model),
                 lambda: loaded.search(list(loaded.paths[:1]), model=other_model),
                 lambda: identify(other_model, path, tmp_path, tmp_path / "out")):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
        assert str(path) in message and model.info.path in message and other_model.info.path in message
        assert "\n" not in message
    with pytest.raises(DataError, match="unknown"):
        Gallery.from_arrays(np.eye(2), ["a", "b"]).check_model(model)  # no recorded model: never trusted


# ---------------------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("per_identity", ["max", "mean"])
def test_exact_search_equals_brute_force(per_identity: str) -> None:
    rng = np.random.default_rng(1)
    g = _random_gallery(rng, 300, 40)
    probes = rng.normal(size=(37, 16))
    expected = _brute_force(g, probes, per_identity)
    # small budgets: several probe chunks and many blocks, each ending at an identity boundary
    res = g.search(probes, k=7, per_identity=per_identity, probe_chunk=5, max_block_bytes=4 * 21 * 30)
    order = np.argsort(-expected, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(res.indices, order)
    np.testing.assert_allclose(res.scores, np.take_along_axis(expected, order, axis=1), atol=1e-6)
    unchunked = g.search(probes, k=7, per_identity=per_identity)
    np.testing.assert_array_equal(unchunked.indices, res.indices)
    assert res.names()[0, 0] == g.identity_names[order[0, 0]]


def test_templates_in_blocks_equal_the_mean_and_rows_of() -> None:
    g = _random_gallery(np.random.default_rng(3), 50, 7)
    blocked = identity_templates(g.embeddings, g.row_index, block_rows=3)  # many blocks, unsorted rows
    for i, name in enumerate(g.identity_names):
        rows = g.rows_of(name)
        np.testing.assert_array_equal(np.sort(rows), np.flatnonzero(g.labels == i))
        mean = g.embeddings[rows].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(blocked[i], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(g.templates(), blocked, atol=1e-7)


def test_k_is_capped_and_bad_arguments_raise() -> None:
    g = _random_gallery(np.random.default_rng(2), 10, 4)
    assert g.search(np.ones((2, 16)), k=50).k == 4
    for kwargs in ({"k": 0}, {"per_identity": "median"}, {"backend": "annoy"}):
        with pytest.raises(ValueError):
            g.search(np.ones((2, 16)), **kwargs)
    for probes in (np.ones((2, 8)), np.zeros((1, 16)), np.zeros((0, 16))):
        with pytest.raises(ValueError, match="probe embeddings"):
            g.search(probes)
    with pytest.raises(ValueError, match="images with a model"):
        g.search(["face.png"])


def test_max_and_mean_scoring_by_hand() -> None:
    # Identity A has images (1, 0) and (0, 1); B has one image (0.8, 0.6). Probe (1, 0):
    #   max:  A = max(1, 0) = 1.0,  B = 0.8                     -> A first
    #   mean: A = cos((1, 0), (1, 1) / sqrt 2) = 0.7071, B = 0.8 -> B first
    g = Gallery.from_arrays(np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]]), ["A", "A", "B"], dtype="float32")
    best = g.search(np.array([[1.0, 0.0]]), k=2, per_identity="max")
    assert best.names().tolist() == [["A", "B"]]
    np.testing.assert_allclose(best.scores, [[1.0, 0.8]], atol=1e-7)
    mean = g.search(np.array([[2.0, 0.0]]), k=2, per_identity="mean")  # probes are normalised first
    assert mean.names().tolist() == [["B", "A"]]
    np.testing.assert_allclose(mean.scores, [[0.8, 2 ** -0.5]], atol=1e-7)


def test_search_with_images_equals_search_with_embeddings(gallery: Gallery, model: FaceRecognizer) -> None:
    paths = list(gallery.paths[:2])
    by_images = gallery.search(paths, k=3, model=model)
    by_embeddings = gallery.search(model.embed(paths)[0], k=3)
    np.testing.assert_array_equal(by_images.indices, by_embeddings.indices)
    assert by_images.indices[:, 0].tolist() == [0, 0]  # an enrolled image finds its own identity


def test_faiss_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "oaml\[faiss\]"'):
        import_faiss()
    with pytest.raises(ImportError) as info:
        _random_gallery(np.random.default_rng(0), 5, 2).search(np.ones((1, 16)), backend="faiss")
    assert str(info.value) == FAISS_HINT


@pytest.mark.skipif(not HAVE_FAISS, reason=NO_FAISS)
@pytest.mark.parametrize("per_identity, dtype", [("max", "float16"), ("mean", "float32")])
def test_faiss_equals_exact(per_identity: str, dtype: str) -> None:
    rng = np.random.default_rng(4)
    g = _random_gallery(rng, 500, 60, dim=32, dtype=dtype)
    probes = rng.normal(size=(25, 32))
    exact = g.search(probes, k=10, per_identity=per_identity)
    fast = g.search(probes, k=10, per_identity=per_identity, backend="faiss")
    np.testing.assert_array_equal(fast.indices, exact.indices)
    np.testing.assert_allclose(fast.scores, exact.scores, atol=1e-5)


@pytest.mark.skipif(not HAVE_FAISS, reason=NO_FAISS)
def test_faiss_and_exact_agree_on_ties() -> None:
    # Identities t0..t3 share one embedding, so their scores tie exactly; both backends sort ties by identity.
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(20, 8))
    emb[:4] = emb[0]
    g = Gallery.from_arrays(emb / np.linalg.norm(emb, axis=1, keepdims=True),
                            [f"t{k}" for k in range(4)] + [f"u{k:02d}" for k in range(16)], dtype="float32")
    probes = np.vstack([emb[:1], rng.normal(size=(5, 8))])
    for k in (3, 10):  # k = 3: the cut falls inside the tied group
        exact, fast = g.search(probes, k=k), g.search(probes, k=k, backend="faiss")
        np.testing.assert_allclose(fast.scores, exact.scores, atol=1e-5)
        brute = _brute_force(g, probes, "max")
        picked_exact = np.take_along_axis(brute, exact.indices, axis=1)
        picked_fast = np.take_along_axis(brute, fast.indices, axis=1)
        np.testing.assert_allclose(picked_fast, picked_exact, atol=1e-5)  # same scores, tied identities may swap
    assert g.search(probes[:1], k=4).names().tolist() == [["t0", "t1", "t2", "t3"]]


# ---------------------------------------------------------------------------------------------------- re-ranking
@pytest.fixture(scope="module")
def probe_features(model: FaceRecognizer, gallery: Gallery) -> BatchFeatures:
    paths = list(gallery.paths)
    return extract_features(model, EvalImages(names=paths, paths=paths), with_maps=True, progress=False)


def test_rerank_scores_equal_pairwise_qaconv(gallery: Gallery, model: FaceRecognizer,
                                             probe_features: BatchFeatures) -> None:
    top = gallery.search(probe_features.embedding.numpy(), k=3)
    res = rerank(gallery, probe_features, top, model, n=3)
    stored = BatchFeatures(*(None if x is None else torch.as_tensor(np.asarray(x, np.float32)) for x in
                             (gallery.embeddings, gallery.norms, gallery.maps, gallery.occlusion, gallery.maps_flip,
                              gallery.occlusion_flip)))
    probe_half = BatchFeatures(*(None if t is None else t.half().float() for t in probe_features))
    for p in range(top.num_probes):
        for j in range(3):
            ident = int(res.indices[p, j])
            rows = torch.from_numpy(np.flatnonzero(gallery.labels == ident))
            expected = qaconv_paired(model.qaconv, probe_half, stored, torch.full_like(rows, p), rows,
                                     model.uses_occlusion).max()
            assert res.qaconv_scores[p, j] == pytest.approx(float(expected), abs=2e-3)  # float16 probe vs float32
    assert np.all(np.diff(res.scores, axis=1) <= 0)
    assert set(map(tuple, np.sort(res.indices, axis=1))) == set(map(tuple, np.sort(top.indices, axis=1)))


def test_rerank_with_all_ones_maps_equals_no_maps(gallery: Gallery, model: FaceRecognizer,
                                                  probe_features: BatchFeatures) -> None:
    top = gallery.search(probe_features.embedding.numpy(), k=3)
    ones = np.ones_like(gallery.occlusion)
    g_ones = dataclasses.replace(gallery, occlusion=ones, occlusion_flip=ones)
    g_none = dataclasses.replace(gallery, occlusion=None, occlusion_flip=None)
    p_ones = probe_features._replace(occlusion=torch.ones_like(probe_features.occlusion),
                                     occlusion_flip=torch.ones_like(probe_features.occlusion_flip))
    p_none = probe_features._replace(occlusion=None, occlusion_flip=None)
    with_ones, without = rerank(g_ones, p_ones, top, model, n=3), rerank(g_none, p_none, top, model, n=3)
    np.testing.assert_array_equal(with_ones.qaconv_scores, without.qaconv_scores)
    np.testing.assert_array_equal(with_ones.indices, without.indices)
    predicted = rerank(gallery, probe_features, top, model, n=3)
    assert not np.allclose(predicted.qaconv_scores, without.qaconv_scores, atol=1e-4)  # the maps are used


def test_rerank_n1_and_global_only_keep_the_order(gallery: Gallery, model: FaceRecognizer,
                                                  probe_features: BatchFeatures) -> None:
    top = gallery.search(probe_features.embedding.numpy(), k=3)
    one = rerank(gallery, probe_features, top, model, n=1)
    np.testing.assert_array_equal(one.indices, top.indices[:, :1])
    glob = rerank(gallery, probe_features, top, model, n=3, weights=(1.0, 0.0))
    np.testing.assert_array_equal(glob.indices, top.indices)
    # a 1-byte budget: one probe per chunk
    chunked = rerank(gallery, probe_features, top, model, n=3, weights=(1.0, 0.0), max_chunk_bytes=1)
    np.testing.assert_array_equal(chunked.qaconv_scores, glob.qaconv_scores)


def test_rerank_needs_maps(model: FaceRecognizer, gallery: Gallery, probe_features: BatchFeatures) -> None:
    top = gallery.search(probe_features.embedding.numpy(), k=2)
    no_maps = dataclasses.replace(gallery, maps=None, maps_flip=None, occlusion=None, occlusion_flip=None)
    with pytest.raises(ValueError, match="holds no QAConv maps"):
        rerank(no_maps, probe_features, top, model)
    with pytest.raises(ValueError, match="both views"):
        rerank(gallery, probe_features._replace(maps=None), top, model)
    with pytest.raises(ValueError, match="n must be >= 1"):
        rerank(gallery, probe_features, top, model, n=0)
