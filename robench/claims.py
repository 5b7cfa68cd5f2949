"""The seed papers' claims as computed, tested verdicts: ``robench claims TABLES...``.

Papers: In-ResNet (Yang, Liu, Bao & Shi, "Interpolation between Residual and Non-Residual Networks",
ICML 2020) and LM-ResNet (Lu, Zhong, Li & Dong, "Beyond Finite Layer Neural Networks", ICML 2018).
:data:`CLAIMS` lists each claim with its effect, test and direction. :func:`evaluate_claims` reads
eval, landscape and stability tables (a view: it evaluates no model) and returns one row per tested
comparison (:data:`COLUMNS`); :func:`summarise` folds them into one verdict per claim.

**The verdict rule** (:func:`rule`). Each claim is a family of rows (models × cells); its p-values
are Holm-adjusted within the family. A row is *supported* when its Holm-adjusted p is below α = 0.05
**and** its 95 % interval excludes 0 on the claimed side, *contradicted* when both hold on the other
side, and *inconclusive* otherwise. For the λ trend (monotone in either direction) a row is
supported when the slope is significant and no step between neighbouring λ is significantly against
it (Holm within the cell's steps), and contradicted when significant steps go both ways or one goes
against a significant slope. A claim is supported when at least one row is supported and none is
contradicted (Holm bounds the family-wise error, so this rejects "no effect in any cell" at level α),
contradicted in the mirror case, inconclusive otherwise (nothing significant, or rows both ways).

**Seeds.** Claims that compare architectures (all but the association across models) are about what
training produces: one checkpoint per model cannot separate the architecture from its training
noise. ``verdict_checkpoints`` applies the rule to the checkpoints at hand; ``verdict`` is that
verdict only where every model has at least two training seeds (``resnet20.s1``…; the untagged name
is seed 0), and otherwise inconclusive with ``missing`` saying so. The association across models
takes the model as its unit, so it needs no seeds. Missing evidence (no landscape table, no
LM-ResNet cells, fewer than four models) gives one inconclusive row naming what is missing.

The tests, and why, are in :mod:`robench.inference`: paired flags (exact McNemar, Newcombe interval;
across seeds the two-level t), the λ trend as the least-squares slope of accuracy on λ estimated as
a linear contrast of the models' per-example flags (the paired, repeated-measures form of the
Cochran–Armitage trend test: every λ saw the same images, so the contrast's variance comes from
per-example contrast scores rather than from independent binomials), stability and flatness from
the summary tables' means and intervals (conservative Welch), and the association as Spearman's ρ
with an exact permutation test and a Fisher-z interval.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence, Union

import numpy as np
import pandas as pd

from model_zoo.registry import natural_key, split_tag
from robench import inference
from robench.comparison import (cell_label, cell_sort_key, cells, check_paired, compare_selections,
                                model_label, select)
from robench.errors import BadInput
from robench.results import format_eps, nan_to_none

ALPHA = 0.05
IN_RESNET = "In-ResNet (Yang et al., ICML 2020)"
LM_RESNET = "LM-ResNet (Lu et al., ICML 2018)"
NOISE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
PAPER_ATTACKS = ("fgsm", "ifgsm", "pgd")
DAMPED = ("damped", "lambda_damped")
ATTACK_DIRECTIONS = ("grad_sign", "pgd")  # landscape directions that are attack directions
LYAPUNOV_DIRECTIONS = ("adversarial", "random")
_Z95 = 1.959963984540054

def rule(alpha: float = ALPHA) -> str:
    """The verdict rule in words (the module docstring explains it)."""
    return (f"Holm-adjusted within each claim; a row is supported when p_holm < {alpha:g} and its "
            f"{100 * (1 - alpha):g} % interval excludes 0 on the claimed side, contradicted when both hold on the "
            "other side, else inconclusive; a claim is supported when ≥ 1 row is supported and none contradicted, "
            "contradicted in the mirror case, else inconclusive; claims about architectures need ≥ 2 training "
            "seeds per model for a verdict (verdict_checkpoints applies the rule to the checkpoints at hand).")


RULE = rule()


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of a seed paper: ``direction`` +1 (effect > 0 supports), −1, or 0 (either sign)."""

    id: str
    paper: str
    statement: str
    direction: int
    effect: str
    test: str
    needs_seeds: bool = True


