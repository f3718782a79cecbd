"""Benchmark: wall time of the full five-set validation (SPEC §9) at the real set sizes, phase by phase.

Data: five synthetic ``.bin`` files with the released pair counts (agedb_30, lfw, cplfw, calfw 6,000 pairs,
cfp_fp 7,000; 31,000 pairs, 62,000 images), drawn with a fixed rng from a pool of 320 rendered synthetic faces
(:mod:`oaml.data.synthetic`) and cached under ``$OAML_CACHE/bench`` (default ``~/.cache/oaml/bench``).
``make_synthetic`` writes one pair count for all five sets, so the benchmark writes its own files.
``--quick`` uses 1/10 of the pairs of every set. Model: ir_18 at width 0.125 (fp32, eval mode, random weights).

Phases, oaml against the predecessor's style, interleaved (oaml, baseline) set by set or repeat by repeat:

- **convert** (once per machine, not per validation): :func:`convert_bin` (restricted unpickler, decode, uint8
  memfile + sidecar) against decoding every image into an in-memory float32 ``2N x 3 x 112 x 112`` array
  (insightface/AdaFace ``load_bin`` style; they kept a second, mirrored copy too, which the baseline skips);
- **read** (every validation): the :class:`VerificationSets` DataLoader over the memfile (uint8 reads,
  normalisation per batch) against a DataLoader over the float32 array (a copy per item), batch 128;
- **resident images**: bytes of the five converted sets, uint8 memfiles (page cache, shared by DDP ranks and
  workers) against float32 arrays in every process; exact, from the shapes;
- **forward** (with flip): :func:`oaml.evaluation.scoring.score_pair_batch` without QAConv (image + mirror
  forward, flip fusion, distances) on a sample of batches, extrapolated linearly to all images (the cost per
  batch is constant); no baseline: the predecessor ran the same backbone on the same images;
- **QAConv paired**: ``QAConv.match_pairs`` on the feature and visibility maps of each validation batch, for the
  image and the mirror (as ``score_pair_batch`` does), against the predecessor's per-pair loop (one
  ``einsum`` + two ``max`` per pair, OAML ``qaconv.py`` ``match_pairs``) computing the same scores. The sampled
  maps are reused cyclically to cover every pair;
- **metric**: :func:`summarise_pairs` (vectorised 10-fold protocol, AdaFace, QAConv and combined per set)
  against a folds x thresholds Python loop (arcface_torch ``calculate_roc`` style) over the same thresholds,
  giving identical accuracies;
- **total per validation**: read + forward + QAConv + metric (the one-time conversion excluded).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks --only bench_validation [--quick]``.
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from benchmarks._timing import MIB, interleaved_seconds, module_main, thread_note, time_once
from oaml.constants import FACE_SIZE, NORM_MEAN, NORM_STD, VAL_PAIR_COUNTS, VAL_SET_NAMES
from oaml.data.synthetic import render_face, render_identity_params
from oaml.data.verification_sets import VerificationSets, convert_bin, load_bin
from oaml.evaluation.verification import DISTANCE_THRESHOLDS, dynamic_weights, fold_bounds
from oaml.models import FaceModel, QAConv, build_face_model
from oaml.data.batches import collate_pairs
from oaml.evaluation.scoring import BatchFeatures, PairScores, embed_views, score_pair_batch, summarise_pairs

__all__ = ["bench_bins", "bench_cache_dir", "loop_match_pairs", "loop_summarise", "run"]

POOL_IDENTITIES, POOL_IMAGES = 40, 8
VAL_BATCH = 128  # images per validation batch (the config default, eval.val_batch_size)
EVAL_WEIGHTS = (0.5, 0.5)
_BINS_FORMAT = 1
_SEED = 7


def bench_cache_dir() -> Path:
    """``$OAML_CACHE/bench`` (default ``~/.cache/oaml/bench``): generated benchmark inputs, reused across runs."""
    return Path(os.environ.get("OAML_CACHE", Path.home() / ".cache" / "oaml")) / "bench"


# ----------------------------------------------------------------------------------------------- data
def _render_pool() -> list[list[bytes]]:
    pool = []
    for g in range(POOL_IDENTITIES):
        params = render_identity_params(np.random.default_rng([_SEED, g, 2**32 - 1]))
        faces = []
        for n in range(POOL_IMAGES):
            image, _ = render_face(params, np.random.default_rng([_SEED, g, n]))
            faces.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
        pool.append(faces)
    return pool


def _draw_pairs(pool: list[list[bytes]], count: int, rng: np.random.Generator) -> tuple[list[bytes], list[bool]]:
    """``count`` pairs; each consecutive couple holds one genuine and one impostor pair (balanced folds)."""
    images: list[bytes] = []
    issame: list[bool] = []
    for _ in range(count // 2):
        for same in (True, False) if rng.random() < 0.5 else (False, True):
            g = int(rng.integers(len(pool)))
            h = g if same else int((g + rng.integers(1, len(pool))) % len(pool))
            a, b = (int(v) for v in rng.choice(POOL_IMAGES, 2, replace=False))
            images += [pool[g][a], pool[h][b]]  # shared bytes objects: the pickle stores each face once
            issame.append(same)
    return images, issame


def bench_bins(scale: int = 1) -> Path:
    """The folder of the five benchmark ``.bin`` files with ``1/scale`` of the released pair counts (cached).

    Returns:
        The folder; it holds ``<set>.bin`` for every name of ``VAL_SET_NAMES`` and ``bins.json``.
    """
    folder = bench_cache_dir() / f"val_bins_1in{scale}"
    counts = {name: VAL_PAIR_COUNTS[name] // scale for name in VAL_SET_NAMES}
    manifest = {"generator": "benchmarks.bench_validation", "format": _BINS_FORMAT, "seed": _SEED,
                "pool": [POOL_IDENTITIES, POOL_IMAGES], "counts": counts}
    try:
        if json.loads((folder / "bins.json").read_text(encoding="utf-8")) == manifest and all(
                (folder / f"{name}.bin").is_file() for name in VAL_SET_NAMES):
            return folder
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bins.json").unlink(missing_ok=True)
    pool = _render_pool()
    for index, name in enumerate(VAL_SET_NAMES):
        pairs = _draw_pairs(pool, counts[name], np.random.default_rng([_SEED, index]))
        tmp = folder / f"{name}.bin.tmp"
        tmp.write_bytes(pickle.dumps(pairs, protocol=4))
        os.replace(tmp, folder / f"{name}.bin")
    (folder / "bins.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")  # last: complete
    return folder


# ----------------------------------------------------------------------------------------------- baselines
def _baseline_decode(bin_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Predecessor style: every image decoded into one float32 ``2N x 3 x 112 x 112`` array held in memory."""
    images, issame = load_bin(bin_path)
    out = np.empty((len(images), 3, FACE_SIZE, FACE_SIZE), np.float32)
    for i, buf in enumerate(images):
        image = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
        out[i] = (image.transpose(2, 0, 1) / np.float32(255.0) - NORM_MEAN) / NORM_STD
    return out, issame


