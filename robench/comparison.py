"""Paired comparison of two models cell by cell: ``robench.compare(tables, a="resnet20", b="inresnet20")``.

For every cell both models have (clean; an attack at an ε; the worst case at an ε; a corruption at
a severity) the table gives the accuracy difference B − A, its interval and a two-sided test from
the per-example flags on the same images, and Holm-adjusted p-values across the cells. With one
checkpoint per model: the exact McNemar test and Newcombe's paired interval; with several training
seeds (``seeds="all"``: the table's ``model`` carries the variant tag, ``resnet20.s1``; the untagged
name is seed 0): the across-seed estimate whose variance holds both the seed and the image level.
Why these statistics: :mod:`robench.inference`. A view: it reads tables and evaluates no model.

Refused with one line (:class:`BadInput`): a cell whose rows differ in what makes a paired
comparison valid (:data:`PROTOCOL`, those columns a table has: data set, n, data sha256, evaluation
seed, backend, norm, steps, attack parameters, data label, precision; for worst cases the attacks
they are the AND of), an incomplete worst case,
a cell without per-example flags, a model or λ the tables do not hold, and the same cell twice with
different results (two runs: pass one table per cell).

Output (:data:`COLUMNS`, one row per shared cell, sorted clean, attacks, worst cases, corruptions):
``cell`` (``clean``, ``pgd@8/255``, ``worst_case@8/255``, ``gaussian_noise@3``), ``a``, ``b``
(model labels), ``acc_a``, ``acc_b`` (seed-averaged), ``effect`` = acc_b − acc_a, ``ci_low``,
``ci_high`` (1 − α), ``p``, ``p_holm``, ``test``, ``interval``, ``df``, ``n`` (images),
``n_seeds_a``, ``n_seeds_b``, ``models_a``, ``models_b`` (the variants used, ``,``-joined), the
paired counts ``both`` / ``b_only`` / ``a_only`` / ``neither`` (one seed each) and ``note``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterable, Sequence, Union

import numpy as np
import pandas as pd

from model_zoo.registry import natural_key, split_tag
from robench import inference
from robench.errors import BadInput
from robench.results import format_eps, nan_to_none, unpack_flags

# Row columns that must agree within a cell for its flags to be paired (those a table has).
PROTOCOL = ("dataset", "n", "data_sha256", "seed", "backend", "norm", "steps", "params", "data_label", "precision")
COLUMNS = ("cell", "kind", "perturbation", "eps", "severity", "a", "b", "acc_a", "acc_b", "effect", "ci_low",
           "ci_high", "p", "p_holm", "test", "interval", "df", "n", "n_seeds_a", "n_seeds_b", "models_a", "models_b",
           "both", "b_only", "a_only", "neither", "note")
_KIND_ORDER = {"clean": 0, "attack": 1, "worst_case": 2, "corruption": 3}
_UNSET = object()

Tables = Union[pd.DataFrame, str, os.PathLike, Sequence[Union[pd.DataFrame, str, os.PathLike]]]


def eval_frame(tables: Tables) -> pd.DataFrame:
    """One eval table from a DataFrame, a path, or a list of either (paths read and checked)."""
    from robench.results import read_table

    items = [tables] if isinstance(tables, (pd.DataFrame, str, os.PathLike)) else list(tables)
    if not items:
        raise BadInput("give at least one results table")
    frames = []
    for t in items:
        df = t if isinstance(t, pd.DataFrame) else read_table(t)
        if "analysis" in df.columns and df["analysis"].notna().any():
            raise BadInput(f"{t if not isinstance(t, pd.DataFrame) else 'a table'} is a "
                           f"{df['analysis'].dropna().iloc[0]} table; compare reads eval tables (robench eval / sweep)")
        missing = [c for c in ("model", "lam", "kind", "perturbation", "eps", "severity", "n", "correct", "flags")
                   if c not in df.columns]
        if missing:
            raise BadInput(f"not a robench eval table: missing columns {', '.join(missing)}")
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)


def parse_model(text: str):
    """``NAME`` (λ not given), ``NAME@0.5`` or ``NAME@learned`` (NaN) → (name, λ or the unset marker)."""
    name, sep, lam = str(text).strip().partition("@")
    if not name:
        raise BadInput(f"empty model name in {text!r}; write NAME or NAME@LAM such as inresnet20@0.5")
    if not sep:
        return name, _UNSET
    if lam in ("learned", "none", "nan"):
        return name, math.nan
    from robench.spec import parse_lam

    v = parse_lam(lam)
    return name, (math.nan if v is None else float(v))


def lam_text(lam) -> str:
    return "learned" if lam is None or (isinstance(lam, float) and math.isnan(lam)) else f"{float(lam):g}"


def model_label(base: str, lam) -> str:
    """``inresnet20@0.5``, ``inresnet20@learned``; ResNet (λ = 0) and λ-free models by name alone."""
    if lam is None or (isinstance(lam, float) and math.isnan(lam)):
        return base
    return base if float(lam) == 0.0 and not base.startswith(("in", "lambda_in")) else f"{base}@{float(lam):g}"


def _lam_eq(a, b) -> bool:
    na, nb = nan_to_none(a) is None, nan_to_none(b) is None
    return na and nb or (not na and not nb and abs(float(a) - float(b)) < 1e-9)


@dataclasses.dataclass(frozen=True)
class Selection:
    """The rows of one side: a model family (untagged base name) at one λ, one or several seeds."""

    label: str
    base: str
    lam: float
    rows: pd.DataFrame

    @property
    def variants(self) -> list[str]:
        return sorted(set(self.rows["model"]), key=natural_key)


def select(df: pd.DataFrame, text: str, *, seeds: str | None = None, what: str = "model") -> Selection:
    """The rows of ``text`` (``NAME``, ``NAME@LAM``, or a tagged ``NAME.s1``): the untagged model only
    (seed 0) unless ``seeds="all"`` takes every tagged variant too."""
    if seeds not in (None, "0", "all"):
        raise BadInput(f"seeds must be '0' (the untagged checkpoints) or 'all', got {seeds!r}")
    name, lam = parse_model(text)
    base, tag = split_tag(name)
    bases = [split_tag(str(m))[0] for m in df["model"]]
    family = df[[b == base for b in bases]]
    if family.empty:
        known = sorted({b for b in bases}, key=natural_key)
        raise BadInput(f"{what} {base!r} is not in the tables; models there: {', '.join(known)}")
    if tag is not None:
        rows = family[family["model"] == name]
        if rows.empty:
            raise BadInput(f"{what} {name!r} is not in the tables; variants there: "
                           f"{', '.join(sorted(set(family['model']), key=natural_key))}")
    elif seeds == "all":
        rows = family
    else:
        rows = family[family["model"] == base]
        if rows.empty:
            raise BadInput(f"the tables hold only tagged variants of {base} "
                           f"({', '.join(sorted(set(family['model']), key=natural_key))}); pass seeds 'all' "
                           "(--seeds all) or name one variant")
    lams = []
    for v in rows["lam"]:
        if not any(_lam_eq(v, u) for u in lams):
            lams.append(v)
    if lam is _UNSET:
        if len(lams) > 1:
            choices = ", ".join(lam_text(nan_to_none(v)) for v in sorted(lams, key=lambda v: (pd.isna(v), v)))
            raise BadInput(f"{what} {base} has several λ in the tables ({choices}); choose one, e.g. "
                           f"{base}@{lam_text(nan_to_none(lams[0]))}")
        lam = float(lams[0]) if nan_to_none(lams[0]) is not None else math.nan
    else:
        if not any(_lam_eq(lam, u) for u in lams):
            choices = ", ".join(lam_text(nan_to_none(v)) for v in lams)
            raise BadInput(f"{what} {base} at λ={lam_text(lam)} is not in the tables; λ there: {choices}")
    rows = rows[[_lam_eq(v, lam) for v in rows["lam"]]]
    return Selection(label=model_label(name if tag else base, lam), base=base, lam=lam, rows=rows)


def cell_of(row) -> tuple:
    """(kind, perturbation, ε rounded, severity): what two models' rows must share to be paired."""
    eps = nan_to_none(row["eps"])
    sev = nan_to_none(row["severity"])
    return (str(row["kind"]), str(row["perturbation"]), None if eps is None else round(float(eps), 10),
            None if sev is None else int(sev))


