"""Benchmark: images/s of one optimizer step of the full objective against an AdaFace-only step.

Both steps run the real :meth:`oaml.training.system.OamlSystem.training_step` (SPEC §6) on the same batch, with
the same backbone, margin head and SGD optimizer (:func:`oaml.training.optim.build_sgd`), differing only in the
:class:`~oaml.losses.CombinedLoss` weights:

- **full** (oaml): AdaFace + QAConv pairwise + class-memory softmax-triplet + occlusion, at the seed weights
  (0.1, 0.7, 0.5, 0.3), occlusion-aware QAConv, a class memory of 1,000 classes with k = 32 neighbours (filled
  beforehand and its graph built, the steady state of training), updated by every step;
- **AdaFace-only** (baseline): ``qaconv_weight = occlusion_weight = 0``; QAConv, the class memory and the
  occlusion loss are not computed.

One step = ``zero_grad`` + ``training_step`` + ``backward`` + ``optimizer.step``, as Lightning's automatic
optimisation runs it. The system is driven without a Trainer: a :class:`lightning.fabric.Fabric` is attached
so that ``self.trainer.world_size`` and ``self.log`` work (logging goes to no logger). Batches are random
normalised images in PK layout (K = 4 images per identity) with a lower-face occluder on every second image.

Rows (``python -m benchmarks`` format):

- full vs AdaFace-only at batch 64, ir_18 width 0.125, fp32 (img/s), and the cost ratio (full step time as a
  percentage of the AdaFace-only step time; target <= 130 %);
- without ``--quick``: the same at full width (ir_50, batch 8);
- informational: the full step in bf16 autocast against fp32, at width 0.125 (batch 64) and at full width
  (ir_18 width 1.0, small batch). CPUs without AVX512-BF16/AMX emulate bf16 matrix products, so expect bf16
  to be slower there; it pays off on GPUs (``benchmarks/gpu.sh``).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks --only bench_train_step [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from lightning.fabric import Fabric

from benchmarks._timing import interleaved_seconds, module_main, ratio_of_medians, thread_note
from oaml.constants import FACE_SIZE
from oaml.data.batches import TrainBatch
from oaml.config import config_from_dict
from oaml.training.build import build_system
from oaml.training.optim import build_sgd
from oaml.training.system import OamlSystem

__all__ = ["StepSetup", "build_step", "make_batch", "run"]

NUM_CLASSES = 1000
K_PER_IDENTITY = 4
_FILL_CHUNK = 4096  # classes per class-memory fill
COST_TARGET = 1.30  # full-objective step time / AdaFace-only step time, at batch 64 and width 0.125

def make_batch(batch: int, num_classes: int = NUM_CLASSES, device: str | torch.device = "cpu",
               seed: int = 0) -> TrainBatch:
    """A PK batch: ``batch / 4`` identities x 4 random images, and pixel visibility masks.

    Returns:
        ``TrainBatch(images B x 3 x 112 x 112 in [-1, 1], labels B, visibility B x 112 x 112)``; every second image
        has a lower-face occluder (the mask region of the medical-mask augmentation), the others are fully visible.
    """
    if batch % K_PER_IDENTITY:
        raise ValueError(f"batch must be a multiple of {K_PER_IDENTITY}, got {batch}")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randperm(num_classes, generator=gen)[: batch // K_PER_IDENTITY].repeat_interleave(K_PER_IDENTITY)
    images = torch.randn(batch, 3, FACE_SIZE, FACE_SIZE, generator=gen).clamp_(-1.0, 1.0)
    visibility = torch.ones(batch, FACE_SIZE, FACE_SIZE)
    visibility[::2, 64:, 16:96] = 0.0
    return TrainBatch(images.to(device), labels.to(device), visibility.to(device))


def _autocast(device_type: str, precision: str) -> Any:
    if precision == "fp32":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type, dtype=dtype)


@dataclass
class StepSetup:
    """A system, its optimizer and the Fabric that stands in for the Trainer (kept alive here: the system
    holds only a weak proxy of it)."""

    system: OamlSystem
    optimizer: torch.optim.Optimizer
    fabric: Fabric
    scaler: torch.amp.GradScaler | None = None

    def step(self, batch: TrainBatch, precision: str = "fp32") -> None:
        """One optimizer step; ``precision`` is ``fp32``, ``bf16`` or ``fp16`` (autocast, as Lightning's
        ``*-mixed`` precisions: the forward and the loss under autocast, backward outside; fp16 with a grad
        scaler when one was created)."""
        self.optimizer.zero_grad(set_to_none=True)
        device_type = batch.images.device.type
        with _autocast(device_type, precision):
            loss = self.system.training_step(batch, 0)
        if loss is None:
            raise RuntimeError("the benchmark step produced a non-finite loss and was skipped")
        if self.scaler is not None and precision == "fp16":
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()


def build_step(arch: str, width: float, full: bool, num_classes: int = NUM_CLASSES,
               device: str | torch.device = "cpu", seed: int = 0) -> StepSetup:
    """Build an :class:`OamlSystem` in training mode with the full or the AdaFace-only objective.

    Args:
        arch: backbone name (``ir_18``, ``ir_50`` ...).
        width: width multiplier.
        full: the full objective (seed weights) with a filled class memory; False gives AdaFace only.
        num_classes: training classes (margin-head columns and class-memory slots).
        device: where the model, the head and the class memory live.
        seed: torch seed of the initialisation.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    objective = {} if full else {"qaconv_loss_weight": 0.0, "occlusion_loss_weight": 0.0}
    config = config_from_dict(flat={"arch": arch, "width": width, "k_nearest": 32, **objective})
    system = build_system(config, num_classes).to(device).train()
    memory = system.objective.class_memory
    if memory is not None:
        for start in range(0, num_classes, _FILL_CHUNK):  # chunks: MS1MV2-size memories do not fit at once
            classes = torch.arange(start, min(start + _FILL_CHUNK, num_classes), device=device)
            memory.update(torch.randn(classes.numel(), *memory.memory.shape[1:], device=device), classes,
                          torch.nn.functional.normalize(torch.randn(classes.numel(), memory.embedding_size,
                                                                    device=device), dim=1))
        memory.rebuild_graph()
    fabric = Fabric(accelerator="cuda" if device.type == "cuda" else "cpu", devices=1)
    system.fabric = fabric
    optimizer, _ = build_sgd([system.model, system.objective], lr=0.1, momentum=0.9, weight_decay=5e-4,
                             steps_per_epoch=1000, milestones=(8,), gamma=0.1)
    scaler = torch.amp.GradScaler(device.type) if device.type == "cuda" else None
    return StepSetup(system, optimizer, fabric, scaler)