CLAIMS: tuple[Claim, ...] = (
    Claim("noise", IN_RESNET, "Damping improves accuracy under stochastic noise (In-ResNet with learned λ vs the "
          "ResNet of the same depth; Gaussian, shot, impulse and speckle noise, every severity)", +1,
          "accuracy difference In-ResNet − ResNet", "paired flags: exact McNemar, Newcombe interval"),
    Claim("attacks", IN_RESNET, "Damping improves accuracy under adversarial attacks (In-ResNet with learned λ vs "
          "ResNet; FGSM, I-FGSM, PGD and their worst case, every ε)", +1,
          "accuracy difference In-ResNet − ResNet", "paired flags: exact McNemar, Newcombe interval"),
    Claim("lambda_trend", IN_RESNET, "Robustness varies monotonically with λ between ResNet (λ = 0) and the plain "
          "CNN (λ = 1) (fixed-λ In-ResNets; every perturbed cell)", 0,
          "slope of accuracy in λ (change from λ = 0 to λ = 1 along the fitted line)",
          "paired linear trend contrast over the per-example flags; neighbouring steps by McNemar"),
    Claim("stability", IN_RESNET, "Damped models are more stable: lower finite-time Lyapunov estimate (mean log "
          "gain per block) than the ResNet of the same depth", -1,
          "Lyapunov estimate damped − ResNet", "difference of means from the stability table (Welch)"),
    Claim("stability_robustness", IN_RESNET, "Stability goes with robustness: across models, a lower Lyapunov "
          "estimate (adversarial direction) comes with a higher worst-case accuracy", -1,
          "Spearman ρ(Lyapunov, accuracy) across models", "exact permutation test; Fisher-z interval",
          needs_seeds=False),
    Claim("flatness", IN_RESNET, "The loss is flatter along the attack direction: smaller loss rise from t = 0 to "
          "t = 8/255 than ResNet (In-ResNet with learned λ)", -1,
          "loss rise at 8/255, In-ResNet − ResNet", "difference of means from the landscape table (Welch)"),
    Claim("lm_clean", LM_RESNET, "LM-ResNet is more accurate than ResNet at equal depth (clean test images)", +1,
          "clean accuracy LM-ResNet − ResNet", "paired flags: exact McNemar, Newcombe interval"),
)
COLUMNS = ("claim", "paper", "statement", "direction", "comparison", "cell", "effect", "ci_low", "ci_high", "p",
           "p_holm", "test", "interval", "n", "n_models", "n_seeds", "models", "verdict_checkpoints", "verdict",
           "detail", "missing")
SUMMARY_COLUMNS = ("claim", "paper", "statement", "verdict", "verdict_checkpoints", "rows", "supported",
                   "contradicted", "n_seeds", "headline", "missing")
ONE_SEED = "one training run per model: needs ≥ 2 seeds per model (e.g. resnet20.s1) to speak for the architecture"

Tables = Union[pd.DataFrame, str, os.PathLike, Sequence[Union[pd.DataFrame, str, os.PathLike]]]


def _split(tables: Tables) -> dict[str, pd.DataFrame | None]:
    """eval / landscape / stability frames from paths or DataFrames (several of a kind are concatenated)."""
    from robench.analysis.plots import read_any, table_kind

    items = [tables] if isinstance(tables, (pd.DataFrame, str, os.PathLike)) else list(tables)
    if not items:
        raise BadInput("give at least one table (eval, landscape or stability)")
    kinds: dict[str, list[pd.DataFrame]] = {"eval": [], "landscape": [], "stability": []}
    for t in items:
        df = t if isinstance(t, pd.DataFrame) else read_any(t)
        kind = table_kind(df)
        if kind not in kinds:
            raise BadInput(f"{t if not isinstance(t, pd.DataFrame) else 'a table'} is a {kind} table; claims read "
                           "eval, landscape and stability tables")
        if df.empty:
            raise BadInput(f"{t if not isinstance(t, pd.DataFrame) else 'a table'} has no rows")
        kinds[kind].append(df)
    return {k: (pd.concat(v, ignore_index=True) if v else None) for k, v in kinds.items()}