def cell_label(cell: tuple) -> str:
    kind, pert, eps, sev = cell
    if kind == "clean":
        return "clean"
    if kind == "corruption":
        return f"{pert}@{sev}"
    return f"{pert}@{format_eps(eps) if eps is not None else '-'}"


def cell_sort_key(cell: tuple):
    kind, pert, eps, sev = cell
    return (_KIND_ORDER.get(kind, 9), pert, -1 if eps is None else eps, -1 if sev is None else sev)


def _protocol(row, attacks: str | None) -> dict:
    out = {}
    for c in PROTOCOL:
        if c in row.index:
            v = nan_to_none(row[c])
            out[c] = round(float(v), 10) if isinstance(v, (float, np.floating)) else v
    if row["kind"] == "worst_case":
        out["attacks"] = attacks
    return out


def _flags(row, model: str, label: str) -> np.ndarray:
    v = nan_to_none(row.get("flags"))
    n, correct = int(row["n"]), int(row["correct"])
    try:
        f = unpack_flags(str(v), n) if v not in (None, "") else None
    except ValueError:
        f = None
    if f is None or len(f) != n or int(f.sum()) != correct:
        why = "has no per-example flags" if v in (None, "") else f"has flags that do not match n={n}, correct={correct}"
        raise BadInput(f"cell {label} of {model} {why}; a paired comparison needs them (re-run it with robench eval)")
    return f