class _FloatArrayDataset(Dataset):
    """Predecessor style item access: a tensor copy of one decoded float32 image."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return self.array.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(self.array[index])


def _drain(loader: DataLoader) -> int:
    count = 0
    for batch in loader:
        count += len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
    return count


def loop_match_pairs(q: QAConv, a: torch.Tensor, b: torch.Tensor, occ_a: torch.Tensor | None,
                     occ_b: torch.Tensor | None) -> torch.Tensor:
    """The predecessor's paired QAConv: one pair at a time, a full hw x hw ``einsum``, two ``max``, the head.

    Same scores as ``q.match_pairs`` in eval mode (``a`` is the probe side).
    """
    n, hw = a.shape[0], q.hw
    pa = F.normalize(a.reshape(n, q.num_features, hw), dim=1, eps=1e-6)
    pb = F.normalize(b.reshape(n, q.num_features, hw), dim=1, eps=1e-6)
    out = torch.empty(n)
    for i in range(n):
        sim = torch.einsum("cs,cr->rs", pa[i], pb[i])  # [gallery location r, probe location s]
        if occ_a is not None and occ_b is not None:
            sim = sim * (occ_b[i].reshape(hw, 1) * occ_a[i].reshape(1, hw))
        pooled = torch.stack((sim.max(dim=0).values, sim.max(dim=1).values)).reshape(2, 1, hw)
        score = q.fc(q.bn(pooled).reshape(2, hw)).sum()
        out[i] = q.logit_bn(score.reshape(1, 1)).item()
    return out


def _candidates(values: np.ndarray) -> np.ndarray:
    u = np.unique(values)
    mid = u[:-1] / 2 + u[1:] / 2
    mid = np.where(mid > u[:-1], mid, u[1:])
    return np.concatenate([u[:1], mid, [np.nextafter(u[-1], np.inf)]])


def _loop_folds(d: np.ndarray, same: np.ndarray, grid: np.ndarray | None,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> float:
    """Mean held-out accuracy of ``d < t``: per fold, the training accuracy of every threshold in a loop.

    ``grid`` None uses every distinct split of the training values; ``transform(train_mask)`` returns the
    fold's distances (training-fold standardisation of the combined score).
    """
    accs = []
    for a, b in fold_bounds(d.shape[0]):
        train = np.ones(d.shape[0], dtype=bool)
        train[a:b] = False
        fold_d = d if transform is None else transform(train)
        d_tr, s_tr = fold_d[train], same[train]
        thresholds = _candidates(d_tr) if grid is None else grid
        acc_train = [np.mean(np.less(d_tr, t) == s_tr) for t in thresholds]
        best = thresholds[int(np.argmax(acc_train))]
        accs.append(float(np.mean(np.less(fold_d[a:b], best) == same[a:b])))
    return float(np.mean(accs))


def _zscore(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    std = x[train].std()
    return np.zeros_like(x) if std == 0 else (x - x[train].mean()) / std


def loop_summarise(scores: PairScores, set_names: list[str]) -> dict[str, float]:
    """The per-set accuracies of :func:`summarise_pairs`, computed with folds x thresholds loops."""
    metrics: dict[str, float] = {}
    for index, name in enumerate(set_names):
        rows = scores.set_index == index
        same = scores.issame[rows].astype(bool)
        dist = scores.dist_adaface[rows].astype(np.float64)
        qa = scores.score_qaconv[rows].astype(np.float64)  # type: ignore[index]
        metrics[f"{name}_adaface_acc"] = _loop_folds(dist, same, DISTANCE_THRESHOLDS)
        metrics[f"{name}_qaconv_acc"] = _loop_folds(-qa, same, None)
        w_a, w_q = dynamic_weights(metrics[f"{name}_qaconv_acc"], EVAL_WEIGHTS)
        metrics[f"{name}_combined_acc"] = _loop_folds(
            dist, same, None, lambda train: -(w_a * _zscore(-dist, train) + w_q * _zscore(qa, train)))
    return metrics


# ----------------------------------------------------------------------------------------------- phases
def _convert_and_read(bins: Path, repeats: int) -> dict[str, float]:
    """Median seconds per repeat over the five sets: convert, read (oaml) and decode, read (baseline)."""
    totals: dict[str, list[float]] = {k: [] for k in ("convert", "read", "decode", "read_base")}
    for _ in range(repeats):
        spent = dict.fromkeys(totals, 0.0)
        for name in VAL_SET_NAMES:
            with tempfile.TemporaryDirectory(prefix="oaml_bench_val_") as tmp:
                spent["convert"] += time_once(lambda: convert_bin(bins / f"{name}.bin", tmp))
                dataset = VerificationSets(tmp, names=[name])
                spent["read"] += time_once(lambda: _drain(DataLoader(dataset, batch_size=VAL_BATCH)))
            held: list[np.ndarray] = []
            spent["decode"] += time_once(lambda: held.append(_baseline_decode(bins / f"{name}.bin")[0]))
            base = _FloatArrayDataset(held.pop())
            spent["read_base"] += time_once(lambda held_set=base: _drain(DataLoader(held_set, batch_size=VAL_BATCH)))
            del base
        for key, value in spent.items():
            totals[key].append(value)
    return {key: statistics.median(values) for key, values in totals.items()}


def _forward_sample(model: FaceModel, memfiles: Path, sample_batches: int
                    ) -> tuple[float, list[BatchFeatures], PairScores, VerificationSets]:
    """Seconds per image of ``score_pair_batch`` without QAConv, and the features of both views (for QAConv)."""
    dataset = VerificationSets(memfiles)
    batches: Iterator[Any] = iter(DataLoader(dataset, batch_size=VAL_BATCH, collate_fn=collate_pairs))
    score_pair_batch(model.backbone, None, None, *next(batches)[:4], occlusion_aware=False)  # warm-up, untimed
    seconds, images, parts, outputs = 0.0, 0, [], []
    for _ in range(sample_batches):
        batch = next(batches)
        holder: list[PairScores] = []
        seconds += time_once(lambda: holder.append(score_pair_batch(model.backbone, None, None, *batch[:4],
                                                                    occlusion_aware=False)))
        images += batch.images.shape[0]
        parts.append(holder[0])
        with torch.no_grad():
            outputs.append(embed_views(model.backbone, model.occlusion_head, batch.images, with_maps=True))
    return seconds / images, outputs, PairScores.concatenate(parts), dataset


def _qaconv_phase(q: QAConv, outputs: list[BatchFeatures], num_pairs: int, repeats: int
                  ) -> tuple[float, float, np.ndarray]:
    """Median seconds of all pairs' flip-averaged paired scores: oaml, baseline, and the oaml scores."""
    per_batch = VAL_BATCH // 2
    plan = [(start, min(per_batch, num_pairs - start)) for start in range(0, num_pairs, per_batch)]

    def views(k: int, count: int) -> list[tuple[torch.Tensor, ...]]:
        out, feats = [], outputs[k % len(outputs)]
        for fm, occ in ((feats.maps, feats.occlusion), (feats.maps_flip, feats.occlusion_flip)):
            fm, occ = fm[: 2 * count], occ[: 2 * count]
            out.append((fm[0::2], fm[1::2], occ[0::2], occ[1::2]))
        return out

    scores = np.empty(num_pairs, np.float32)

    def oaml() -> None:
        with torch.no_grad():
            for k, (start, count) in enumerate(plan):
                total = sum(q.match_pairs(*v).float() for v in views(k, count))
                scores[start:start + count] = (total / 2).numpy()

    def baseline() -> None:
        with torch.no_grad():
            for k, (_, count) in enumerate(plan):
                sum(loop_match_pairs(q, *v) for v in views(k, count))

    with torch.no_grad():
        check = views(0, min(8, num_pairs))[0]
        ours, loop = q.match_pairs(*check), loop_match_pairs(q, *check)
    if not torch.allclose(ours, loop, atol=1e-4):
        raise RuntimeError(f"paired QAConv and the per-pair loop differ by {float((ours - loop).abs().max()):.2e}")
    times = interleaved_seconds({"oaml": oaml, "baseline": baseline}, repeats)
    return statistics.median(times["oaml"]), statistics.median(times["baseline"]), scores


