"""Training throughput: robench's training step against the seed code's per-sample DataLoader loop.

Both variants train the same model (resnet20 by default) with the same recipe (the seed code's: SGD
0.1, momentum 0.9, wd 1e-4, batch 128, reflect-pad-2 crop + flip) on the same synthetic uint8 images
(random pixels; throughput does not depend on their content). They are timed side by side: each
round runs every variant for ``--warmup`` untimed then ``--steps`` timed steps, in forward order in
even rounds and backward in odd ones, and the table reports the median images/s over rounds and the
median of the per-round ratios to the seed-style loop.

* robench: the step of ``robench.train`` (``robench.packed.MemberRun.step``, one member) — the padded
  uint8 images on the device, the epoch's seeded permutation, crops and flips gathered in one
  indexing op, /255, forward, cross-entropy, backward, fused SGD with the learning rate read from
  the device schedule table, loss/accuracy summed on the device, in channels_last as ``robench
  train`` runs on every device; fp32 on CPU (``robench train``), and on CUDA bf16 autocast
  (``robench train --device cuda --amp``, eager: the CUDA-graph replay is ``packed_throughput.py``'s).
* seed: a ``torch.utils.data.Dataset`` returning one image at a time through per-sample transforms
  done in PIL/numpy as the seed code does (reflect-pad + random crop, random horizontal flip, ToTensor,
  Normalize), a ``DataLoader(batch_size=128, shuffle=True, num_workers=2)``, fp32, contiguous memory.
  Its model is the zoo model with the internal normalisation set to the identity (mean 0, std 1),
  because the transform already normalises, as in the seed code.

On CPU a second robench row times ``robench train --amp`` (bf16 autocast). ``--investigate`` adds
robench variants (contiguous fp32, fp32 with flush-denormal) and data-pipeline-only rows, to see
where time goes.

    python benchmarks/train_throughput.py --steps 8 --rounds 3
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import model_zoo
from robench.data import augment, epoch_draws, pad_images
from robench.machine import cpu_capability, cpu_has_fast_bf16, cpu_label
from robench.packed import Member, TrainData, lr_table
from robench.train import RECIPES, lr_at, member_run
from results_md import write_section  # beside this script

SECTION = "## train_throughput"  # one section per kind of machine: see section_heading()
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)  # the seed code's Normalize constants
STD = np.array([0.2023, 0.1994, 0.2010], dtype=np.float32)


# -- the seed-style pipeline ---------------------------------------------------------------------
class SeedStyleCifar(torch.utils.data.Dataset):
    """One image at a time, transformed per sample (torchvision's CIFAR10 + transforms, without torchvision)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, pad: int) -> None:
        self.images, self.labels, self.pad = images_hwc, labels, pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # the seed code's Reflect_Pad: numpy reflection of the H×W×C array, back to a PIL image
        p = self.pad
        padded = Image.fromarray(np.pad(self.images[i], ((p, p), (p, p), (0, 0)), mode="reflect"))
        # RandomCrop(32, padding=0): a uniformly placed 32×32 window
        top, left = np.random.randint(0, 2 * self.pad + 1, size=2)
        img = padded.crop((left, top, left + 32, top + 32))
        if np.random.rand() < 0.5:  # RandomHorizontalFlip
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = np.asarray(img, dtype=np.float32) / 255.0  # ToTensor: HWC uint8 → CHW float in [0, 1]
        x = (x - MEAN) / STD  # Normalize
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), int(self.labels[i])


def _seed_worker_init(worker_id: int) -> None:
    np.random.seed((torch.initial_seed() + worker_id) % 2**32)