def _families(df: pd.DataFrame) -> dict[tuple[str, object], str]:
    """(base name, λ or None) → scheme, over the table's rows."""
    out = {}
    schemes = df["scheme"] if "scheme" in df.columns else pd.Series([None] * len(df), index=df.index)
    for m, lam, s in zip(df["model"], df["lam"], schemes):
        out.setdefault((split_tag(str(m))[0], nan_to_none(lam)), None if nan_to_none(s) is None else str(s))
    return out


def euler_counterpart(base: str, families: dict[tuple[str, object], str]) -> tuple[str, object] | None:
    """The forward-Euler model of the same depth in the tables: inresnet20, lambda_inresnet20 and
    lmresnet20 → resnet20 (the scheme prefix removed), when the tables hold it."""
    for prefix in ("lambda_in", "in", "lm"):
        if base.startswith(prefix):
            for (b, lam), scheme in families.items():
                if b == base[len(prefix):] and scheme == "euler":
                    return (b, lam)
    return None


def _spec(base: str, lam) -> str:
    return f"{base}@{'learned' if lam is None else f'{float(lam):g}'}"


def _pairs(df: pd.DataFrame, want) -> list[tuple[tuple[str, object], tuple[str, object]]]:
    """(ResNet family, other family) for every family whose scheme/λ ``want(scheme, lam)`` accepts."""
    fam = _families(df)
    out = []
    for (base, lam), scheme in sorted(fam.items(), key=lambda kv: (natural_key(kv[0][0]), kv[0][1] is None,
                                                                    kv[0][1] or 0.0)):
        if want(scheme, lam):
            a = euler_counterpart(base, fam)
            if a is not None:
                out.append((a, (base, lam)))
    return out


def _learned_damped(scheme, lam) -> bool:
    return scheme in DAMPED and lam is None


def _any_damped(scheme, lam) -> bool:
    return scheme in DAMPED and (lam is None or float(lam) > 0)


def _row(claim: Claim, **kw) -> dict:
    base = {c: None for c in COLUMNS}
    base.update(claim=claim.id, paper=claim.paper, statement=claim.statement,
                direction={1: "+", -1: "−", 0: "±"}[claim.direction], detail="", missing="")
    base.update(kw)
    return base


def _missing(claim: Claim, what: str) -> list[dict]:
    return [_row(claim, comparison="–", cell="–", verdict="inconclusive", verdict_checkpoints="inconclusive",
                 missing=what)]


def _word(effect, lo, hi, p_holm, direction: int, alpha: float) -> str:
    """The rule for one row with a signed claim (direction ±1)."""
    if any(v is None or not math.isfinite(v) for v in (effect, lo, hi, p_holm)) or p_holm >= alpha:
        return "inconclusive"
    if lo > 0:
        side = 1
    elif hi < 0:
        side = -1
    else:
        return "inconclusive"
    return "supported" if side == direction else "contradicted"


# ----------------------------------------------------------------------------------------------- claims


def _paired_claim(claim: Claim, ev: pd.DataFrame | None, want, keep_cell, what_cells: str, alpha: float) -> list[dict]:
    if ev is None:
        return _missing(claim, "no eval table (robench eval / sweep)")
    pairs = _pairs(ev, want)
    if not pairs:
        return _missing(claim, f"no {'LM-ResNet' if claim.id == 'lm_clean' else 'In-ResNet (learned λ)'} with the "
                               "ResNet of the same depth in the eval tables")
    rows = []
    for a, b in pairs:
        try:
            sa, sb = select(ev, _spec(*a), seeds="all"), select(ev, _spec(*b), seeds="all")
            wanted = [c for c in cells(sa) if keep_cell(c)]
            if not wanted:
                raise BadInput(f"no {what_cells} cells")
            table = compare_selections(sa, sb, alpha=alpha, keep=wanted)
        except BadInput as e:
            rows += _missing(claim, f"{model_label(*_lab(b))} vs {model_label(*_lab(a))}: {e}")
            continue
        for _, r in table.iterrows():
            seeds = int(min(r["n_seeds_a"], r["n_seeds_b"]))
            detail = (f"A {100 * r['acc_a']:.1f} %, B {100 * r['acc_b']:.1f} %"
                      + (f"; discordant: B only {int(r['b_only'])}, A only {int(r['a_only'])}"
                         if not pd.isna(r["b_only"]) else f"; df {r['df']:.1f}" if not pd.isna(r["df"]) else ""))
            rows.append(_row(claim, comparison=f"{sb.label} − {sa.label}", cell=r["cell"], effect=r["effect"],
                             ci_low=r["ci_low"], ci_high=r["ci_high"], p=r["p"], test=r["test"],
                             interval=r["interval"], n=int(r["n"]), n_models=2, n_seeds=seeds,
                             models=f"{r['models_a']},{r['models_b']}", detail=detail))
    return rows


