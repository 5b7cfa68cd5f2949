"""Training: seeded, resumable, packed (several models of one depth in one process), GPU-ready.

Determinism: a member is initialised from its ``seed``; epoch e draws its permutation, crops and flips
from a generator seeded with (seed, e), and the learning rate is a pure function of the step, so an
epoch checkpoint is all the state there is: ``resume`` after a kill ends with the same weights as an
uninterrupted run, and a member of a pack ends exactly as if trained alone (``train`` is a pack of
one). The step itself (:mod:`robench.packed`) keeps data, draws, learning rate and metric sums on
the device; the run folder's format (one commit point an epoch) is :mod:`robench.runstate`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

import model_zoo
from model_zoo.checkpoint import shipped_path, user_zoo
from robench import runstate
from robench.data import Dataset, batch_sizes, data_label, epoch_draws, pad_images
from robench.errors import BadInput
from robench.fileio import check_writable
from robench.machine import cpu_capability, cpu_has_fast_bf16, cpu_name
from robench.packed import Member, MemberRun, PackStepper, TrainData, check_pack, lr_table

MAX_LR = 10.0  # --lr above this is refused: no recipe comes near it


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    schedule: str  # "multistep" or "onecycle"
    milestones: tuple[int, ...] = ()
    label_smoothing: float = 0.0
    pad: int = 4
    decay_all: bool = True  # weight decay on every parameter (the seed code) or on conv/linear weights only
    pad_mode: str = "zeros"  # "zeros" or "reflect" (robench.data.PAD_MODES)
    drop_last: bool = True  # drop the short last batch of an epoch (fixed shapes) or keep it (the seed code)
    # (model, low, high): the uniform range of the initial k_n where the recipe's reference draws it
    # from another range than the scheme's default
    k_init: tuple[tuple[str, float, float], ...] = ()


RECIPES = {
    # The seed code's recipe, exactly (minicheshire/InResNet train.py): reflect-pad 2 then a random
    # 32×32 crop and a flip; every batch of the shuffled epoch, the short last one kept (391 steps at 128);
    # plain cross-entropy; SGD 0.1, momentum 0.9, wd 1e-4 on all parameters; ×0.1 after epochs 80 and 120;
    # 160 epochs; the final epoch's weights. Its k_n init is the schemes' default, except at depth 164.
    "paper": Recipe("paper", epochs=160, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=False,
                    schedule="multistep", milestones=(80, 120), pad=2, pad_mode="reflect", drop_last=False,
                    k_init=(("inresnet164", 0.8, 0.9), ("lambda_inresnet164", 0.1, 0.2))),
    # Short schedule: one-cycle (linear warm-up for 15% of steps, then linear decay to zero), nesterov,
    # label smoothing 0.1, batch 256, wd 5e-4 on conv/linear weights only (not BN, biases or k_n).
    "fast": Recipe("fast", epochs=30, batch_size=256, lr=0.2, momentum=0.9, weight_decay=5e-4, nesterov=True,
                   schedule="onecycle", label_smoothing=0.1, pad=4, decay_all=False),
}


def lr_at(recipe: Recipe, step: int, steps_per_epoch: int, epochs: int) -> float:
    if recipe.schedule == "multistep":
        epoch = step // steps_per_epoch
        # milestones scale with a shortened --epochs so the shape of the schedule is kept
        ms = [round(m * epochs / recipe.epochs) for m in recipe.milestones]
        return recipe.lr * 0.1 ** sum(epoch >= m for m in ms)
    total = steps_per_epoch * epochs
    warm = max(1, int(0.15 * total))
    if step < warm:
        return recipe.lr * (0.1 + 0.9 * step / warm)
    return recipe.lr * max(0.0, (total - step) / max(1, total - warm))


def steps_per_epoch(recipe: Recipe, n: int, batch_size: int) -> int:
    """Steps in an epoch of ``n`` images: full batches, plus the short last one unless the recipe drops it."""
    return len(batch_sizes(n, batch_size, drop_last=recipe.drop_last))


def k_init_for(recipe: Recipe, model_name: str) -> tuple[float, float] | None:
    """The recipe's initial-k_n range for that model, or None for the scheme's default."""
    for name, lo, hi in recipe.k_init:
        if name == model_name:
            return (lo, hi)
    return None


def _param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    if recipe.decay_all:
        return [{"params": list(model.parameters()), "weight_decay": recipe.weight_decay}]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
                      amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                      dtype: torch.dtype = torch.float32) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 images ``x``; counted on the device, read once."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=y.device)  # counted on the device, read once
    for i in range(0, len(y), batch_size):
        xb = x[i:i + batch_size].to(dtype).div(255.0)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(xb.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            correct += (model(xb).argmax(1) == y[i:i + batch_size]).sum()
    return correct.item() / len(y)  # the one host read


def check_outputs(model_name: str, lam: float | None, run_dir: str | os.PathLike,
                  out: str | os.PathLike | None, *, resume: bool = False, force: bool = False,
                  seed: int = 0, tag: str | None = None) -> list[str]:
    """One member's :func:`check_pack_outputs`."""
    return check_pack_outputs([Member(model_name, lam, seed, tag)], run_dir, out, resume=resume, force=force)


