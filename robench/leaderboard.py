"""Leaderboard: a pure function of result tables → one row per (model, λ, dataset).

Columns, in this order (numbers stay numbers; floats are rounded to 6 decimals so the CSV is
byte-stable):

- ``rank``: 1 = best by the ranking metric (ties share a rank, rows without the metric get none),
  counted within a data set.
- ``model``, ``scheme``, ``lam`` (empty = learned λ or not applicable), ``dataset``.
- ``n``: images per cell (the smallest one when the row mixes n, which is flagged), ``seeds``:
  the seeds present, ``;``-joined.
- ``recipe``, ``epochs``, ``label_smoothing``, ``train_device``: the training recipe on the model
  card whose weights sha256 is the row's (shipped or user zoo); empty when no card matches, so
  recipe differences stand next to robustness differences.
- ``clean``, ``clean_ci_low``, ``clean_ci_high``: clean accuracy and its Wilson 95% CI.
- ``worst_case``, ``worst_case_ci_low``, ``worst_case_ci_high``, ``worst_case_eps``: accuracy under
  the per-example worst case over every attack (rows of kind ``worst_case``) at the LARGEST ε that
  has worst-case rows anywhere in the table, so that every row is compared at the same ε.
- ``worst_case_attacks``: the ``+``-joined attacks that worst case is the AND of (the table's
  ``attacks`` column; for older tables without it, the attacks the table holds for that cell), and
  ``worst_case_status``: ``ok``, ``incomplete`` (a worst-case row whose ``complete`` is False: not
  every attack of the plan had finished) or ``mismatched`` (made of other attacks than the other
  rows of the data set at that ε, e.g. ``fgsm`` against ``fgsm+pgd``). A worst case that is not
  ``ok`` is shown but never ranked (its row gets no rank when ranking by a worst-case metric).
- ``corruption_mean``, ``corruption_ci_low``, ``corruption_ci_high``: mean accuracy over every
  (corruption, severity) cell (each cell weighs the same); the CI is Wilson's on the pooled counts.
- one column per (attack, ε): ``<attack>@<ε>``, e.g. ``pgd@8/255``. ε is written as ``k/255`` when
  it is a whole number of 255ths, else with ``%g`` (``pgd@0.03``). When the table holds one attack
  under several backends the backend joins the name: ``pgd:art@8/255``. Sorted by attack, then ε.
- one column per ε with worst-case rows: ``worst_case@<ε>``.
- ``checks``: how the gradient-masking checks of :mod:`robench.checks` came out for the row, e.g.
  ``5 passed, 0 flagged, 2 skipped`` (``; model checks not run`` without a checks table).
- ``flags``: ``;``-joined integrity codes, empty when none:
  ``missing_clean`` (no clean cell), ``robust_gt_clean`` (some attack or worst-case accuracy above
  the clean one), ``worst_gt_attack`` (a worst case above an attack at the same ε), ``mixed_n``,
  ``mixed_seeds`` (cells of the row ran on different seed sets), ``mixed_data`` (different data
  fingerprints), ``mixed_weights`` (different weights), ``duplicate_cells`` (the same cell twice
  in the input; the first one is used), ``incomplete_worst_case(ε…)``, ``mismatched_worst_case(ε: lacks …)``,
  then the word of every flagged gradient-masking check (:mod:`robench.checks`) with the cells that
  triggered it in parentheses, e.g. ``single_step_stronger(fgsm@8/255 5.0% < pgd@8/255 40.0%)``.
  The checks that need no model (single step, rising ε, black box) always run on the table itself;
  the model checks come from a checks table (``checks=``, ``robench leaderboard --checks``).

Cells pooled over seeds count as ``sum(correct) / sum(n)``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from model_zoo.registry import natural_key
from robench.checks import TABLE_CHECKS, flag_words, summaries, table_checks
from robench.errors import BadInput
from robench.fileio import atomic_write
from robench.results import KEY, format_eps, wilson
from robench.results import nan_to_none as _none
from robench.safetext import markdown_cell, neutralise_frame

FIXED_METRICS = ("clean", "worst_case", "corruption_mean")
FLAG_CODES = ("missing_clean", "robust_gt_clean", "worst_gt_attack", "mixed_n", "mixed_seeds", "mixed_data",
              "mixed_weights", "duplicate_cells")
_DIGITS = 6


def _pool(rows: pd.DataFrame) -> tuple[float, float, float, int, int]:
    correct, total = int(rows["correct"].sum()), int(rows["n"].sum())
    acc = correct / total if total else math.nan
    lo, hi = wilson(correct, total)
    return acc, lo, hi, correct, total


def _attack_names(df: pd.DataFrame) -> dict[tuple, str]:
    """(perturbation, backend, eps) → column name; the backend shows only where an attack has several."""
    attacks = df[df["kind"] == "attack"]
    backends: dict[str, set] = {}
    for pert, backend in zip(attacks["perturbation"], attacks["backend"]):
        backends.setdefault(pert, set()).add(_none(backend))
    names = {}
    for pert, backend, eps in zip(attacks["perturbation"], attacks["backend"], attacks["eps"]):
        backend, eps = _none(backend), _none(eps)
        label = pert if len(backends[pert]) == 1 else f"{pert}:{backend if backend is not None else '-'}"
        names[(pert, backend, eps)] = f"{label}@{format_eps(eps) if eps is not None else '-'}"
    return names


def _zoo_cards() -> dict[str, Any]:
    """weights sha256 → card of every checkpoint in the zoo directories."""
    import model_zoo

    return {r.weights_sha256: r.card for r in model_zoo.available() if r.weights_sha256}


def _recipe(card: Any) -> dict:
    training = getattr(card, "training", None)
    training = training if isinstance(training, dict) else {}
    recipe = training.get("recipe") if isinstance(training.get("recipe"), dict) else {}
    def get(d: dict, k: str):
        v = d.get(k)
        return v if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None
    return {"recipe": get(recipe, "name"), "epochs": get(recipe, "epochs"),
            "label_smoothing": get(recipe, "label_smoothing"), "train_device": get(training, "device")}


def worst_case_attacks(df: pd.DataFrame) -> list[str | None]:
    """Per worst-case row: its ``attacks`` value, else the attacks the table holds for the same cell."""
    present: dict[tuple, set] = {}
    atk = df[df["kind"] == "attack"]
    for t in zip(atk["model"], atk["lam"], atk["dataset"], atk["n"], atk["seed"], atk["eps"], atk["perturbation"]):
        present.setdefault(tuple(_none(v) for v in t[:5]) + (round(float(t[5]), 10),), set()).add(str(t[6]))
    given = df["attacks"] if "attacks" in df.columns else pd.Series([pd.NA] * len(df), index=df.index)
    out = []
    for (_, r), a in zip(df.iterrows(), given):
        if r["kind"] != "worst_case":
            out.append(None)
        elif _none(a) is not None and str(a) != "":
            out.append("+".join(sorted(str(a).split("+"))))
        else:
            k = tuple(_none(r[c]) for c in ("model", "lam", "dataset", "n", "seed")) + (round(float(r["eps"]), 10),)
            out.append("+".join(sorted(present.get(k, set()))))
    return out


def leaderboard(df: pd.DataFrame, rank_by: str | None = None, *, checks: pd.DataFrame | None = None,
                cards: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per (model, λ, dataset) of a tidy results table; see the module docstring for the columns.

    ``rank_by``: ``clean``, ``worst_case``, ``corruption_mean`` or an attack column such as
    ``pgd@8/255``, among those the table has; default ``worst_case`` when the table has worst-case
    rows, else ``clean``. Higher is better. Any other metric is :class:`BadInput` listing the valid ones.
    ``checks``: a checks table (:func:`robench.checks.run_checks`) whose flagged model checks join
    ``flags``; the table-only checks always run on ``df`` itself. ``cards``: weights sha256 → model card for the recipe columns;
    None reads the zoo's cards.
    """
    missing = [c for c in (*KEY, "correct", "accuracy") if c not in df.columns]
    if missing:
        raise BadInput(f"not a robench results table: missing columns {', '.join(missing)}")
    if df.empty:
        raise BadInput("the results table has no rows; nothing to rank")
    df = df.copy()
    for col in ("scheme", "data_sha256", "weights_sha256"):
        if col not in df.columns:
            df[col] = pd.NA
    df["_key"] = [tuple(_none(v) for v in t) for t in zip(*(df[c] for c in KEY))]
    dup_keys = set(df.loc[df["_key"].duplicated(), "_key"])
    df = df.drop_duplicates("_key", keep="first")
    df["_row"] = [(m, _none(lam), d) for m, lam, d in zip(df["model"], df["lam"], df["dataset"])]
    df["_attacks"] = worst_case_attacks(df)
    df["_complete"] = ([_none(v) for v in df["complete"]] if "complete" in df.columns else [None] * len(df))
    found = table_checks(df)  # recomputed here, so a checks table can only add the model checks
    if checks is not None and not checks.empty:
        found = pd.concat([found, checks[~checks["check"].isin(TABLE_CHECKS)]], ignore_index=True)
    words, check_summary = flag_words(found), summaries(found)
    cards = _zoo_cards() if cards is None else cards

    attack_names = _attack_names(df)
    attack_cols = sorted(set(attack_names.values()),
                         key=lambda c: next((p, b or "", e if e is not None else -1.0)
                                            for (p, b, e), name in attack_names.items() if name == c))
    wc = df[df["kind"] == "worst_case"]
    wc_eps = sorted({float(e) for e in wc["eps"] if _none(e) is not None})
    wc_cols = [f"worst_case@{format_eps(e)}" for e in wc_eps]
    headline_eps = wc_eps[-1] if wc_eps else None
    # the attacks every worst case at ε must be made of: the union over the rows of that data set
    wc_all = df[df["kind"] == "worst_case"]
    reference: dict[tuple, set] = {}
    for d, e, a in zip(wc_all["dataset"], wc_all["eps"], wc_all["_attacks"]):
        reference.setdefault((d, round(float(e), 10)), set()).update(a.split("+") if a else [])

    present = {"clean": (df["kind"] == "clean").any(), "worst_case": headline_eps is not None,
               "corruption_mean": (df["kind"] == "corruption").any()}
    metrics = [*(m for m in FIXED_METRICS if present[m]), *attack_cols, *wc_cols]
    if rank_by is None:
        rank_by = "worst_case" if present["worst_case"] else ("clean" if present["clean"] else metrics[0])
    if rank_by not in metrics:
        raise BadInput(f"unknown --rank-by metric {rank_by!r}; valid choices: {', '.join(metrics)}")

    rows = []
    for row_key, g in df.groupby("_row", sort=False):
        model, lam, dataset = row_key
        out: dict = {"model": model, "scheme": _first(g["scheme"]), "lam": lam, "dataset": dataset}
        flags = set()
        ns = sorted({int(v) for v in g["n"]})
        out["n"] = ns[0]
        out["seeds"] = ";".join(str(s) for s in sorted({int(v) for v in g["seed"]}))
        shas = [v for v in g["weights_sha256"] if _none(v) is not None]
        out.update(_recipe(cards.get(shas[0]) if shas else None))
        if len(ns) > 1:
            flags.add("mixed_n")
        cell_seeds = {}
        for t, s in zip(g["_key"], g["seed"]):
            cell_seeds.setdefault(t[:KEY.index("seed")] + t[KEY.index("seed") + 1:], set()).add(int(s))
        if len({frozenset(v) for v in cell_seeds.values()}) > 1:
            flags.add("mixed_seeds")
        for col, code in (("data_sha256", "mixed_data"), ("weights_sha256", "mixed_weights")):
            if len({v for v in g[col] if _none(v) is not None}) > 1:
                flags.add(code)
        if any(k in dup_keys for k in g["_key"]):
            flags.add("duplicate_cells")

        clean = g[g["kind"] == "clean"]
        if clean.empty:
            flags.add("missing_clean")
            out.update(clean=math.nan, clean_ci_low=math.nan, clean_ci_high=math.nan)
        else:
            out["clean"], out["clean_ci_low"], out["clean_ci_high"], _, _ = _pool(clean)

        wcg = g[g["kind"] == "worst_case"]
        unranked, incomplete, mismatched = set(), [], []
        for e, col in zip(wc_eps, wc_cols):
            at = wcg[np.isclose(wcg["eps"].astype(float), e)]
            out[col] = _pool(at)[0] if not at.empty else math.nan
            if at.empty:
                continue
            sets = {a for a in at["_attacks"]}
            lacks = sorted(reference[(dataset, round(e, 10))] - set("+".join(sets).split("+")))
            if any(c is not None and not bool(c) for c in at["_complete"]):
                incomplete.append(format_eps(e))
                unranked.add(col)
            elif len(sets) > 1 or lacks:
                mismatched.append(f"{format_eps(e)}: lacks {'+'.join(lacks)}" if lacks
                                  else f"{format_eps(e)}: {' vs '.join(sorted(sets))}")
                unranked.add(col)
        at = wcg[np.isclose(wcg["eps"].astype(float), headline_eps)] if headline_eps is not None else wcg.iloc[0:0]
        if at.empty:
            out.update(worst_case=math.nan, worst_case_ci_low=math.nan, worst_case_ci_high=math.nan)
        else:
            out["worst_case"], out["worst_case_ci_low"], out["worst_case_ci_high"], _, _ = _pool(at)
        out["worst_case_eps"] = format_eps(headline_eps) if headline_eps is not None else ""
        head_col = f"worst_case@{format_eps(headline_eps)}" if headline_eps is not None else None
        out["worst_case_attacks"] = "+".join(sorted(set("+".join(at["_attacks"]).split("+")) - {""})) if not at.empty else ""
        out["worst_case_status"] = ("" if at.empty else "incomplete" if format_eps(headline_eps) in incomplete
                                    else "mismatched" if head_col in unranked else "ok")
        if head_col in unranked:
            unranked.add("worst_case")
        out["_unranked"] = unranked

        corr = g[g["kind"] == "corruption"]
        if corr.empty:
            out.update(corruption_mean=math.nan, corruption_ci_low=math.nan, corruption_ci_high=math.nan)
        else:
            per_cell = [_pool(c)[0] for _, c in corr.groupby(["perturbation", "severity"], sort=True, dropna=False)]
            _, lo, hi, _, _ = _pool(corr)
            out.update(corruption_mean=float(np.mean(per_cell)), corruption_ci_low=lo, corruption_ci_high=hi)

        atk = g[g["kind"] == "attack"]
        by_col: dict[str, list] = {}
        for idx, (p, b, e) in enumerate(zip(atk["perturbation"], atk["backend"], atk["eps"])):
            by_col.setdefault(attack_names[(p, _none(b), _none(e))], []).append(idx)
        for col in attack_cols:
            out[col] = _pool(atk.iloc[by_col[col]])[0] if col in by_col else math.nan

        clean_acc = out["clean"]
        robust = [out[c] for c in (*attack_cols, *wc_cols) if not math.isnan(out[c])]
        if not math.isnan(clean_acc) and any(r > clean_acc + 1e-12 for r in robust):
            flags.add("robust_gt_clean")
        for (p, b, e), col in attack_names.items():
            wcol = f"worst_case@{format_eps(e)}" if e is not None else None
            if wcol in out and not math.isnan(out[wcol]) and not math.isnan(out[col]) and out[wcol] > out[col] + 1e-12:
                flags.add("worst_gt_attack")
        codes = [c for c in FLAG_CODES if c in flags]
        if incomplete:
            codes.append(f"incomplete_worst_case({', '.join(incomplete)})")
        if mismatched:
            codes.append(f"mismatched_worst_case({'; '.join(mismatched)})")
        out["flags"] = ";".join(codes + words.get(row_key, []))
        out["checks"] = check_summary.get(row_key, "")
        rows.append(out)

    columns = ["rank", "model", "scheme", "lam", "dataset", "n", "seeds",
               "recipe", "epochs", "label_smoothing", "train_device",
               "clean", "clean_ci_low", "clean_ci_high",
               "worst_case", "worst_case_ci_low", "worst_case_ci_high", "worst_case_eps",
               "worst_case_attacks", "worst_case_status",
               "corruption_mean", "corruption_ci_low", "corruption_ci_high",
               *attack_cols, *wc_cols, "checks", "flags"]

    def metric(r: dict) -> float:
        return math.nan if rank_by in r["_unranked"] else r[rank_by]

    def order(r: dict) -> tuple:
        m = metric(r)
        has = m is not None and not math.isnan(m)
        lam = r["lam"]
        return (not has, -m if has else 0.0, natural_key(r["model"]), lam is None, lam if lam is not None else 0.0)

    ordered = []
    for dataset in sorted({r["dataset"] for r in rows}):
        group = sorted((r for r in rows if r["dataset"] == dataset), key=order)
        for r in group:
            m = metric(r)
            # rank = 1 + number of rows strictly better ("min" ranking: ties share a rank)
            r["rank"] = (None if m is None or math.isnan(m)
                         else 1 + sum(1 for o in group if not math.isnan(metric(o)) and metric(o) > m))
        ordered.extend(group)
    board = pd.DataFrame(ordered, columns=columns)
    board["rank"] = board["rank"].astype("Int64")
    board["n"] = board["n"].astype("int64")
    board["lam"] = board["lam"].astype("float64")
    board["epochs"] = board["epochs"].astype("Int64")
    board["label_smoothing"] = board["label_smoothing"].astype("float64")
    for col in columns:
        if board[col].dtype.kind == "f":
            board[col] = board[col].round(_DIGITS)
    for col in ("model", "scheme", "dataset", "seeds", "recipe", "train_device", "worst_case_eps",
                "worst_case_attacks", "worst_case_status", "checks", "flags"):
        board[col] = board[col].astype("string")
    return board[columns].reset_index(drop=True)