def _metric_phase(scores: PairScores, repeats: int) -> tuple[float, float]:
    names = list(VAL_SET_NAMES)
    fast = summarise_pairs(scores, names, EVAL_WEIGHTS)
    slow = loop_summarise(scores, names)
    worst = max(abs(fast[k] - v) for k, v in slow.items())
    if worst > 1e-9:
        raise RuntimeError(f"summarise_pairs and the loop metric differ by {worst:.2e}")
    times = interleaved_seconds({"oaml": lambda: summarise_pairs(scores, names, EVAL_WEIGHTS),
                                 "baseline": lambda: loop_summarise(scores, names)}, repeats, warmup=0)
    return statistics.median(times["oaml"]), statistics.median(times["baseline"])


def _full_scores(dataset: VerificationSets, sample: PairScores, qaconv: np.ndarray) -> PairScores:
    """Every pair of the five sets with its real issame and set, the sampled distances repeated cyclically."""
    n = dataset.issame.shape[0]
    set_index = np.repeat(np.arange(len(dataset.names)), [dataset.pair_counts[s] for s in dataset.names])
    return PairScores(pair_index=np.arange(n), set_index=set_index, issame=dataset.issame.copy(),
                      dist_adaface=np.resize(sample.dist_adaface, n), score_qaconv=qaconv)


