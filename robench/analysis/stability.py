"""Stability of the forward dynamics, per model and λ:

- ``coef``: the per-block damping coefficient (λ_n, or k_n for LM-ResNet) with its stage;
- ``gain``: per block n, ‖Δx_{n+1}‖₂ / ‖Δx_n‖₂ where Δx_n is the change of the state entering
  block n caused by a small input perturbation δ (``random``: ε·Rademacher, ``adversarial``:
  ε·sign ∇ₓ loss); the states are read with forward pre-hooks on each block and on the head;
- ``lyapunov``: the mean over blocks of log gain (a finite-time Lyapunov exponent per block);
  ``lyapunov_damped`` averages over the damped blocks only (stage transitions change dimension);
- ``jacobian_norm``: the spectral norm of the input→logit Jacobian by power iteration on JᵀJ
  (``torch.func.jvp`` / ``vjp``);
- ``grad_norm_l2`` / ``grad_norm_l1``: the norm of the input gradient of the cross-entropy loss.

Every quantity except ``coef`` is computed per example and reported as a mean with a 95 % interval.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from robench.analysis.common import (ModelSpec, check_count, check_pixels, check_positive, check_seed, finish,
                                     mean_interval, run_models, specs_of)
from robench.analysis.landscape import loss_grad, random_signs
from robench.errors import BadInput

COLUMNS = ("quantity", "direction", "block", "stage", "coef", "mean", "ci_low", "ci_high")
PERTURBATIONS = ("random", "adversarial")
MAX_ITERS = 1000  # power iterations (default 20)


def state_taps(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose inputs are the states x_0 … x_N: each block, then the head's BatchNorm."""
    blocks, head = getattr(model, "blocks", None), getattr(model, "bn", None)
    if not isinstance(blocks, torch.nn.ModuleList) or not isinstance(head, torch.nn.Module):
        raise BadInput(f"stability needs a model_zoo CifarResNet (blocks + bn head), got {type(model).__name__}")
    return [*blocks, head]


@torch.no_grad()
def states(model: torch.nn.Module, x: torch.Tensor, taps: Sequence[torch.nn.Module]) -> list[torch.Tensor]:
    """The inputs of ``taps`` during one forward pass of ``x``, flattened per example."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].flatten(1).clone())) for m in taps]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    if len(seen) != len(taps):
        raise RuntimeError(f"expected {len(taps)} states, the forward pass produced {len(seen)}")
    return seen


def block_gains(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor,
                taps: Sequence[torch.nn.Module]) -> np.ndarray:
    """Per example and block n: ‖x_{n+1}(x+δ) − x_{n+1}(x)‖ / ‖x_n(x+δ) − x_n(x)‖ → array [N, len(taps) − 1]."""
    a, b = states(model, x, taps), states(model, x + delta, taps)
    norms = torch.stack([(q - p).double().norm(dim=1) for p, q in zip(a, b)], dim=1)  # [N, L]
    return (norms[:, 1:] / norms[:, :-1]).cpu().numpy()


def lyapunov(gains: np.ndarray) -> np.ndarray:
    """Finite-time Lyapunov estimate per example: the mean over blocks of log gain."""
    return np.log(gains).mean(axis=1)


def jacobian_norm(model: torch.nn.Module, x: torch.Tensor, *, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Per-example spectral norm of ∂ logits / ∂ x by power iteration on JᵀJ (jvp then vjp).

    The batch is treated as independent examples (eval mode), so each example keeps its own vector.
    """
    iters = check_count(iters, "power iterations (--iters)", MAX_ITERS)
    from torch.func import jvp, vjp

    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    shape = (-1, *([1] * (x.dim() - 1)))

    def unit(t: torch.Tensor) -> torch.Tensor:
        return t / t.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)

    v = unit(v)
    _, pullback = vjp(model, x)
    for _ in range(iters):
        _, u = jvp(model, (x,), (v,))
        (w,) = pullback(u)
        v = unit(w)
    _, u = jvp(model, (x,), (v,))
    return u.detach().flatten(1).double().norm(dim=1).cpu().numpy()


