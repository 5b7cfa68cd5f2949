"""Packed training throughput: one `robench train` pack of K members against K sequential single runs.

Side by side in one process (same data, same thread count), alternating order between rounds:

* sequential: ``robench.train.train`` called K times (seeds 0…K-1), one model each — what K separate
  ``robench train --seed s`` runs do once their process is up;
* packed: ``robench.train.train_pack`` with the same K members — one ``robench train --seed 0,1,…``.

Both run whole epochs of the given recipe (data on the device, per-epoch draws, the epoch-end test
evaluation, checkpoint commit and metrics), so the ratio is what a user gets. The target (issue 22):
packed K = 4 ≥ 1.0× the images/s of the sequential runs on CPU with ``--threads 1``.

Two step-only rows show why packing is a loop of modules: the members' steps as ``train_pack`` runs
them (``robench.packed.PackStepper``; on CUDA replayed as one graph), and ``torch.func.vmap`` over the members' stacked parameters and
buffers (``stack_module_state`` + ``functional_call``: one batched, grouped-convolution network); both
train the same K members on the same draws, without evaluation.

With ``--data-dir`` (a folder holding cifar-10-batches-py/) two more rows time the commands a user
types, each its own process on the first ``batch × steps`` real training images: K sequential
``robench train --seed s`` runs against one ``robench train --seed 0,1,…`` (start-up, data loading
and the full 10,000-image test evaluation included, as a user pays them).

    python benchmarks/packed_throughput.py --k 4 --threads 1 --steps 20 --rounds 3
    python benchmarks/packed_throughput.py --k 4 --threads 1 --steps 20 --rounds 3 --data-dir DIR
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robench.data import Dataset, crop_flip, epoch_draws, pad_images
from robench.machine import cpu_capability, cpu_label
from robench.packed import Member, PackStepper, TrainData, lr_table
from robench.train import RECIPES, _build, lr_at, member_run, steps_per_epoch, train, train_pack
from results_md import write_section  # beside this script

SECTION = "## packed_throughput"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _quiet(_m: str) -> None:
    pass


def _data(n: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset("cifar10", "train", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n,), generator=g), "synthetic", "0" * 64)


def run_sequential(model: str, k: int, train_set, test_set, recipe: str, epochs: int, bs: int, device,
                   root: Path) -> tuple[float, float]:
    """Wall and CPU seconds of K single runs."""
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(k):
        train(model, train_set, test_set, seed=s, recipe=recipe, epochs=epochs, batch_size=bs, device=device,
              run_dir=root / f"seq{s}", progress=False, log=_quiet)
    return time.perf_counter() - t0, time.process_time() - c0


def run_packed(model: str, k: int, train_set, test_set, recipe: str, epochs: int, bs: int, device,
               root: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one pack of K."""
    t0, c0 = time.perf_counter(), time.process_time()
    train_pack([Member(model, None, s) for s in range(k)], train_set, test_set, recipe=recipe, epochs=epochs,
               batch_size=bs, device=device, run_dir=root / "pack", progress=False, log=_quiet)
    return time.perf_counter() - t0, time.process_time() - c0


def _train_cmd(model: str, seeds: str, args, root: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "robench", "train", "--model", model, "--seed", seeds, "--recipe", args.recipe,
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--n", str(args.batch_size * args.steps),
            "--threads", str(args.threads or torch.get_num_threads()), "--data-dir", str(args.data_dir),
            "--out", str(root / f"zoo-{name}"), "--run-dir", str(root / f"run-{name}")]


def run_commands(name: str, args, root: Path) -> float:
    """Wall seconds of the ``robench train`` commands a user types: K single runs, or one pack."""
    seeds = [str(s) for s in range(args.k)]
    cmds = ([_train_cmd(args.model, s, args, root, f"seq{s}") for s in seeds] if name == "sequential"
            else [_train_cmd(args.model, ",".join(seeds), args, root, "pack")])
    env = dict(os.environ, ROBENCH_PROGRESS="0")
    t0 = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


class LoopSteps:
    """The members' steps as train_pack runs them (no evaluation, no checkpoints)."""

    def __init__(self, model, k, train_set, rec, bs, device) -> None:
        n = len(train_set)
        spe = steps_per_epoch(rec, n, bs)
        data = TrainData(pad_images(train_set.images.to(device), rec.pad, rec.pad_mode), train_set.labels.to(device),
                         (32, 32))
        table = lr_table([lr_at(rec, s, spe, 1) for s in range(spe)], device)
        self.runs = []
        for s in range(k):
            run = member_run(Member(model, None, s), rec, data, table, batch_size=bs, n_used=spe * bs, num_classes=10,
                             dev=device)
            run.set_epoch(epoch_draws(torch.Generator().manual_seed(s), n, bs, pad=rec.pad, drop_last=True), 0)
            self.runs.append(run)
        # on CUDA the pack's step is replayed as a CUDA graph, as train_pack runs it
        self.stepper = PackStepper(self.runs, device, graphs=device.type == "cuda")
        self.bs, self.spe, self.s = bs, spe, 0

    def steps(self, count: int) -> None:
        for _ in range(count):
            if self.s and self.s % self.spe == 0:  # a new pass over the same draws (in place: graph-safe)
                for r in self.runs:
                    r.pos_t.zero_()
                    r.step_t.zero_()
            self.s += 1
            self.stepper.step(self.bs)