def check_pack_outputs(members: Sequence[Member], run_dir: str | os.PathLike, out: str | os.PathLike | None, *,
                       resume: bool = False, force: bool = False) -> list[str]:
    """Refuse (BadInput) to replace an existing run folder (unless resuming it) or any member's zoo entry
    without ``force``; returns notes for the user (an output will shadow a shipped checkpoint)."""
    run_dir = Path(run_dir)
    if not resume and not force and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise BadInput(f"run folder {run_dir} already exists; pass --resume to continue that run or --force "
                       "to replace it")
    notes = []
    if out is not None:
        check_writable(out, what="zoo folder (--out)", folder=True)  # before hours of training, not after
        for m in members:
            stem = Path(out) / m.id
            existing = [p for p in (stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors"))
                        if os.path.lexists(p)]
            if existing and not force:
                raise BadInput(f"{existing[0]} already exists; pass --force to replace that zoo entry "
                               "(or --out DIR to write elsewhere)")
            shipped = shipped_path(m.model, m.lam, m.tag)
            if shipped is not None and Path(out).resolve() == user_zoo().resolve():
                notes.append(f"note: the new {m.id} in the user zoo ({out}) will shadow the shipped {shipped}: the "
                             f"user zoo wins lookups, so `robench eval --model {model_zoo.join_tag(m.model, m.tag)}` "
                             "will use the new weights; "
                             "delete them to use the shipped ones again")
    return notes


def _device(device: str | torch.device) -> torch.device:
    from robench.devices import resolve_device

    return resolve_device(device)


def _device_text(dev: torch.device) -> str:
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu_name()} ({cpu_capability()})"
    return f"{dev.type}:{where}"


def train(model_name: str, train_set: Dataset, test_set: Dataset, *, lam: float | None = None, seed: int = 0,
          tag: str | None = None, **kw) -> dict:
    """Train one model: a pack of one member (see :func:`train_pack` for the keywords); its checkpoint is
    ``NAME[__lamλ][.TAG]`` with ``tag`` by default the seed's (:func:`model_zoo.train_tag`: none for seed 0,
    ``s<seed>`` otherwise). Returns the member's summary: ``model``, ``history``, ``finished``,
    ``diverged``, ``test_acc``, ``card_path``."""
    result = train_pack([Member(model_name, lam, seed, tag)], train_set, test_set, **kw)
    return next(iter(result["members"].values()))


