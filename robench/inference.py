"""Statistical inference for comparing trained models: numbers in, estimates out (numpy/scipy only).

Every function returns an :class:`Estimate`: the effect, its (1 − α) interval, a two-sided p-value,
and the names of the test and the interval. The choices, and why:

- **Two checkpoints on the same images** (:func:`paired_flags`): the exact McNemar test (the
  conditional binomial test on the discordant examples, two-sided) and Newcombe's hybrid-score
  interval for a difference of paired proportions (Newcombe 1998, Stat. Med. 17:2635, method 10:
  Wilson intervals for both accuracies combined with the estimated correlation, φ corrected as in
  the paper). Pairing removes the between-image variance that two independent Wilson intervals carry
  (the models saw the same images), so a difference of a few tenths of a point can be detected. A
  bootstrap would also do, but it is random, slower, and its percentile interval undercovers when
  the discordant counts are small (at the accuracy floor of strong attacks); method 10 is closed
  form, stays inside [−1, 1] and holds its level there (Fagerland, Lydersen & Laake 2014 recommend it).
- **Several training seeds per model** (:func:`flags_contrast`, any linear contrast of model means;
  B − A is the contrast (−1, +1)): a trained network is one draw from its architecture's training
  distribution, and the test images are one draw from the image distribution, so the estimate
  carries two variances. Seeds of different architectures are independent runs (seed 1 of ResNet
  and seed 1 of In-ResNet share nothing that pairs them), while the images are shared by every run.
  The variance of the contrast of seed-averaged accuracies under a crossed seed × image model is
  estimated by moments: V = var_i(T_i)/n + Σ_m w_m² σ̂²_m / k_m, where T_i is example i's contrast of
  seed-averaged flags (the paired, example-level part, which also holds the seed × image noise) and
  σ̂²_m = max(var_s(acc_{m,s}) − MS_res,m / n, 0) is model m's between-seed variance of accuracy beyond
  what per-example noise explains (MS_res,m: residual mean square of its seed × example table). The
  interval is the t interval with Welch–Satterthwaite degrees of freedom (k_m − 1 for a seed part,
  n − 1 for the example part). Why not the alternatives: per-seed differences with a t interval pair
  seeds arbitrarily and ignore that all seeds share the images; a two-level bootstrap over seeds and
  examples counts the seed × image noise twice (Owen 2007, "the pigeonhole bootstrap") and with three
  seeds has ten distinct seed resamples whose spread underestimates the seed variance by (k − 1)/k,
  while the t quantile with k − 1 degrees of freedom keeps three seeds honest. When seeds agree the
  seed part vanishes and the interval approaches the paired one; when they disagree it widens with
  few degrees of freedom. A model with one seed next to models with several borrows the pooled
  seed variance of the others (assumed equal across architectures; stated in the note).
- **Summaries without per-example values** (:func:`summary_contrast`: landscape and stability
  tables hold a mean and a 95 % interval per model): the standard errors are read back from the
  intervals and combined as independent (Welch). The models saw the same images, so the true
  variance of a difference is smaller when the per-example values correlate: this interval is
  conservative. Seeds enter as above, with the tables' squared standard errors as the noise part.
- **Many cells** (:func:`holm`): Holm's step-down adjustment, which controls the family-wise error
  without assuming independence between cells (cells share images and models).
- **Association across models** (:func:`spearman`): Spearman's ρ (ranks: no assumption that a
  Lyapunov estimate and an accuracy relate linearly), an exact permutation p-value (every ordering
  of up to 8 models, else 100,000 seeded permutations), and the Fisher-z interval with Bonett &
  Wright's (2000) variance (1 + ρ²/2)/(m − 3) for Spearman's ρ. The unit is the model, so the
  scatter of trained models around their architecture is part of the noise the test sees; with six
  models only strong associations can be detected, as it should be.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np
from scipy import stats

from robench.results import wilson


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An effect with its interval and two-sided test; ``df`` is None for exact or normal tests."""

    effect: float
    ci_low: float
    ci_high: float
    p: float
    test: str
    interval: str
    df: float | None = None
    note: str = ""


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def check_alpha(alpha: float) -> float:
    from robench.errors import BadInput

    if not (isinstance(alpha, (int, float)) and 0.0 < float(alpha) < 1.0):
        raise BadInput(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs: 2·P(Binomial(b + c, ½) ≤
    min(b, c)), capped at 1 (1 when there is no discordant pair)."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    m = b + c
    if m == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(b, c), m, 0.5)))


