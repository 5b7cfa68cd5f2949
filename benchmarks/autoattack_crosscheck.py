"""Standard AutoAttack: robench's ``autoattack`` against the authors' code called directly.

robench's ``autoattack`` runs ``pyautoattack`` (the fra31/auto-attack code, ``version="standard"``) through
robench's attack wrapper and evaluation loop (``robench.executors.run_attack_group``: batch seeds, the
frozen model, projection, bound check, scoring on the device). The reference here is the same package
called by hand on the same model object and the same batches, batch b with seed
``robench.executors.batch_seed(seed, b)`` (the seed robench gives it). Targets: identical per-example
flags, and robench's time / the reference's ≤ 1.05 (best of ``--repeats`` runs each, interleaved, so both
see the same machine). ``--art`` adds ``autoattack_art`` (the same composition built from ART's
components, an independent implementation) with its agreement.

    OMP_NUM_THREADS=1 python benchmarks/autoattack_crosscheck.py --data-dir DATA --n 16 --eps 8/255,1/255
    python benchmarks/autoattack_crosscheck.py --data-dir DATA --n 1000 --eps 8/255,1/255 --device cuda
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import write_section  # beside this script  # noqa: E402

HEADING = "## autoattack_crosscheck (robench autoattack vs pyautoattack called directly): {model}, n={n}, ε={eps}, {dev}"


def _pct(k: int, n: int) -> str:
    from robench.results import wilson
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})"


def reference_flags(net, x, y, *, eps: float, seed: int, batch_size: int) -> np.ndarray:
    """pyautoattack's standard AutoAttack by hand, batch by batch with robench's batch seeds."""
    from pyautoattack import AutoAttack

    from robench.executors import batch_seed

    flags = []
    for b, i in enumerate(range(0, len(y), batch_size)):
        xb, yb = x[i:i + batch_size].contiguous(), y[i:i + batch_size]  # the reference needs NCHW-contiguous
        aa = AutoAttack(net, norm="Linf", eps=eps, version="standard", seed=batch_seed(seed, b), device=x.device)
        _, y_adv = aa.run_standard_evaluation(xb, yb, batch_size=len(yb))
        flags.append(y_adv == yb)
    return torch.cat(flags).cpu().numpy()


def robench_flags(net, x, y, *, eps: float, seed: int, batch_size: int, attack: str = "autoattack") -> np.ndarray:
    from robench.executors import run_attack_group

    (res,) = run_attack_group(net, x, y, attack=attack, eps=[eps], backend=None, params={}, seed=seed,
                              batch_size=batch_size)
    return res.flags


def _timed(fn, device) -> tuple[tuple[float, float], np.ndarray]:
    """((wall s, this process's CPU s), result). On a shared machine the CPU time is what the run itself
    cost; on a GPU the wall time is (the CPU only launches kernels)."""
    from robench.devices import sync

    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return (time.perf_counter() - t0, time.process_time() - c0), out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", default="8/255", help="comma list of L∞ ε in pixel units")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: robench's for the device")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side per ε (best time counts)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--art", action="store_true", help="also run autoattack_art (ART's components) once")
    ap.add_argument("--note", default="", help="conditions of the run (load, other jobs)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    args = ap.parse_args(argv)
    from robench.machine import keep_freed_memory

    keep_freed_memory()  # the allocator setting every robench command runs with (ROBENCH_MALLOC=default: glibc's)
    torch.set_num_threads(args.threads)

    import art

    from robench.data import load_cifar
    from robench.devices import default_batch_size, determinism, memory_format_name, resolve_device
    from robench.executors import Inputs
    from robench.models import ModelCache
    from robench.provenance import device_name, library_versions
    from robench.spec import parse_eps

    dev = resolve_device(args.device)
    batch = args.batch_size or default_batch_size(dev)
    net = ModelCache(dev).get(args.model, None).module  # robench's model object: both sides use it
    data = load_cifar("cifar10", args.data_dir, "test").first(args.n)
    x, y = Inputs(data, dev).clean(args.n)
    with torch.no_grad():
        clean = (torch.cat([net(x[i:i + batch]).argmax(1) for i in range(0, len(y), batch)]) == y).cpu().numpy()
    n = len(y)
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    with determinism(dev):
        for text in args.eps.split(","):
            eps = parse_eps(text)
            kw = dict(eps=eps, seed=args.seed, batch_size=batch)
            t_ref, t_ours, ref, ours = [], [], None, None
            for _ in range(args.repeats):  # interleaved: both sides see the same load
                t, ref = _timed(lambda: reference_flags(net, x, y, **kw), dev)
                t_ref.append(t)
                t, ours = _timed(lambda: robench_flags(net, x, y, **kw), dev)
                t_ours.append(t)
            same = int((ref == ours).sum())
            art_cells = ""
            if args.art:
                (t_art, _), theirs = _timed(lambda: robench_flags(net, x, y, attack="autoattack_art", **kw), dev)
                art_cells = (f" | {_pct(int(theirs.sum()), n)} | {int((theirs != ref).sum())} | {t_art:.1f}")
            wall = min(t[0] for t in t_ours), min(t[0] for t in t_ref)
            cpu = min(t[1] for t in t_ours), min(t[1] for t in t_ref)
            rows.append(f"| {text} | {_pct(int(clean.sum()), n)} | {_pct(int(ours.sum()), n)} | "
                        f"{_pct(int(ref.sum()), n)} | {'yes' if same == n else f'NO ({n - same} differ)'} | "
                        f"{wall[0]:.1f} | {wall[1]:.1f} | {wall[0] / wall[1]:.3f} | {cpu[0]:.1f} | {cpu[1]:.1f} | "
                        f"{cpu[0] / cpu[1]:.3f}{art_cells} |")
            print(rows[-1], flush=True)

    heading = HEADING.format(model=args.model, n=n, eps=args.eps, dev=dev.type)
    versions = library_versions()
    cmd = (f"`OMP_NUM_THREADS={args.threads} python benchmarks/autoattack_crosscheck.py --data-dir DATA --n {args.n} "
           f"--eps {args.eps} --device {args.device}{f' --batch-size {args.batch_size}' if args.batch_size else ''} "
           f"--repeats {args.repeats} --threads {args.threads}{' --art' if args.art else ''} --note ...`")
    body = "\n".join([
        heading, "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.platform()}, {device_name(dev)}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} CPU thread(s); ART {art.__version__}, pyautoattack {versions['pyautoattack']}; "
        f"{args.note}",
        f"- command: {cmd}",
        f"- model {args.model} (robench's model object, {memory_format_name(dev)} on {dev.type}), "
        f"the first {n} CIFAR-10 test images, batch {batch}, seed {args.seed}. robench: "
        "`run_attack_group(net, x, y, attack='autoattack', …)`; reference: per batch b, "
        "`pyautoattack.AutoAttack(net, norm='Linf', eps=ε, version='standard', seed=batch_seed(seed, b))"
        ".run_standard_evaluation(x_b, y_b)`. Robust accuracy with Wilson 95 % interval; times are the best of "
        f"{args.repeats} interleaved runs, wall and this process's CPU time (on a shared machine the CPU time is "
        "the run's own cost; on a GPU the wall time counts); ratio = robench / reference (target ≤ 1.05)"
        + ("; autoattack_art: ART's APGD-CE, APGD-T and Square with the reference's FAB-T, and the examples "
           "where its flag differs from the reference's." if args.art else "."),
        "",
        "| ε | clean | robench autoattack | pyautoattack direct | flags identical | robench wall s | reference wall s "
        "| wall ratio | robench CPU s | reference CPU s | CPU ratio |"
        + (" autoattack_art | differ | art s |" if args.art else ""),
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---|---:|---:|" if args.art else ""),
        *rows,
    ])
    write_section(Path(args.out), heading, body)
    print(body)


if __name__ == "__main__":
    main()
