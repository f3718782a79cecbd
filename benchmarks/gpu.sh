#!/usr/bin/env bash
# GPU throughput of oaml on one CUDA device; prints one table.
#
#   - training: img/s of one optimizer step of the FULL objective (AdaFace + QAConv pairwise + class-memory
#     softmax-triplet + occlusion; the real OamlSystem.training_step, see benchmarks/bench_train_step.py) for ir_50
#     at batch 256, under bf16 autocast and under fp16 autocast with a GradScaler (Lightning's "bf16-mixed" and
#     "16-mixed"), plus the AdaFace-only step in bf16 for the cost ratio; peak GPU memory per row;
#   - QAConv: all-pairs matching of N x N random 512 x 7 x 7 feature maps with visibility maps (eval mode,
#     chunked by QAConv.max_chunk_bytes), and paired matching (the validation mode), in bf16, fp16 and fp32;
#   - one rank of a sharded run (SPEC 13.3): the margin-head shard of ceil(C/R) columns scoring the global batch
#     (R x --batch rows) with its PartialSGD step, at --sample_rate 1 and --sample-rate, in bf16, and the
#     class-memory shard of ceil(C/R) fp16 rows scoring this rank's batch against 1 + k candidates, for
#     C = --scale-classes and R = --ranks; peak memory per row next to the per-rank estimate that the run's
#     preflight prints (oaml.training.memory_estimate).
#
# Usage (from anywhere; needs the oaml package installed, e.g. `pip install -e .`):
#   benchmarks/gpu.sh [--arch ir_50] [--batch 256] [--classes 85742] [--steps 20] [--warmup 5] [--qaconv-n 2048]
#                     [--scale-classes 2059906] [--ranks 8] [--sample-rate 0.1] [--scale-batch 128]
#   PYTHON=/path/to/python benchmarks/gpu.sh ...      (default: python)
# Exit status: 0 on success, 2 when no CUDA device is available (nothing is run), 1 on errors.
# `--device cpu` runs the same code on the CPU as a smoke test (use tiny sizes: it is not a benchmark there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"
exec "${PYTHON}" - "$@" <<'PY'
import argparse
import gc
import sys
import time

import torch

parser = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description="oaml GPU throughput (training and QAConv)")
parser.add_argument("--arch", default="ir_50", help="backbone (default ir_50)")
parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
parser.add_argument("--batch", type=int, default=256, help="training batch, a multiple of 4 (default 256)")
parser.add_argument("--classes", type=int, default=85742, help="classes of the head and class memory (MS1MV2: 85742)")
parser.add_argument("--steps", type=int, default=20, help="timed training steps per row (default 20)")
parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default 5)")
parser.add_argument("--qaconv-n", type=int, default=2048, help="N of the N x N all-pairs QAConv match (default 2048)")
parser.add_argument("--qaconv-repeats", type=int, default=10, help="timed QAConv calls per row (default 10)")
parser.add_argument("--device", default="cuda", help="torch device (default cuda; 'cpu' = smoke test only)")
parser.add_argument("--scale-classes", type=int, default=2059906, help="classes of the sharded rows (WebFace42M)")
parser.add_argument("--ranks", type=int, default=8, help="world size the shard belongs to (default 8)")
parser.add_argument("--sample-rate", type=float, default=0.1, help="Partial FC sample rate of the sampled row")
parser.add_argument("--scale-batch", type=int, default=128, help="images per rank in the sharded rows (default 128)")
args = parser.parse_args()

device = torch.device(args.device)
if device.type == "cuda" and not torch.cuda.is_available():
    print(f"benchmarks/gpu.sh: no CUDA device available (torch {torch.__version__}, built with CUDA "
          f"{torch.version.cuda or 'none'}); run it on a machine with an NVIDIA GPU. Nothing was measured.",
          file=sys.stderr)
    sys.exit(2)

from benchmarks.bench_train_step import build_step, make_batch  # noqa: E402  (after the CUDA check)
from oaml.evaluation.report import console_table  # noqa: E402
from oaml.models import ClassMemory, QAConv  # noqa: E402
from oaml.models.partial_fc import PartialFC  # noqa: E402
from oaml.training.memory_estimate import estimate_rank_memory  # noqa: E402
from oaml.training.partial_sgd import PartialSGD  # noqa: E402

CUDA = device.type == "cuda"
if CUDA:
    torch.backends.cudnn.benchmark = True  # fixed input shapes, as in training


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize(device)


def reset_peak() -> None:
    gc.collect()  # drop the previous row's system before measuring the next peak
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib() -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if CUDA else "-"


def timed(fn, warmup: int, repeats: int) -> float:
    """Seconds per call: warm-up calls, then `repeats` calls between two device synchronisations."""
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / max(1, repeats)


