"""Result tables with known per-example flags, for the paired statistics and claims tests."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from robench.results import pack_flags, to_frame, wilson

DATA = "d" * 64


def flags_2x2(both: int, b_only: int, a_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Flags of A and B over both + b_only + a_only + neither images with exactly that paired table."""
    a = np.array([1] * both + [0] * b_only + [1] * a_only + [0] * neither, dtype=bool)
    b = np.array([1] * both + [1] * b_only + [0] * a_only + [0] * neither, dtype=bool)
    return a, b


def first(k: int, n: int) -> np.ndarray:
    """The first k of n images right."""
    return np.arange(n) < k


def row(model: str, flags, *, scheme: str = "euler", lam=0.0, kind: str = "clean", perturbation: str = "none",
        eps=None, severity=None, backend=None, steps=None, seed: int = 0, data: str = DATA, dataset: str = "cifar10",
        attacks=None, complete=None, weights: str | None = None) -> dict:
    f = np.asarray(flags, dtype=bool)
    c, n = int(f.sum()), int(f.size)
    lo, hi = wilson(c, n)
    if kind == "attack" and backend is None:
        backend = "art"
    return dict(model=model, scheme=scheme, lam=lam, dataset=dataset, n=n, kind=kind, perturbation=perturbation,
                backend=backend, norm="linf" if kind in ("attack", "worst_case") else None, eps=eps, severity=severity,
                steps=steps, seed=seed, correct=c, accuracy=c / n, ci_low=lo, ci_high=hi, data_sha256=data,
                weights_sha256=weights or ("w" + model + str(lam)).ljust(64, "0")[:64], flags=pack_flags(f),
                attacks=attacks, complete=complete)


def table(rows: list[dict]) -> pd.DataFrame:
    return to_frame(rows)


def stability_row(model: str, mean: float, *, scheme: str = "euler", lam=0.0, half: float = 0.005,
                  direction: str = "adversarial", n: int = 500, seed: int = 0, data: str = DATA,
                  weights: str | None = None) -> dict:
    return dict(analysis="stability", model=model, scheme=scheme, lam=lam, origin="shipped", dataset="cifar10", n=n,
                seed=seed, quantity="lyapunov", direction=direction, block=pd.NA, stage=pd.NA, coef=pd.NA, mean=mean,
                ci_low=mean - half, ci_high=mean + half, data_sha256=data,
                weights_sha256=weights or ("w" + model + str(lam)).ljust(64, "0")[:64])


def stability_tables(lyapunov: list[float], worst: list[int], *, weights_differ: bool = False):
    """Six depth-20 models with the given Lyapunov estimates and worst-case correct counts at 8/255 (N = 400)."""
    models = [("resnet20", "euler", 0.0), ("inresnet20", "damped", 0.25), ("inresnet20", "damped", 0.5),
              ("inresnet20", "damped", 0.75), ("inresnet20", "damped", 1.0), ("inresnet20", "damped", math.nan)]
    ev = table([row(m, first(k, 400), scheme=s, lam=lam, kind="worst_case", perturbation="worst_case", eps=8 / 255,
                    attacks="pgd", complete=True) for (m, s, lam), k in zip(models, worst)])
    st = pd.DataFrame([stability_row(m, v, scheme=s, lam=lam, weights="x" * 64 if weights_differ else None)
                       for (m, s, lam), v in zip(models, lyapunov)])
    return ev, st
