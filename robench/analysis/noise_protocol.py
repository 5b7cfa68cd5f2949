"""CIFAR-10-C noise under two protocols, side by side, from the published ``.npy`` files:

- ``standard`` (robench): pixels in [0, 1], the model's own fixed CIFAR-10 normalisation, one
  accuracy per severity;
- ``reference`` (the seed code's noise test, minicheshire/InResNet ``test_noise.py``): each file
  (all five severities, all images) is divided by 255 and normalised per channel by ITS OWN mean and
  standard deviation (population std), the model sees that tensor directly, and the five severities
  are pooled into one accuracy per corruption.

A robench model normalises inside ``forward``, so the reference tensor z is fed as z·std + mean
(the model's buffers), which the model maps back to exactly z. The file statistics always come from
the whole file, as in the reference, even when ``n`` evaluates only the first n images per severity.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from robench.analysis.common import (ModelSpec, check_positive, finish, load_model, provenance, rate_interval,
                                     specs_of)
from robench.errors import BadInput

REFERENCE_NOISE = ("impulse_noise", "speckle_noise", "gaussian_noise", "shot_noise")  # the reference's four files
PROTOCOLS = ("standard", "reference")
COLUMNS = ("corruption", "protocol", "severity", "correct", "total", "accuracy", "ci_low", "ci_high", "file_mean",
           "file_std")


def file_statistics(images: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of uint8 N×3×32×32 images scaled to [0, 1] (exact, float64)."""
    total = s1 = s2 = 0
    for img in images:
        a = img.numpy().astype(np.float64) / 255.0
        s1 = s1 + a.sum(axis=(0, 2, 3))
        s2 = s2 + np.square(a).sum(axis=(0, 2, 3))
        total += a.shape[0] * a.shape[2] * a.shape[3]
    mean = s1 / total
    return mean, np.sqrt(np.maximum(s2 / total - mean ** 2, 0.0))


@torch.no_grad()
def _correct(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    """Per-example correctness, gathered on the device and read once."""
    return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                      for i in range(0, len(y), batch_size)]).cpu().numpy()


def evaluate_file(model: torch.nn.Module, corruption_dir: str | os.PathLike, name: str, *, n: int | None = None,
                  batch_size: int = 500, device: torch.device | str = "cpu", labels=None) -> list[dict]:
    """Rows for one model and one corruption file: per-severity and pooled accuracy under both protocols.
    ``labels``: the clean test labels every severity's labels must equal (see ``load_cifar10c``)."""
    from robench.corruptions import load_cifar10c
    from robench.devices import to_format

    batch_size = check_positive(batch_size, "batch size")
    mean_buf, std_buf = getattr(model, "mean", None), getattr(model, "std", None)
    if not isinstance(mean_buf, torch.Tensor) or not isinstance(std_buf, torch.Tensor):
        raise BadInput("the reference protocol needs a model that normalises inside forward (mean/std buffers)")
    full = [load_cifar10c(corruption_dir, name, s, labels=labels) for s in range(1, 6)]
    fmean, fstd = file_statistics([d.images for d in full])
    if (fstd <= 0).any():
        raise BadInput(f"CIFAR-10-C {name}: a channel is constant, the reference normalisation divides by its std 0")
    fm = torch.tensor(fmean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    fs = torch.tensor(fstd, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    rows, pooled = [], {p: [] for p in PROTOCOLS}
    for s, ds in enumerate(full, start=1):
        ds = ds.first(n)
        x, y = ds.as_float(device)
        x = to_format(x)
        z = (x - fm) / fs  # the reference's input tensor
        flags = {"standard": _correct(model, x, y, batch_size),
                 "reference": _correct(model, z * std_buf + mean_buf, y, batch_size)}
        for p, f in flags.items():
            pooled[p].append(f)
            rows.append(_row(name, p, s, f, fmean, fstd))
    for p, parts in pooled.items():
        rows.append(_row(name, p, None, np.concatenate(parts), fmean, fstd))
    return rows


def _row(name, protocol, severity, flags, fmean, fstd) -> dict:
    acc, lo, hi = rate_interval(flags)
    return {"corruption": name, "protocol": protocol, "severity": severity, "correct": int(flags.sum()),
            "total": int(flags.size), "accuracy": acc, "ci_low": lo, "ci_high": hi,
            "file_mean": ",".join(f"{v:.6f}" for v in fmean), "file_std": ",".join(f"{v:.6f}" for v in fstd)}


def noise_protocol(*, models: Sequence[str | ModelSpec], corruption_dir: str | os.PathLike,
                   corruptions: Sequence[str] = REFERENCE_NOISE, n: int | None = None, batch_size: int | None = None,
                   device: str | torch.device = "cpu", data_dir: str | os.PathLike | None = None,
                   log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Both protocols for zoo models on the CIFAR-10-C files in ``corruption_dir`` (tidy table, Wilson intervals).

    ``n`` is per severity; the pooled row has 5·n examples. Deterministic: no random draws. ``batch_size``
    None: the device's default (:func:`robench.devices.default_batch_size`). The clean CIFAR-10 test
    split (``data_dir``, default the fetched copy) is read for its labels only: every severity's labels
    in CIFAR-10-C must equal them, so a reordered ``labels.npy`` is refused.
    """
    from robench.analysis.common import analysis_batch_size
    from robench.devices import determinism, resolve_device
    from robench.corruptions import load_cifar10c

    dev = resolve_device(device)  # before anything is read
    specs = specs_of(models)
    if not corruptions:
        raise BadInput(f"give at least one corruption, e.g. {', '.join(REFERENCE_NOISE)}")
    batch_size = analysis_batch_size(batch_size, dev, "noise")
    context = {**provenance(dev), "batch_size": batch_size}
    say = log or (lambda s: print(s, file=sys.stderr))
    from robench.datahome import resolve_data_dir

    if resolve_data_dir("cifar10", data_dir) is None:
        raise BadInput("the noise protocol needs the clean CIFAR-10 test split to check CIFAR-10-C's labels against: "
                       "--data-dir DIR holding cifar-10-batches-py/, or `robench data fetch cifar10`")
    from robench.data import load_dataset

    labels = load_dataset("cifar10", data_dir).labels
    # checks every file and the labels of every severity up front
    shas = {c: load_cifar10c(corruption_dir, c, 1, 1, labels=labels).sha256 for c in corruptions}
    records = []
    for spec in specs:
        loaded = load_model(spec, dev)
        for c in corruptions:
            t0 = time.perf_counter()
            with determinism(dev):
                rows = evaluate_file(loaded.model, corruption_dir, c, n=n, batch_size=batch_size, device=dev,
                                     labels=labels)
            seconds = time.perf_counter() - t0
            total = rows[-1]["total"]
            say(f"noise protocol {spec.label()} {c}: " + ", ".join(
                f"{r['protocol']} pooled {r['accuracy']:.4f}" for r in rows if r["severity"] is None) + f" ({seconds:.0f} s)")
            base = {"analysis": "noise_protocol", **loaded.meta, "dataset": "cifar10c", "n": total // 5, "seed": 0,
                    "seconds": seconds, **context, "data_sha256": shas[c]}
            records += [{**base, **r} for r in rows]
    df = finish(records, COLUMNS)
    df["severity"] = df["severity"].astype("Int64")
    for c in ("correct", "total"):
        df[c] = df[c].astype("int64")
    for c in ("corruption", "protocol", "file_mean", "file_std"):
        df[c] = df[c].astype("string")
    return df