def cells(sel: Selection) -> dict[tuple, dict[str, tuple[pd.Series, np.ndarray, dict]]]:
    """cell → {variant: (row, flags, protocol)} for one side; the same cell twice with identical
    results is kept once, with different results it is refused."""
    from robench.leaderboard import worst_case_attacks

    rows = sel.rows
    attacks = worst_case_attacks(rows)
    out: dict[tuple, dict] = {}
    for (_, row), atk in zip(rows.iterrows(), attacks):
        cell = cell_of(row)
        model = str(row["model"])
        if row["kind"] == "worst_case" and nan_to_none(row.get("complete")) is False:
            raise BadInput(f"cell {cell_label(cell)} of {model} is an incomplete worst case (not every planned attack "
                           "finished); finish the sweep, or leave its worst cases out")
        prot = _protocol(row, atk)
        flags = _flags(row, model, cell_label(cell))
        slot = out.setdefault(cell, {})
        if model in slot:
            _, f0, p0 = slot[model]
            if p0 != prot or not np.array_equal(f0, flags):
                raise BadInput(f"cell {cell_label(cell)} of {model} appears twice with different results (two runs); "
                               "pass one table per cell")
            continue
        slot[model] = (row, flags, prot)
    return out


def check_paired(label: str, entries: Sequence[tuple[str, dict]]) -> None:
    """Every (model, protocol) of one cell must agree on each protocol column, else one-line BadInput."""
    ref_model, ref = entries[0]
    for model, prot in entries[1:]:
        for col in sorted(set(ref) | set(prot)):
            x, y = ref.get(col), prot.get(col)
            if x != y:
                def show(v, col=col):
                    return "none" if v is None else (str(v)[:12] + "…" if col == "data_sha256" and v else str(v))
                what = {"data_sha256": "different data", "n": "different n (images)", "dataset": "different data sets",
                        "seed": "different evaluation seeds", "attacks": "worst cases of different attacks"}.get(
                    col, f"a different protocol ({col})")
                raise BadInput(f"cell {label}: {ref_model} and {model} were evaluated on {what} "
                               f"({show(x)} vs {show(y)}); a paired comparison needs the same images and protocol")