def train_pack(
    members: Sequence[Member],
    train_set: Dataset,
    test_set: Dataset,
    *,
    recipe: str = "fast",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str | torch.device = "cpu",
    amp: bool = False,
    tf32: bool = False,
    compile: bool = False,
    cuda_graphs: bool | None = None,
    warmup_steps: int = 3,
    dtype: torch.dtype = torch.float32,
    run_dir: str | os.PathLike,
    resume: bool = False,
    out: str | os.PathLike | None = None,
    data_label_text: str | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``members`` (one architecture) together; each ends exactly as if trained alone.

    ``run_dir`` holds the epoch checkpoints (one commit point an epoch, :mod:`robench.runstate`) and
    ``metrics.csv``; on CUDA the run is deterministic (:func:`robench.devices.determinism`; TF32 only
    with ``tf32``, recorded as the card's precision); ``out`` is the zoo directory each finished member's weights and card go to (seed 0
    untagged, seed s tagged ``s<s>``). ``cuda_graphs`` (default: on for CUDA without ``compile``)
    replays the pack's step as a CUDA graph after ``warmup_steps`` eager steps. ``dtype`` is the
    parameter precision (float64 for exactness tests). ``stop_after_epoch`` ends the run early (tests
    of resume). A member whose epoch loss is not finite is reported and dropped; the others go on.

    Returns ``{"members": {id: summary}, "finished": bool, "diverged": [ids]}``.
    """
    from robench.devices import determinism, precision_name, resolve_device

    dev = resolve_device(device)  # one line before anything else
    if tf32 and dev.type != "cuda":
        raise BadInput(f"--tf32 applies to CUDA devices, not {device}; drop it or use --device cuda")
    if recipe not in RECIPES:
        raise BadInput(f"unknown recipe {recipe!r}; valid choices: {', '.join(RECIPES)}")
    rec = RECIPES[recipe]
    if lr is not None:
        # a NaN, negative or huge learning rate trains weights no load accepts
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr <= MAX_LR:
            raise BadInput(f"learning rate (--lr) must be a number in (0, {MAX_LR:g}], got {lr!r}")
        rec = dataclasses.replace(rec, lr=float(lr))
    epochs = epochs or rec.epochs
    batch_size = batch_size or rec.batch_size
    if epochs < 1 or batch_size < 1:
        raise BadInput("epochs and batch size must be positive")
    if warmup_steps < 1:
        raise BadInput("warmup_steps must be at least 1 (the optimizer's state exists after one step)")
    members = check_pack(members)
    if cuda_graphs is None:
        cuda_graphs = dev.type == "cuda" and not compile
    if cuda_graphs and (dev.type != "cuda" or compile):
        raise BadInput("CUDA graphs need --device cuda and no --compile")
    run_dir = Path(run_dir)
    for note in check_pack_outputs(members, run_dir, out, resume=resume, force=force):
        log(note)
    n = len(train_set)
    if n < batch_size:
        raise BadInput(f"batch size {batch_size} is larger than the training set ({n} images)")
    spe = steps_per_epoch(rec, n, batch_size)
    sizes = batch_sizes(n, batch_size, drop_last=rec.drop_last)
    amp_dtype = ((torch.bfloat16 if dev.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16)
                 if amp else None)
    if amp_dtype == torch.float16:
        raise BadInput("--amp on this GPU would be float16, which needs loss scaling the packed trainer does not do; "
                       "train without --amp here")
    precision = precision_name(dev, tf32) if amp_dtype is None and dtype == torch.float32 else (
        str(dtype).replace("torch.", "") if amp_dtype is None else f"{str(amp_dtype).replace('torch.', '')}-autocast")
    config = dict(members=[m.as_dict() for m in members], recipe=recipe, epochs=epochs, batch_size=batch_size,
                  lr=rec.lr, amp=bool(amp), dtype=str(dtype).replace("torch.", ""), num_classes=train_set.num_classes,
                  n_train=n, data_sha256=test_set.sha256, **({"tf32": True} if tf32 else {}))
    if dev.type == "cpu" and amp_dtype is not None and not cpu_has_fast_bf16():
        log(f"warning: this CPU ({cpu_name()}, {cpu_capability()}) has no oneDNN bf16 kernels, so --amp runs "
            f"many times slower than fp32 here; train without --amp on this machine")

    # deterministic on CUDA (cuDNN deterministic, no benchmark search), TF32 only with ``tf32``
    with runstate.locked(run_dir), determinism(dev, tf32=tf32):
        state = runstate.read_state(run_dir) if resume else None
        if state is not None and state["config"] != config:
            prev = state["config"]
            diff = {k: (prev.get(k), v) for k, v in config.items() if prev.get(k) != v}
            raise BadInput(f"--resume: {run_dir} holds a run with a different configuration {diff}")
        return _run(members, rec, state, config, train_set=train_set, test_set=test_set, epochs=epochs,
                    batch_size=batch_size, spe=spe, sizes=sizes, dev=dev, dtype=dtype, amp_dtype=amp_dtype,
                    precision=precision, compile=compile, cuda_graphs=cuda_graphs, warmup_steps=warmup_steps,
                    run_dir=run_dir, out=out, data_label_text=data_label_text, progress=progress,
                    stop_after_epoch=stop_after_epoch, log=log)


def _build(member: Member, rec: Recipe, *, num_classes: int, dev: torch.device, dtype: torch.dtype) -> nn.Module:
    """The member's initial module: seeded, then built exactly as a single run builds it."""
    torch.manual_seed(member.seed)
    k_init = k_init_for(rec, member.model)
    model = model_zoo.create_model(member.model, num_classes=num_classes, lam=member.lam,
                                   **({} if k_init is None else {"k_init": k_init}))
    # channels_last on every device: the convolutions are faster in NHWC on GPU and on CPU too
    # (resnet20, batch 256, bf16, one thread: 1.3x); the saved weights are made contiguous again
    return model.to(device=dev, dtype=dtype).to(memory_format=torch.channels_last)


def member_run(member: Member, rec: Recipe, data: TrainData, table: torch.Tensor, *, batch_size: int, n_used: int,
               num_classes: int, dev: torch.device, dtype: torch.dtype = torch.float32,
               amp_dtype: torch.dtype | None = None, compile: bool = False) -> MemberRun:
    """One member ready to step: its seeded module, fused SGD on the recipe's parameter groups, counters."""
    model = _build(member, rec, num_classes=num_classes, dev=dev, dtype=dtype)
    return MemberRun(member, model=model, param_groups=lambda mod: _param_groups(mod, rec), lr_table=table,
                     momentum=rec.momentum, nesterov=rec.nesterov, label_smoothing=rec.label_smoothing,
                     batch_size=batch_size, n_used=n_used, data=data, device=dev, dtype=dtype, amp_dtype=amp_dtype,
                     channels_last=True, forward=torch.compile(model) if compile else None)


def time_pack_step(model_name: str, k: int, *, recipe: str = "paper", batch_size: int = 128, steps: int = 20,
                   warmup: int = 3, device: str | torch.device = "cpu", amp: bool = False,
                   cuda_graphs: bool | None = None) -> float:
    """Milliseconds per model-step of a pack of ``k`` members of ``model_name`` (seeds 0…k-1) stepping
    together on random uint8 images: ``steps`` pack steps timed after ``warmup`` eager ones (on CUDA the
    graph is captured then, unless ``cuda_graphs=False``), divided by ``k · steps``. The trainer's own
    step, so the campaign's probe and the benchmarks measure what ``robench train`` runs."""
    if k < 1 or steps < 1 or warmup < 1 or batch_size < 1:
        raise BadInput("k, steps, warmup and batch size must be positive")
    check_pack([Member(model_name, None, s) for s in range(k)])
    dev = _device(device)
    rec = RECIPES[recipe] if recipe in RECIPES else None
    if rec is None:
        raise BadInput(f"unknown recipe {recipe!r}; valid choices: {', '.join(RECIPES)}")
    graphs = dev.type == "cuda" if cuda_graphs is None else cuda_graphs
    total = warmup + 1 + steps
    n = batch_size * total
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    data = TrainData(pad_images(images.to(dev), rec.pad, rec.pad_mode),
                     torch.randint(0, 10, (n,), generator=g).to(dev), (32, 32))
    table = lr_table([lr_at(rec, s, total, 1) for s in range(total)], dev)
    amp_dtype = torch.bfloat16 if amp else None
    runs = [member_run(Member(model_name, None, s), rec, data, table, batch_size=batch_size, n_used=n,
                       num_classes=10, dev=dev, amp_dtype=amp_dtype) for s in range(k)]
    for r in runs:
        r.set_epoch(epoch_draws(torch.Generator().manual_seed(r.member.seed), n, batch_size, pad=rec.pad), 0)
    stepper = PackStepper(runs, dev, graphs=graphs, warmup=warmup)
    for _ in range(warmup + 1):  # the eager warm-up, then (graphs) the capture and its first replay: untimed
        stepper.step(batch_size)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda *_: None)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        stepper.step(batch_size)
    sync(dev)
    return 1000 * (time.perf_counter() - t0) / (k * steps)


def _history_row(run: MemberRun, epoch: int, loss: float, acc: float, test_acc: float, lr: float,
                 secs: float) -> dict:
    model = run.model
    damp = [d["value"] for d in model.damping()] if hasattr(model, "damping") else []
    return dict(epoch=epoch, loss=round(loss, 5) if math.isfinite(loss) else loss, train_acc=round(acc, 5),
                test_acc=round(test_acc, 5) if math.isfinite(test_acc) else test_acc, lr=lr,
                coef_mean=round(sum(damp) / len(damp), 5) if damp else float("nan"),
                coef_min=round(min(damp), 5) if damp else float("nan"),
                coef_max=round(max(damp), 5) if damp else float("nan"), seconds=round(secs, 2))


def _run(members, rec, state, config, *, train_set, test_set, epochs, batch_size, spe, sizes, dev, dtype, amp_dtype,
         precision, compile, cuda_graphs, warmup_steps, run_dir, out, data_label_text, progress, stop_after_epoch,
         log) -> dict:
    single = len(members) == 1
    n = len(train_set)
    # the training set lives on the device once, padded, as uint8; each step gathers its crops from it
    h, w = train_set.images.shape[-2:]
    data = TrainData(pad_images(train_set.images.to(dev), rec.pad, rec.pad_mode), train_set.labels.to(dev), (h, w))
    xte, yte = test_set.images.to(dev), test_set.labels.to(dev)
    table = lr_table([lr_at(rec, s, spe, epochs) for s in range(spe * epochs)], dev)

    runs: dict[str, MemberRun] = {}
    status = {m.id: {"status": "training", "history": []} for m in members}
    start_epoch, wall = 0, 0.0
    if state is not None:
        start_epoch, wall = state["epoch"], float(state.get("wall_seconds", 0.0))
        for m in members:
            prev = state["members"].get(m.id)
            if not isinstance(prev, dict) or prev.get("status") not in ("training", "diverged"):
                raise BadInput(f"{run_dir / runstate.STATE} has no state for member {m.id}; pass --force to start again")
            status[m.id] = {k: v for k, v in prev.items() if k in ("status", "history", "diverged", "state")}
    for m in members:
        if status[m.id]["status"] != "training":
            continue
        runs[m.id] = member_run(m, rec, data, table, batch_size=batch_size, n_used=sum(sizes),
                                num_classes=train_set.num_classes, dev=dev, dtype=dtype, amp_dtype=amp_dtype,
                                compile=compile)
        if state is not None and start_epoch > 0:
            runstate.load_member(run_dir, status[m.id]["state"], runs[m.id].model, runs[m.id].opt, dev)
    if state is not None:
        runstate.remove_unreferenced(run_dir, state)
        log(f"resuming {members[0].id if single else f'a pack of {len(members)}'} from epoch {start_epoch}/{epochs} "
            f"({run_dir})")
    stepper = PackStepper(list(runs.values()), dev, graphs=cuda_graphs, warmup=warmup_steps)

    for epoch in range(start_epoch, epochs):
        if not runs:
            break
        t0 = time.perf_counter()
        for r in runs.values():
            r.model.train()
            g = torch.Generator().manual_seed(r.member.seed * 100_003 + epoch)
            r.set_epoch(epoch_draws(g, n, batch_size, pad=rec.pad, drop_last=rec.drop_last), epoch * spe)
        with tqdm(total=len(sizes) * len(runs), desc=f"epoch {epoch + 1}/{epochs}", unit="step", disable=not progress,
                  leave=False) as bar:
            stepper.epoch(sizes, bar.update)
        # one read of every member's sums an epoch
        sums = torch.stack([torch.stack([r.loss_sum, r.correct.to(torch.float64)]) for r in runs.values()]).cpu()
        seen = sum(sizes)
        lr_last = lr_at(rec, (epoch + 1) * spe - 1, spe, epochs)
        dropped = []
        for (mid, r), (loss_sum, correct) in zip(list(runs.items()), sums.tolist()):
            loss = loss_sum / seen
            if not math.isfinite(loss):
                dropped.append(mid)
                row = _history_row(r, epoch + 1, loss, correct / seen, float("nan"), lr_last, 0.0)
                status[mid].update(status="diverged", diverged={"epoch": epoch + 1, "loss": str(loss)})
                status[mid].pop("state", None)
                status[mid]["history"].append(row)
                continue
            test_acc = evaluate_accuracy(r.model, xte, yte, amp_dtype=amp_dtype, channels_last=True, dtype=dtype)
            status[mid]["history"].append(_history_row(r, epoch + 1, loss, correct / seen, test_acc, lr_last, 0.0))
        for mid in dropped:
            stepper.drop(runs.pop(mid))
            log(f"{mid} diverged in epoch {epoch + 1} (mean training loss {status[mid]['diverged']['loss']}): "
                + ("training stops and nothing is exported" if single else
                   f"it is dropped and not exported; the other {len(runs)} member(s) go on"))
        secs = time.perf_counter() - t0
        wall += secs
        for mid in runs:
            status[mid]["history"][-1]["seconds"] = round(secs, 2)
        # the epoch's checkpoints, then the one commit, then the files it no longer names
        for mid, r in runs.items():
            status[mid]["state"] = runstate.write_member(run_dir, mid, epoch + 1, r.model, r.opt)
        state = {"format": runstate.FORMAT, "config": config, "epoch": epoch + 1, "wall_seconds": wall,
                 "members": status}
        runstate.commit(run_dir, state)
        runstate.remove_unreferenced(run_dir, state)
        runstate.write_metrics(run_dir, state)
        for mid in runs:
            row = status[mid]["history"][-1]
            log(f"epoch {epoch + 1}/{epochs}{'' if single else ' ' + mid}: loss {row['loss']:.4f} train "
                f"{row['train_acc']:.4f} test {row['test_acc']:.4f} lr {row['lr']:.4g} ({secs:.0f}s)")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < epochs:
            return _summary(members, runs, status, finished=False)

    result = _summary(members, runs, status, finished=True)
    if out is not None:
        for mid, r in runs.items():
            _export(r, rec, result["members"][mid], out=Path(out), train_set=train_set, test_set=test_set,
                    epochs=epochs, batch_size=batch_size, dev=dev, amp_dtype=amp_dtype, precision=precision,
                    cuda_graphs=cuda_graphs, members=members, wall=wall, data_label_text=data_label_text, log=log)
    return result


def _summary(members, runs, status, *, finished: bool) -> dict:
    out = {}
    for m in members:
        st = status[m.id]
        run = runs.get(m.id)
        hist = st["history"]
        out[m.id] = dict(member=m, model=None if run is None else run.model.to(memory_format=torch.contiguous_format),
                         history=hist, finished=finished and run is not None, diverged=st["status"] == "diverged",
                         test_acc=hist[-1]["test_acc"] if hist and run is not None else None)
    return dict(members=out, finished=finished, diverged=[m.id for m in members if status[m.id]["status"] == "diverged"])


def _export(run: MemberRun, rec: Recipe, summary: dict, *, out: Path, train_set: Dataset, test_set: Dataset,
            epochs: int, batch_size: int, dev: torch.device, amp_dtype, precision: str, cuda_graphs: bool,
            members: Sequence[Member], wall: float, data_label_text: str | None, log) -> None:
    m = run.member
    final_acc = summary["history"][-1]["test_acc"]
    k_init = k_init_for(rec, m.model)
    if k_init is None and getattr(run.model, "learned", False):
        k_init = run.model.scheme.k_init  # the scheme's default range (the seed code's at depths 20…110)
    card = dict(
        dataset=dict(name=test_set.name, label=data_label_text or data_label(test_set),
                     test_batch_sha256=test_set.sha256, n_train=len(train_set), n_test=len(test_set)),
        training=dict(recipe=dataclasses.asdict(rec) | dict(epochs=epochs, batch_size=batch_size), seed=m.seed,
                      device=_device_text(dev), amp=str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
                      precision=precision, channels_last=True, trainer="packed", cuda_graphs=cuda_graphs,
                      pack=[x.id for x in members], pack_size=len(members),
                      k_init=list(k_init) if k_init is not None else None,
                      wall_seconds=round(wall, 1), torch=torch.__version__),
        metrics=dict(test_acc=final_acc, n_test=len(test_set)),
    )
    model = copy.deepcopy(summary["model"]).cpu().float()
    model_zoo.save(model, out / m.id, card, name=m.model, tag=m.tag)
    summary["card_path"] = str(out / m.id) + ".json"
    log(f"saved {out / m.id}.safetensors (test accuracy {final_acc:.4f})")
