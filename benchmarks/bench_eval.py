"""Benchmark: standalone all-pairs evaluation (``oaml eval`` on an identity folder) with QAConv, time and memory.

Data: synthetic aligned faces in identity folders (:func:`oaml.data.synthetic.make_synthetic`, 100 identities x
10 images, cached under ``$OAML_CACHE/bench``); the first 300 images (30 identities, 44,850 pairs) and, without
``--quick``, all 1,000 (499,500 pairs); every pair i < j is scored. Model: ir_18 at width 0.125, random weights,
eval mode, visibility-weighted QAConv.

- **features**: :func:`oaml.evaluation.embed.extract_features` (decode, image + mirror forward, maps); shared by
  both columns, so it has no baseline;
- **scoring**: :func:`oaml.evaluation.evaluate.score_protocol` in all-pairs mode (AdaFace cosine of every pair,
  flip-averaged QAConv of every pair in row blocks, label-free fusion) against the same protocol whose QAConv
  step is the naive published formulation: the full P x G x hw x hw similarity tensor (``einsum``), occlusion
  weights multiplied in place, two ``max`` reductions, then the upper triangle of the P x G scores. Both must
  agree. The naive run happens only when its similarity tensor fits in ``NAIVE_LIMIT_BYTES`` (4 GiB: 300 images
  need 0.8 GiB, 1,000 images 8.9 GiB); otherwise its memory is given analytically (P·G·hw²·4 bytes, a lower
  bound: the tensor alone) and its time is omitted;
- **peak memory** of the scoring: peak-RSS growth in a fresh process (``benchmarks._timing.peak_rss_growth``).
  At 300 images the times are medians of interleaved in-process runs; at 1,000 images (about a minute per run
  here) the time is the single cold run of the peak-memory process.

Rows follow ``benchmarks/__main__.py``; ratio = baseline / oaml (> 1: oaml is faster or smaller).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks --only bench_eval [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from benchmarks._timing import (MIB, PeakMemory, interleaved_seconds, module_main, peak_rss_growth, thread_note,
                                time_once)
from benchmarks.bench_validation import bench_cache_dir
from oaml.constants import FACE_SIZE, ChannelOrder
from oaml.data.synthetic import make_synthetic
from oaml.evaluation.api import FaceRecognizer, ModelInfo
from oaml.evaluation.embed import extract_features
from oaml.evaluation.eval_data import folder_set
from oaml.evaluation.evaluate import EvalOptions, ProtocolScores, score_protocol
from oaml.evaluation.scoring import BatchFeatures, cosine_upper, fuse_label_free, qaconv_upper
from oaml.evaluation.verification import genuine_impostor_pairs
from oaml.models import QAConv, build_face_model
from oaml.models.checkpoint import CheckpointMeta, LoadedFaceModel

__all__ = ["eval_faces", "naive_qaconv_upper", "run"]

ARCH, WIDTH = "ir_18", 0.125
IDENTITIES, IMAGES_PER_IDENTITY = 100, 10
NAIVE_LIMIT_BYTES = 4 * 2**30
_OPTIONS = EvalOptions(progress=False, plots=False)


def eval_faces() -> Path:
    """The cached folder of 100 x 10 synthetic identity folders."""
    out = bench_cache_dir() / f"eval_faces_{IDENTITIES}x{IMAGES_PER_IDENTITY}"
    make_synthetic(out, identities=IDENTITIES, images=IMAGES_PER_IDENTITY, formats=("folder",), val_pairs=0)
    return out / "images"


def _recognizer(seed: int = 0) -> FaceRecognizer:
    torch.manual_seed(seed)
    model = build_face_model(ARCH, WIDTH).eval()
    info = ModelInfo(path="<random init>", sha256="", kind="oaml", source_layout="oaml", arch=ARCH, width=WIDTH,
                     input_size=FACE_SIZE, channel_order=ChannelOrder.BGR, occlusion_method="scaling",
                     embedding_gate=False, qaconv_unavailable=None, num_classes=None, checkpoint_version=None)
    meta = CheckpointMeta(ARCH, WIDTH)
    loaded = LoadedFaceModel(model.backbone, model.occlusion_head, model.qaconv, meta, "oaml")
    return FaceRecognizer(loaded, info, batch_size=64)


def naive_qaconv_upper(q: QAConv, feats: BatchFeatures) -> np.ndarray:
    """Flip-averaged QAConv of all pairs i < j through the full N x N x hw x hw similarity tensor."""
    n, hw = feats.maps.shape[0], q.hw  # type: ignore[union-attr]
    total = torch.zeros(n, n)
    with torch.inference_mode():
        for maps, occ in ((feats.maps, feats.occlusion), (feats.maps_flip, feats.occlusion_flip)):
            x = F.normalize(maps.reshape(n, q.num_features, hw), dim=1, eps=1e-6)  # type: ignore[union-attr]
            sim = torch.einsum("pcs,gcr->pgrs", x, x)  # [probe p, gallery g, gallery loc r, probe loc s]
            if occ is not None:
                sim.mul_(occ.reshape(1, n, hw, 1))  # O_gal[g, r], in place: no second full-size tensor
                sim.mul_(occ.reshape(n, 1, 1, hw))  # O_prob[p, s]
            pooled = torch.stack((sim.max(dim=2).values, sim.max(dim=3).values), dim=2)
            del sim
            score = q.fc(q.bn(pooled.reshape(-1, 1, hw)).reshape(-1, hw)).reshape(-1, 2).sum(dim=1, keepdim=True)
            total += q.logit_bn(score).reshape(n, n)
    return (total / 2).numpy()[np.triu_indices(n, 1)].astype(np.float64)


def _naive_protocol(recognizer: FaceRecognizer, feats: BatchFeatures, issame: np.ndarray) -> ProtocolScores:
    """``score_protocol`` in all-pairs mode with the naive QAConv step (same cosine and fusion)."""
    emb = feats.embedding
    scores = {"adaface": cosine_upper(emb, emb),
              "qaconv": naive_qaconv_upper(recognizer.qaconv, feats)}  # type: ignore[arg-type]
    result = ProtocolScores(scores, issame)
    scores["combined"], result.fusion = fuse_label_free(
        {"adaface": scores["adaface"], "qaconv": scores["qaconv"]},
        {"adaface": _OPTIONS.adaface_weight, "qaconv": _OPTIONS.qaconv_weight})
    return result


def _scoring_setup(path: str, impl: str) -> Any:
    """Child-process workload of :func:`peak_rss_growth`: load the saved features, return the scoring call."""
    saved = torch.load(path, weights_only=True)
    feats = BatchFeatures(**saved["features"])
    issame = saved["issame"].numpy()
    recognizer = _recognizer()
    recognizer.qaconv.load_state_dict(saved["qaconv"])  # type: ignore[union-attr]
    small = BatchFeatures(*(None if t is None else t[:4] for t in feats))
    small_same = issame[:6]  # the 6 pairs of 4 images
    if impl == "oaml":
        score_protocol(recognizer, small, small, None, None, small_same, _OPTIONS)  # warm-up: kernels, libraries
        return lambda: score_protocol(recognizer, feats, feats, None, None, issame, _OPTIONS)
    _naive_protocol(recognizer, small, small_same)
    return lambda: _naive_protocol(recognizer, feats, issame)


def _in_child(recognizer: FaceRecognizer, feats: BatchFeatures, issame: np.ndarray, impl: str) -> PeakMemory:
    """Time and peak-RSS growth of the all-pairs scoring in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="oaml_bench_eval_") as tmp:
        path = str(Path(tmp) / "features.pt")
        torch.save({"features": dict(feats._asdict()), "issame": torch.from_numpy(issame),
                    "qaconv": recognizer.qaconv.state_dict()}, path)  # type: ignore[union-attr]
        return peak_rss_growth(_scoring_setup, path, impl)