def _lab(fam):
    base, lam = fam
    return base, (math.nan if lam is None else lam)


def _trend_claim(claim: Claim, ev: pd.DataFrame | None, alpha: float) -> list[dict]:
    if ev is None:
        return _missing(claim, "no eval table (robench eval / sweep)")
    fam = _families(ev)
    rows = []
    found = False
    for (base, lam0), scheme in sorted(fam.items(), key=lambda kv: natural_key(kv[0][0])):
        if scheme != "euler":
            continue
        damped = "in" + base
        levels = [((base, lam0), 0.0)] + sorted(
            (((b, l), float(l)) for (b, l), s in fam.items() if b == damped and s == "damped" and l is not None),
            key=lambda t: t[1])
        if len(levels) == 1:
            continue
        found = True
        lams = [l for _, l in levels]
        if not (0.0 in lams and 1.0 in lams and len(set(lams)) >= 3):
            rows += _missing(claim, f"{damped}: the λ path needs λ = 0 ({base}), λ = 1 and at least one λ between; "
                                    f"the tables hold λ = {', '.join(f'{v:g}' for v in sorted(set(lams)))}")
            continue
        try:
            rows += _trend_rows(claim, ev, levels, alpha)
        except BadInput as e:
            rows += _missing(claim, f"{damped} λ path: {e}")
    if not found:
        return _missing(claim, "no fixed-λ In-ResNet with the ResNet of the same depth in the eval tables")
    return rows


def _trend_rows(claim: Claim, ev: pd.DataFrame, levels, alpha: float) -> list[dict]:
    sels = [select(ev, _spec(*f), seeds="all") for f, _ in levels]
    lams = np.array([l for _, l in levels])
    per = [cells(s) for s in sels]
    shared = [c for c in per[0] if c[0] != "clean" and all(c in p for p in per[1:])]
    if not shared:
        raise BadInput("no perturbed cell that every λ has")
    w = (lams - lams.mean()) / float(((lams - lams.mean()) ** 2).sum())
    out = []
    for cell in sorted(shared, key=cell_sort_key):
        label = cell_label(cell)
        variants = [sorted(p[cell], key=natural_key) for p in per]
        check_paired(label, [(m, p[cell][m][2]) for p, vs in zip(per, variants) for m in vs])
        groups = [np.stack([p[cell][m][1] for m in vs]) for p, vs in zip(per, variants)]
        est = inference.flags_contrast(groups, w, alpha=alpha)
        steps = []
        for j in range(len(groups) - 1):
            if groups[j].shape[0] == 1 and groups[j + 1].shape[0] == 1:
                s, _ = inference.paired_flags(groups[j][0], groups[j + 1][0], alpha=alpha)
            else:
                s = inference.flags_contrast([groups[j], groups[j + 1]], [-1.0, 1.0], alpha=alpha)
            steps.append(s)
        step_holm = inference.holm([s.p for s in steps])
        up = [s.effect > 0 and s.ci_low > 0 and ph < alpha for s, ph in zip(steps, step_holm)]
        down = [s.effect < 0 and s.ci_high < 0 and ph < alpha for s, ph in zip(steps, step_holm)]
        accs = [float(g.mean()) for g in groups]
        detail = ("accuracy by λ: " + ", ".join(f"{l:g}: {100 * a:.1f} %" for l, a in zip(lams, accs))
                  + "; steps (pp): " + ", ".join(f"{100 * s.effect:+.1f}{'*' if u or d else ''}"
                                                   for s, u, d in zip(steps, up, down))
                  + " (* significant, Holm within the cell)")
        path = (f"{model_label(*_lab(levels[0][0]))} → {levels[1][0][0]}@"
                + "/".join(f"{lam:g}" for _, lam in levels[1:]))
        out.append(_row(claim, comparison=path, cell=label,
                        effect=est.effect, ci_low=est.ci_low, ci_high=est.ci_high, p=est.p, test=est.test,
                        interval=est.interval, n=int(groups[0].shape[1]), n_models=len(groups),
                        n_seeds=int(min(g.shape[0] for g in groups)),
                        models=",".join(m for vs in variants for m in vs), detail=detail,
                        _up=any(up), _down=any(down)))
    return out


