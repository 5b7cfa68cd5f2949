"""Loss landscape: loss and accuracy of clip(x + t·d, 0, 1) for t on a grid, per example, along

- ``grad_sign``: d = sign(∇ₓ CE(f(x), y)) at the clean point (the FGSM direction; t > 0 climbs),
- ``pgd``: d = δ / ‖δ‖∞ with δ the robench PGD L∞ perturbation at ``pgd_eps`` (so t = ε reaches it),
- ``random``: d a seeded Rademacher (±1) direction, ``n_random`` of them,

and optionally a 2-D grid (grad_sign × the first random direction). Per-example values aggregate to
a mean with a 95 % interval (loss: normal approximation; accuracy: Wilson); ``loss_increase`` is the
paired per-example loss(t) − loss(0). Distances are L∞ in pixel units, like attack ε.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from robench.analysis.common import (ModelSpec, check_count, check_pixels, check_positive, check_seed, finish,
                                     mean_interval, rate_interval, run_models, specs_of)
from robench.errors import BadInput

DIRECTIONS = ("grad_sign", "pgd", "random")
COLUMNS = ("direction", "index", "t", "t2", "quantity", "mean", "ci_low", "ci_high")
FLAT_T = 8 / 255
MAX_POINTS = 1001  # grid points along one direction
MAX_POINTS_2D = 101  # per axis of the 2-D grid (101² forward passes per batch)
MAX_RANDOM_DIRECTIONS = 64
MAX_VALUES = 200_000_000  # per-example grid values kept in memory (float64 loss + bool correct)


def t_grid(radius: float = 16 / 255, points: int = 41, include: Sequence[float] = (0.0, FLAT_T)) -> np.ndarray:
    """``points`` evenly spaced values in [−radius, radius], plus ``include`` values inside it."""
    radius = check_pixels(radius, "landscape radius (--radius)")
    points = check_count(points, "number of landscape points", MAX_POINTS)
    if points < 2:
        raise BadInput("the landscape grid needs at least 2 points")
    ts = np.linspace(-radius, radius, points)
    extra = [v for v in include if -radius <= v <= radius and not np.isclose(ts, v, atol=1e-9).any()]
    ts = np.sort(np.concatenate([ts, extra]))
    ts[np.isclose(ts, 0.0, atol=1e-12)] = 0.0
    return ts


def loss_grad(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example input gradient of the cross-entropy loss (each example's own loss, not the mean)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
    return g


def random_signs(shape: tuple, seed: int, index: int) -> torch.Tensor:
    """Seeded Rademacher direction for the whole set: a pure function of (seed, index, shape)."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), 7919, int(index)]).generate_state(1)[0]))
    return torch.randint(0, 2, shape, generator=g).float().mul_(2).sub_(1)


def pgd_direction(model, x, y, *, eps: float, seed: int, backend: str | None = None) -> torch.Tensor:
    """The robench PGD L∞ perturbation at ε, scaled to unit L∞ norm per example."""
    from robench.attacks import make_attack

    return _unit_linf(make_attack("pgd", eps=eps, backend=backend, seed=seed)(model, x, y) - x)


def _unit_linf(d: torch.Tensor) -> torch.Tensor:
    peak = d.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (d.dim() - 1)))
    return d / peak


def check_size(points: int, points2d: int, n: int, n_random: int = 1) -> None:
    """The per-example grid values the landscape keeps must fit in memory (``MAX_VALUES``)."""
    values = n * (points * (2 + n_random) + points2d * points2d)
    if values > MAX_VALUES:
        raise BadInput(f"the landscape grid would hold {values:,} per-example values ({values * 9 / 1e9:.1f} GB), more "
                       f"than the limit of {MAX_VALUES:,}; use fewer --points/--points2d or a smaller --n")


def check_directions(directions: Sequence[str]) -> list[str]:
    directions = list(dict.fromkeys(directions))
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise BadInput(f"unknown landscape direction {', '.join(bad) or '(none)'}; valid choices: {', '.join(DIRECTIONS)}")
    return directions


