"""Tests of ``oaml export`` (src/oaml/tools/export.py): ONNX/TorchScript parity, metadata, QAConv in numpy."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from oaml.cli.main import main
from oaml.errors import OamlError
from oaml.models.checkpoint import load_face_model
from oaml.models import QAConv
from oaml.tools.export import export_model, load_qaconv_params, qaconv_numpy_match, qaconv_params

from .conftest import make_checkpoint

OUTPUTS = ("embedding", "norm", "feature_map", "occlusion")


def _qaconv(channels: int = 16, seed: int = 0, visibility: str = "scaling") -> QAConv:
    torch.manual_seed(seed)
    qaconv = QAConv(channels, 7, 7, visibility=visibility)
    with torch.no_grad():  # trained-looking parameters instead of the init values
        for bn, (mean, var, weight, bias) in ((qaconv.bn, (0.3, 0.05, 1.3, -0.2)),
                                              (qaconv.logit_bn, (0.7, 2.5, 0.8, 0.1))):
            bn.running_mean.fill_(mean), bn.running_var.fill_(var), bn.weight.fill_(weight), bn.bias.fill_(bias)
        qaconv.fc.weight.copy_(torch.rand(1, 49))
        qaconv.fc.bias.fill_(0.05)
    return qaconv.eval()


def test_numpy_matching_equals_qaconv_eval() -> None:
    qaconv = _qaconv()
    probe, gallery = torch.randn(5, 16, 7, 7), torch.randn(6, 16, 7, 7)
    probe_occ, gallery_occ = torch.rand(5, 1, 7, 7), torch.rand(6, 1, 7, 7)
    with torch.no_grad():
        weighted = qaconv(probe, gallery, probe_occ, gallery_occ).numpy()
        plain = qaconv(probe, gallery).numpy()
    params = qaconv_params(qaconv, occlusion_weighting=True)
    ours = qaconv_numpy_match(probe.numpy(), gallery.numpy(), probe_occ.numpy(), gallery_occ.numpy(), params)
    np.testing.assert_allclose(ours, weighted, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(qaconv_numpy_match(probe.numpy(), gallery.numpy(), None, None, params), plain,
                               rtol=1e-5, atol=1e-5)
    swapped = qaconv_numpy_match(gallery.numpy(), probe.numpy(), gallery_occ.numpy(), probe_occ.numpy(), params)
    np.testing.assert_allclose(swapped, ours.T, rtol=1e-9, atol=1e-9)
    off = qaconv_params(qaconv, occlusion_weighting=False)  # maps are ignored, as the model's own eval does
    np.testing.assert_allclose(qaconv_numpy_match(probe.numpy(), gallery.numpy(), probe_occ.numpy(),
                                                  gallery_occ.numpy(), off), plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="N x 16 x 7 x 7"):
        qaconv_numpy_match(probe.numpy()[:, :8], gallery.numpy(), None, None, params)


def test_numpy_matching_equals_normalised_qaconv_eval() -> None:
    qaconv = _qaconv(visibility="normalised")
    probe, gallery = torch.randn(4, 16, 7, 7), torch.randn(3, 16, 7, 7)
    probe_occ, gallery_occ = torch.rand(4, 1, 7, 7), torch.rand(3, 1, 7, 7)
    gallery_occ[1] = 0.0  # nothing visible: the pair's score is the bias alone
    with torch.no_grad():
        expected = qaconv(probe, gallery, probe_occ, gallery_occ).numpy()
        plain = qaconv(probe, gallery).numpy()
    params = qaconv_params(qaconv, occlusion_weighting=True)
    assert str(params["visibility"]) == "normalised"
    ours = qaconv_numpy_match(probe.numpy(), gallery.numpy(), probe_occ.numpy(), gallery_occ.numpy(), params)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(qaconv_numpy_match(probe.numpy(), gallery.numpy(), None, None, params), plain,
                               rtol=1e-5, atol=1e-5)


def test_onnx_export_parity_metadata_and_qaconv_sidecars(tiny_ckpt: Path, tmp_path: Path, onnx_extra: None) -> None:
    import onnx
    import onnxruntime

    result = export_model(tiny_ckpt, tmp_path / "tiny.onnx")
    assert result.outputs == OUTPUTS and [(c.name, c.batch) for c in result.parity] == [("random", 1), ("random", 7)]
    assert all(value < 1e-4 for case in result.parity for value in case.max_scaled.values())
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert {k: props[k] for k in ("arch", "width", "input_size", "channel_order", "mean", "std")} == {
        "arch": "ir_18", "width": "0.125", "input_size": "112", "channel_order": "bgr", "mean": "[0.5, 0.5, 0.5]",
        "std": "[0.5, 0.5, 0.5]"}
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    faces = torch.randn(7, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    _, _, fmap, occ = session.run(None, {"input": faces.numpy()})
    assert fmap.shape == (7, 64, 7, 7) and occ.shape == (7, 1, 7, 7)
    npz, sidecar = result.qaconv_files or (None, None)
    assert npz == tmp_path / "tiny.onnx.qaconv.npz" and json.loads(sidecar.read_text())["occlusion_weighting"] is True
    qaconv = load_face_model(tiny_ckpt).qaconv
    with torch.no_grad():
        expected = qaconv(torch.from_numpy(fmap[:3]), torch.from_numpy(fmap[3:]), torch.from_numpy(occ[:3]),
                          torch.from_numpy(occ[3:])).numpy()
    ours = qaconv_numpy_match(fmap[:3], fmap[3:], occ[:3], occ[3:], load_qaconv_params(npz))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)  # matching outside PyTorch


def test_documented_flip_recipe_reproduces_model_embed(tiny_ckpt: Path, tmp_path: Path, onnx_extra: None) -> None:
    """The graph embeds one view; the recipe in the metadata (both views, norm-weighted) gives ``model.embed``."""
    import onnx
    import onnxruntime

    import oaml

    result = export_model(tiny_ckpt, tmp_path / "tiny.onnx", check=False)
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert "x[..., ::-1]" in props["embedding_recipe"] and "(n1 + n2) / 2" in props["embedding_recipe"]
    faces = np.random.default_rng(3).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)  # uint8 BGR
    x = np.ascontiguousarray(faces.transpose(0, 3, 1, 2), np.float32) / 255.0 * 2.0 - 1.0  # (x / 255 - 0.5) / 0.5
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    e1, n1 = session.run(["embedding", "norm"], {"input": x})
    e2, n2 = session.run(["embedding", "norm"], {"input": np.ascontiguousarray(x[..., ::-1])})
    fused = n1 * e1 + n2 * e2
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    embedding, norm = oaml.load_model(tiny_ckpt).embed(faces)
    np.testing.assert_allclose(fused, embedding, atol=1e-5)
    np.testing.assert_allclose((n1[:, 0] + n2[:, 0]) / 2, norm, rtol=1e-5)
    assert np.abs(e1 - embedding).max() > 1e-3  # the single view alone is not oaml's embedding


def test_torchscript_export(tiny_ckpt: Path, tmp_path: Path) -> None:
    result = export_model(tiny_ckpt, tmp_path / "tiny.pt", fmt="torchscript")
    assert [(c.name, c.batch) for c in result.parity] == [("random", 1), ("random", 7)]
    extra = {"oaml.json": ""}
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the format is still asked for
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        loaded = torch.jit.load(str(result.path), _extra_files=extra)
    assert json.loads(extra["oaml.json"])["channel_order"] == "bgr"
    assert [tuple(t.shape) for t in loaded(torch.zeros(1, 3, 112, 112))] == [(1, 512), (1, 1), (1, 64, 7, 7),
                                                                              (1, 1, 7, 7)]


@pytest.mark.shared_data
def test_onnx_parity_on_real_faces(tiny_ckpt: Path, tmp_path: Path, shared_data: Path, onnx_extra: None) -> None:
    result = export_model(tiny_ckpt, tmp_path / "tiny.onnx", check_images=shared_data / "lfw_subset10_arcface112")
    assert [(c.name, c.batch) for c in result.parity] == [("random", 1), ("random", 7), ("real", 7)]
    assert max(v for case in result.parity for v in case.max_scaled.values()) < 1e-4


def test_backbone_only_checkpoint_exports_three_outputs(tmp_path: Path, onnx_extra: None) -> None:
    checkpoint = make_checkpoint(tmp_path / "released.ckpt", backbone_only=True)
    result = export_model(checkpoint, tmp_path / "released.onnx")
    assert result.outputs == OUTPUTS[:3] and result.qaconv_files is None
    assert not (tmp_path / "released.onnx.qaconv.npz").exists()


def test_parity_failure_raises(tiny_ckpt: Path, tmp_path: Path, onnx_extra: None) -> None:
    with pytest.raises(OamlError, match="parity check failed"):
        export_model(tiny_ckpt, tmp_path / "tiny.onnx", tolerance=1e-12)


def test_cli_export_prints_parity_and_names_a_missing_extra(tiny_ckpt: Path, tmp_path: Path, onnx_extra: None,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tiny_ckpt), "--output", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "random batch 1" in out and "random batch 7" in out and "feature_map" in out
    assert "note: the embedding output is that of the single input view" in out
    assert main(["export", str(tiny_ckpt), "--output", str(tmp_path / "m.onnx"), "--tolerance", "1e-12"]) == 1
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    assert main(["export", str(tiny_ckpt), "--output", str(tmp_path / "n.onnx")]) == 2
    assert 'pip install onnx onnxruntime' in capsys.readouterr().err
    assert not list(tmp_path.glob("n.onnx*"))  # nothing is written without the extra


@pytest.mark.slow
def test_full_width_ir_18_onnx_parity(tmp_path: Path, onnx_extra: None) -> None:
    checkpoint = make_checkpoint(tmp_path / "full.ckpt", width=1.0)
    result = export_model(checkpoint, tmp_path / "full.onnx")
    assert [(c.name, c.batch) for c in result.parity] == [("random", 1), ("random", 7)]
    assert max(v for case in result.parity for v in case.max_scaled.values()) < 1e-4
