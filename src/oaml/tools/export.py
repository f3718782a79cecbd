"""``oaml export``: a checkpoint -> ONNX or TorchScript, plus the QAConv parameters for matching outside PyTorch.

SPEC §1 (input convention), §5 (QAConv) and STYLE §16 (channel order and normalisation travel with the
weights).

The exported graph takes ``input``: N x 3 x S x S float32 faces, ``(x / 255 - 0.5) / 0.5`` in the channel
order of the weights (dynamic N), and returns ``embedding`` (N x 512, unit norm), ``norm`` (N x 1),
``feature_map`` (N x C x 7 x 7) and ``occlusion`` (N x 1 x 7 x 7 visibility; absent for backbone-only
checkpoints such as released AdaFace weights). ONNX files carry the metadata (arch, width, input size,
channel order, mean/std, outputs, source checksum) in ``metadata_props``; TorchScript files in the extra file
``oaml.json``. The ONNX file is written by the TorchScript-based exporter (``dynamo=False``): the
torch.export-based one needs ``onnxscript``, which is not a dependency.

**Flip fusion is not in the graph.** ``oaml embed`` and ``FaceRecognizer.embed`` fuse every face with its mirror
image (SPEC §9); the graph returns the embedding of the one view it is given. To get the same embedding outside
oaml, run the graph on ``x`` and on ``x[..., ::-1]`` (the width axis mirrored) and compute
``embedding = normalise(n1 * e1 + n2 * e2)`` and ``norm = (n1 + n2) / 2`` (:data:`FLIP_FUSION_RECIPE`, also in the
metadata as ``embedding_recipe``); this matches ``FaceRecognizer.embed`` to 1e-5.

QAConv matching is a pairwise operation and is not part of the graph. Its parameters go into
``FILE.qaconv.npz`` and ``FILE.qaconv.json`` (the same values), and :func:`qaconv_numpy_match` reproduces
``QAConv.eval()`` all-pairs matching from the exported feature and visibility maps with numpy alone.

Parity: the saved file is run (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript) on random inputs
with batch 1 and 7 and, when a folder of aligned faces is given, on real faces; the difference per output is
``max |exported - eager| / max(1, max |eager|)``, i.e. the absolute difference for outputs within [-1, 1]
(embedding, occlusion) and the relative one for large outputs (norm, feature map), where float32 rounding
alone exceeds any fixed absolute bound.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from oaml import __version__
from oaml.constants import NORM_MEAN, NORM_STD
from oaml.errors import ConfigError, OamlError
from oaml.fileio import atomic_write, atomic_write_bytes
from oaml.models import IResNet, OcclusionHead, QAConv, embed_faces

__all__ = [
    "EXPORT_OUTPUTS",
    "FLIP_FUSION_RECIPE",
    "ExportResult",
    "ParityCase",
    "export_model",
    "load_qaconv_params",
    "qaconv_numpy_match",
    "qaconv_params",
]

logger = logging.getLogger(__name__)

EXPORT_OUTPUTS: tuple[str, ...] = ("embedding", "norm", "feature_map", "occlusion")
"""Output names of the exported graph, in order (``occlusion`` only with an occlusion head)."""

FLIP_FUSION_RECIPE = ("the embedding output is that of the single input view; oaml's embeddings (oaml embed, "
                      "FaceRecognizer.embed) fuse each face with its mirror: run the graph on x and on x[..., ::-1] "
                      "(width axis mirrored), then embedding = (n1 * e1 + n2 * e2) / ||n1 * e1 + n2 * e2|| and "
                      "norm = (n1 + n2) / 2, with (e1, n1) and (e2, n2) the embedding and norm outputs of the views")
"""How to reproduce oaml's flip-fused embedding from the exported graph (metadata ``embedding_recipe``)."""

ONNX_HINT = 'ONNX export needs the "onnx" extra: pip install onnx onnxruntime  (or: pip install "oaml[onnx]")'
_OPSET = 17
_QACONV_FORMAT = 2  # 2 added "visibility" (format-1 files are "scaling")
_NORM_EPS = 1e-6  # QAConv's floor of a location vector's norm
_MAX_SIM_ENTRIES = 1 << 25  # entries of one probe block of similarities in qaconv_numpy_match (256 MiB float64)