class VmapSteps:
    """The same members as one vmapped network over stacked parameters and buffers (torch.func)."""

    def __init__(self, model, k, train_set, rec, bs, device) -> None:
        from torch.func import functional_call, stack_module_state, vmap

        nets = [_build(Member(model, None, s), rec, num_classes=10, dev=device, dtype=torch.float32).to(
            memory_format=torch.contiguous_format) for s in range(k)]
        params, self.buffers = stack_module_state(nets)
        self.params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        base = copy.deepcopy(nets[0]).to("meta")
        self.opt = torch.optim.SGD(list(self.params.values()), lr=rec.lr, momentum=rec.momentum,
                                   weight_decay=rec.weight_decay, fused=True)

        def loss(p, b, x, y):
            return F.cross_entropy(functional_call(base, (p, b), (x,)), y, label_smoothing=rec.label_smoothing)
        self.loss = vmap(loss)
        self.xpad = pad_images(train_set.images.to(device), rec.pad, rec.pad_mode)
        self.y = train_set.labels.to(device)
        n = len(train_set)
        self.draws = [epoch_draws(torch.Generator().manual_seed(s), n, bs, pad=rec.pad, drop_last=True) for s in range(k)]
        self.bs, self.spe, self.s = bs, n // bs, 0

    def steps(self, count: int) -> None:
        for _ in range(count):
            s = self.s % self.spe
            self.s += 1
            sl = slice(s * self.bs, (s + 1) * self.bs)
            xs = torch.stack([crop_flip(self.xpad, d.order[sl], d.oy[sl], d.ox[sl], d.flip[sl], (32, 32))
                              for d in self.draws]).float().div_(255.0)
            ys = torch.stack([self.y[d.order[sl]] for d in self.draws])
            loss = self.loss(self.params, self.buffers, xs, ys).sum()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