def _check(recognizer: FaceRecognizer, feats: BatchFeatures) -> None:
    check = BatchFeatures(*(None if t is None else t[:16] for t in feats))
    ours = qaconv_upper(recognizer.qaconv, check, check, recognizer.uses_occlusion, progress=False)
    naive = naive_qaconv_upper(recognizer.qaconv, check)  # type: ignore[arg-type]
    if not np.allclose(ours, naive, atol=1e-4):
        raise RuntimeError(f"qaconv_upper and the naive all-pairs QAConv differ by {np.abs(ours - naive).max():.2e}")


def _rows(root: Path, count: int, repeats: int) -> list[dict[str, Any]]:
    """Rows for the first ``count`` images: in-process interleaved timings (``repeats`` > 0, naive only when it
    fits) or, with ``repeats`` = 0, the single cold run of the peak-memory child as the time."""
    data = folder_set(root)
    indices = np.arange(count)
    _, _, issame = genuine_impostor_pairs(data.labels[indices])  # type: ignore[index]
    recognizer = _recognizer()
    holder: list[BatchFeatures] = []
    features_s = time_once(lambda: holder.append(extract_features(recognizer, data.images, indices, progress=False)))
    feats = holder[0]
    hw, pairs = recognizer.qaconv.hw, issame.shape[0]  # type: ignore[union-attr]
    naive_bytes = count * count * hw * hw * 4
    naive_fits = naive_bytes <= NAIVE_LIMIT_BYTES
    if naive_fits:
        _check(recognizer, feats)
    size = f"{count:,} images, {pairs:,} pairs"
    peak = _in_child(recognizer, feats, issame, "oaml")
    peak_naive = _in_child(recognizer, feats, issame, "naive") if naive_fits else None
    if repeats:
        fns = {"oaml": lambda: score_protocol(recognizer, feats, feats, None, None, issame, _OPTIONS)}
        if naive_fits:
            fns["naive"] = lambda: _naive_protocol(recognizer, feats, issame)
        times = {k: statistics.median(v) for k, v in interleaved_seconds(fns, repeats, warmup=0).items()}
        how = f"median of {repeats} interleaved in-process runs"
    else:
        times = {"oaml": peak.seconds} | ({"naive": peak_naive.seconds} if peak_naive else {})
        how = "1 cold run in the peak-memory process"
    skipped = (f"naive not run: its {count}x{count}x{hw}x{hw} fp32 similarity tensor alone needs "
               f"{naive_bytes / 2**30:.1f} GiB (> {NAIVE_LIMIT_BYTES / 2**30:.0f} GiB limit)")
    scoring, scoring_naive = times["oaml"], times.get("naive")
    total = features_s + scoring
    total_naive = None if scoring_naive is None else features_s + scoring_naive
    memory_naive = naive_bytes / MIB if peak_naive is None else peak_naive.peak_bytes / MIB
    tail = "" if naive_fits else f"; {skipped}"
    return [
        {"name": f"all-pairs eval wall time, {ARCH} w{WIDTH:g} ({size})", "value": total, "baseline": total_naive,
         "unit": "s", "ratio": None if total_naive is None else total_naive / total,
         "notes": f"features + scoring (AdaFace cosine, flip-averaged QAConv, fusion); {thread_note()}{tail}"},
        {"name": "  features: image + mirror forward with maps", "value": features_s, "baseline": None, "unit": "s",
         "ratio": None, "notes": f"{2 * count / features_s:,.0f} forwards/s, 1 run; shared by both columns"},
        {"name": "  scoring: score_protocol vs naive P x G x hw x hw QAConv", "value": scoring,
         "baseline": scoring_naive, "unit": "s", "ratio": None if scoring_naive is None else scoring_naive / scoring,
         "notes": f"{2 * pairs / scoring:,.0f} QAConv matches/s (pairs x 2 views); {how}{tail}"},
        {"name": "  scoring peak memory (RSS growth)", "value": peak.peak_bytes / MIB, "baseline": memory_naive,
         "unit": "MiB", "ratio": memory_naive / max(peak.peak_bytes / MIB, 1e-3),
         "notes": "fresh process each; ratio = naive / oaml" + ("" if naive_fits else
                                                               "; naive ANALYTIC: its similarity tensor alone")},
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run the all-pairs evaluation benchmark.

    Args:
        quick: 300 images only; otherwise 300 images (naive measured) and 1,000 images (naive analytic).

    Returns:
        Rows with name, value, baseline, unit, ratio and notes.

    Raises:
        RuntimeError: if the chunked and the naive QAConv disagree.
    """
    root = eval_faces()
    rows = _rows(root, 300, 3)
    if not quick:  # about a minute per scoring run at this size: time the single run of the memory process
        rows += _rows(root, IDENTITIES * IMAGES_PER_IDENTITY, 0)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark rows."""
    return module_main(run, __doc__.splitlines()[0], "300 images only", argv)


if __name__ == "__main__":
    sys.exit(main())