def per_example(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 1 / 255, seed: int = 0,
                iters: int = 20, batch_size: int = 250, taps: Sequence[torch.nn.Module] | None = None,
                on_batch: Callable[..., None] | None = None) -> dict[str, np.ndarray]:
    """Per-example arrays: gain_random / gain_adversarial [N, blocks], jacobian_norm, grad_norm_l2/_l1 [N].

    ``on_batch(images, what)`` is called after the gains and after the Jacobian of each batch with the
    share of the batch's images that step stands for (progress only; the numbers do not depend on it)."""
    eps = check_pixels(eps, "stability ε (--eps)")
    batch_size = check_positive(batch_size, "batch size")
    taps = state_taps(model) if taps is None else list(taps)
    rand = random_signs(tuple(x.shape), seed, 0).to(x.device, x.dtype)
    parts: dict[str, list] = {k: [] for k in ("gain_random", "gain_adversarial", "jacobian_norm", "grad_norm_l2",
                                              "grad_norm_l1")}
    for b, i in enumerate(range(0, len(y), batch_size)):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        grad = loss_grad(model, xb, yb)
        parts["grad_norm_l2"].append(grad.flatten(1).double().norm(dim=1).cpu().numpy())
        parts["grad_norm_l1"].append(grad.flatten(1).double().abs().sum(1).cpu().numpy())
        parts["gain_random"].append(block_gains(model, xb, eps * rand[i:i + batch_size], taps))
        parts["gain_adversarial"].append(block_gains(model, xb, eps * grad.sign(), taps))
        if on_batch is not None:
            on_batch(len(yb) / 2, "gradients and gains")
        parts["jacobian_norm"].append(jacobian_norm(model, xb, iters=iters, seed=(seed * 1000003 + b) % 2 ** 63))
        if on_batch is not None:
            on_batch(len(yb) / 2, "Jacobian norm")
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def _stage_of(model: torch.nn.Module, n_blocks: int) -> list[int | None]:
    layers = getattr(model, "config", {}).get("layers") if isinstance(getattr(model, "config", None), dict) else None
    if not layers:
        return [None] * n_blocks
    return [s for s, k in enumerate(layers) for _ in range(k)][:n_blocks]


def aggregate(model: torch.nn.Module, values: dict[str, np.ndarray]) -> list[dict]:
    rows = []

    def add(quantity, stat, direction=None, block=None, stage=None, coef=None):
        rows.append({"quantity": quantity, "direction": direction, "block": block, "stage": stage, "coef": coef,
                     "mean": stat[0], "ci_low": stat[1], "ci_high": stat[2]})

    damping = model.damping() if hasattr(model, "damping") else []
    for d in damping:
        add("coef", (d["value"], math.nan, math.nan), block=d["block"], stage=d["stage"], coef=d["coef"])
    damped = [d["block"] for d in damping]
    for direction in PERTURBATIONS:
        gains = values[f"gain_{direction}"]
        stages = _stage_of(model, gains.shape[1])
        for blk in range(gains.shape[1]):
            add("gain", mean_interval(gains[:, blk]), direction, blk, stages[blk])
            add("log_gain", mean_interval(np.log(gains[:, blk])), direction, blk, stages[blk])
        add("lyapunov", mean_interval(lyapunov(gains)), direction)
        if damped:
            add("lyapunov_damped", mean_interval(lyapunov(gains[:, damped])), direction)
    for q in ("jacobian_norm", "grad_norm_l2", "grad_norm_l1"):
        add(q, mean_interval(values[q]))
    return rows


def stability(*, models: Sequence[str | ModelSpec], dataset: str | None = None, data_dir=None, n: int | None = None,
              seed: int = 0, eps: float = 1 / 255, iters: int = 20, batch_size: int | None = None,
              device: str | torch.device = "cpu", log: Callable[[str], None] | None = None,
              on_model: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """The stability table of zoo models (``NAME`` or ``NAME@LAM``) on the first ``n`` images
    (``batch_size`` None: the device's default, :func:`robench.devices.default_batch_size`)."""
    specs = specs_of(models)
    seed = check_seed(seed)
    eps = check_pixels(eps, "stability ε (--eps)")  # before loading anything
    iters = check_count(iters, "power iterations (--iters)", MAX_ITERS)

    def compute(model, x, y, batch, on_batch):
        return aggregate(model, per_example(model, x, y, eps=eps, seed=seed, iters=iters, batch_size=batch,
                                            on_batch=on_batch))

    records = run_models("stability", specs, compute, dataset=dataset, data_dir=data_dir, n=n, seed=seed,
                         device=device, batch_size=batch_size, log=log, on_model=None if on_model is None else lambda r: on_model(_table(r)))
    return _table(records)


def _table(records: list[dict]) -> pd.DataFrame:
    df = finish(records, COLUMNS)
    for c in ("block", "stage"):
        df[c] = df[c].astype("Int64")
    for c in ("quantity", "direction", "coef"):
        df[c] = df[c].astype("string")
    return df