def _summary_values(df: pd.DataFrame, fam: tuple[str, object], select_rows) -> tuple[list[str], np.ndarray,
                                                                                    np.ndarray, int, dict]:
    """Per variant of ``fam``: means and standard errors (from the 95 % intervals) of the rows
    ``select_rows`` picks, the images n, and the protocol (data, n, seed)."""
    base, lam = fam
    rows = df[[split_tag(str(m))[0] == base and (nan_to_none(l) is None if lam is None
                                                 else nan_to_none(l) is not None and abs(float(l) - lam) < 1e-9)
               for m, l in zip(df["model"], df["lam"])]]
    rows = select_rows(rows)
    variants, means, ses, prots = [], [], [], {}
    for model, g in rows.groupby("model", sort=False):
        if len(g) != 1:
            raise BadInput(f"{model} has {len(g)} rows for one quantity (two runs?); pass one table per model")
        r = g.iloc[0]
        variants.append(str(model))
        means.append(float(r["mean"]))
        ses.append((float(r["ci_high"]) - float(r["ci_low"])) / (2 * _Z95))
        prots[str(model)] = {c: nan_to_none(r[c]) for c in ("dataset", "n", "data_sha256", "seed") if c in r.index}
    order = sorted(range(len(variants)), key=lambda i: natural_key(variants[i]))
    ns = {int(p["n"]) for p in prots.values() if p.get("n") is not None}
    return ([variants[i] for i in order], np.array([means[i] for i in order]), np.array([ses[i] for i in order]),
            min(ns) if ns else 0, prots)


def _summary_claim(claim: Claim, table: pd.DataFrame | None, kind: str, want, what: str,
                   quantities: Sequence[tuple[str, object]], alpha: float) -> list[dict]:
    """Damped − ResNet differences of a summary quantity (stability's Lyapunov, landscape's flatness)."""
    if table is None:
        return _missing(claim, f"no {kind} table (robench {kind})")
    pairs = _pairs(table, want)
    if not pairs:
        return _missing(claim, f"no {what} with the ResNet of the same depth in the {kind} table")
    present = [(label, pick) for label, pick in quantities if not pick(table).empty]
    if not present:
        return _missing(claim, f"the {kind} table has none of: {', '.join(label for label, _ in quantities)}")
    rows = []
    for a, b in pairs:
        for label, pick in present:
            try:
                va, ma, sa, na, pa = _summary_values(table, a, pick)
                vb, mb, sb, nb, pb = _summary_values(table, b, pick)
                if not va or not vb:
                    raise BadInput(f"no {label} rows")
                check_paired(label, list(pa.items()) + list(pb.items()))
            except BadInput as e:
                rows += _missing(claim, f"{model_label(*_lab(b))} vs {model_label(*_lab(a))}: {e}")
                continue
            est = inference.summary_contrast([(ma, sa, na), (mb, sb, nb)], [-1.0, 1.0], alpha=alpha)
            rows.append(_row(claim, comparison=f"{model_label(*_lab(b))} − {model_label(*_lab(a))}", cell=label,
                             effect=est.effect, ci_low=est.ci_low, ci_high=est.ci_high, p=est.p, test=est.test,
                             interval=est.interval, n=min(na, nb), n_models=2, n_seeds=min(len(va), len(vb)),
                             models=",".join(va + vb),
                             detail=f"A {ma.mean():.4g}, B {mb.mean():.4g} (per-model intervals from the {kind} table; "
                                    "same images treated as independent: conservative)"))
    return rows