def _first(s: pd.Series):
    vals = [v for v in s if _none(v) is not None]
    return vals[0] if vals else pd.NA


def read_tables(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Read and concatenate result tables (each checked by :func:`robench.results.read_table`)."""
    from robench.results import read_table

    frames = [read_table(p) for p in paths]
    if not frames:
        raise BadInput("give at least one results table")
    return pd.concat(frames, ignore_index=True)


def write_csv(board: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write the leaderboard CSV atomically (temp file + os.replace); text cells a spreadsheet
    would run as a formula are neutralised (:func:`robench.safetext.csv_cell`)."""
    csv = neutralise_frame(board)
    return atomic_write(out, lambda tmp: csv.to_csv(tmp, index=False), what="leaderboard CSV")


def write_text(text: str, out: str | os.PathLike) -> Path:
    return atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), what="file")


def to_markdown(board: pd.DataFrame) -> str:
    """A readable Markdown table: accuracies in percent with one decimal, CIs folded into brackets.

    The headline worst case carries its ε, its attacks and its status in the header cell or beside
    the number; its ``worst_case@ε`` column is not repeated. The recipe columns fold into one cell."""
    head_eps = board["worst_case_eps"].iloc[0] if len(board) and not pd.isna(board["worst_case_eps"].iloc[0]) else ""
    repeated = f"worst_case@{head_eps}" if head_eps else None
    show = ["rank", "model", "lam", "dataset", "n", "recipe", "clean", "worst_case", "corruption_mean",
            *[c for c in board.columns if "@" in c and c != repeated], "checks", "flags"]
    ci = {"clean": ("clean_ci_low", "clean_ci_high"), "worst_case": ("worst_case_ci_low", "worst_case_ci_high"),
          "corruption_mean": ("corruption_ci_low", "corruption_ci_high")}
    header = [("worst_case" + (f" @{head_eps}" if head_eps else "")) if c == "worst_case" else c for c in show]
    lines = ["| " + " | ".join(markdown_cell(h) if "@" in h else h for h in header) + " |",
             "|" + "|".join(" --- " for _ in show) + "|"]
    for _, r in board.iterrows():
        cells = []
        for c in show:
            v = r[c]
            if c == "lam":
                cells.append("learned/–" if pd.isna(v) else f"{v:g}")
            elif c in ("rank", "n"):
                cells.append("" if pd.isna(v) else str(int(v)))
            elif c == "recipe":
                parts = [None if pd.isna(v) else markdown_cell(v),
                         None if pd.isna(r["epochs"]) else f"{int(r['epochs'])} ep",
                         None if pd.isna(r["label_smoothing"]) else f"ls {r['label_smoothing']:g}",
                         None if pd.isna(r["train_device"]) else markdown_cell(r["train_device"])]
                cells.append(", ".join(p for p in parts if p) or "–")
            elif c in ("model", "dataset", "checks", "flags"):
                cells.append("" if pd.isna(v) else markdown_cell(v))
            elif pd.isna(v):
                cells.append("–")
            elif c in ci:
                lo, hi = r[ci[c][0]], r[ci[c][1]]
                text = f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                if c == "worst_case" and not pd.isna(r["worst_case_status"]) and r["worst_case_status"] not in ("", "ok"):
                    text += f" ({r['worst_case_status']}: {markdown_cell(r['worst_case_attacks'])}, not ranked)"
                cells.append(text)
            else:
                cells.append(f"{100 * v:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
