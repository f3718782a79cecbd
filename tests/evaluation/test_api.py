"""Tests of ``oaml.evaluation.api``: loading both checkpoint layouts and the embed/feature_maps/match invariants."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eval_helpers import make_oaml_checkpoint
from oaml.errors import CheckpointError, ConfigError, DataError
from oaml.evaluation.api import FaceRecognizer, load_model

RNG = np.random.default_rng(0)
FACES = RNG.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model(oaml_ckpt: Path) -> FaceRecognizer:
    return load_model(oaml_ckpt, batch_size=3)


def test_our_checkpoint_metadata(model: FaceRecognizer) -> None:
    info = model.info
    assert (info.kind, info.source_layout, info.arch, info.width) == ("oaml", "oaml", "ir_18", 0.125)
    assert info.channel_order.value == "bgr" and info.num_classes == 7 and info.has_qaconv
    assert model.uses_occlusion and model.match_method == "qaconv"
    assert len(info.sha256) == 64
    assert not model.backbone.training and not model.qaconv.training  # eval mode


def test_embed_unit_rows_and_norms(model: FaceRecognizer) -> None:
    emb, norms = model.embed(FACES)
    assert emb.shape == (5, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert norms.shape == (5,) and (norms > 0).all()


def test_flip_fused_embedding_equals_that_of_the_mirror_image(model: FaceRecognizer) -> None:
    emb, norms = model.embed(FACES)
    emb_m, norms_m = model.embed(np.ascontiguousarray(FACES[:, :, ::-1]))
    np.testing.assert_allclose(emb_m, emb, atol=1e-5)
    np.testing.assert_allclose(norms_m, norms, rtol=1e-5)
    plain, _ = model.embed(FACES, flip=False)
    assert not np.allclose(plain, emb, atol=1e-4)  # the fusion does something


def test_paths_and_arrays_give_the_same_embeddings(model: FaceRecognizer, tmp_path: Path) -> None:
    paths = []
    for k, face in enumerate(FACES[:3]):
        paths.append(tmp_path / f"f{k}.png")
        cv2.imwrite(str(paths[-1]), face)
    np.testing.assert_allclose(model.embed(paths)[0], model.embed(list(FACES[:3]))[0], atol=1e-6)


def test_feature_maps_shapes(model: FaceRecognizer) -> None:
    maps, occ = model.feature_maps(FACES)
    assert maps.shape == (5, 64, 7, 7) and maps.dtype == np.float32
    assert occ is not None and occ.shape == (5, 1, 7, 7)
    assert occ.min() >= 0.0 and occ.max() <= 1.0


def test_match_equals_diagonal_of_match_all_and_is_symmetric(model: FaceRecognizer) -> None:
    a, b = FACES[:4], FACES[1:5]
    paired = model.match(a, b)
    assert paired.shape == (4,)
    full = model.match_all(a, b)
    assert full.shape == (4, 4)
    np.testing.assert_allclose(paired, np.diag(full), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.match(b, a), paired, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.match_all(b, a), full.T, rtol=1e-4, atol=1e-5)


def test_rgb_checkpoint_reverses_the_channels(tmp_path: Path) -> None:
    bgr = load_model(make_oaml_checkpoint(tmp_path / "bgr.ckpt", seed=3))
    rgb = load_model(make_oaml_checkpoint(tmp_path / "rgb.ckpt", seed=3, channel_order="rgb"))
    assert rgb.info.channel_order.value == "rgb"
    reversed_faces = np.ascontiguousarray(FACES[..., ::-1])
    np.testing.assert_allclose(rgb.embed(FACES)[0], bgr.embed(reversed_faces)[0], atol=1e-5)


def test_occlusion_method_none_disables_the_maps_in_matching(tmp_path: Path) -> None:
    rec = load_model(make_oaml_checkpoint(tmp_path / "none.ckpt", occlusion_method="none"))
    assert not rec.uses_occlusion and rec.match_method == "qaconv"
    assert rec.match(FACES[:2], FACES[2:4]).shape == (2,)


def test_normalised_and_gated_checkpoint_loads_as_trained(tmp_path: Path) -> None:
    from oaml.data.transforms import normalise_batch

    rec = load_model(make_oaml_checkpoint(tmp_path / "gate.ckpt", occlusion_method="normalised", embedding_gate=True))
    assert rec.info.embedding_gate and rec.info.occlusion_method == "normalised" and rec.uses_occlusion
    assert rec.qaconv is not None and rec.qaconv.visibility == "normalised"
    with torch.no_grad():
        maps = rec.backbone.forward_features(normalise_batch(torch.from_numpy(FACES), rec.info.channel_order))
        raw = rec.backbone.output_layer(maps * rec.occlusion_head(maps))
    expected = torch.nn.functional.normalize(raw, dim=1).numpy()
    np.testing.assert_allclose(rec.embed(FACES, flip=False)[0], expected, atol=1e-5)
    plain = load_model(make_oaml_checkpoint(tmp_path / "plain.ckpt"))
    assert not np.allclose(plain.embed(FACES, flip=False)[0], expected, atol=1e-3)


def test_released_adaface_layout_loads_backbone_only(released_ckpt: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        rec = load_model(released_ckpt)
    assert "inferred ir_18" in caplog.text
    info = rec.info
    assert (info.kind, info.source_layout, info.arch, info.width) == ("backbone_only", "adaface_released", "ir_18",
                                                                      0.125)
    assert not info.has_qaconv and "QAConv" in info.qaconv_unavailable
    assert info.channel_order.value == "bgr" and rec.match_method == "cosine"
    maps, occ = rec.feature_maps(FACES[:2])
    assert maps.shape == (2, 64, 7, 7) and occ is None
    emb, _ = rec.embed(FACES[:4])
    np.testing.assert_allclose(rec.match(FACES[:2], FACES[2:4]), np.sum(emb[:2] * emb[2:4], axis=1), atol=1e-5)


def test_released_layout_loads_strictly_into_the_backbone(released_ckpt: Path) -> None:
    rec = load_model(released_ckpt, arch="ir_18")
    state = torch.load(released_ckpt, weights_only=True)["state_dict"]
    for key, value in rec.backbone.state_dict().items():
        assert torch.equal(value, state[f"model.{key}"])


def test_arch_mismatch_is_a_clear_error(oaml_ckpt: Path, released_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match="trained as ir_18"):
        load_model(oaml_ckpt, arch="ir_34")
    with pytest.raises(CheckpointError, match="--arch ir_50 does not fit"):
        load_model(released_ckpt, arch="ir_50")
    with pytest.raises(ConfigError, match="ir_999"):
        load_model(oaml_ckpt, arch="ir_999")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_unsafe_or_unreadable_checkpoints_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="unsafe"):
        load_model(evil)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError):
        load_model(garbage)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.ckpt")


def test_wrong_size_refused_unless_resize(oaml_ckpt: Path) -> None:
    small = RNG.integers(0, 256, (2, 100, 90, 3), dtype=np.uint8)
    with pytest.raises(DataError, match="oaml align"):
        load_model(oaml_ckpt).embed(small)
    emb, _ = load_model(oaml_ckpt, resize=True).embed(small)
    assert emb.shape == (2, 512)
    with pytest.raises(DataError, match="uint8"):
        load_model(oaml_ckpt).embed(FACES.astype(np.float32))