rows: list[list[str]] = []
step_seconds: dict[str, float] = {}
size = f"{args.arch} w{args.width:g} B={args.batch}"
batch = make_batch(args.batch, args.classes, device=device)
for label, full, precision in (("full", True, "bf16"), ("full", True, "fp16"), ("adaface-only", False, "bf16")):
    name = f"train step {label} {precision} autocast ({size})"
    reset_peak()
    try:
        setup = build_step(args.arch, args.width, full, num_classes=args.classes, device=device)
        seconds = timed(lambda: setup.step(batch, precision), args.warmup, args.steps)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as error:  # report the row, keep the others
        rows.append([name, "failed", "-", "-", str(error).splitlines()[0][:100]])
        continue
    finally:
        setup = None
    step_seconds[f"{label} {precision}"] = seconds
    rows.append([name, f"{args.batch / seconds:,.0f} img/s", f"{1e3 * seconds:,.1f} ms/step", peak_gib(),
                 f"mean of {args.steps} synchronised steps after {args.warmup} warm-up"])
if "full bf16" in step_seconds and "adaface-only bf16" in step_seconds:
    cost = step_seconds["full bf16"] / step_seconds["adaface-only bf16"]
    rows.append([f"cost ratio full / adaface-only, bf16 ({size})", f"{cost:.2f}x", "-", "-",
                 "step time ratio; CPU target <= 1.30x"])
del batch

torch.manual_seed(0)
n = args.qaconv_n
qaconv = QAConv(512, 7, 7).to(device).eval()
feats = torch.randn(n, 512, 7, 7, device=device)
occ = torch.rand(n, 1, 7, 7, device=device)
for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", None)):
    def all_pairs() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            qaconv(feats, feats, occ, occ)

    def paired() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            qaconv.match_pairs(feats, feats.flip(0), occ, occ.flip(0))

    reset_peak()
    seconds = timed(all_pairs, 1, args.qaconv_repeats)
    rows.append([f"qaconv all-pairs {precision} ({n} x {n}, with visibility)", f"{n * n / seconds:,.0f} pairs/s",
                 f"{1e3 * seconds:,.1f} ms/call", peak_gib(), f"eval, chunks of <= {qaconv.max_chunk_bytes >> 20} MiB"])
    seconds = timed(paired, 1, args.qaconv_repeats)
    rows.append([f"qaconv paired {precision} ({n} pairs)", f"{n / seconds:,.0f} pairs/s",
                 f"{1e3 * seconds:,.2f} ms/call", "-", "validation mode"])

del feats, occ, qaconv


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


shard = -(-args.scale_classes // args.ranks)
global_rows = args.ranks * args.scale_batch
scale = f"C={args.scale_classes:,} R={args.ranks}: shard of {shard:,}"
for rate in (1.0, args.sample_rate):
    reset_peak()
    estimate = estimate_rank_memory(args.scale_classes, args.ranks, rate, batch_size=global_rows, class_memory=False)
    head = PartialFC("adaface", 512, shard, sample_rate=rate).to(device).train()
    head_opt = PartialSGD([head.kernel], lr=0.1, momentum=0.9, heads=[head])
    emb = torch.nn.functional.normalize(torch.randn(global_rows, 512, device=device), dim=1)
    norms, labels = torch.ones(global_rows, 1, device=device), torch.randint(0, shard, (global_rows,), device=device)

    def head_step() -> None:
        head_opt.zero_grad(set_to_none=False)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = head(emb, norms, labels).loss
        loss.backward()
        head_opt.step()

    seconds = timed(head_step, args.warmup, args.steps)
    rows.append([f"sharded head bf16 rho={rate:g} ({scale}, {global_rows} rows)",
                 f"{global_rows / seconds:,.0f} img/s", f"{1e3 * seconds:,.1f} ms/step", peak_gib(),
                 f"estimate {gib(estimate.head_total)} per rank"])
    del head, head_opt, emb, norms, labels
reset_peak()
memory = ClassMemory(shard, 512, 7, 7, 32, device=device)
for start in range(0, shard, 16384):
    ids = torch.arange(start, min(start + 16384, shard), device=device)
    memory.update(torch.randn(ids.numel(), 512, 7, 7, device=device, dtype=torch.float16), ids,
                  torch.randn(ids.numel(), 512, device=device))
memory.rebuild_graph()
matcher = QAConv(512, 7, 7).to(device).train()
probe = torch.randn(args.scale_batch, 512, 7, 7, device=device, requires_grad=True)
probe_labels = torch.randint(0, shard, (args.scale_batch,), device=device)


def memory_step() -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits, _ = memory.logits(matcher, probe, probe_labels)
    logits.float().sum().backward()


seconds = timed(memory_step, args.warmup, args.steps)
estimate = estimate_rank_memory(args.scale_classes, args.ranks)
rows.append([f"sharded class memory bf16 ({scale} rows, B={args.scale_batch}, k=32)",
             f"{args.scale_batch / seconds:,.0f} img/s", f"{1e3 * seconds:,.1f} ms/step", peak_gib(),
             f"estimate {gib(estimate.memory_total)} per rank (fp16 maps, prototypes, graph)"])
del memory, matcher, probe

if CUDA:
    props = torch.cuda.get_device_properties(device)
    where = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
else:
    where = f"CPU smoke test, {torch.get_num_threads()} threads"
print(f"# oaml GPU benchmark | {where} | torch {torch.__version__} | classes {args.classes} | "
      f"cudnn.benchmark {torch.backends.cudnn.benchmark if CUDA else '-'}")
print(console_table(rows, ["benchmark", "throughput", "time", "peak mem", "notes"]))
sys.exit(1 if any(r[1] == "failed" for r in rows) else 0)
PY