def _row(name: str, value: float, baseline: float | None, unit: str, notes: str,
         higher_is_better: bool = False) -> dict[str, Any]:
    ratio = None if baseline is None else (value / baseline if higher_is_better else baseline / value)
    return {"name": name, "value": value, "baseline": baseline, "unit": unit, "ratio": ratio, "notes": notes}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Time the five-set validation phase by phase.

    Args:
        quick: 1/10 of the pairs of every set (3,100 pairs), 2 sampled forward batches, 3 repeats.

    Returns:
        Rows with name, value, baseline, unit, ratio and notes (ratio = baseline / oaml: > 1 is better).

    Raises:
        RuntimeError: if the paired QAConv or the metric disagree with their baselines.
    """
    scale = 10 if quick else 1
    convert_repeats, repeats, sample_batches = (3, 3, 2) if quick else (1, 2, 6)
    bins = bench_bins(scale)
    memfiles = bins / "memfiles"
    for name in VAL_SET_NAMES:
        convert_bin(bins / f"{name}.bin", memfiles)  # the converted copy the forward reads (cached)
    phases = _convert_and_read(bins, convert_repeats)
    torch.manual_seed(0)
    model = build_face_model("ir_18", 0.125).eval()
    per_image, outputs, sample, dataset = _forward_sample(model, memfiles, sample_batches)
    num_images, num_pairs = len(dataset), dataset.issame.shape[0]
    forward = per_image * num_images
    qa, qa_base, qa_scores = _qaconv_phase(model.qaconv, outputs, num_pairs, repeats)
    metric, metric_base = _metric_phase(_full_scores(dataset, sample, qa_scores), repeats)
    size = f"{num_pairs:,} pairs / {num_images:,} images" + (" (--quick: 1/10 of the real pairs)" if quick else "")
    common = f"{thread_note()}"
    resident = num_images * FACE_SIZE * FACE_SIZE * 3
    total = phases["read"] + forward + qa + metric
    total_base = phases["read_base"] + forward + qa_base + metric_base
    sampled = sample_batches * VAL_BATCH
    return [
        _row(f"validation total per run, ir_18 w0.125 ({size})", total, total_base, "s",
             f"read + forward + QAConv + metric; forward extrapolated from {sampled} images and shared by both "
             f"columns; without it {total - forward:,.1f} s vs {total_base - forward:,.1f} s "
             f"({(total_base - forward) / (total - forward):.1f}x); one-time conversion excluded; {common}"),
        _row("  convert .bin -> uint8 memfile (once) vs decode to float32", phases["convert"], phases["decode"], "s",
             f"{size}; all five sets, interleaved set by set; median of {convert_repeats}"),
        _row("  resident images: uint8 memfile vs float32 arrays", resident / MIB, 4 * resident / MIB, "MiB",
             "exact, from the shapes; the memfile sits in the page cache, shared by every worker and DDP rank"),
        _row("  read per validation: memfile loader vs float32 in memory", phases["read"], phases["read_base"], "s",
             f"DataLoader batch {VAL_BATCH}, 0 workers, page cache warm; median of {convert_repeats}"),
        _row("  backbone forward with flip (score_pair_batch, no QAConv)", forward, None, "s",
             f"{1 / per_image:,.0f} img/s (each image + its mirror), {sampled} sampled images x {num_images:,}; "
             f"no baseline: the predecessor ran the same backbone on the same images"),
        _row("  QAConv paired scores (+ mirror) vs per-pair loop", qa, qa_base, "s",
             f"{2 * num_pairs:,} paired matches, batch {VAL_BATCH // 2} pairs; median of {repeats} interleaved"),
        _row("  metric: summarise_pairs vs folds x thresholds loop", metric, metric_base, "s",
             f"AdaFace, QAConv, combined over 5 sets, identical accuracies; median of {repeats} interleaved"),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark rows."""
    return module_main(run, __doc__.splitlines()[0], "1/10 of the pairs, fewer repeats", argv)


if __name__ == "__main__":
    sys.exit(main())