def compare_selections(sa: Selection, sb: Selection, *, alpha: float = 0.05,
                       keep: Iterable[tuple] | None = None) -> pd.DataFrame:
    """The comparison table of two selections (every shared cell, or the cells in ``keep``)."""
    alpha = inference.check_alpha(alpha)
    ca, cb = cells(sa), cells(sb)
    shared = sorted((c for c in ca if c in cb and (keep is None or c in set(keep))), key=cell_sort_key)
    if not shared:
        raise BadInput(f"{sa.label} and {sb.label} share no cell in the tables (cells: kind, perturbation, ε or "
                       "severity)")
    out = []
    for cell in shared:
        label = cell_label(cell)
        va, vb = sorted(ca[cell], key=natural_key), sorted(cb[cell], key=natural_key)
        check_paired(label, [(m, ca[cell][m][2]) for m in va] + [(m, cb[cell][m][2]) for m in vb])
        fa = np.stack([ca[cell][m][1] for m in va])
        fb = np.stack([cb[cell][m][1] for m in vb])
        counts = {"both": pd.NA, "b_only": pd.NA, "a_only": pd.NA, "neither": pd.NA}
        if len(va) == 1 and len(vb) == 1:
            est, counts = inference.paired_flags(fa[0], fb[0], alpha=alpha)
            note = "one seed per model: training variability not assessed"
        else:
            est = inference.flags_contrast([fa, fb], [-1.0, 1.0], alpha=alpha)
            note = est.note
        out.append({"cell": label, "kind": cell[0], "perturbation": cell[1], "eps": cell[2], "severity": cell[3],
                    "a": sa.label, "b": sb.label, "acc_a": float(fa.mean()), "acc_b": float(fb.mean()),
                    "effect": est.effect, "ci_low": est.ci_low, "ci_high": est.ci_high, "p": est.p,
                    "test": est.test, "interval": est.interval, "df": est.df, "n": int(fa.shape[1]),
                    "n_seeds_a": len(va), "n_seeds_b": len(vb), "models_a": ",".join(va), "models_b": ",".join(vb),
                    **counts, "note": note})
    table = pd.DataFrame(out)
    table["p_holm"] = inference.holm(table["p"].to_numpy())
    table = table[list(COLUMNS)]
    for c in ("both", "b_only", "a_only", "neither", "severity"):
        table[c] = table[c].astype("Int64")
    table["df"] = pd.to_numeric(table["df"]).astype("float64")
    return table


def compare(tables: Tables, *, a: str, b: str, seeds: str | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """B − A per shared cell of eval ``tables`` (see the module docstring); ``a``/``b``: ``NAME`` or
    ``NAME@LAM``; ``seeds``: None / ``"0"`` (untagged checkpoints) or ``"all"`` (every variant)."""
    df = eval_frame(tables)
    sa, sb = select(df, a, seeds=seeds, what="--a"), select(df, b, seeds=seeds, what="--b")
    if sa.base == sb.base and _lam_eq(sa.lam, sb.lam) and set(sa.variants) & set(sb.variants):
        raise BadInput(f"--a and --b select the same model ({sa.label}); compare two different models")
    return compare_selections(sa, sb, alpha=alpha)


def format_comparison(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table (accuracies and effects in percentage points)."""
    lines = ["| cell | A | B | B − A (pp) | 95 % interval | p | p (Holm) | n | seeds A/B | test |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['cell']} | {100 * r['acc_a']:.1f} | {100 * r['acc_b']:.1f} | {100 * r['effect']:+.2f} | "
                     f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}] | {r['p']:.3g} | {r['p_holm']:.3g} | "
                     f"{int(r['n'])} | {int(r['n_seeds_a'])}/{int(r['n_seeds_b'])} | {r['test']} |")
    return "\n".join(lines) + "\n"
