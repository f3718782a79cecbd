"""Tests of :mod:`oaml.data.synthetic`: layout, determinism, held-out validation pairs, landmarks, cache, and
that identity (not background) is what makes two images alike."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from oaml.constants import ARCFACE_TEMPLATE, FACE_SIZE, VAL_SET_NAMES
from oaml.data.recordio import RecordReader
from oaml.data.synthetic import (
    BeardStyle,
    GlassesStyle,
    HairStyle,
    SyntheticSpec,
    make_synthetic,
    render_face,
    render_identity_params,
)
from oaml.data.synthetic.drawing import draw_background
from oaml.errors import ConfigError

IDS, IMAGES, VAL_IDS, PAIRS = 6, 4, 4, 20
SMALL: dict[str, Any] = dict(identities=IDS, images=IMAGES, val_identities=VAL_IDS, val_pairs=PAIRS)
BINS = [f"{name}.bin" for name in VAL_SET_NAMES]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "seed0"
    make_synthetic(out, seed=0, formats=("rec", "folder"), **SMALL)
    return out


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (FACE_SIZE, FACE_SIZE, 3)
    return image


def _identity_images(seed: int, identity: int, count: int, quality: int = 95) -> list[bytes]:
    """Re-render one identity through the public API with the documented RNG derivation."""
    params = render_identity_params(np.random.default_rng([seed, identity, 2**32 - 1]))
    images = []
    for n in range(count):
        image, _ = render_face(params, np.random.default_rng([seed, identity, n]))
        images.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    return images


def test_record_layout_matches_insightface(small: Path) -> None:
    reader = RecordReader(small / "train.rec")
    first_identity_key = 1 + IDS * IMAGES
    header, payload = reader.read_record(0)
    assert header.flag == 2 and header.label == (first_identity_key, first_identity_key + IDS) and payload == b""
    assert reader.keys == list(range(first_identity_key + IDS))
    for key in range(1, first_identity_key):
        header, payload = reader.read_record(key)
        assert header.flag == 0 and header.id == key and header.label == float((key - 1) // IMAGES)
        _decode(payload)
    for identity in range(IDS):
        header, payload = reader.read_record(first_identity_key + identity)
        assert header.flag == 2 and payload == b""
        assert header.label == (1 + identity * IMAGES, 1 + (identity + 1) * IMAGES)
    assert (small / "property").read_text().strip() == f"{IDS},112,112"


def test_folder_format_holds_the_same_images(small: Path) -> None:
    reader = RecordReader(small / "train.rec")
    folders = sorted(p.name for p in (small / "images").iterdir())
    assert folders == [f"id_{i:05d}" for i in range(IDS)]
    for identity in range(IDS):
        for n in range(IMAGES):
            data = (small / "images" / f"id_{identity:05d}" / f"{n}.jpg").read_bytes()
            assert data == reader.read_record(1 + identity * IMAGES + n)[1]


def test_bins_are_balanced_held_out_pairs(small: Path) -> None:
    train = {b for identity in range(IDS) for b in _identity_images(0, identity, IMAGES)}
    owner = {b: IDS + j for j in range(VAL_IDS) for b in _identity_images(0, IDS + j, IMAGES)}
    pair_lists = []
    for name in BINS:
        with open(small / name, "rb") as handle:
            images, issame = pickle.load(handle)
        assert isinstance(images, list) and isinstance(issame, list)
        assert len(images) == 2 * PAIRS and len(issame) == PAIRS
        assert all(type(b) is bytes for b in images) and all(type(s) is bool for s in issame)
        assert all(issame[k] != issame[k + 1] for k in range(0, PAIRS, 2)), "every couple is balanced"
        for k, same in enumerate(issame):
            a, b = images[2 * k], images[2 * k + 1]
            assert a in owner and b in owner and a not in train and b not in train
            assert (owner[a] == owner[b]) == same
            if same:
                assert a != b
        _decode(images[0])
        pair_lists.append(images)
    assert len({tuple(p) for p in pair_lists}) == len(BINS), "each set draws its own pairs"


def test_same_seed_is_byte_identical_and_workers_do_not_matter(small: Path, tmp_path: Path) -> None:
    again = make_synthetic(tmp_path / "again", seed=0, formats=("rec", "folder"), workers=2, **SMALL)
    assert not again.cached
    for name in ["train.rec", "train.idx", "landmarks.tsv", "synthetic.json", *BINS]:
        assert (small / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    other = tmp_path / "seed1"
    make_synthetic(other, seed=1, **SMALL)
    for name in ["train.rec", *BINS]:
        assert (small / name).read_bytes() != (other / name).read_bytes(), name


def test_landmarks_sit_on_the_template(small: Path) -> None:
    lines = (small / "landmarks.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:4] == ["split", "key", "path", "identity"]
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == IDS * IMAGES + VAL_IDS * IMAGES
    assert rows[0][:4] == ["train", "1", "images/id_00000/0.jpg", "0"]
    points = np.array([[float(v) for v in row[4:]] for row in rows]).reshape(-1, 5, 2)
    distance = np.linalg.norm(points - ARCFACE_TEMPLATE, axis=2)
    assert distance.mean() < 4.0 and distance.max() < 12.0  # measured: mean 2.5-2.7 px, max 7.5-8.7 px
    image, landmarks = render_face(render_identity_params(np.random.default_rng(3)), np.random.default_rng(4))
    assert image.shape == (FACE_SIZE, FACE_SIZE, 3) and image.dtype == np.uint8
    assert landmarks.shape == (5, 2) and np.linalg.norm(landmarks - ARCFACE_TEMPLATE, axis=1).mean() < 6.0


def test_manifest_and_cache(small: Path) -> None:
    manifest = json.loads((small / "synthetic.json").read_text())
    assert manifest["arguments"]["identities"] == IDS and manifest["arguments"]["pairs_per_set"] == PAIRS
    assert manifest["counts"]["train_images"] == IDS * IMAGES
    stamp = (small / "train.rec").stat().st_mtime_ns
    summary = make_synthetic(small, seed=0, formats=["folder", "rec"], **SMALL)
    assert summary.cached and summary.num_images == IDS * IMAGES
    assert (small / "train.rec").stat().st_mtime_ns == stamp


def test_changed_arguments_regenerate_and_remove_stale_files(tmp_path: Path) -> None:
    tiny: dict[str, Any] = dict(images=2, val_identities=2, val_pairs=4)
    first = make_synthetic(tmp_path, identities=3, formats=("rec", "folder"), **tiny)
    assert not first.cached and (tmp_path / "images" / "id_00002").is_dir() and (tmp_path / "train.rec").is_file()
    second = make_synthetic(tmp_path, identities=2, formats=("folder",), **tiny)
    assert not second.cached and "train.rec" not in second.files
    assert not (tmp_path / "images" / "id_00002").exists() and not (tmp_path / "train.rec").exists()
    (tmp_path / "lfw.bin").unlink()
    assert not make_synthetic(tmp_path, identities=2, formats=("folder",), **tiny).cached, "a file is missing"


def test_refuses_to_overwrite_foreign_image_folders(tmp_path: Path) -> None:
    (tmp_path / "images" / "someone").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"synthetic\.json"):
        make_synthetic(tmp_path, identities=2, images=2, val_identities=2, val_pairs=4, formats=("folder",))


@pytest.mark.parametrize("kwargs", [dict(val_pairs=7), dict(formats=("zip",)), dict(identities=0),
                                    dict(val_identities=1), dict(jpeg_quality=0), dict(workers=0)])
def test_invalid_arguments_raise(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make_synthetic(tmp_path, **{**SMALL, **kwargs})
    assert not (tmp_path / "synthetic.json").exists()


def test_spec_resolves_defaults() -> None:
    spec = SyntheticSpec(identities=200, images_per_identity=20)
    assert spec.val_identities == 50 and spec.val_images_per_identity == 10 and spec.pairs_per_set == 600


def _features(seed: int, ids: int, images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    faces, corners, labels, rows = [], [], [], []
    for identity in range(ids):
        params = render_identity_params(np.random.default_rng([seed, identity, 2**32 - 1]))
        row = []
        for n in range(images):
            image, _ = render_face(params, np.random.default_rng([seed, identity, n]))
            gray = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (28, 28), interpolation=cv2.INTER_AREA)
            vector = gray.astype(np.float64).ravel()
            faces.append((vector - vector.mean()) / (vector.std() + 1e-8))
            corners.append(np.concatenate([image[:8, :8].mean((0, 1)), image[:8, -8:].mean((0, 1))]))
            labels.append(identity)
            row.append(image)
        rows.append(np.hstack(row))
    return np.array(faces), np.array(corners), np.array(labels), rows


def _nearest_neighbour_accuracy(distance: np.ndarray, labels: np.ndarray) -> float:
    distance = distance.copy()
    np.fill_diagonal(distance, np.inf)
    return float((labels[distance.argmin(axis=1)] == labels).mean())


def test_identity_not_background_makes_images_alike(tmp_path: Path) -> None:
    """20 identities x 5 images; chance for 1-NN identification is 1/20 = 0.05.

    Measured over seeds 0-4: same-identity correlation 0.35-0.45 vs different 0.04-0.12 (gap 0.27-0.38),
    face 1-NN 0.39-0.58, corner-colour 1-NN 0.01-0.06. Thresholds leave a wide margin.
    """
    faces, corners, labels, rows = _features(seed=0, ids=20, images=5)
    correlation = faces @ faces.T / faces.shape[1]
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    different = labels[:, None] != labels[None]
    gap = correlation[same].mean() - correlation[different].mean()
    face_acc = _nearest_neighbour_accuracy(-correlation, labels)
    corner_acc = _nearest_neighbour_accuracy(((corners[:, None] - corners[None]) ** 2).sum(-1), labels)
    assert gap > 0.15, gap
    assert face_acc > 0.25, face_acc
    assert corner_acc < 0.2, f"backgrounds identify people ({corner_acc}); they must be random per image"
    # A montage (8 identities x 5 images) to look at when the drawing changes.
    cv2.imwrite(str(tmp_path / "montage.png"), np.vstack(rows[:8]))


def test_every_style_is_drawn_and_changes_the_face() -> None:
    """Identities cover every hair, beard and glasses style; each style draws something different."""
    import dataclasses

    people = [render_identity_params(np.random.default_rng([0, g, 2**32 - 1])) for g in range(300)]
    assert {p.hair_style for p in people} == set(HairStyle)
    assert {p.beard_style for p in people} == set(BeardStyle)
    assert {p.glasses_style for p in people} == set(GlassesStyle)
    base = next(p for p in people if p.hair_style == HairStyle.BALD and p.beard_style == BeardStyle.NONE
                and p.glasses_style == GlassesStyle.NONE)
    faces = set()
    for field, styles in (("hair_style", HairStyle), ("beard_style", BeardStyle), ("glasses_style", GlassesStyle)):
        for style in styles:
            image, _ = render_face(dataclasses.replace(base, **{field: style}), np.random.default_rng(7))
            faces.add(image.tobytes())
    assert len(faces) == len(HairStyle) + len(BeardStyle) + len(GlassesStyle) - 2  # the 3 "none" faces are one


def test_backgrounds_range_from_smooth_gradients_to_clutter() -> None:
    """Some backgrounds are smooth gradients (tiny neighbour steps), some carry hard-edged clutter."""
    steps = [int(np.abs(np.diff(draw_background(np.random.default_rng(seed), 224).astype(np.int16), axis=1)).max())
             for seed in range(60)]
    assert min(steps) <= 2 and max(steps) > 40