def _stepper(setup: StepSetup, batch: TrainBatch, precision: str = "fp32") -> Callable[[], None]:
    return lambda: setup.step(batch, precision)


def _label(arch: str, width: float, batch: int) -> str:
    return f"{arch} w{width:g} B={batch}"


def _objective_rows(arch: str, width: float, batch: int, repeats: int, target: bool) -> list[dict[str, Any]]:
    data = make_batch(batch)
    full, ada = build_step(arch, width, True), build_step(arch, width, False)
    times = interleaved_seconds({"full": _stepper(full, data), "adaface": _stepper(ada, data)}, repeats)
    cost = ratio_of_medians(times["full"], times["adaface"])
    paired = statistics.median(f / a for f, a in zip(times["full"], times["adaface"]))
    value, baseline = batch / statistics.median(times["full"]), batch / statistics.median(times["adaface"])
    verdict = ("HOLDS" if cost <= COST_TARGET else "FAILS") if target else "no target at this size"
    steps = f"median of {repeats} interleaved steps after 1 warm-up, fp32, {thread_note()}"
    rows = [{"name": f"train step full objective vs AdaFace-only ({_label(arch, width, batch)})", "value": value,
             "baseline": baseline, "unit": "img/s", "ratio": value / baseline,
             "notes": f"cost ratio full/AdaFace {cost:.2f}x (target <= {COST_TARGET:.2f}x: {verdict}); {steps}"}]
    rows.append({"name": f"  cost: full step time / AdaFace-only ({_label(arch, width, batch)})",
                 "value": 100.0 * cost, "baseline": None, "unit": "%", "ratio": None,
                 "notes": f"ratio of medians; median of per-step ratios {paired:.2f}x; target <= "
                          f"{100 * COST_TARGET:.0f} %: {verdict}" if target else
                          f"ratio of medians; median of per-step ratios {paired:.2f}x; informational"})
    return rows


def _precision_row(arch: str, width: float, batch: int, repeats: int, warm_bf16: bool) -> dict[str, Any]:
    data = make_batch(batch)
    fp32, bf16 = build_step(arch, width, True), build_step(arch, width, True)
    fns = {"fp32": _stepper(fp32, data, "fp32"), "bf16": _stepper(bf16, data, "bf16")}
    if warm_bf16:
        times = interleaved_seconds(fns, repeats)
        how = f"median of {repeats} interleaved steps after 1 warm-up each"
    else:  # a bf16 step at full width takes about a minute here: warm only the fp32 side
        fns["fp32"]()
        times = interleaved_seconds(fns, repeats, warmup=0)
        how = f"{repeats} interleaved step(s); fp32 warmed up once, bf16 not (its step takes ~1 min here)"
    slower = ratio_of_medians(times["bf16"], times["fp32"])
    value, baseline = batch / statistics.median(times["bf16"]), batch / statistics.median(times["fp32"])
    capability = torch.backends.cpu.get_cpu_capability()
    return {"name": f"train step full objective bf16 autocast vs fp32 ({_label(arch, width, batch)})", "value": value,
            "baseline": baseline, "unit": "img/s", "ratio": value / baseline,
            "notes": f"informational: bf16 is {slower:.1f}x {'slower' if slower > 1 else 'faster'} than fp32 on "
                     f"this CPU ({capability}); {how}; {thread_note()}"}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run the training-step benchmark.

    Args:
        quick: 5 repeats instead of 9, no ir_50 row, fewer bf16 repeats and batch 4 (not 8) at full width.

    Returns:
        Rows with name, value, baseline, unit, ratio and notes.

    Raises:
        RuntimeError: if a benchmark step's loss is not finite.
    """
    rows = _objective_rows("ir_18", 0.125, 64, 5 if quick else 9, target=True)
    if not quick:
        rows += _objective_rows("ir_50", 1.0, 8, 3, target=False)
    rows.append(_precision_row("ir_18", 0.125, 64, 2 if quick else 3, warm_bf16=True))
    rows.append(_precision_row("ir_18", 1.0, 4 if quick else 8, 1, warm_bf16=False))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark rows."""
    return module_main(run, __doc__.splitlines()[0], "fewer repeats and smaller sizes", argv)


if __name__ == "__main__":
    sys.exit(main())