def newcombe_paired(both: int, b_only: int, a_only: int, neither: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's (1998) method-10 interval for p_B − p_A from a paired 2×2 table: ``both`` examples
    right under A and B, ``b_only`` right only under B, ``a_only`` right only under A, ``neither``."""
    n = both + b_only + a_only + neither
    if n <= 0:
        return (math.nan, math.nan)
    z = _z(alpha)
    x1, x2 = both + b_only, both + a_only  # successes of B and of A
    p1, p2 = x1 / n, x2 / n
    l1, u1 = wilson(x1, n, z)
    l2, u2 = wilson(x2, n, z)
    margins = x1 * (n - x1) * x2 * (n - x2)
    if margins == 0:
        phi = 0.0
    else:
        cross = both * neither - b_only * a_only
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross >= 0:
            phi = 0.0
        else:
            phi = cross / math.sqrt(margins)
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return (max(-1.0, lo), min(1.0, hi))


def paired_flags(a: np.ndarray, b: np.ndarray, *, alpha: float = 0.05) -> tuple[Estimate, dict]:
    """B − A accuracy of two checkpoints from their per-example flags on the same images: exact
    McNemar p and Newcombe interval. Returns the estimate and the 2×2 counts."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("paired flags need two non-empty vectors of equal length")
    counts = {"both": int(np.sum(a & b)), "b_only": int(np.sum(b & ~a)), "a_only": int(np.sum(a & ~b)),
              "neither": int(np.sum(~a & ~b))}
    lo, hi = newcombe_paired(counts["both"], counts["b_only"], counts["a_only"], counts["neither"], alpha=alpha)
    effect = (counts["b_only"] - counts["a_only"]) / a.size
    return (Estimate(effect, lo, hi, mcnemar_exact(counts["b_only"], counts["a_only"]), "mcnemar_exact",
                     "newcombe_paired"), counts)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _finish(effect: float, parts: list[tuple[float, float]], *, alpha: float, test: str, interval: str,
            note: str = "") -> Estimate:
    """t interval and test from variance parts (variance, degrees of freedom; inf for a normal part)."""
    var = float(sum(v for v, _ in parts))
    if not var > 0.0:
        p = 1.0 if effect == 0 else 0.0
        return Estimate(effect, effect, effect, p, test, interval, None, note)
    denom = sum(v * v / d for v, d in parts if v > 0 and math.isfinite(d))
    df = var * var / denom if denom > 0 else math.inf
    se = math.sqrt(var)
    if math.isfinite(df):
        q, p = float(stats.t.ppf(1 - alpha / 2, df)), float(2 * stats.t.sf(abs(effect) / se, df))
    else:
        q, p = _z(alpha), float(2 * stats.norm.sf(abs(effect) / se))
    return Estimate(effect, effect - q * se, effect + q * se, p, test, interval, df if math.isfinite(df) else None,
                    note)


def _seed_variance(f: np.ndarray) -> float:
    """Between-seed variance of accuracy beyond per-example noise, from a (k ≥ 2) × n flag table."""
    f = f.astype(float)
    k, n = f.shape
    acc = f.mean(axis=1)
    resid = f - acc[:, None] - f.mean(axis=0)[None, :] + f.mean()
    ms_res = float((resid ** 2).sum() / ((k - 1) * (n - 1))) if n > 1 else 0.0
    return max(float(acc.var(ddof=1)) - ms_res / n, 0.0)


def _seed_parts(sigma2: list[float | None], ks: list[int], weights: Sequence[float]) -> tuple[list, str]:
    """Variance parts of the seed level, one per independent estimate (a model with ≥ 2 seeds), for
    Satterthwaite's degrees of freedom. A model with one seed borrows the pooled estimate
    Σ_j df_j σ²_j / Σ_j df_j of the others, so its share joins their coefficients; with no model of two
    seeds there is no seed part (training variability not assessed)."""
    own = [j for j, s in enumerate(sigma2) if s is not None]
    borrowed = sum(w * w / k for s, k, w in zip(sigma2, ks, weights) if s is None)
    if not own:
        return [], "one seed per model: training variability not assessed" if borrowed else ""
    dfp = sum(ks[j] - 1 for j in own)
    parts = []
    for j in own:
        coef = weights[j] ** 2 / ks[j] + borrowed * (ks[j] - 1) / dfp
        if coef > 0:
            parts.append((coef * sigma2[j], ks[j] - 1))
    note = "a model with one seed borrows the pooled seed variance of the others" if borrowed else ""
    return parts, note


def flags_contrast(groups: Sequence[np.ndarray], weights: Sequence[float], *, alpha: float = 0.05) -> Estimate:
    """Σ_m w_m · (seed-averaged accuracy of model m) with the two-component variance of the module
    docstring. ``groups[m]``: model m's flags, shape (seeds, n), the same n images for every model."""
    mats = [np.atleast_2d(np.asarray(g, dtype=bool)) for g in groups]
    n = mats[0].shape[1]
    if any(m.shape[1] != n for m in mats) or len(mats) != len(weights) or n < 2:
        raise ValueError("every model needs flags on the same n ≥ 2 images, one weight per model")
    w = [float(x) for x in weights]
    t = sum(wm * m.mean(axis=0) for wm, m in zip(w, mats))
    effect = float(t.mean())
    parts = [(float(t.var(ddof=1)) / n, n - 1)]
    ks = [m.shape[0] for m in mats]
    seed_parts, note = _seed_parts([_seed_variance(m) if m.shape[0] > 1 else None for m in mats], ks, w)
    return _finish(effect, parts + seed_parts, alpha=alpha, test="t_seeds_examples" if seed_parts else "t_examples",
                   interval="t_satterthwaite", note=note)


def summary_contrast(groups: Sequence[tuple[Sequence[float], Sequence[float], int]], weights: Sequence[float], *,
                     alpha: float = 0.05) -> Estimate:
    """The contrast of per-model means read from summary tables: ``groups[m]`` = (means over seeds,
    standard errors over examples of each mean, n examples). Examples are treated as independent
    between models (conservative where they are the same images)."""
    w = [float(x) for x in weights]
    effect, parts, sigma2, ks = 0.0, [], [], []
    for (means, ses, n), wm in zip(groups, w):
        means, ses = np.asarray(means, dtype=float), np.asarray(ses, dtype=float)
        k = means.size
        effect += wm * float(means.mean())
        noise = float(np.mean(ses ** 2))
        parts.append((wm * wm * noise / k, max(int(n) - 1, 1)))
        sigma2.append(max(float(means.var(ddof=1)) - noise, 0.0) if k > 1 else None)
        ks.append(k)
    seed_parts, note = _seed_parts(sigma2, ks, w)
    return _finish(effect, parts + seed_parts, alpha=alpha, test="welch_seeds_examples" if seed_parts else "welch",
                   interval="t_satterthwaite", note=note)


def spearman(x: Sequence[float], y: Sequence[float], *, alpha: float = 0.05, seed: int = 0,
             exact_up_to: int = 8, permutations: int = 100_000) -> Estimate:
    """Spearman's ρ across m ≥ 4 units with an exact (or seeded Monte Carlo) permutation p-value and a
    Fisher-z interval with Bonett–Wright variance. |ρ| = 1 is clipped to 0.9999 for the transform."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    m = x.size
    if m != y.size or m < 4:
        raise ValueError("Spearman's interval needs at least 4 paired values")
    rx, ry = stats.rankdata(x), stats.rankdata(y)

    def rho_of(r: np.ndarray) -> np.ndarray:
        r = np.atleast_2d(r)
        a = rx - rx.mean()
        b = r - r.mean(axis=1, keepdims=True)
        den = math.sqrt(float((a * a).sum())) * np.sqrt((b * b).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return (b @ a) / den

    rho = float(rho_of(ry)[0])
    if not math.isfinite(rho):  # a constant variable: no association measurable
        return Estimate(math.nan, math.nan, math.nan, math.nan, "spearman_permutation", "fisher_z_bonett_wright")
    if m <= exact_up_to:
        perms = np.array([ry[list(p)] for p in itertools.permutations(range(m))])
        null = rho_of(perms)
        p = float(np.mean(np.abs(null) >= abs(rho) - 1e-12))
        test = "spearman_exact_permutation"
    else:
        rng = np.random.default_rng(seed)
        null = rho_of(np.array([rng.permutation(ry) for _ in range(permutations)]))
        p = float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (1 + permutations))
        test = "spearman_permutation"
    r = max(-0.9999, min(0.9999, rho))
    se = math.sqrt((1 + r * r / 2) / (m - 3))
    z = math.atanh(r)
    q = _z(alpha)
    return Estimate(rho, math.tanh(z - q * se), math.tanh(z + q * se), p, test, "fisher_z_bonett_wright")