class _Inference(nn.Module):
    """Backbone (+ occlusion head, + the visibility gate of the embedding) returning the export outputs as a tuple."""

    def __init__(self, backbone: IResNet, occlusion_head: OcclusionHead | None, gate: bool = False) -> None:
        super().__init__()
        self.backbone, self.occlusion_head, self.gate = backbone, occlusion_head, gate

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        embedding, norm, feature_map, occlusion = embed_faces(self.backbone, self.occlusion_head, x, gate=self.gate)
        if occlusion is None:
            return embedding, norm, feature_map
        return embedding, norm, feature_map, occlusion


# ----------------------------------------------------------------------------------------- QAConv in numpy
def qaconv_params(qaconv: QAConv, occlusion_weighting: bool) -> dict[str, np.ndarray]:
    """The eval-mode parameters of a :class:`~oaml.models.QAConv` as numpy arrays (keys: see the JSON sidecar)."""
    out: dict[str, np.ndarray] = {"format_version": np.array(_QACONV_FORMAT),
                                  "num_features": np.array(qaconv.num_features), "height": np.array(qaconv.height),
                                  "width": np.array(qaconv.width), "occlusion_weighting": np.array(occlusion_weighting),
                                  "visibility": np.array(qaconv.visibility)}
    for name in ("bn", "logit_bn"):
        bn = getattr(qaconv, name)
        for key in ("running_mean", "running_var", "weight", "bias"):
            out[f"{name}_{key}"] = getattr(bn, key).detach().cpu().double().numpy().reshape(-1)
        out[f"{name}_eps"] = np.array(float(bn.eps))
    out["fc_weight"] = qaconv.fc.weight.detach().cpu().double().numpy().reshape(-1)
    out["fc_bias"] = qaconv.fc.bias.detach().cpu().double().numpy().reshape(-1)
    return out


def _save_qaconv(params: dict[str, np.ndarray], output: Path) -> tuple[Path, Path]:
    npz_path, json_path = Path(f"{output}.qaconv.npz"), Path(f"{output}.qaconv.json")
    with atomic_write(npz_path) as handle:
        np.savez(handle, **params)
    values = {k: (v.tolist() if v.ndim else v.item()) for k, v in params.items()}
    values["formula"] = ("per location L2-normalise the C-vector and multiply by its own visibility; S[p,g,s,r] = "
                         "<probe_p(s), gallery_g(r)>; a = max_r S, b = max_s S; bn(v) = (v - running_mean) / "
                         "sqrt(running_var + eps) * weight + bias; score = fc(bn(a)) + fc(bn(b)) with fc(v) = "
                         "fc_weight . v + fc_bias; logit = logit_bn(score). visibility 'normalised': S' = "
                         "S + O_p(s) O_g(r) - 1 (S already carries O_p O_g), and fc(w * bn(a)), fc(w * bn(b)) with "
                         "w(l) = J(l) / mean(J), J(l) = O_p(l) O_g(l)")
    values["npz"] = npz_path.name
    atomic_write_bytes(json_path, (json.dumps(values, indent=2) + "\n").encode("utf-8"))
    return npz_path, json_path


