"""PGD-20 throughput: robench (each backend) vs the floor, the libraries called directly, torchattacks
and the seed repository's own loop — one run, interleaved rounds, medians.

    python benchmarks/eval_throughput.py              # n=512, 3 rounds, writes benchmarks/RESULTS.md
    python benchmarks/eval_throughput.py --n 256 --rounds 3 --no-write

Protocol: ResNet-20 (untrained weights: only timing matters), eval mode, random [0,1] images,
PGD L∞ ε=8/255, 20 steps of 2/255, random start, the whole batch at once. The floor is 21
forward+backward passes of the same batch with the gradient taken w.r.t. the input only
(parameters frozen). Every row is timed once per round; rounds are interleaved so that a
background load slows every row alike, and the table reports the median round.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import model_zoo
from robench.attacks import make_attack
from robench.machine import cpu_label
from results_md import write_section  # beside this script

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 20
SECTION = "## eval_throughput"
ENGINE_SECTION = "## eval_throughput (robench eval path vs hand-written loop)"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@contextmanager
def params_requiring_grad(model: nn.Module, flag: bool) -> Iterator[None]:
    before = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p, r in zip(model.parameters(), before):
            p.requires_grad_(r)


def floor(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """21 forward+backward passes of the same batch, input gradient only (the cost of PGD-20 + scoring)."""
    with params_requiring_grad(model, False):
        for _ in range(STEPS + 1):
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    return x + 0 * g


def seed_repo_pgd(net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A faithful copy of minicheshire/InResNet test_pgd.py's loop (model state as there: eval,
    parameters requiring grad), on [0,1] pixels. Note its projection is centred on the random start
    ``cp_inputs``, not on the clean image; the final accuracy forward is left out, as for all rows."""
    eps, alpha, M = EPS, ALPHA, STEPS
    criterion = nn.CrossEntropyLoss()

    def where(cond, x, y):
        cond = cond.float()
        return (cond * x) + ((1 - cond) * y)

    inputs = inputs.clone().requires_grad_(True) * 1  # Variable(..., requires_grad=True).cuda(): a non-leaf
    inputs += torch.Tensor(inputs.shape).uniform_(-eps, eps).to(inputs.device)
    cp_inputs = inputs.clone().detach()
    for _ in range(M):
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        net.zero_grad()
        inputs_grad = torch.autograd.grad(loss, inputs)[0]
        inputs.data = inputs.data + (alpha * inputs_grad.data.sign())
        inputs = where(inputs > cp_inputs + eps, cp_inputs + eps, inputs)
        inputs = where(inputs < cp_inputs - eps, cp_inputs - eps, inputs)
        inputs = inputs.clamp(min=0, max=1)
    return inputs.detach()


