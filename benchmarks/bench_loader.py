"""Benchmark: training-sample throughput of one loader process, oaml against the predecessor's pipeline.

Both sides read the same ``.rec`` (written on the fly from the real JPEGs of ``../shared/data/insightface_rec_lfw20``
when present, else from synthetic faces) and run the same steps with the same probabilities: decode, flip
(p 0.5), synthetic medical mask (p 0.5), crop / low-res / photometric (p 0.2 each), to tensor, normalise.

- **oaml**: :class:`RecordDataset` + :class:`TrainTransform`: positional reads, ``cv2.imdecode``, a procedural
  mask drawn with numpy/OpenCV inside its bounding box, one float conversion.
- **baseline**, as the predecessor (OAML ``dataset/record_dataset.py``, ``data.py``, ``transforms.py``, with
  AdaFace's ``Augmenter``) did it: PIL decode and BGR<->RGB array round trips, crop and low-res through
  ``np.array``/``Image.fromarray``, PIL ``ImageEnhance`` jitter (torchvision's ``ColorJitter`` on PIL), and a
  mask transform *re-created for every sample*, whose constructor re-reads the mask picture from disk
  (masked or not), then resizes, rotates and alpha-pastes it with PIL and thresholds its alpha with
  ``Image.point``; then ``ToTensor`` and normalise in torch. mxnet's decoder is replaced by PIL's and the
  predecessor's mask photo by a small procedurally drawn RGBA picture, both in the baseline's favour.

A second row times the label scan: labels from the record headers (:class:`RecordIndex`, no cache) against
reading and decoding every record, which is what the predecessor's PK sampler needed.

Run: ``python -m benchmarks.bench_loader`` (add ``--quick`` for fewer samples and repeats).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageEnhance

from benchmarks._timing import interleaved_seconds
from oaml.constants import ARCFACE_TEMPLATE
from oaml.data.augment import random_resized_crop_box
from oaml.data.datasets import RecordDataset, RecordIndex
from oaml.data.masks import apply_medical_mask
from oaml.data.recordio import IRHeader, RecordReader, RecordWriter, pack_record
from oaml.data.transforms import TrainTransform

__all__ = ["run"]

SHARED_REC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "insightface_rec_lfw20" / "train.rec"
PROBS = {"mask_prob": 0.5, "flip_prob": 0.5, "crop_prob": 0.2, "low_res_prob": 0.2, "photometric_prob": 0.2}
_CV2_FILTERS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)


def _source_jpegs() -> list[bytes]:
    if SHARED_REC.is_file():
        reader = RecordReader(SHARED_REC)
        return [reader.read_record(k)[1] for k in range(1, 21)]
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(20):
        face = np.full((112, 112, 3), rng.uniform(60, 200, size=3), np.float32)
        cv2.ellipse(face, (56, 60), (38, 50), 0, 0, 360, rng.uniform(90, 230, size=3).tolist(), -1)
        face += rng.normal(0, 6, size=face.shape)
        jpegs.append(cv2.imencode(".jpg", np.clip(face, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
                     .tobytes())
    return jpegs


def _write_rec(folder: Path, count: int) -> Path:
    jpegs = _source_jpegs()
    rec = folder / "train.rec"
    with RecordWriter(rec) as writer:
        for key in range(count):
            writer.write(key, pack_record(IRHeader(0, float(key % 20), key), jpegs[key % len(jpegs)]))
    return rec


def _write_mask_asset(folder: Path) -> Path:
    """An RGBA mask picture standing in for the predecessor's ``maskPic.jpg`` asset."""
    canvas = np.zeros((112, 112, 3), np.uint8)
    drawn, visibility = apply_medical_mask(canvas, np.random.default_rng(0), style="surgical_blue", ear_loops=False)
    ys, xs = np.nonzero(visibility == 0)
    rgba = np.dstack([drawn[..., ::-1], ((visibility == 0) * 255).astype(np.uint8)])
    path = folder / "maskPic.png"
    Image.fromarray(rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1], "RGBA").save(path)
    return path