# -- the variants ----------------------------------------------------------------------------------
class Variant:
    """A model, its optimizer and a step function that trains on the next batch."""

    name: str
    device: torch.device

    def step(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Start a new pass over the data (called before each round's warm-up)."""

    def close(self) -> None:
        pass


class RobenchVariant(Variant):
    """robench's training step itself: one member of ``robench.train``'s pack (``robench.packed.MemberRun``)."""

    def __init__(self, name: str, model_name: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                 batch_size: int, *, amp: bool, channels_last: bool, flush_denormal: bool = False) -> None:
        self.name, self.device, self.bs = name, device, batch_size
        self.rec = RECIPES["paper"]
        member = Member(model_name, None, 0)
        n = len(labels)
        self.steps_per_epoch = n // batch_size
        # the image set on the device once, padded, as uint8 (as robench train holds it)
        data = TrainData(pad_images(images.to(device), self.rec.pad, self.rec.pad_mode), labels.to(device), (32, 32))
        table = lr_table([lr_at(self.rec, s, self.steps_per_epoch, self.rec.epochs)
                          for s in range(self.steps_per_epoch)], device)
        self.run = member_run(member, self.rec, data, table, batch_size=batch_size,
                              n_used=self.steps_per_epoch * batch_size, num_classes=10, dev=device,
                              amp_dtype=torch.bfloat16 if amp else None)
        self.model = self.run.model
        if not channels_last:
            self.model.to(memory_format=torch.contiguous_format)
            self.run.channels_last = False
        self.flush_denormal = flush_denormal
        self.epoch = -1
        self.restart()

    def restart(self) -> None:
        self.epoch += 1
        g = torch.Generator().manual_seed(self.epoch)
        self.run.set_epoch(epoch_draws(g, len(self.run.data.labels), self.bs, pad=self.rec.pad, drop_last=True), 0)
        self.s = 0

    def step(self) -> None:
        if self.flush_denormal:
            torch.set_flush_denormal(True)
        try:
            if self.s == self.steps_per_epoch:
                self.restart()
            self.s += 1
            self.run.step(self.bs)
        finally:
            if self.flush_denormal:
                torch.set_flush_denormal(False)


class SeedVariant(Variant):
    def __init__(self, name: str, model_name: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                 batch_size: int, workers: int) -> None:
        self.name, self.device = name, device
        rec = RECIPES["paper"]
        torch.manual_seed(0)
        # normalisation happens in the transform, so the model's own is the identity
        self.model = model_zoo.create_model(model_name, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=rec.lr, momentum=rec.momentum,
                                   weight_decay=rec.weight_decay)
        ds = SeedStyleCifar(images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy(), pad=rec.pad)
        self.loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                                  worker_init_fn=_seed_worker_init if workers else None,
                                                  pin_memory=device.type == "cuda")
        self.it = None

    def restart(self) -> None:
        self.close()
        self.it = iter(self.loader)  # a fresh epoch: the workers start here, during the warm-up

    def step(self) -> None:
        x, y = next(self.it)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        out = self.model(x)
        loss = F.cross_entropy(out, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        loss.item()
        (out.argmax(1) == y).sum().item()

    def close(self) -> None:
        if self.it is not None:
            del self.it  # shuts the worker processes down
            self.it = None


class PipelineOnly(Variant):
    """Only the data side of a variant: batches produced per second, no model."""

    def __init__(self, name: str, make: Callable[[], Callable[[], object]], device: torch.device) -> None:
        self.name, self.device, self.make = name, device, make
        self.next = make()

    def restart(self) -> None:
        self.next = self.make()

    def step(self) -> None:
        self.next()


def seed_label(device_type: str) -> str:
    """Row label of the seed-style loop; the ratios are taken against this row."""
    return f"seed-style DataLoader ({device_type}, fp32)"


def robench_label(device_type: str, *, amp: bool) -> str:
    """Row label of robench's training step (channels_last, bf16 autocast when ``amp``)."""
    precision = "fp32" if not amp else ("bf16 = --amp" if device_type == "cpu" else "bf16")
    return f"robench ({device_type}, {precision}, channels_last)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round(v: Variant, warmup: int, steps: int, batch_size: int) -> float:
    v.restart()
    for _ in range(warmup):
        v.step()
    _sync(v.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        v.step()
    _sync(v.device)
    return steps * batch_size / (time.perf_counter() - t0)


# -- reporting -------------------------------------------------------------------------------------
def machine() -> str:
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no CUDA device"
    bf16 = "oneDNN bf16 kernels" if cpu_has_fast_bf16() else "no oneDNN bf16 kernels (bf16 runs reference code)"
    return (f"{platform.platform()}, CPU {cpu_label()} with {bf16}, torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads{gpu}")


def section_heading(cuda: bool) -> str:
    """The RESULTS.md heading for this kind of machine. The ratios depend on it (on an AVX2 CPU without
    bf16 kernels --amp is many times slower than fp32; with them about twice as fast), so a run on one
    kind replaces only the section of that kind and keeps the others."""
    kind = f"CPU {cpu_capability()}" + (f", GPU {torch.cuda.get_device_name(0)}" if cuda else "")
    return f"{SECTION} ({kind})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each timed run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the seed-style loop (the seed code's: 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    ap.add_argument("--investigate", action="store_true",
                    help="add CPU variants (fp32 contiguous, fp32 flush-denormal) and data-only rows")
    ap.add_argument("--no-cuda", action="store_true", help="CPU columns only, even with a CUDA device")
    ap.add_argument("--note", default="", help="a sentence added to the RESULTS.md section")
    ap.add_argument("--results", type=Path, default=RESULTS, help="file whose '## train_throughput' section is written")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from robench.machine import keep_freed_memory

    keep_freed_memory()  # the allocator setting every robench command runs with (ROBENCH_MALLOC=default: glibc's)
    if min(args.batch_size, args.steps, args.rounds) < 1 or args.warmup < 0:
        ap.error("--batch-size, --steps and --rounds must be positive, --warmup non-negative")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0] if argv is None else "benchmarks/train_throughput.py",
                                                             *(sys.argv[1:] if argv is None else argv)])

    # enough images that no round runs out of a pass over the data
    n = args.batch_size * (args.warmup + args.steps + 1)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, n))
    bs = args.batch_size

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    variants: list[Variant] = []
    for dev in devices:
        cuda = dev.type == "cuda"
        variants.append(SeedVariant(seed_label(dev.type), args.model, images, labels, dev, bs, args.workers))
        variants.append(RobenchVariant(robench_label(dev.type, amp=cuda), args.model, images, labels, dev, bs, amp=cuda,
                                       channels_last=True))
        if not cuda:
            # what `robench train --amp` does on CPU (bf16 autocast)
            variants.append(RobenchVariant(robench_label("cpu", amp=True), args.model, images, labels, dev, bs,
                                           amp=True, channels_last=True))
        if args.investigate and not cuda:
            variants.append(RobenchVariant("robench (cpu, fp32, contiguous)", args.model, images, labels, dev, bs,
                                           amp=False, channels_last=False))
            variants.append(RobenchVariant("robench (cpu, fp32, channels_last, flush_denormal)", args.model, images,
                                           labels, dev, bs, amp=False, channels_last=True, flush_denormal=True))
    if args.investigate:
        # in this process (no workers), so prefetching cannot hide the per-sample cost
        seed_loader = torch.utils.data.DataLoader(variants[0].loader.dataset, batch_size=bs,  # type: ignore[attr-defined]
                                                  shuffle=True, num_workers=0)

        def seed_batches():
            it = iter(seed_loader)
            return lambda: next(it)

        def robench_batches():
            g, x = torch.Generator().manual_seed(0), images
            perm = torch.randperm(len(x), generator=g)
            state = {"s": 0}

            def nxt():
                s = state["s"] % (len(x) // bs)
                state["s"] += 1
                return augment(x[perm[s * bs:(s + 1) * bs]], g, pad=2, mode="reflect").float().div_(255.0)
            return nxt

        variants.append(PipelineOnly("data only: seed-style per-sample transforms (1 process)", seed_batches, torch.device("cpu")))
        variants.append(PipelineOnly("data only: robench augment", robench_batches, torch.device("cpu")))

    print(f"{machine()}\n{command}\n{len(variants)} variants × {args.rounds} rounds × ({args.warmup} warm-up + "
          f"{args.steps} timed steps of {bs} images)", flush=True)
    results: dict[str, list[float]] = {v.name: [] for v in variants}
    t_start = time.perf_counter()
    for r in range(args.rounds):
        # forward, then backward: the seed-style and robench runs of a round stay next to each other in time
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            ips = time_round(v, args.warmup, args.steps, bs)
            results[v.name].append(ips)
            print(f"  round {r + 1}: {v.name}: {ips:.1f} images/s", flush=True)
    for v in variants:
        v.close()
    elapsed = time.perf_counter() - t_start

    med = {k: statistics.median(v) for k, v in results.items()}
    rows, paired = [], {}
    for dev in devices:
        seed_name = seed_label(dev.type)
        for name in results:
            if f"({dev.type}" in name:
                # the ratio within each round (runs next to each other in time), then its median: less
                # exposed to the background load drifting between rounds than a ratio of medians
                paired[name] = statistics.median(a / b for a, b in zip(results[name], results[seed_name]))
                rows.append((name, med[name], min(results[name]), max(results[name]), med[name] / med[seed_name],
                             paired[name]))
    for name in results:
        if name.startswith("data only"):
            rows.append((name, med[name], min(results[name]), max(results[name]), float("nan"), float("nan")))
    header = ("| variant | images/s (median) | min – max over rounds | × seed-style: ratio of medians | "
              "× seed-style: median of per-round ratios |\n|---|---:|---:|---:|---:|\n")
    table = header + "".join(f"| {n} | {m:.1f} | {lo:.1f} – {hi:.1f} | {'' if x != x else f'{x:.2f}×'} | "
                             f"{'' if p != p else f'{p:.2f}×'} |\n" for n, m, lo, hi, x, p in rows)
    print("\n" + table)
    cpu_ratio = paired[robench_label("cpu", amp=False)]
    amp_ratio = paired[robench_label("cpu", amp=True)]
    cuda_ratio = paired.get(robench_label("cuda", amp=True))
    summary = (f"robench / seed-style (median of per-round ratios): CPU fp32 {cpu_ratio:.2f}×, CPU --amp {amp_ratio:.2f}× "
               f"(target ≥ 1.3×)" + (f"; GPU --amp {cuda_ratio:.2f}× (target ≥ 3×)" if cuda_ratio else ""))
    print(f"{summary}; {elapsed:.0f} s of timing")

    if args.no_write:
        return
    heading = section_heading(cuda=len(devices) > 1)
    body = (f"{heading}\n\n"
            f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}\n"
            f"- machine: {machine()}\n"
            f"- command: `` {command} ``\n"  # double backticks: the command may itself hold a backtick
            f"- protocol: {args.rounds} rounds, each variant {args.warmup} warm-up + {args.steps} timed steps of "
            f"{bs} images, order alternating forward and backward so the seed-style and robench runs of a round are adjacent; median images/s over rounds; model {args.model}, the seed "
            f"recipe (paper: SGD 0.1, momentum 0.9, wd 1e-4, reflect-pad-2 crop + flip); synthetic uint8 images. The "
            f"seed-style loop normalises per sample and uses the zoo model with identity normalisation; robench's "
            f"model normalises inside.\n"
            f"- {summary}\n\n"
            f"{table}\n"
            + (f"{args.note}\n" if args.note else ""))
    write_section(args.results, heading, body)
    print(f"wrote the '{heading}' section of {args.results}")


if __name__ == "__main__":
    main()
