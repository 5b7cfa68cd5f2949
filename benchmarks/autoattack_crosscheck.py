"""Standard AutoAttack: robench's ``autoattack`` against the authors' reference implementation.

robench's ``autoattack`` composes ART's APGD-CE, APGD-T and Square with the authors' FAB-T; the
reference is ``pyautoattack`` (the fra31/auto-attack code, ``version="standard"``), run on the same
images, model and ε. Both robust accuracies (with Wilson 95 % intervals), the per-example agreement,
the APGD-CE-only accuracy of each, the times and the machine go into ``benchmarks/RESULTS.md``
under their own heading. FAB-T is the same code in both, so the cross-check is independent for
APGD-CE, APGD-T and Square only.

    OMP_NUM_THREADS=1 python benchmarks/autoattack_crosscheck.py --data-dir /work/data --n 200
"""
from __future__ import annotations

import argparse
import datetime
import logging
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import write_section  # beside this script  # noqa: E402

HEADING = "## autoattack_crosscheck (standard AutoAttack, robench vs reference): {model}, n={n}, ε={eps}"


class _Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _robust(model: torch.nn.Module, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    assert (x_adv - x).abs().amax().item() <= eps + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def _pct(k: int, n: int) -> str:
    from robench.results import wilson
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", default="8/255", help="comma list of L∞ ε in pixel units")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--apgd-ce", action="store_true", help="also time robench's apgd_ce alone (one more APGD run)")
    ap.add_argument("--note", default="", help="conditions of the run (load, other jobs)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import model_zoo
    import pyautoattack
    from pyautoattack import AutoAttack
    import art
    from robench.attacks import make_attack
    from robench.data import load_cifar
    from robench.machine import cpu_capability, cpu_name

    model = model_zoo.load(args.model).eval()
    x, y = load_cifar("cifar10", args.data_dir, "test").first(args.n).as_float()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    n = len(y)
    started = datetime.datetime.now(datetime.timezone.utc)
    rows, notes = [], []
    for text in args.eps.split(","):
        num, _, den = text.partition("/")
        eps = float(num) / float(den or 1)
        t0 = time.perf_counter()
        ours = make_attack("autoattack", eps=eps, seed=0).run(model, x, y).robust
        t_ours = time.perf_counter() - t0
        ours_ce, t_ours_ce = None, float("nan")
        if args.apgd_ce:
            t0 = time.perf_counter()
            ours_ce = make_attack("apgd_ce", eps=eps, seed=0).run(model, x, y).robust
            t_ours_ce = time.perf_counter() - t0

        log = _Log()
        logging.getLogger("auto-attack").addHandler(log)
        logging.getLogger("auto-attack").setLevel(logging.DEBUG)
        ref = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device="cpu")
        t0 = time.perf_counter()
        x_ref, _ = ref.run_standard_evaluation(x, y, batch_size=n)
        t_ref = time.perf_counter() - t0
        logging.getLogger("auto-attack").removeHandler(log)
        theirs = _robust(model, x_ref, x, y, eps)
        after = [ln for ln in log.lines if "robust accuracy" in ln]

        both = int((ours & theirs).sum())
        rows.append(f"| {text} | {_pct(int(clean.sum()), n)} | {_pct(int(ours.sum()), n)} | "
                    f"{_pct(int(theirs.sum()), n)} | {both} | {int((ours & ~theirs).sum())} | "
                    f"{int((~ours & theirs).sum())} | {'–' if ours_ce is None else _pct(int(ours_ce.sum()), n)} | "
                    f"{t_ours:.0f} | {t_ref:.0f} | {'–' if ours_ce is None else f'{t_ours_ce:.0f}'} |")
        notes.append(f"- ε={text}, reference log: " + "; ".join(after))
        print(rows[-1], flush=True)

    heading = HEADING.format(model=args.model, n=n, eps=args.eps)
    body = "\n".join([
        heading, "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.platform()}, CPU {cpu_name()} ({cpu_capability()}), torch {torch.__version__} "
        f"with {torch.get_num_threads()} thread(s), no GPU; ART {art.__version__}, pyautoattack "
        f"{getattr(pyautoattack, '__version__', '0.2.0')}; {args.note}",
        f"- command: `OMP_NUM_THREADS={args.threads} python benchmarks/autoattack_crosscheck.py --data-dir DATA "
        f"--n {args.n} --eps {args.eps} --threads {args.threads}{' --apgd-ce' if args.apgd_ce else ''} --note ...`",
        f"- model {args.model} (shipped weights), the first {n} CIFAR-10 test images, seed 0 for robench; "
        "reference: `pyautoattack.AutoAttack(model, norm='Linf', eps=ε, version='standard', seed=0)`. "
        "robench: `make_attack('autoattack', eps=ε)` = ART APGD-CE + ART APGD-T (9 targets, ART's DLR) + "
        "FAB-T (the reference's own code, so not an independent check) + ART Square (5000 queries, p_init 0.8). "
        "Robust accuracy with Wilson 95 % interval; 'only ours' = robust under robench but broken by the "
        "reference, and vice versa.",
        "",
        "| ε | clean | robench autoattack | reference AutoAttack | both robust | only robench robust | "
        "only reference robust | robench apgd_ce alone | robench s | reference s | apgd_ce s |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|",
        *rows, "", *notes,
    ])
    write_section(Path(args.out), heading, body)
    print(body)


if __name__ == "__main__":
    main()
