"""Training: seeded, resumable, GPU-ready (data on the device, batch augmentation, autocast,
channels_last, optional torch.compile).

Determinism: the model is initialised from ``seed``; epoch e draws its permutation and augmentation
from a generator seeded with (seed, e), and the learning rate is a pure function of the step, so an
epoch checkpoint (model + optimizer tensors as safetensors, the rest as JSON) is all the state there
is: ``resume`` after a kill ends with the same weights as an uninterrupted run (same seed, CPU).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import model_zoo
from model_zoo.checkpoint import shipped_path, user_zoo, zoo_stem
from robench.fileio import atomic_write_text
from robench.machine import cpu_capability, cpu_has_fast_bf16, cpu_name
from robench.data import Dataset, augment, data_label
from robench.errors import BadInput


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


RECIPES = {
    # The seed code's recipe (minicheshire/InResNet train.py).
    "paper": Recipe("paper", epochs=160, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=False,
                    schedule="multistep", milestones=(80, 120), pad=2),
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


def _param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    if recipe.decay_all:
        return [{"params": list(model.parameters()), "weight_decay": recipe.weight_decay}]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
                      amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=y.device)  # counted on the device, read once
    for i in range(0, len(y), batch_size):
        xb = x[i:i + batch_size].float().div(255.0)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(xb.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            correct += (model(xb).argmax(1) == y[i:i + batch_size]).sum()
    return int(correct) / len(y)


def _save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict) -> None:
    """Epoch checkpoint: tensors → safetensors, everything else → JSON; written then renamed."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"opt.{i}.momentum_buffer"] = buf.detach().cpu().contiguous()
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, path / "state.safetensors")
    atomic_write_text(path / "state.json", json.dumps(meta, indent=1))


def _load_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, device) -> dict:
    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors"), device=str(device))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        key = f"opt.{i}.momentum_buffer"
        if key in tensors:
            # in the parameter's own memory format, so the optimizer's fused update keeps one layout
            opt.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(tensors[key])
    return meta


def _metrics_csv(path: Path, history: list[dict]) -> None:
    if not history:
        return
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0].keys()))
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)


