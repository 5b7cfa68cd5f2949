"""PNG figures from result tables (matplotlib, Agg, no display needed).

From an eval/sweep table: accuracy vs ε per attack, accuracy vs λ per perturbation (fixed-λ models
on the λ axis, learned or λ-free models each at their own tick to the right), accuracy vs severity
per corruption. From a landscape table: loss and accuracy curves per direction and the flatness at
t = 8/255. From a stability table: coefficient profile, per-block log gain, summary quantities.
Every band or bar is the table's 95 % interval; every figure names its n, seeds and data.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from robench.errors import BadInput
from robench.fileio import atomic_write, safe_component

LAM_SCHEMES = ("damped", "lambda_damped")


def _figure(w: float, h: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _is_nan(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def model_label(model: str, lam, scheme=None) -> str:
    """A model as every view names it: ``inresnet20 λ=0.5``, ``inresnet20 λ=learned``, ``resnet20 λ=0``,
    and the bare name where λ does not apply (LM-ResNet, a module): the notation of
    :func:`robench.results.lam_text`."""
    from robench.results import NOT_APPLICABLE, lam_text

    text = lam_text(lam, scheme)
    return str(model) if text == NOT_APPLICABLE else f"{model} λ={text}"


def _yerr(y, lo, hi) -> list:
    """Asymmetric error bars [y − lo, hi − y], never negative (an interval always holds its estimate;
    this guards a table written by hand or rounded on the way)."""
    y, lo, hi = (np.asarray(v, dtype=float) for v in (y, lo, hi))
    return [np.clip(y - lo, 0.0, None), np.clip(hi - y, 0.0, None)]


def _labels(df: pd.DataFrame) -> pd.Series:
    scheme = df["scheme"] if "scheme" in df.columns else pd.Series([None] * len(df), index=df.index)
    return pd.Series([model_label(m, l, s) for m, l, s in zip(df["model"], df["lam"], scheme)], index=df.index)


def footer(df: pd.DataFrame) -> str:
    """'n=1000 · seeds 0 · data CIFAR-10, other copy (sha256 b6c1f1e1)' for the rows a figure draws
    (the data set and its fingerprint for older tables without ``data_label``)."""
    ns = sorted({int(v) for v in df["n"].dropna()})
    seeds = sorted({int(v) for v in df["seed"].dropna()})
    labels = sorted({str(v) for v in df["data_label"].dropna()}) if "data_label" in df.columns else []
    data = labels or sorted({str(v) for v in df["dataset"].dropna()})
    shas = sorted({str(v)[:8] for v in df.get("data_sha256", pd.Series(dtype="string")).dropna()})
    sha = f" (sha256 {', '.join(s + '…' for s in shas[:3])})" if shas and not labels else ""
    return (f"n={'/'.join(map(str, ns)) or '?'} · seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds)) or '?'}"
            f" · data {', '.join(data) or '?'}{sha}")


def _save(fig, df: pd.DataFrame, out_dir: Path, name: str) -> Path:
    """Write ``out_dir/<name>.png``; ``name`` holds names read from the table, so it becomes one safe
    file-name component (never a path: a perturbation ``/../../x`` stays inside ``out_dir``)."""
    fig.text(0.5, -0.01, footer(df), ha="center", va="top", fontsize=8, color="0.3")
    path = out_dir / f"{safe_component(name, max_len=120)}.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"), what="plot")
    return path


def _band(ax, x, y, lo, hi, label, *, bars: bool = True, **kw):
    """A curve with its 95 % band; ``bars``: also an error bar at every point (a lone point has no band)."""
    x, y, lo, hi = (np.asarray(v, dtype=float) for v in (x, y, lo, hi))
    if bars:
        cont = ax.errorbar(x, y, yerr=_yerr(y, lo, hi), marker="o", ms=3, capsize=2, elinewidth=0.8, label=label, **kw)
        line = cont.lines[0]
    else:
        line, = ax.plot(x, y, marker="o", ms=3, label=label, **kw)
    ax.fill_between(x, lo, hi, alpha=0.18, color=line.get_color(), linewidth=0)
    return line


def _with_clean(ax, rows: pd.DataFrame, clean: pd.DataFrame, x: str, zero, scale: float) -> None:
    """One accuracy curve per (model, λ) along column ``x``, starting from its clean accuracy at ``zero``."""
    for label, r in rows.assign(_l=_labels(rows)).groupby("_l", sort=True):
        first = r.iloc[0]
        c = clean[(clean["model"] == first["model"]) & _same_lam(clean["lam"], first["lam"])]
        pts = pd.concat([c.assign(**{x: zero}), r]).sort_values(x)
        _band(ax, pts[x].astype(float) * scale, pts["accuracy"] * 100, pts["ci_low"] * 100, pts["ci_high"] * 100, label)


# -- eval tables --------------------------------------------------------------------------------
def accuracy_vs_eps(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    attacks = df[df["kind"].isin(["attack", "worst_case"])]
    clean = df[df["kind"] == "clean"]
    paths = []
    for name, rows in attacks.groupby("perturbation", sort=True):
        fig = _figure(6.4, 4.2)
        ax = fig.add_subplot()
        _with_clean(ax, rows, clean, "eps", 0.0, 255)
        ax.set(xlabel="ε (×1/255, L∞)" if str(rows["norm"].dropna().iloc[0] if rows["norm"].notna().any() else "linf") == "linf"
               else "ε", ylabel="accuracy (%)", title=f"{name}: accuracy vs ε (ε=0: clean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(fig, rows, out_dir, f"accuracy_vs_eps_{name}"))
    return paths


def _same_lam(col: pd.Series, lam) -> pd.Series:
    return col.isna() if _is_nan(lam) else np.isclose(col.astype(float), float(lam))


def _lambda_positions(df: pd.DataFrame) -> tuple[dict, list[float], list[str]]:
    """x position per (model, λ): fixed λ on [0, 1]; learned / λ-free models one tick each beyond 1."""
    pos, ticks, labels = {}, [], []
    fixed = df[df["lam"].notna()]
    for lam in sorted({float(v) for v in fixed["lam"]}):
        ticks.append(lam)
        at = sorted({str(m) for m, v in zip(fixed["model"], fixed["lam"]) if float(v) == lam})
        euler = lam == 0.0 and "scheme" in fixed.columns and (fixed.loc[fixed["lam"] == 0.0, "scheme"] == "euler").any()
        labels.append(f"{lam:g}" + (f"\n({', '.join(at)})" if euler else ""))
    extra = 1.0
    free = df[df["lam"].isna()]
    for (m, s) in sorted({(str(m), str(s)) for m, s in zip(free["model"], free["scheme"])}):
        extra += 0.3
        pos[(m, None)] = extra  # one tick per model (a model listed under two schemes shares it)
        ticks.append(extra)
        labels.append(model_label(m, None, s).replace(" λ=", "\nλ="))
    for (m, lam) in {(m, float(v)) for m, v in zip(fixed["model"], fixed["lam"])}:
        pos[(m, lam)] = lam
    return pos, ticks, labels


def accuracy_vs_lambda(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The λ study's central figure: one panel per perturbation condition, x = λ."""
    panels: list[tuple[str, pd.DataFrame, str]] = []
    clean = df[df["kind"] == "clean"]
    if not clean.empty:
        panels.append(("clean", clean.assign(_line="clean"), ""))
    att = df[df["kind"].isin(["attack", "worst_case"])]
    for eps, rows in att.groupby("eps", sort=True):
        panels.append((f"attacks at ε={eps * 255:.3g}/255", rows.assign(_line=rows["perturbation"]), "attack"))
    cor = df[df["kind"] == "corruption"]
    for name, rows in cor.groupby("perturbation", sort=True):
        panels.append((name, rows.assign(_line="severity " + rows["severity"].astype("string")), "severity"))
    if not panels:
        return []
    pos, ticks, labels = _lambda_positions(df)
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = _figure(4.6 * cols, 3.4 * nrows)
    for k, (title, rows, legend) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, k + 1)
        for line, r in rows.groupby("_line", sort=True):
            r = r.assign(_x=[pos.get((m, None if _is_nan(l) else float(l))) for m, l in zip(r["model"], r["lam"])])
            r = r.dropna(subset=["_x"]).sort_values("_x")
            fixed = r[r["lam"].notna()]
            h = _band(ax, fixed["_x"], fixed["accuracy"] * 100, fixed["ci_low"] * 100, fixed["ci_high"] * 100, str(line))
            free = r[r["lam"].isna()]
            ax.errorbar(free["_x"], free["accuracy"] * 100,
                        yerr=_yerr(free["accuracy"] * 100, free["ci_low"] * 100, free["ci_high"] * 100),
                        fmt="s", ms=4, color=h.get_color(), capsize=2)
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set(title=title, xlabel="λ (fixed; learned models on the right)", ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
        if legend:
            ax.legend(fontsize=6)
    fig.suptitle("accuracy vs λ (λ=0: ResNet, λ=1: plain CNN in the damped blocks); bands: Wilson 95 %")
    return [_save(fig, df, out_dir, "accuracy_vs_lambda")]


def accuracy_vs_severity(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    paths = []
    cor = df[df["kind"] == "corruption"]
    clean = df[df["kind"] == "clean"]
    for name, rows in cor.groupby("perturbation", sort=True):
        fig = _figure(6.4, 4.2)
        ax = fig.add_subplot()
        _with_clean(ax, rows, clean, "severity", 0, 1)
        ax.set(xlabel="severity (0: clean)", ylabel="accuracy (%)", title=f"{name}: accuracy vs severity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(fig, rows, out_dir, f"accuracy_vs_severity_{name}"))
    return paths


# -- landscape ----------------------------------------------------------------------------------
def landscape_curves(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    one_d = df[df["t2"].isna()]
    paths = []
    for (direction, index), rows in one_d.groupby(["direction", "index"], sort=True):
        fig = _figure(11, 4)
        for k, q in enumerate(("loss", "accuracy")):
            ax = fig.add_subplot(1, 2, k + 1)
            part = rows[rows["quantity"] == q]
            scale = 100 if q == "accuracy" else 1
            for label, r in part.assign(_l=_labels(part)).groupby("_l", sort=True):
                r = r.sort_values("t")
                _band(ax, r["t"] * 255, r["mean"] * scale, r["ci_low"] * scale, r["ci_high"] * scale, label, bars=False)
            ax.set(xlabel="t (×1/255, L∞ step along the direction)", ylabel="mean cross-entropy" if q == "loss" else "accuracy (%)",
                   title=f"{q} along {direction}" + (f" #{index}" if direction == "random" else ""))
            ax.axvline(0, color="0.5", lw=0.5)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        paths.append(_save(fig, rows, out_dir, f"landscape_{direction}{index if direction == 'random' else ''}"))
    flat = df[(df["quantity"] == "loss_increase") & df["t2"].isna() & np.isclose(df["t"].astype(float), 8 / 255)]
    if not flat.empty:
        fig = _figure(7, 0.9 + 0.32 * flat["model"].nunique() * max(1, flat["direction"].nunique()))
        ax = fig.add_subplot()
        flat = flat.assign(_l=_labels(flat) + " · " + flat["direction"].astype(str))
        flat = flat.sort_values(["direction", "_l"])
        y = np.arange(len(flat))
        ax.errorbar(flat["mean"], y, xerr=_yerr(flat["mean"], flat["ci_low"], flat["ci_high"]), fmt="o", capsize=3)
        ax.set_yticks(y, flat["_l"], fontsize=7)
        ax.set(xlabel="loss(t=8/255) − loss(0), mean and 95 % interval (smaller: flatter)",
               title="flatness along each direction at t = 8/255")
        ax.grid(alpha=0.3, axis="x")
        paths.append(_save(fig, flat, out_dir, "landscape_flatness"))
    two_d = df[df["t2"].notna() & (df["quantity"] == "loss")]
    for label, r in two_d.assign(_l=_labels(two_d)).groupby("_l", sort=True):
        grid = r.pivot_table(index="t2", columns="t", values="mean")
        if min(grid.shape) < 2:  # a surface needs two points along each axis
            continue
        fig = _figure(5.2, 4.4)
        ax = fig.add_subplot()
        cs = ax.contourf(grid.columns * 255, grid.index * 255, grid.values, levels=20)
        fig.colorbar(cs, ax=ax, label="mean loss")
        ax.set(xlabel="t along grad_sign (×1/255)", ylabel="t2 along random (×1/255)", title=f"loss surface: {label}")
        paths.append(_save(fig, r, out_dir, "landscape2d_" + label.replace(" ", "_").replace("λ=", "lam").replace("(", "").replace(")", "")))
    return paths


# -- stability ----------------------------------------------------------------------------------
def stability_profiles(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    paths = []
    coef = df[(df["quantity"] == "coef") & df["block"].notna()]
    if not coef.empty:
        fig = _figure(6.4, 4.2)
        ax = fig.add_subplot()
        for label, r in coef.assign(_l=_labels(coef) + " (" + coef["coef"].astype(str) + ")").groupby("_l", sort=True):
            ax.plot(r["block"].astype(int), r["mean"], marker="o", label=label)
        ax.set(xlabel="block (damped blocks only)", ylabel="coefficient (λ_n, or k_n for LM)",
               title="learned / fixed coefficient per block")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        paths.append(_save(fig, coef, out_dir, "stability_coefficients"))
    gain = df[(df["quantity"] == "log_gain") & df["block"].notna() & df["direction"].notna()]
    if not gain.empty:
        dirs = sorted(gain["direction"].dropna().unique())
        fig = _figure(5.5 * len(dirs), 4.2)
        for k, d in enumerate(dirs):
            ax = fig.add_subplot(1, len(dirs), k + 1)
            part = gain[gain["direction"] == d]
            for label, r in part.assign(_l=_labels(part)).groupby("_l", sort=True):
                r = r.sort_values("block")
                _band(ax, r["block"].astype(int), r["mean"], r["ci_low"], r["ci_high"], label)
            ax.axhline(0, color="0.5", lw=0.5)
            ax.set(xlabel="block n", ylabel="log ‖Δx_{n+1}‖/‖Δx_n‖", title=f"per-block log gain, {d} perturbation")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        paths.append(_save(fig, gain, out_dir, "stability_gain"))
    summ = df[df["quantity"].isin(["lyapunov", "lyapunov_damped", "jacobian_norm", "grad_norm_l2"])]
    keys = [("lyapunov", "random"), ("lyapunov", "adversarial"), ("lyapunov_damped", "adversarial"),
            ("jacobian_norm", None), ("grad_norm_l2", None)]
    keys = [k for k in keys if not summ[(summ["quantity"] == k[0]) & _dir(summ, k[1])].empty]
    if keys:
        cols = min(3, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig = _figure(4.4 * cols, nrows * (1.2 + 0.3 * summ["model"].nunique()))
        for k, (q, d) in enumerate(keys):
            ax = fig.add_subplot(nrows, cols, k + 1)
            r = summ[(summ["quantity"] == q) & _dir(summ, d)]
            r = r.assign(_l=_labels(r)).sort_values("_l")
            y = np.arange(len(r))
            ax.errorbar(r["mean"], y, xerr=_yerr(r["mean"], r["ci_low"], r["ci_high"]), fmt="o", capsize=3)
            ax.set_yticks(y, r["_l"] if k % cols == 0 else [""] * len(r), fontsize=7)
            ax.set(title=q + (f" ({d})" if d else ""))
            ax.grid(alpha=0.3, axis="x")
        fig.suptitle("stability summary: mean and 95 % interval over examples")
        paths.append(_save(fig, summ, out_dir, "stability_summary"))
    return paths


def _dir(df: pd.DataFrame, d) -> pd.Series:
    return df["direction"].isna() if d is None else (df["direction"] == d).fillna(False)


# -- entry points -------------------------------------------------------------------------------
def table_kind(df: pd.DataFrame) -> str:
    """``eval``, ``checks``, ``landscape``, ``stability`` or ``noise_protocol``."""
    if "analysis" in df.columns and df["analysis"].notna().any():
        kinds = set(df["analysis"].dropna())
        if len(kinds) != 1:
            raise BadInput(f"a table mixes analyses {sorted(kinds)}; plot each on its own")
        return kinds.pop()
    if {"check", "status"} <= set(df.columns):
        return "checks"
    return "eval"


def read_any(path: str | os.PathLike) -> pd.DataFrame:
    """A robench eval/sweep table, a checks table, or a landscape / stability / noise-protocol table,
    read once and checked value by value (:func:`robench.results.validate_table`,
    :func:`~robench.analysis.common.validate_analysis`, :func:`robench.checks.read_checks`)."""
    from robench.analysis.common import STRING_COLUMNS, validate_analysis
    from robench.results import KEY, SCHEMA, read_frame, validate_table

    p = Path(path)
    text = {*(c for c, t in SCHEMA.items() if t == "string"), *STRING_COLUMNS, "direction", "quantity", "coef",
            "corruption", "protocol", "file_mean", "file_std"}
    df = read_frame(p, what="table", string_columns=sorted(text))
    line = (lambda i: f"line {i + 2}") if p.suffix == ".csv" else (lambda i: f"row {i + 1}")
    if "analysis" in df.columns:
        return validate_analysis(df, f"table {p}", line)
    if "check" in df.columns and "status" in df.columns:
        from robench.checks import read_checks

        return read_checks(p)
    missing = [c for c in (*KEY, "correct", "accuracy") if c not in df.columns]
    if missing:
        raise BadInput(f"table {p} is not a robench table: missing columns {', '.join(missing)}")
    return validate_table(df, f"table {p}", row_label=line)


def plot_table(df: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Every figure the table supports, as PNGs in ``out_dir``; returns their paths (none for a
    checks or noise-protocol table, whose numbers the report shows as tables). Text from the table is
    drawn literally: matplotlib's math parsing (``$...$``) is off while plotting."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        return _plot_table(df, out_dir)


def _plot_table(df: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"-o {out} is a file; give a folder for the PNGs")
    if df.empty:
        raise BadInput("the table has no rows; nothing to plot")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create the plot folder {out}: {e.strerror or e}") from None
    kind = table_kind(df)
    if kind in ("checks", "noise_protocol"):
        return []
    out.mkdir(parents=True, exist_ok=True)
    if kind == "eval":
        return [*accuracy_vs_lambda(df, out), *accuracy_vs_eps(df, out), *accuracy_vs_severity(df, out)]
    if kind == "landscape":
        return landscape_curves(df, out)
    if kind == "stability":
        return stability_profiles(df, out)
    raise BadInput(f"no plots for {kind} tables; valid choices: eval, landscape, stability tables")


def existing_plots(folder: Path) -> list[Path]:
    """PNGs already under ``folder`` (what an output folder would overwrite)."""
    return sorted(folder.rglob("*.png")) if folder.is_dir() else []


def plot_tables(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Plot each table: into ``out_dir`` for one table, into ``out_dir/<k>_<stem>/`` for several (so
    one table's figures never replace another's). A folder that already holds PNGs is refused unless
    ``force``, like every other command's outputs."""
    if not paths:
        raise BadInput("give at least one table to plot")
    from robench.fileio import check_writable

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"-o {out} is a file; give a folder for the PNGs")
    check_writable(out, what="-o", folder=True)
    frames = [(Path(p), read_any(p)) for p in paths]  # read (and check) every table before writing anything
    old = existing_plots(out)
    if old and not force:
        raise BadInput(f"-o {out} already holds plots ({', '.join(str(q.relative_to(out)) for q in old[:3])}"
                       f"{' …' if len(old) > 3 else ''}); pass --force to replace them, or choose another folder")
    written: list[Path] = []
    for k, (p, df) in enumerate(frames):
        written += plot_table(df, out if len(frames) == 1 else out / f"{k:02d}_{safe_component(p.stem)}")
    return written