def machine() -> str:
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no CUDA device"
    return f"{platform.platform()}, CPU {cpu_label()}, torch {torch.__version__} with {torch.get_num_threads()} threads{gpu}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--k", type=int, default=4, help="members in the pack (and sequential runs)")
    ap.add_argument("--recipe", default="paper", choices=sorted(RECIPES))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch (the training set is steps × batch images)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--n-test", type=int, default=1000, help="test images evaluated at each epoch's end")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--step-rows", type=int, default=None,
                    help="timed steps of the step-only rows (loop of modules vs vmap); 0 leaves them out "
                         "(default: --steps)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="real CIFAR-10 (cifar-10-batches-py/ inside): add the rows of the robench train commands")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    ap.add_argument("--note", default="", help="a sentence added to the RESULTS.md section")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from robench.machine import keep_freed_memory

    kept = keep_freed_memory()  # the allocator setting every robench command runs with (ROBENCH_MALLOC=default: glibc's)
    if min(args.k, args.batch_size, args.steps, args.epochs, args.rounds, args.n_test) < 1:
        ap.error("--k, --batch-size, --steps, --epochs, --rounds and --n-test must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    step_rows = args.steps if args.step_rows is None else args.step_rows
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0] if argv is None else "benchmarks/packed_throughput.py",
                                                             *(sys.argv[1:] if argv is None else argv)])
    device = torch.device(args.device)
    rec = RECIPES[args.recipe]
    n = args.batch_size * args.steps
    train_set, test_set = _data(n, 0), _data(args.n_test, 1)
    images = args.k * n * args.epochs
    print(f"{machine()}\n{command}\n{args.k} members of {args.model}, {args.epochs} epoch(s) of {args.steps} steps of "
          f"{args.batch_size}, recipe {args.recipe}, {args.rounds} rounds", flush=True)

    results: dict[str, list[float]] = {"sequential": [], "packed": []}
    cpu: dict[str, list[float]] = {"sequential": [], "packed": []}  # images per CPU-second (robust to load)
    with tempfile.TemporaryDirectory() as tmp:
        # warm oneDNN's primitive cache and the allocator once, untimed
        run_packed(args.model, 1, _data(2 * args.batch_size, 2), test_set, args.recipe, 1, args.batch_size, device,
                   Path(tmp) / "warm")
        t_start = time.perf_counter()
        for r in range(args.rounds):
            order = ["sequential", "packed"] if r % 2 == 0 else ["packed", "sequential"]
            for name in order:
                root = Path(tmp) / f"r{r}{name}"
                fn = run_sequential if name == "sequential" else run_packed
                secs, cpu_secs = fn(args.model, args.k, train_set, test_set, args.recipe, args.epochs, args.batch_size,
                                    device, root)
                results[name].append(images / secs)
                cpu[name].append(images / cpu_secs)
                print(f"  round {r + 1}: {name}: {images / secs:.1f} images/s ({secs:.1f} s wall, {cpu_secs:.1f} s CPU)",
                      flush=True)
        elapsed = time.perf_counter() - t_start

    cmd_results: dict[str, list[float]] = {}
    if args.data_dir:
        names = {"sequential": f"commands: {args.k} × robench train --seed s", "packed":
                 f"commands: one robench train --seed 0,…,{args.k - 1}"}
        cmd_results = {v: [] for v in names.values()}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for name in (["sequential", "packed"] if r % 2 == 0 else ["packed", "sequential"]):
                    secs = run_commands(name, args, Path(tmp) / f"c{r}{name}")
                    cmd_results[names[name]].append(images / secs)
                    print(f"  round {r + 1}: {names[name]}: {images / secs:.1f} images/s ({secs:.1f} s wall)",
                          flush=True)

    step_results: dict[str, list[float]] = {}
    if step_rows:
        variants = {"step only: loop of modules (train_pack's step)": LoopSteps,
                    "step only: torch.func vmap over stacked members": VmapSteps}
        objs = {name: cls(args.model, args.k, train_set, rec, args.batch_size, device) for name, cls in variants.items()}
        for name, obj in objs.items():
            obj.steps(5)  # warm-up (and, on CUDA, the graph's capture)
            step_results[name] = []
        for r in range(args.rounds):
            for name in (list(objs) if r % 2 == 0 else list(objs)[::-1]):
                t0 = time.perf_counter()
                objs[name].steps(step_rows)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                ips = args.k * args.batch_size * step_rows / (time.perf_counter() - t0)
                step_results[name].append(ips)
                print(f"  round {r + 1}: {name}: {ips:.1f} images/s", flush=True)

    med = {k: statistics.median(v) for k, v in {**results, **cmd_results, **step_results}.items()}
    paired = statistics.median(p / s for p, s in zip(results["packed"], results["sequential"]))
    rows = [(name, med[name], min(v), max(v)) for name, v in {**results, **cmd_results, **step_results}.items()]
    table = ("| variant | images/s (median) | min – max over rounds |\n|---|---:|---:|\n"
             + "".join(f"| {name} | {m:.1f} | {lo:.1f} – {hi:.1f} |\n" for name, m, lo, hi in rows))
    paired_cpu = statistics.median(p / s for p, s in zip(cpu["packed"], cpu["sequential"]))
    summary = (f"packed K={args.k} / {args.k} sequential runs (median of per-round ratios): {paired:.3f}× in images/s "
               f"(target ≥ 1.0×), {paired_cpu:.3f}× in images per CPU-second")
    if cmd_results:
        seq_c, pack_c = list(cmd_results)
        cr = statistics.median(p / s for p, s in zip(cmd_results[pack_c], cmd_results[seq_c]))
        summary += f"; as commands (one process per run, real data): {cr:.3f}×"
    if step_results:
        names = list(step_results)
        vr = statistics.median(a / b for a, b in zip(step_results[names[0]], step_results[names[1]]))
        summary += f"; loop of modules / vmap, steps only: {vr:.2f}×"
    print("\n" + table + "\n" + summary + f"; {elapsed:.0f} s of timing")
    if args.no_write:
        return
    kind = f"CPU {cpu_capability()}" if device.type == "cpu" else f"GPU {torch.cuda.get_device_name(device)}"
    heading = f"{SECTION} ({kind})"
    body = (f"{heading}\n\n"
            f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}\n"
            f"- machine: {machine()}\n"
            f"- allocator: {'glibc malloc keeping freed memory (robench.machine.keep_freed_memory, as every robench command)' if kept else 'glibc defaults (ROBENCH_MALLOC=default)'}\n"
            f"- command: `` {command} ``\n"
            f"- protocol: {args.rounds} rounds alternating the order; each round trains {args.k} × {args.model} "
            f"({args.recipe} recipe, {args.epochs} epoch(s) of {args.steps} steps of {args.batch_size} synthetic images, "
            f"test evaluation on {args.n_test} images an epoch) once as {args.k} sequential `train` calls and once as one "
            f"`train_pack`" + (f"; the command rows run the same as {args.k} `robench train` processes and one packed "
               f"process on the first {n} real training images ({args.data_dir.name}), 10,000 test images an epoch"
               if cmd_results else "") + f"; images/s = trained images / wall time; the step-only rows time {step_rows} steps of the "
            f"{args.k} members without evaluation.\n"
            f"- {summary}\n\n{table}\n" + (f"{args.note}\n" if args.note else ""))
    write_section(args.results, heading, body)
    print(f"wrote the '{heading}' section of {args.results}")


if __name__ == "__main__":
    main()