def _baseline_mask(img: Image.Image, mask_img: Image.Image,
                   rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    nose, left, right = (ARCFACE_TEMPLATE[i] + rng.uniform(-3, 3, size=2) for i in (2, 3, 4))
    shift, scale, angle = rng.uniform(-5, 5, size=2), rng.uniform(0.95, 1.10), rng.uniform(-7, 7)
    width = int(np.linalg.norm(right - left) * 2.2 * scale)
    height = int((right[1] - nose[1]) * 2.4 * scale)
    mask = mask_img.resize((width, height), Image.BILINEAR).rotate(angle, expand=True)
    paste = (int(nose[0] + shift[0]) - mask.width // 2, int(nose[1] - 12 + shift[1]))
    img = img.convert("RGBA")
    img.paste(mask, paste, mask)
    binary = Image.new("L", img.size, 255)
    binary.paste(mask.split()[-1].point(lambda a: 0 if a > 128 else 255), paste)
    return img.convert("RGB"), binary


def _baseline_sample(reader: RecordReader, key: int, mask_path: Path,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    _, payload = reader.read_record(key)
    sample = Image.open(io.BytesIO(payload)).convert("RGB")
    sample = Image.fromarray(np.asarray(sample)[:, :, ::-1])  # BGR in a PIL image, as the predecessor kept it
    if rng.random() < PROBS["crop_prob"]:
        top, left, h, w = random_resized_crop_box(112, 112, rng)
        canvas = np.zeros((112, 112, 3), np.uint8)
        canvas[top:top + h, left:left + w] = np.asarray(sample)[top:top + h, left:left + w]
        sample = Image.fromarray(canvas)
    if rng.random() < PROBS["low_res_prob"]:  # AdaFace's Augmenter: cv2 on np.array(PIL), then back to PIL
        side = max(1, int(rng.uniform(0.2, 1.0) * 112))
        down, up = (_CV2_FILTERS[int(i)] for i in rng.integers(0, 5, size=2))
        small = cv2.resize(np.array(sample), (side, side), interpolation=down)
        sample = Image.fromarray(cv2.resize(small, (112, 112), interpolation=up).astype(np.uint8))
    if rng.random() < PROBS["photometric_prob"]:
        for step in rng.permutation(3):
            enhancer = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[step]
            sample = enhancer(sample).enhance(rng.uniform(0.5, 1.5))
    if rng.random() < PROBS["flip_prob"]:
        sample = sample.transpose(Image.FLIP_LEFT_RIGHT)
    # The predecessor built MedicalMaskOcclusion(prob=0.5) inside its per-sample transform, and its
    # constructor opens and converts the mask picture: the file is re-read for every sample, masked or not.
    mask_img = Image.open(mask_path).convert("RGBA")
    if rng.random() < PROBS["mask_prob"]:
        sample, binary = _baseline_mask(sample, mask_img, rng)
    else:
        binary = Image.new("L", sample.size, 255)
    tensor = torch.from_numpy(np.asarray(sample, np.float32).transpose(2, 0, 1) / 255.0)
    tensor = (tensor - 0.5) / 0.5
    return tensor, torch.from_numpy(np.asarray(binary, np.float32))[None] / 255.0


def _interleaved_rates(first: Callable[[int], Any], second: Callable[[int], Any], count: int,
                       repeats: int) -> tuple[float, float, float]:
    """Items/s of both functions, timed in alternating blocks so that load changes hit both alike.

    Returns:
        ``(median rate of first, median rate of second, median of the per-repeat ratios first/second)``.
    """
    for i in range(min(20, count)):  # warm-up: caches, lazily rendered textures, allocator
        first(i)
        second(i)

    def block(fn: Callable[[int], Any]) -> Callable[[], None]:
        def call() -> None:
            for i in range(count):
                fn(i)

        return call

    times = interleaved_seconds({"first": block(first), "second": block(second)}, repeats, warmup=0)
    rates = [(count / a, count / b) for a, b in zip(times["first"], times["second"])]
    return (statistics.median(r[0] for r in rates), statistics.median(r[1] for r in rates),
            statistics.median(r[0] / r[1] for r in rates))


def _label_scan_rates(rec: Path, cache: Path, repeats: int) -> tuple[float, float, float]:
    reader = RecordReader(rec)
    count = len(reader)

    def headers(_: int) -> None:
        for stale in cache.glob("*.npz"):
            stale.unlink()
        RecordIndex.load(rec, cache_dir=cache, reader=reader)

    def decode_all(_: int) -> None:
        for key in reader.keys:
            cv2.imdecode(np.frombuffer(reader.read_record(key)[1], np.uint8), cv2.IMREAD_COLOR)

    ours, baseline, ratio = _interleaved_rates(headers, decode_all, 1, repeats)
    return ours * count, baseline * count, ratio


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Time both pipelines in this process (one loader worker's share of the work).

    Returns:
        Rows with name, value (oaml images/s), baseline (predecessor images/s), unit, ratio, notes.
    """
    count, repeats = (100, 5) if quick else (400, 9)
    cv2.setNumThreads(1)  # one worker's view: a DataLoader worker does not own the whole machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            rec = _write_rec(folder, count)
            mask_path = _write_mask_asset(folder)
            dataset = RecordDataset(rec, TrainTransform(**PROBS, seed=0), cache_dir=folder / "cache")
            reader, rng = RecordReader(rec), np.random.default_rng(0)
            ours, baseline, ratio = _interleaved_rates(
                lambda i: dataset[i], lambda i: _baseline_sample(reader, i, mask_path, rng), count, repeats)
            header_rate, decode_rate, scan_ratio = _label_scan_rates(rec, folder / "cache", repeats)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(-1)
    source = "real LFW JPEGs" if SHARED_REC.is_file() else "synthetic JPEGs"
    return [
        {"name": "train sample: decode+flip+mask+crop/lowres/photo (1 proc)", "value": ours, "baseline": baseline,
         "unit": "img/s", "ratio": ratio, "notes": f"{count} records, {source}, median of {repeats} interleaved"},
        {"name": "label scan of a .rec (headers vs decode)", "value": header_rate, "baseline": decode_rate,
         "unit": "rec/s", "ratio": scan_ratio, "notes": f"{count} records, no cache"},
    ]


def main() -> None:
    """Print the benchmark rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    for row in run(quick=parser.parse_args().quick):
        print(f"{row['name']}: oaml {row['value']:,.0f} {row['unit']} | baseline {row['baseline']:,.0f} "
              f"{row['unit']} | ratio {row['ratio']:.2f}x | {row['notes']}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