def load_qaconv_params(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read ``FILE.qaconv.npz`` (written by :func:`export_model`) for :func:`qaconv_numpy_match`."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _bn(x: np.ndarray, params: dict[str, np.ndarray], name: str) -> np.ndarray:
    scale = params[f"{name}_weight"][0] / np.sqrt(params[f"{name}_running_var"][0] + float(params[f"{name}_eps"]))
    return (x - params[f"{name}_running_mean"][0]) * scale + params[f"{name}_bias"][0]


def _prepare(x: np.ndarray, occ: np.ndarray | None, hw: int, name: str) -> np.ndarray:
    """N x C x H x W -> N x hw x C rows, each L2-normalised and scaled by its own visibility."""
    flat = np.asarray(x, np.float64).reshape(x.shape[0], x.shape[1], hw)
    scale = 1.0 / np.maximum(np.linalg.norm(flat, axis=1), _NORM_EPS)
    if occ is not None:
        if occ.size != x.shape[0] * hw:
            raise ValueError(f"{name} visibility must be N x 1 x H x W with N = {x.shape[0]}, got {occ.shape}")
        scale = scale * np.asarray(occ, np.float64).reshape(x.shape[0], hw)
    return (flat * scale[:, None, :]).transpose(0, 2, 1)


def qaconv_numpy_match(probe_fmap: np.ndarray, gallery_fmap: np.ndarray, probe_occ: np.ndarray | None,
                       gallery_occ: np.ndarray | None, params: dict[str, np.ndarray]) -> np.ndarray:
    """All-pairs QAConv logits in numpy, equal (to float rounding) to ``QAConv.eval()(probe, gallery, ...)``.

    Args:
        probe_fmap: P x C x H x W feature maps (the ``feature_map`` output).
        gallery_fmap: G x C x H x W feature maps.
        probe_occ: P x 1 x H x W visibility maps (the ``occlusion`` output) or None (all visible).
        gallery_occ: G x 1 x H x W visibility maps or None.
        params: from :func:`load_qaconv_params`; with ``occlusion_weighting`` false the maps are ignored,
            as the model's own evaluation does.

    Returns:
        P x G float64 logits, higher = more similar.
    """
    hw = int(params["height"]) * int(params["width"])
    for name, fmap in (("probe", probe_fmap), ("gallery", gallery_fmap)):
        if fmap.ndim != 4 or fmap.shape[1] != int(params["num_features"]) or fmap.shape[2] * fmap.shape[3] != hw:
            raise ValueError(f"{name} feature maps must be N x {int(params['num_features'])} x "
                             f"{int(params['height'])} x {int(params['width'])}, got {fmap.shape}")
    if not bool(params["occlusion_weighting"]):
        probe_occ = gallery_occ = None
    probe = _prepare(probe_fmap, probe_occ, hw, "probe")  # P x hw x C
    gallery = _prepare(gallery_fmap, gallery_occ, hw, "gallery").reshape(-1, probe.shape[2]).T  # C x G·hw
    num_gallery = gallery_fmap.shape[0]
    normalised = str(params.get("visibility", "scaling")) == "normalised" and not (probe_occ is None
                                                                                   and gallery_occ is None)
    vis_p, vis_g = (np.ones((fmap.shape[0], hw)) if occ is None else np.asarray(occ, np.float64).reshape(-1, hw)
                    for fmap, occ in ((probe_fmap, probe_occ), (gallery_fmap, gallery_occ)))
    weight, bias = params["fc_weight"], float(params["fc_bias"][0])
    step = max(1, _MAX_SIM_ENTRIES // max(1, num_gallery * hw * hw))
    rows = []
    for i in range(0, probe.shape[0], step):
        block = probe[i:i + step]
        sim = (block.reshape(-1, block.shape[2]) @ gallery).reshape(len(block), hw, num_gallery, hw)  # [p, s, g, r]
        if normalised:
            sim = sim + vis_p[i:i + step, :, None, None] * vis_g[None, None] - 1.0
        a = _bn(sim.max(axis=3).transpose(0, 2, 1), params, "bn")  # [p, g, s]
        b = _bn(sim.max(axis=1), params, "bn")  # [p, g, r]
        if normalised:
            joint = vis_p[i:i + step, None, :] * vis_g[None]
            scale = joint * (hw / np.maximum(joint.sum(axis=2, keepdims=True), _NORM_EPS))
            a, b = a * scale, b * scale
        rows.append(_bn(a @ weight + b @ weight + 2.0 * bias, params, "logit_bn"))
    return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ParityCase:
    """Exported-vs-eager comparison on one input batch.

    Attributes:
        name: ``"random"`` or ``"real"``.
        batch: batch size.
        max_abs: output name -> max |exported - eager|.
        max_scaled: output name -> max_abs / max(1, max |eager|), the value checked against the tolerance.
    """

    name: str
    batch: int
    max_abs: dict[str, float]
    max_scaled: dict[str, float]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and measured.

    Attributes:
        path: the exported file.
        format: ``"onnx"`` or ``"torchscript"``.
        outputs: output names, in order.
        metadata: the metadata stored in the file.
        qaconv_files: ``(npz, json)`` sidecars, or None for a backbone-only checkpoint.
        parity: the parity cases (empty when the check was skipped).
    """

    path: Path
    format: str
    outputs: tuple[str, ...]
    metadata: dict[str, str]
    qaconv_files: tuple[Path, Path] | None
    parity: tuple[ParityCase, ...] = field(default_factory=tuple)


def _metadata(info: Any, outputs: tuple[str, ...], qaconv_files: tuple[Path, Path] | None) -> dict[str, str]:
    size = int(info.input_size)
    return {"oaml_version": __version__, "arch": str(info.arch), "width": f"{float(info.width):g}",
            "input_size": str(size), "input_shape": f"N,3,{size},{size}", "channel_order": info.channel_order.value,
            "mean": json.dumps([NORM_MEAN] * 3), "std": json.dumps([NORM_STD] * 3),
            "input_convention": f"float32 (x / 255 - {NORM_MEAN}) / {NORM_STD}, channels in "
                                f"{info.channel_order.value.upper()} order, aligned {size}x{size} faces",
            "outputs": ",".join(outputs), "embedding_recipe": FLIP_FUSION_RECIPE,
            "occlusion_method": str(info.occlusion_method),
            "embedding_gate": str(bool(info.embedding_gate)).lower(),
            "qaconv_params": qaconv_files[0].name if qaconv_files else "",
            "source_checkpoint": Path(info.path).name, "source_sha256": str(info.sha256)}


def _export_onnx(module: nn.Module, example: Tensor, output: Path, outputs: tuple[str, ...],
                 metadata: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(ONNX_HINT) from exc
    tmp = output.with_name(f".{output.name}.export{os.getpid()}")
    names = ("input", *outputs)
    try:
        with warnings.catch_warnings():  # the TorchScript-based exporter announces its deprecation
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export.*")
            torch.onnx.export(module, (example,), str(tmp), input_names=["input"], output_names=list(outputs),
                              dynamic_axes={name: {0: "batch"} for name in names}, opset_version=_OPSET,
                              do_constant_folding=True, dynamo=False)
        model = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    atomic_write_bytes(output, model.SerializeToString())


def _export_torchscript(module: nn.Module, example: Tensor, output: Path, metadata: dict[str, str]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        tmp = output.with_name(f".{output.name}.export{os.getpid()}")
        try:
            torch.jit.save(traced, str(tmp), _extra_files={"oaml.json": json.dumps(metadata, indent=2)})
            atomic_write_bytes(output, tmp.read_bytes())
        finally:
            tmp.unlink(missing_ok=True)


def _runner(path: Path, fmt: str) -> Any:
    """A callable ``N x 3 x S x S float32 array -> list of output arrays`` running the saved file."""
    if fmt == "torchscript":
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript in favour of torch.export
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            loaded = torch.jit.load(str(path), map_location="cpu").eval()

        def run_ts(x: np.ndarray) -> list[np.ndarray]:
            with torch.no_grad():
                return [t.numpy() for t in loaded(torch.from_numpy(x))]

        return run_ts
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(ONNX_HINT) from exc
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})


def _real_batch(folder: Path, size: int, order: Any, count: int) -> Tensor | None:
    from oaml.data.images import decode_image, list_images
    from oaml.data.transforms import image_to_tensor

    files = list_images(folder)[:count]
    if not files:
        logger.warning("no images under %s; parity is checked on random inputs only", folder)
        return None
    tensors = []
    for path in files:
        image = decode_image(np.fromfile(path, np.uint8), str(path), resize=True)
        if size != image.shape[0]:
            import cv2

            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        tensors.append(image_to_tensor(image, order))
    return torch.stack(tensors)


def _check_parity(module: nn.Module, path: Path, fmt: str, outputs: tuple[str, ...], size: int, order: Any,
                  real_dir: Path | None, tolerance: float) -> tuple[ParityCase, ...]:
    run = _runner(path, fmt)
    gen = torch.Generator().manual_seed(0)
    cases = [("random", torch.randn(b, 3, size, size, generator=gen)) for b in (1, 7)]
    real = _real_batch(real_dir, size, order, 7) if real_dir is not None else None
    if real is not None:
        cases.append(("real", real))
    results = []
    for name, batch in cases:
        with torch.no_grad():
            expected = [t.numpy() for t in module(batch)]
        got = run(np.ascontiguousarray(batch.numpy()))
        max_abs = {o: float(np.abs(g - e).max()) for o, g, e in zip(outputs, got, expected)}
        scaled = {o: max_abs[o] / max(1.0, float(np.abs(e).max())) for o, e in zip(outputs, expected)}
        results.append(ParityCase(name, len(batch), max_abs, scaled))
        logger.info("parity %s batch %d: %s", name, len(batch), ", ".join(f"{o} {max_abs[o]:.2e}" for o in outputs))
    worst = max((case.max_scaled[o], case.name, case.batch, o) for case in results for o in outputs)
    if worst[0] > tolerance:
        raise OamlError(f"{path}: {fmt} parity check failed: output {worst[3]!r} differs from PyTorch by "
                        f"{worst[0]:.3g} (scaled) on {worst[1]} batch {worst[2]}, above the tolerance {tolerance:g}")
    return tuple(results)


def export_model(checkpoint: str | os.PathLike[str], output: str | os.PathLike[str], fmt: str = "onnx",
                 arch: str | None = None, check: bool = True, check_images: str | os.PathLike[str] | None = None,
                 tolerance: float = 1e-4) -> ExportResult:
    """Export a checkpoint (ours or released AdaFace) for inference outside oaml.

    Args:
        checkpoint: the checkpoint (read by :func:`oaml.evaluation.api.load_model`).
        output: the file to write; QAConv sidecars go to ``output + ".qaconv.npz"`` / ``".qaconv.json"``.
        fmt: ``"onnx"`` or ``"torchscript"``.
        arch: override the architecture read from the checkpoint.
        check: run the parity check (module docstring) and raise if it fails.
        check_images: a folder of aligned faces for the real-input parity case (first 7 images, sorted).
        tolerance: largest accepted scaled difference.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ConfigError: for an unknown format.
        CheckpointError: if the checkpoint cannot be loaded.
        ImportError: naming the ``onnx`` extra when onnx/onnxruntime are missing.
        OamlError: if the parity check fails (the exported file is kept for inspection).
    """
    from oaml.evaluation.api import load_model

    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"format = {fmt!r} is invalid; expected 'onnx' or 'torchscript'")
    if fmt == "onnx":  # fail before writing anything
        for extra in ("onnx", "onnxruntime") if check else ("onnx",):
            if (sys.modules[extra] is None) if extra in sys.modules else importlib.util.find_spec(extra) is None:
                raise ImportError(ONNX_HINT)
    loaded = load_model(checkpoint, arch=arch)
    info, output = loaded.info, Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    module = _Inference(loaded.backbone, loaded.occlusion_head, info.embedding_gate).eval()
    outputs = EXPORT_OUTPUTS if loaded.occlusion_head is not None else EXPORT_OUTPUTS[:3]
    qaconv_files = None
    if loaded.qaconv is not None:
        qaconv_files = _save_qaconv(qaconv_params(loaded.qaconv, loaded.uses_occlusion), output)
    else:
        logger.warning("%s: %s; exporting embedding, norm and feature_map only", checkpoint, info.qaconv_unavailable)
    metadata = _metadata(info, outputs, qaconv_files)
    example = torch.zeros(2, 3, info.input_size, info.input_size)
    if fmt == "onnx":
        _export_onnx(module, example, output, outputs, metadata)
    else:
        _export_torchscript(module, example, output, metadata)
    module.eval()  # the exporters restore the caller's mode; keep eval for the parity check
    logger.info("exported %s (%s %s width %g, %s) to %s", checkpoint, fmt, info.arch, info.width,
                info.channel_order.value, output)
    parity = (_check_parity(module, output, fmt, outputs, info.input_size, info.channel_order,
                            Path(check_images) if check_images else None, tolerance) if check else ())
    return ExportResult(output, fmt, outputs, metadata, qaconv_files, parity)