def hand_pgd(memory_format: torch.memory_format) -> Callable:
    """A hand-written PGD-20 (random start, projection on the clean image, [0,1] clip) with frozen
    parameters, model and input in ``memory_format``, plus the scoring forward: the loop robench's
    evaluation is held to."""
    def fn(model, x, y):
        model = model.to(memory_format=memory_format)
        x = x.contiguous(memory_format=memory_format)
        with params_requiring_grad(model, False):
            g = torch.Generator().manual_seed(0)
            adv = (x + torch.empty_like(x).uniform_(-EPS, EPS, generator=g)).clamp(0, 1)
            for _ in range(STEPS):
                adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
                adv = torch.min(torch.max(adv.detach() + ALPHA * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
            with torch.no_grad():
                return model(adv).argmax(1) == y
    return fn


def robench_engine(model: nn.Module, fmt: torch.memory_format | None = None) -> Callable:
    """PGD-20 the way ``robench eval`` runs it: the engine's model cache (eval mode, frozen, its
    memory format unless ``fmt`` is given) and :func:`robench.executors.run_attack_group` on inputs
    in that format."""
    from robench.executors import memory_format, run_attack_group

    fmt = memory_format(torch.device("cpu")) if fmt is None else fmt

    def fn(_, x, y):
        net = model.to(memory_format=fmt)
        with params_requiring_grad(net, False):
            (r,) = run_attack_group(net, x.contiguous(memory_format=fmt), y, attack="pgd", eps=[EPS], backend="art",
                                    params={"steps": STEPS, "step_size": ALPHA, "random_start": True}, seed=0,
                                    batch_size=len(x))
        return r.flags
    return fn


def main_engine(args, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """--engine: robench's evaluation path against the hand-written loop in both memory formats."""
    rows = [("hand loop, contiguous", hand_pgd(torch.contiguous_format)),
            ("hand loop, channels_last", hand_pgd(torch.channels_last)),
            ("robench eval path (run_attack_group, art)", robench_engine(model)),
            ("robench eval path, contiguous (for comparison)", robench_engine(model, torch.contiguous_format))]
    info = machine()
    print(f"n={args.n}, rounds={args.rounds}; " + "; ".join(info.values()), flush=True)
    for _, fn in rows:
        fn(model, x[:8], y[:8])
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for r in range(args.rounds):
        for name, fn in rows:
            t0 = time.perf_counter()
            fn(model, x, y)
            times[name].append(time.perf_counter() - t0)
            print(f"  round {r + 1}: {name:44s} {times[name][-1]:8.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = min(rows[:2], key=lambda r: med[r[0]])[0]
    lines = ["| row | median s | × best hand loop | rounds (s) |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {med[name]:.2f} | {med[name] / med[best]:.2f} | {', '.join(f'{t:.2f}' for t in times[name])} |"
              for name, _ in rows]
    engine = rows[2][0]
    checks = [f"best hand loop: {best} (channels_last / contiguous: "
              f"{med[rows[1][0]] / med[rows[0][0]]:.3f})",
              f"robench eval path / best hand loop: {med[engine] / med[best]:.3f} (target ≤ 1.05)",
              f"robench eval path, channels_last / contiguous: {med[engine] / med[rows[3][0]]:.3f}"]
    table = "\n".join(lines)
    print("\n" + table + "\n\n" + "\n".join(checks))
    if not args.no_write:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = shlex.join(["python", "benchmarks/eval_throughput.py", *sys.argv[1:]])
        section = "\n".join([
            ENGINE_SECTION, "",
            f"PGD-20 L∞ (ε=8/255, step 2/255, random start) + the scoring forward on ResNet-20 (untrained "
            f"weights), n={args.n} random [0,1] images in one batch, CPU, parameters frozen; median of "
            f"{args.rounds} interleaved rounds. Command: `{command}`", "",
            f"- date: {now}", *[f"- {k}: {v}" for k, v in info.items()],
            *([f"- note: {args.note}"] if args.note else []), "", table, "", *[f"- {c}" for c in checks], "",
        ])
        write_section(args.results, ENGINE_SECTION, section)
        print(f"\nwrote section {ENGINE_SECTION!r} of {args.results}")
    return 0


def robench_pgd(backend: str, scored: bool = False) -> Callable:
    atk = make_attack("pgd", eps=EPS, backend=backend, step_size=ALPHA, steps=STEPS, random_start=True)

    def fn(model, x, y):
        return atk.run(model, x, y).x_adv if scored else atk(model, x, y)
    return fn


def art_direct(frozen: bool) -> Callable:
    def fn(model, x, y):
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        with params_requiring_grad(model, not frozen):
            clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                    nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
            pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=ALPHA, max_iter=STEPS,
                                           num_random_init=1, batch_size=len(x), verbose=False)
            return torch.from_numpy(pgd.generate(x.numpy(), y.numpy()))
    return fn


def foolbox_direct(frozen: bool) -> Callable:
    def fn(model, x, y):
        import foolbox as fb

        with params_requiring_grad(model, not frozen):
            fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
            _, adv, _ = fb.attacks.LinfPGD(abs_stepsize=ALPHA, steps=STEPS, random_start=True)(
                fmodel, x, y, epsilons=EPS)
            return adv
    return fn


def torchattacks_row() -> tuple[Callable | None, str]:
    try:
        import torchattacks
    except (ImportError, RuntimeError, OSError) as e:  # it may drag in torchvision, which cannot import here
        return None, f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:80]}"

    def fn(model, x, y):
        return torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)(x, y)
    return fn, f"torchattacks {torchattacks.__version__} (installed with --no-deps)"