@torch.no_grad()
def _evaluate(model, x, y, d: torch.Tensor, ts: np.ndarray, d2: torch.Tensor | None = None,
              ts2: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """loss and correctness of clip(x + t·d [+ t2·d2]) → tensors [len(ts)(, len(ts2)), N] on x's device
    (filled there, read by the caller once: no host round trip per grid point)."""
    grid = [(t, None) for t in ts] if d2 is None else [(t, t2) for t in ts for t2 in ts2]
    loss = torch.empty((len(grid), len(y)), dtype=torch.float32, device=x.device)
    correct = torch.empty((len(grid), len(y)), dtype=torch.bool, device=x.device)
    for i, (t, t2) in enumerate(grid):
        xt = x + float(t) * d
        if d2 is not None:
            xt = xt + float(t2) * d2
        logits = model(xt.clamp_(0.0, 1.0))
        loss[i] = F.cross_entropy(logits.float(), y, reduction="none")
        correct[i] = logits.argmax(1) == y
    if d2 is not None:
        loss, correct = loss.reshape(len(ts), len(ts2), -1), correct.reshape(len(ts), len(ts2), -1)
    return loss, correct


def per_example(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, directions: Sequence[str] = DIRECTIONS,
                radius: float = 16 / 255, points: int = 41, n_random: int = 1, seed: int = 0,
                pgd_eps: float = 8 / 255, backend: str | None = None, grid2d: bool = False, points2d: int = 21,
                batch_size: int = 250, on_batch: Callable[..., None] | None = None) -> dict:
    """Per-example loss/correctness along each direction: {(direction, index): (ts, loss[T, N], correct[T, N])},
    and with ``grid2d`` the key ("grad_sign×random", 0) → (ts, ts2, loss[T, T2, N], correct[T, T2, N]).

    ``on_batch(images, what)`` is called after each direction of each batch with the share of the
    batch's images that step stands for (so a progress line comes every direction, not once per
    batch; the batches and their seeds, and so the numbers, do not depend on it)."""
    directions = check_directions(directions)
    n_random = check_count(n_random, "number of random directions", MAX_RANDOM_DIRECTIONS)
    batch_size = check_positive(batch_size, "batch size")
    ts = t_grid(radius, points)
    ts2 = t_grid(radius, check_count(points2d, "points per axis of the 2-D grid", MAX_POINTS_2D), include=(0.0,)) \
        if grid2d else None
    n = len(y)
    check_size(len(ts), len(ts2) if grid2d else 0, n, n_random)
    rand = [random_signs(tuple(x.shape), seed, k).to(x.device, x.dtype) for k in range(n_random)] \
        if ("random" in directions or grid2d) else []
    parts: dict[tuple, list] = {}
    if "pgd" in directions:  # checked once for the whole set; each batch's PGD then runs without a host read
        from robench.attacks import make_attack
        from robench.attacks.base import check_bound, no_excess

        pgd_classes = make_attack("pgd", eps=pgd_eps, backend=backend).prepare(model, x, y)
        pgd_excess = no_excess(x.device)
    for b, i in enumerate(range(0, n, batch_size)):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        dirs: list[tuple[tuple, torch.Tensor]] = []
        gsign = loss_grad(model, xb, yb).sign() if ("grad_sign" in directions or grid2d) else None
        if "grad_sign" in directions:
            dirs.append((("grad_sign", 0), gsign))
        if "pgd" in directions:
            bseed = int(np.random.SeedSequence([int(seed), b]).generate_state(1)[0])
            atk = make_attack("pgd", eps=pgd_eps, backend=backend, seed=bseed)
            (out,), excess = atk.run_batch(model, xb, yb, [pgd_eps], num_classes=pgd_classes, score=False)
            pgd_excess = torch.maximum(pgd_excess, excess)
            dirs.append((("pgd", 0), _unit_linf(out.x_adv - xb)))
        if "random" in directions:
            dirs += [(("random", k), r[i:i + batch_size]) for k, r in enumerate(rand)]
        steps = len(dirs) + int(grid2d)
        for key, d in dirs:
            parts.setdefault(key, []).append(_evaluate(model, xb, yb, d, ts))
            if on_batch is not None:
                on_batch(len(yb) / steps, f"{key[0]}{key[1] if key[0] == 'random' else ''}")
        if grid2d:
            parts.setdefault(("grad_sign×random", 0), []).append(_evaluate(model, xb, yb, gsign, ts, rand[0][i:i + batch_size], ts2))
            if on_batch is not None:
                on_batch(len(yb) / steps, "2-D grid")
    if "pgd" in directions:
        check_bound(pgd_excess, atk)
    out = {}
    for key, chunks in parts.items():  # one device → host copy per direction
        loss = torch.cat([c[0] for c in chunks], dim=-1).cpu().numpy().astype(np.float64)
        correct = torch.cat([c[1] for c in chunks], dim=-1).cpu().numpy()
        out[key] = (ts, ts2, loss, correct) if key[0] == "grad_sign×random" else (ts, loss, correct)
    return out


def aggregate(values: dict) -> list[dict]:
    """Per-example arrays (from :func:`per_example`) → tidy rows with means and 95 % intervals."""
    rows = []

    def add(direction, index, t, t2, quantity, stat):
        rows.append({"direction": direction, "index": index, "t": float(t), "t2": t2, "quantity": quantity,
                     "mean": stat[0], "ci_low": stat[1], "ci_high": stat[2]})

    for (direction, index), val in values.items():
        if direction == "grad_sign×random":
            ts, ts2, loss, correct = val
            for a, t in enumerate(ts):
                for c, t2 in enumerate(ts2):
                    add(direction, index, t, float(t2), "loss", mean_interval(loss[a, c]))
                    add(direction, index, t, float(t2), "accuracy", rate_interval(correct[a, c]))
            continue
        ts, loss, correct = val
        zero = int(np.flatnonzero(ts == 0.0)[0])
        for a, t in enumerate(ts):
            add(direction, index, t, np.nan, "loss", mean_interval(loss[a]))
            add(direction, index, t, np.nan, "accuracy", rate_interval(correct[a]))
            add(direction, index, t, np.nan, "loss_increase", mean_interval(loss[a] - loss[zero]))
    return rows


def landscape(*, models: Sequence[str | ModelSpec], dataset: str | None = None, data_dir=None, n: int | None = None,
              seed: int = 0, directions: Sequence[str] = DIRECTIONS, radius: float = 16 / 255, points: int = 41,
              n_random: int = 1, pgd_eps: float = 8 / 255, backend: str | None = None, grid2d: bool = False,
              points2d: int = 21, batch_size: int | None = None, device: str | torch.device = "cpu",
              log: Callable[[str], None] | None = None,
              on_model: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """The landscape table of zoo models (``NAME`` or ``NAME@LAM``) on the first ``n`` images
    (``batch_size`` None: the device's default, :func:`robench.devices.default_batch_size`)."""
    specs = specs_of(models)
    seed = check_seed(seed)
    t_grid(radius, points)  # check the grid and directions before loading anything
    check_directions(directions)
    check_count(n_random, "number of random directions", MAX_RANDOM_DIRECTIONS)
    pgd_eps = check_pixels(pgd_eps, "PGD ε of the pgd direction (--pgd-eps)")
    if grid2d:
        check_count(points2d, "points per axis of the 2-D grid", MAX_POINTS_2D)
    if n is not None:
        check_size(points + 2, points2d + 1 if grid2d else 0, check_positive(n, "n"), n_random)

    def compute(model, x, y, batch, on_batch):
        return aggregate(per_example(model, x, y, directions=directions, radius=radius, points=points,
                                     n_random=n_random, seed=seed, pgd_eps=pgd_eps, backend=backend, grid2d=grid2d,
                                     points2d=points2d, batch_size=batch, on_batch=on_batch))

    records = run_models("landscape", specs, compute, dataset=dataset, data_dir=data_dir, n=n, seed=seed,
                         device=device, batch_size=batch_size, log=log, on_model=None if on_model is None else lambda r: on_model(_table(r)))
    return _table(records)


def _table(records: list[dict]) -> pd.DataFrame:
    df = finish(records, COLUMNS)
    df["index"] = df["index"].astype("int64")
    return df


def flatness(df: pd.DataFrame, t: float = FLAT_T) -> pd.DataFrame:
    """Per model, λ, seed and 1-D direction: the mean loss increase from t = 0 to ``t`` with its interval."""
    rows = df[(df["quantity"] == "loss_increase") & df["t2"].isna() & np.isclose(df["t"].astype(float), t, atol=1e-9)]
    if rows.empty:
        raise BadInput(f"the landscape table has no loss_increase at t={t:.6g}; its grid must include it")
    cols = ["model", "scheme", "lam", "dataset", "n", "seed", "direction", "index", "mean", "ci_low", "ci_high"]
    return rows[cols].rename(columns={"mean": "loss_increase"}).reset_index(drop=True)