def _lyapunov(direction: str):
    return lambda r: r[(r["quantity"] == "lyapunov") & (r["direction"] == direction)]


def _flat(direction: str):
    def pick(r):
        from robench.analysis.landscape import FLAT_T

        sel = r[(r["quantity"] == "loss_increase") & r["t2"].isna() & (r["direction"] == direction)
                & np.isclose(r["t"].astype(float), FLAT_T, atol=1e-9)]
        return sel
    return pick


def _association_claim(claim: Claim, ev: pd.DataFrame | None, st: pd.DataFrame | None, alpha: float) -> list[dict]:
    if ev is None or st is None:
        return _missing(claim, "needs an eval table and a stability table" + (" (no eval table)" if ev is None else "")
                        + (" (no stability table)" if st is None else ""))
    wc = ev[ev["kind"] == "worst_case"]
    kind = "worst_case"
    if wc.empty:
        wc, kind = ev[(ev["kind"] == "attack") & (ev["perturbation"] == "pgd")], "pgd"
    if wc.empty:
        return _missing(claim, "the eval tables have no worst-case or PGD cells")
    lyap = st[(st["quantity"] == "lyapunov") & (st["direction"] == "adversarial")]
    fam_st = {}
    for _, r in lyap.iterrows():
        fam_st.setdefault((split_tag(str(r["model"]))[0], nan_to_none(r["lam"])), []).append(r)
    rows = []
    eps_values = sorted({round(float(e), 10) for e in wc["eps"]})
    for eps in eps_values:
        at = wc[np.isclose(wc["eps"].astype(float), eps)]
        x, y, labels, used, skipped, ns = [], [], [], [], [], set()
        for (base, lam), st_rows in sorted(fam_st.items(), key=lambda kv: (natural_key(kv[0][0]), kv[0][1] is None,
                                                                            kv[0][1] or 0.0)):
            er = at[[split_tag(str(m))[0] == base and ((nan_to_none(l) is None) if lam is None else
                                                         (nan_to_none(l) is not None and abs(float(l) - lam) < 1e-9))
                     for m, l in zip(at["model"], at["lam"])]]
            if er.empty:
                continue
            w_st = {str(v) for r in st_rows for v in [r.get("weights_sha256")] if nan_to_none(v) is not None}
            w_ev = {str(v) for v in er.get("weights_sha256", pd.Series(dtype="string")).dropna()}
            label = model_label(*_lab((base, lam)))
            if w_st and w_ev and w_st != w_ev:
                skipped.append(label)
                continue
            labels.append(label)
            x.append(float(np.mean([float(r["mean"]) for r in st_rows])))
            y.append(float(er["correct"].sum() / er["n"].sum()))
            used += sorted({str(r["model"]) for r in st_rows} | set(map(str, er["model"])), key=natural_key)
            ns |= {int(v) for v in er["n"]}
        cell = f"{kind}@{format_eps(eps)}"
        note = f"; left out (other checkpoints in the two tables): {', '.join(skipped)}" if skipped else ""
        if len(x) < 4:
            rows += _missing(claim, f"{cell}: {len(x)} models have both a Lyapunov estimate and the cell; the "
                                    f"association needs at least 4{note}")
            continue
        est = inference.spearman(x, y, alpha=alpha)
        pairs = ", ".join(f"{u}: {xv:.3f} / {100 * yv:.1f} %" for u, xv, yv in
                          zip(labels, x, y))
        rows.append(_row(claim, comparison=f"{len(x)} models", cell=f"lyapunov(adversarial) vs {cell}",
                         effect=est.effect, ci_low=est.ci_low, ci_high=est.ci_high, p=est.p, test=est.test,
                         interval=est.interval, n=min(ns) if ns else None, n_models=len(x),
                         n_seeds=None, models=",".join(dict.fromkeys(used)),
                         detail=f"Lyapunov / accuracy: {pairs}{note}"))
    return rows