def machine() -> dict[str, str]:
    import art
    import foolbox
    return {
        "platform": platform.platform(),
        "cpu": cpu_label(),
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
        "libraries": f"ART {art.__version__}, Foolbox {foolbox.__version__}, Python {platform.python_version()}",
        "load": "load average at start %.2f / %.2f / %.2f (1/5/15 min)" % os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=512, help="images per batch (default 512)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the median is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="Markdown file whose section is (re)written")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--note", default="", help="extra line for the results section (e.g. about contention)")
    ap.add_argument("--engine", action="store_true",
                    help="compare robench's evaluation path with a hand-written loop in the best memory format")
    args = ap.parse_args(argv)
    from robench.machine import keep_freed_memory

    keep_freed_memory()  # the allocator setting every robench command runs with (ROBENCH_MALLOC=default: glibc's)
    if args.n < 1 or args.rounds < 1:
        ap.error("--n and --rounds must be ≥ 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = model_zoo.create_model("resnet20").eval()  # parameters require grad: the library default
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.n,), generator=g)

    if args.engine:
        return main_engine(args, model, x, y)
    ta_fn, ta_note = torchattacks_row()
    rows: list[tuple[str, str, Callable | None]] = [
        ("floor", "21 fwd+bwd, input grad only, frozen", floor),
        ("robench pgd, backend=art", "make_attack('pgd', ...)(model, x, y)", robench_pgd("art")),
        ("robench pgd, backend=foolbox", "same, Foolbox", robench_pgd("foolbox")),
        ("robench pgd, art, .run()", "+ one scoring forward", robench_pgd("art", scored=True)),
        ("ART direct, frozen model", "PyTorchClassifier + ProjectedGradientDescent", art_direct(True)),
        ("Foolbox direct, frozen model", "PyTorchModel + LinfPGD", foolbox_direct(True)),
        ("ART direct, params require grad (before)", "library default model state", art_direct(False)),
        ("Foolbox direct, params require grad (before)", "library default model state", foolbox_direct(False)),
        ("torchattacks PGD", ta_note, ta_fn),
        ("seed repo loop (test_pgd.py)", "projection centred on the random start", seed_repo_pgd),
    ]
    info = machine()
    print(f"n={args.n}, rounds={args.rounds}; " + "; ".join(info.values()), flush=True)

    # warm-up on a small slice: first-call costs (imports, allocator, oneDNN) are not throughput
    for _, _, fn in rows:
        if fn is not None:
            fn(model, x[:8], y[:8])
    times: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    for r in range(args.rounds):
        for name, _, fn in rows:
            if fn is None:
                continue
            t0 = time.perf_counter()
            fn(model, x, y)
            times[name].append(time.perf_counter() - t0)
            print(f"  round {r + 1}: {name:48s} {times[name][-1]:8.2f} s", flush=True)
    assert all(p.requires_grad for p in model.parameters()) and not model.training  # state untouched

    med = {k: statistics.median(v) for k, v in times.items() if v}
    fl = med["floor"]
    lines = ["| row | what | median s | × floor | rounds (s) |", "|---|---|---:|---:|---|"]
    for name, what, fn in rows:
        if fn is None:
            lines.append(f"| {name} | {what} | – | – | – |")
            continue
        lines.append(f"| {name} | {what} | {med[name]:.2f} | {med[name] / fl:.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in times[name])} |")
    ratio = lambda a, b: med[a] / med[b]  # noqa: E731
    checks = [
        f"robench-art / ART direct (frozen): {ratio('robench pgd, backend=art', 'ART direct, frozen model'):.3f} "
        f"(target ≤ 1.05)",
        f"robench-foolbox / Foolbox direct (frozen): "
        f"{ratio('robench pgd, backend=foolbox', 'Foolbox direct, frozen model'):.3f} (target ≤ 1.05)",
        f"default path (robench pgd, art) / floor: {ratio('robench pgd, backend=art', 'floor'):.3f} (target ≤ 1.10)",
        f"freezing bought: ART {ratio('ART direct, params require grad (before)', 'ART direct, frozen model'):.2f}×, "
        f"Foolbox {ratio('Foolbox direct, params require grad (before)', 'Foolbox direct, frozen model'):.2f}× "
        f"(before / frozen)",
    ]
    table = "\n".join(lines)
    print("\n" + table + "\n\n" + "\n".join(checks))

    if not args.no_write:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = shlex.join(["python", "benchmarks/eval_throughput.py", *(argv if argv is not None else sys.argv[1:])])
        section = "\n".join([
            SECTION, "",
            f"PGD-20 L∞ (ε=8/255, step 2/255, random start) on ResNet-20 (untrained weights), n={args.n} "
            f"random [0,1] images in one batch, CPU; median of {args.rounds} interleaved rounds "
            f"(after a warm-up on 8 images). Command: `{command}`",
            "",
            f"- date: {now}",
            *[f"- {k}: {v}" for k, v in info.items()],
            *([f"- note: {args.note}"] if args.note else []),
            "", table, "", *[f"- {c}" for c in checks], "",
        ])
        write_section(args.results, SECTION, section)
        print(f"\nwrote section {SECTION!r} of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
