"""Landscape and stability throughput (seconds and images/s per model), written to RESULTS.md.

    python benchmarks/analysis_throughput.py --n 200                 # time both analyses on resnet20 now
    python benchmarks/analysis_throughput.py --from-tables results/lambda_study_depth20_landscape.parquet \
        results/lambda_study_depth20_stability.parquet --note '...'  # the times the study run recorded

Each analysis table records, per model, the wall seconds its analysis took (``seconds``) and n;
``--from-tables`` reports those (the study's own run), the default measures a fresh run of the
CLI settings given here. Load averages are printed because the machine is shared.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from results_md import write_section  # beside this script

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _rows_from_tables(paths: list[str]) -> list[dict]:
    from robench.analysis.common import read_analysis
    from robench.analysis.plots import model_label

    rows = []
    for p in paths:
        df = read_analysis(p)
        per = df.drop_duplicates(["model", "lam"])
        for r in per.itertuples():
            rows.append({"analysis": r.analysis, "model": model_label(r.model, r.lam, r.scheme), "n": int(r.n),
                         "seconds": float(r.seconds), "source": Path(p).name})
    return rows


def _measure(model: str, n: int, data_dir: str | None, points: int, iters: int) -> list[dict]:
    from robench.analysis.landscape import landscape
    from robench.analysis.stability import stability

    rows = []
    for name, fn in (("landscape", lambda: landscape(models=[model], data_dir=data_dir, n=n, points=points, log=lambda s: None)),
                     ("stability", lambda: stability(models=[model], data_dir=data_dir, n=n, iters=iters, log=lambda s: None))):
        t0 = time.perf_counter()
        df = fn()
        rows.append({"analysis": name, "model": model, "n": int(df["n"].iloc[0]), "seconds": time.perf_counter() - t0,
                     "source": "measured now (incl. model and data loading)"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-tables", nargs="*", default=None, help="report the seconds recorded in these tables")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--points", type=int, default=21)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--note", default="")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from robench.machine import cpu_capability, cpu_label, keep_freed_memory

    # the allocator setting every robench command runs with (ROBENCH_MALLOC=default: glibc's own)
    keep_freed_memory()

    load = os.getloadavg()
    rows = _rows_from_tables(args.from_tables) if args.from_tables else _measure(args.model, args.n, args.data_dir,
                                                                                 args.points, args.iters)
    cmd = "python benchmarks/analysis_throughput.py " + " ".join(sys.argv[1:])
    lines = [f"## analysis_throughput (CPU {cpu_capability()})", "",
             "Wall seconds per model of `robench landscape` (21-point grid, grad_sign + PGD-20 + 1 random direction) "
             "and `robench stability` (10 power iterations), 1 OpenMP thread.", f"Command: `{cmd}`", "",
             f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- platform: {platform.platform()}", f"- cpu: {cpu_label()}",
             f"- torch: {torch.__version__}, {torch.get_num_threads()} threads",
             f"- load when this section was written: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)"]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| analysis | model | n | seconds | images/s | source |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['analysis']} | {r['model']} | {r['n']} | {r['seconds']:.0f} | {r['n'] / r['seconds']:.2f} | {r['source']} |")
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section(RESULTS, lines[0], body)


if __name__ == "__main__":
    main()