# ------------------------------------------------------------------------------------------- verdicts


def _verdicts(claim: Claim, rows: list[dict], alpha: float) -> None:
    tested = [r for r in rows if r["p"] is not None and not pd.isna(r["p"])]
    adj = inference.holm([r["p"] for r in tested])
    for r, ph in zip(tested, adj):
        r["p_holm"] = float(ph)
        if claim.direction == 0:
            slope = _word(r["effect"], r["ci_low"], r["ci_high"], ph, 1, alpha)
            slope = {"supported": 1, "contradicted": -1}.get(slope, 0)
            against = r["_down"] if slope > 0 else r["_up"] if slope < 0 else False
            if slope and against or (r["_up"] and r["_down"]):
                word = "contradicted"
            else:
                word = "supported" if slope else "inconclusive"
        else:
            word = _word(r["effect"], r["ci_low"], r["ci_high"], ph, claim.direction, alpha)
        r["verdict_checkpoints"] = word
        if claim.needs_seeds and (r["n_seeds"] or 0) < 2:
            r["verdict"] = "inconclusive"
            r["missing"] = ONE_SEED
        else:
            r["verdict"] = word
    for r in rows:
        r.pop("_up", None)
        r.pop("_down", None)


def evaluate_claims(tables: Tables, *, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per tested comparison of every claim in :data:`CLAIMS` (columns :data:`COLUMNS`)."""
    alpha = inference.check_alpha(alpha)
    t = _split(tables)
    ev, la, st = t["eval"], t["landscape"], t["stability"]
    by_id = {c.id: c for c in CLAIMS}
    noise_cells = lambda c: c[0] == "corruption" and c[1] in NOISE  # noqa: E731
    attack_cells = lambda c: (c[0] == "attack" and c[1] in PAPER_ATTACKS) or c[0] == "worst_case"  # noqa: E731
    produced = {
        "noise": _paired_claim(by_id["noise"], ev, _learned_damped, noise_cells, "stochastic-noise", alpha),
        "attacks": _paired_claim(by_id["attacks"], ev, _learned_damped, attack_cells,
                                 "FGSM / I-FGSM / PGD / worst-case", alpha),
        "lambda_trend": _trend_claim(by_id["lambda_trend"], ev, alpha),
        "stability": _summary_claim(by_id["stability"], st, "stability", _any_damped, "damped model",
                                    [(f"lyapunov ({d})", _lyapunov(d)) for d in LYAPUNOV_DIRECTIONS], alpha),
        "stability_robustness": _association_claim(by_id["stability_robustness"], ev, st, alpha),
        "flatness": _summary_claim(by_id["flatness"], la, "landscape", _learned_damped, "In-ResNet (learned λ)",
                                   [(f"loss rise @8/255 along {d}", _flat(d)) for d in ATTACK_DIRECTIONS], alpha),
        "lm_clean": _paired_claim(by_id["lm_clean"], ev, lambda s, lam: s == "lm", lambda c: c[0] == "clean",
                                  "clean", alpha),
    }
    out = []
    for claim in CLAIMS:
        rows = produced[claim.id]
        _verdicts(claim, rows, alpha)
        out += rows
    df = pd.DataFrame(out, columns=list(COLUMNS))
    for c in ("effect", "ci_low", "ci_high", "p", "p_holm"):
        df[c] = pd.to_numeric(df[c]).astype("float64")
    for c in ("n", "n_models", "n_seeds"):
        df[c] = pd.array([None if v is None or pd.isna(v) else int(v) for v in df[c]], dtype="Int64")
    for c in COLUMNS:
        if c not in ("effect", "ci_low", "ci_high", "p", "p_holm", "n", "n_models", "n_seeds"):
            df[c] = df[c].astype("string")
    return df


def _fold(words: Sequence[str]) -> str:
    s, c = "supported" in words, "contradicted" in words
    return "supported" if s and not c else "contradicted" if c and not s else "inconclusive"


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: the folded verdicts, counts of supported / contradicted rows (checkpoint
    level), the fewest seeds, the strongest row and what is missing."""
    out = []
    for claim in CLAIMS:
        g = rows[rows["claim"] == claim.id]
        if g.empty:
            continue
        tested = g[g["p_holm"].notna()]
        headline = ""
        if not tested.empty:
            best = tested.assign(_a=tested["effect"].abs()).sort_values(["p_holm", "_a"], ascending=[True, False],
                                                                         kind="stable").iloc[0]
            headline = f"{best['comparison']}, {best['cell']}: {effect_text(claim, best)}"
        missing = [m for m in dict.fromkeys(str(v) for v in g["missing"].dropna()) if m]
        seeds = [int(v) for v in tested["n_seeds"].dropna()]
        out.append({"claim": claim.id, "paper": claim.paper, "statement": claim.statement,
                    "verdict": _fold(list(g["verdict"])), "verdict_checkpoints": _fold(list(g["verdict_checkpoints"])),
                    "rows": len(tested), "supported": int((tested["verdict_checkpoints"] == "supported").sum()),
                    "contradicted": int((tested["verdict_checkpoints"] == "contradicted").sum()),
                    "n_seeds": min(seeds) if seeds else None, "headline": headline, "missing": "; ".join(missing)})
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def is_accuracy(claim_id: str) -> bool:
    return claim_id in ("noise", "attacks", "lambda_trend", "lm_clean")


def effect_text(claim: Claim | str, r) -> str:
    """``+3.7 pp [+1.8, +5.7], p_Holm 0.006`` (accuracies in percentage points, others as they are)."""
    cid = claim if isinstance(claim, str) else claim.id
    if is_accuracy(cid):
        body = f"{100 * r['effect']:+.1f} pp [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
    else:
        body = f"{r['effect']:+.3g} [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]"
    return f"{body}, p_Holm {p_text(r['p_holm'])}"


def p_text(p: float) -> str:
    return "< 1e-10" if p < 1e-10 else f"{p:.2g}"


def format_summary(summary: pd.DataFrame) -> str:
    """The per-claim verdicts as a Markdown table."""
    lines = ["| claim | paper | verdict | these checkpoints | rows supported / contradicted | strongest row "
             "| missing |", "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r['statement']} | {r['paper']} | **{r['verdict']}** | {r['verdict_checkpoints']} | "
                     f"{r['supported']} / {r['contradicted']} of {r['rows']} | {r['headline'] or '–'} | "
                     f"{r['missing'] or '–'} |")
    return "\n".join(lines) + "\n"


def format_rows(rows: pd.DataFrame) -> str:
    """Every tested row as a Markdown table."""
    lines = ["| claim | comparison | cell | effect [95 % interval], p_Holm | n | seeds | these checkpoints |",
             "|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        eff = effect_text(r["claim"], r) if not pd.isna(r["p_holm"]) else "–"
        lines.append(f"| {r['claim']} | {r['comparison']} | {r['cell']} | {eff} | "
                     f"{'' if pd.isna(r['n']) else int(r['n'])} | "
                     f"{'' if pd.isna(r['n_seeds']) else int(r['n_seeds'])} | "
                     f"{r['verdict_checkpoints']} |")
    return "\n".join(lines) + "\n"


def readme_markdown(rows: pd.DataFrame, *, command: str) -> str:
    """The README's paragraph on the papers' claims: what was tested, the verdict table, the rule."""
    summary = summarise(rows)
    seeds = sorted({int(v) for v in rows["n_seeds"].dropna()})
    ns = sorted({int(v) for v in rows["n"].dropna()})
    lines = [f"Computed by `{command}` (first {' / '.join(map(str, ns))} test images; "
             + ("**one training run per model (seed 0)**, so every claim about architectures is inconclusive "
                "and the column *these checkpoints* says what the same test gives for the shipped weights"
                if seeds == [1] else f"{'–'.join(map(str, seeds))} training seeds per model") + "):", ""]
    lines.append(format_summary(summary).rstrip("\n"))
    lines += ["", f"Rule: {rule()} Every tested row, with its models, images and test: "
              "`robench claims … --all`."]
    return "\n".join(lines)