def check_outputs(model_name: str, lam: float | None, run_dir: str | os.PathLike,
                  out: str | os.PathLike | None, *, resume: bool = False, force: bool = False) -> list[str]:
    """Refuse (BadInput) to replace an existing run folder (unless resuming it) or zoo entry without
    ``force``; returns notes for the user (the output will shadow a shipped checkpoint)."""
    run_dir = Path(run_dir)
    if not resume and not force and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise BadInput(f"run folder {run_dir} already exists; pass --resume to continue that run or --force "
                       "to replace it")
    notes = []
    if out is not None:
        stem = Path(out) / zoo_stem(model_name, lam)
        existing = [p for p in (stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors"))
                    if os.path.lexists(p)]
        if existing and not force:
            raise BadInput(f"{existing[0]} already exists; pass --force to replace that zoo entry "
                           "(or --out DIR to write elsewhere)")
        shipped = shipped_path(model_name, lam)
        if shipped is not None and Path(out).resolve() == user_zoo().resolve():
            notes.append(f"note: the new {zoo_stem(model_name, lam)} in the user zoo ({out}) will shadow the shipped "
                         f"{shipped}: the user zoo wins lookups, so `robench eval --model {model_name}` will use "
                         "the new weights; delete them to use the shipped ones again")
    return notes


def train(
    model_name: str,
    train_set: Dataset,
    test_set: Dataset,
    *,
    lam: float | None = None,
    recipe: str = "fast",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str = "cpu",
    amp: bool = False,
    tf32: bool = False,
    compile: bool = False,
    seed: int = 0,
    run_dir: str | os.PathLike,
    resume: bool = False,
    out: str | os.PathLike | None = None,
    data_label_text: str | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``model_name`` and return the run summary (history, final accuracy, card path when ``out``).

    ``run_dir`` holds the epoch checkpoint and ``metrics.csv``; ``out`` is the zoo directory the
    final weights and card go to. On CUDA the run is deterministic (:func:`robench.devices.determinism`;
    TF32 only with ``tf32``) and the loss and accuracy are summed on the device, read once per epoch. ``stop_after_epoch`` ends the run early (for tests of resume). An
    existing run folder (unless ``resume``) or zoo entry is replaced only with ``force``.
    """
    from robench.devices import determinism, precision_name, resolve_device

    dev = resolve_device(device)  # one line before anything else
    if tf32 and dev.type != "cuda":
        raise BadInput(f"--tf32 applies to CUDA devices, not {device}; drop it or use --device cuda")
    if recipe not in RECIPES:
        raise BadInput(f"unknown recipe {recipe!r}; valid choices: {', '.join(RECIPES)}")
    rec = RECIPES[recipe]
    if lr is not None:
        rec = dataclasses.replace(rec, lr=lr)
    epochs = epochs or rec.epochs
    batch_size = batch_size or rec.batch_size
    if epochs < 1 or batch_size < 1:
        raise BadInput("epochs and batch size must be positive")
    run_dir = Path(run_dir)
    for note in check_outputs(model_name, lam, run_dir, out, resume=resume, force=force):
        log(note)
    config = dict(model=model_name, lam=lam, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=rec.lr,
                  seed=seed, amp=bool(amp), **({"tf32": True} if tf32 else {}), num_classes=train_set.num_classes, n_train=len(train_set), data_sha256=test_set.sha256)
    if resume and (run_dir / "state.json").exists():
        prev = json.loads((run_dir / "state.json").read_text())["config"]
        if prev != config:
            diff = {k: (prev.get(k), v) for k, v in config.items() if prev.get(k) != v}
            raise BadInput(f"--resume: {run_dir} holds a run with a different configuration {diff}")

    torch.manual_seed(seed)
    model = model_zoo.create_model(model_name, num_classes=train_set.num_classes, lam=lam).to(dev)
    # channels_last on every device: the convolutions are faster in NHWC on GPU and on CPU too
    # (resnet20, batch 256, bf16, one thread: 1.3x); the saved weights are made contiguous again
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(_param_groups(model, rec), lr=rec.lr, momentum=rec.momentum, nesterov=rec.nesterov)
    amp_dtype = (torch.bfloat16 if dev.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16) if amp else None
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
    if dev.type == "cpu" and amp_dtype is not None and not cpu_has_fast_bf16():
        log(f"warning: this CPU ({cpu_name()}, {cpu_capability()}) has no oneDNN bf16 kernels, so --amp runs "
            f"many times slower than fp32 here; train without --amp on this machine")
    step_fn = torch.compile(model) if compile else model

    history: list[dict] = []
    start_epoch, wall = 0, 0.0
    if resume and (run_dir / "state.json").exists():
        meta = _load_state(run_dir, model, opt, dev)
        start_epoch, history, wall = meta["epoch"], meta["history"], meta["wall_seconds"]
        log(f"resuming {model_name} from epoch {start_epoch}/{epochs} ({run_dir})")

    xtr, ytr = train_set.images.to(dev), train_set.labels.to(dev)
    xte, yte = test_set.images.to(dev), test_set.labels.to(dev)
    n = len(ytr)
    steps_per_epoch = n // batch_size  # drop the ragged last batch: fixed shapes (and compile-friendly)
    if steps_per_epoch < 1:
        raise BadInput(f"batch size {batch_size} is larger than the training set ({n} images)")

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        model.train()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g).to(dev)
        # summed on the device and read once an epoch: a read per step would stall a GPU every step
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        seen = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for s in bar:
            step = epoch * steps_per_epoch + s
            for group in opt.param_groups:
                group["lr"] = lr_at(rec, step, steps_per_epoch, epochs)
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb = augment(xtr[idx], g, pad=rec.pad).float().div_(255.0).contiguous(memory_format=torch.channels_last)
            yb = ytr[idx]
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = step_fn(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=rec.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach().double() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
        loss_sum, correct = float(loss_sum), int(correct)
        test_acc = evaluate_accuracy(model, xte, yte, amp_dtype=amp_dtype, channels_last=True)
        secs = time.perf_counter() - t0
        wall += secs
        damp = [d["value"] for d in model.damping()] if hasattr(model, "damping") else []
        row = dict(epoch=epoch + 1, loss=round(loss_sum / seen, 5), train_acc=round(correct / seen, 5),
                   test_acc=round(test_acc, 5), lr=opt.param_groups[0]["lr"],
                   coef_mean=round(sum(damp) / len(damp), 5) if damp else float("nan"),
                   coef_min=round(min(damp), 5) if damp else float("nan"),
                   coef_max=round(max(damp), 5) if damp else float("nan"), seconds=round(secs, 2))
        history.append(row)
        _save_state(run_dir, model, opt, dict(config=config, epoch=epoch + 1, history=history, wall_seconds=wall))
        _metrics_csv(run_dir / "metrics.csv", history)
        log(f"epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f} train {row['train_acc']:.4f} "
            f"test {row['test_acc']:.4f} lr {row['lr']:.4g} ({secs:.0f}s)")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < epochs:
            return dict(model=model, history=history, finished=False)

    result = dict(model=model.to(memory_format=torch.contiguous_format), history=history, finished=True,
                  test_acc=history[-1]["test_acc"] if history else None)
    if out is not None:
        final_acc = history[-1]["test_acc"]
        where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu_name()} ({cpu_capability()})"
        card = dict(
            dataset=dict(name=test_set.name, label=data_label_text or data_label(test_set),
                         test_batch_sha256=test_set.sha256, n_train=len(train_set), n_test=len(test_set)),
            training=dict(recipe=dataclasses.asdict(rec) | dict(epochs=epochs, batch_size=batch_size), seed=seed,
                          device=f"{dev.type}:{where}",
                          amp=str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
                          precision=precision_name(dev, tf32),
                          wall_seconds=round(wall, 1), torch=torch.__version__),
            metrics=dict(test_acc=final_acc, n_test=len(test_set)),
        )
        path = Path(out) / zoo_stem(model_name, lam)
        model_zoo.save(result["model"].cpu(), path, card, name=model_name)
        result["card_path"] = str(path) + ".json"
        log(f"saved {path}.safetensors (test accuracy {final_acc:.4f})")
    return result
