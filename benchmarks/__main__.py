"""Run every benchmark and print one table: figure, baseline and their ratio, measured side by side.

Usage: ``python -m benchmarks [--quick] [--only NAME ...] [--json FILE]``. Each module exposes
``run(quick: bool) -> list[dict]`` with the keys name, value, baseline, unit and ratio (and optional notes).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time

import torch

from oaml.evaluation.report import console_table

MODULES = ("bench_verification", "bench_qaconv", "bench_loader", "bench_train_step", "bench_validation",
           "bench_eval", "bench_occlude", "bench_identify", "bench_scale")


def _format(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,.1f} {unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (< 10 minutes)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these modules (e.g. bench_qaconv)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"# {platform.platform()} | {platform.processor() or platform.machine()} | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()}", flush=True)
    rows: list[dict[str, object]] = []
    for name in args.only or MODULES:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"benchmarks.{name}":
                raise
            continue
        start = time.perf_counter()
        produced = module.run(quick=args.quick)
        for row in produced:
            row["module"] = name
        rows.extend(produced)
        print(f"# {name}: {time.perf_counter() - start:.0f} s", flush=True)
    table = [[r["name"], _format(float(r["value"]), str(r["unit"])),
              _format(float(r["baseline"]), str(r["unit"])) if r.get("baseline") is not None else "-",
              f"{float(r['ratio']):.2f}x" if r.get("ratio") is not None else "-", r.get("notes", "")]
             for r in rows]
    print(console_table(table, ["benchmark", "oaml", "baseline", "ratio", "notes"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
