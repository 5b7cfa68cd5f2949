"""One static HTML page from result tables, for a researcher: a summary at the top, a table of
contents, the leaderboard (key columns on one laptop screen, the rest folded), the threat model,
tidy wide tables of every cell, the checks, seeds, the landscape and stability summaries, every
plot, and the provenance of each input table. Accuracies are in percent with one decimal and their
Wilson 95 % interval; λ is written one way (:func:`robench.results.lam_text`). No scripts or assets
from the network: it opens from disk.

The page is a list of :class:`Section` (id, title, HTML, files it refers to): :func:`build_sections`
makes robench's own from the tables — summary, leaderboard, the papers' claims as tested verdicts
(:mod:`robench.claims`; right below the leaderboard, so the leaderboard stays on a laptop's first
screen), threat model, cells, checks, seeds, analyses — and :func:`write_report` renders them.
Another section is added with ``write_report(..., top=[Section(...)])``: it goes right after the
summary, into the table of contents, and its files are written beside the page.
"""
from __future__ import annotations

import dataclasses
import datetime
import html
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from robench.analysis.plots import model_label, plot_table, read_any, table_kind
from robench.errors import BadInput
from robench.fileio import atomic_write, atomic_write_text, safe_component, sha256_file
from robench.results import pct, wilson
from robench.safetext import url_path

_CSS = """
body{font-family:system-ui,sans-serif;margin:12px auto;max-width:1320px;padding:0 12px;color:#222;font-size:14px}
h1{font-size:1.35em;margin:4px 0} h2{font-size:1.15em;margin-top:1.4em;border-bottom:1px solid #ccc}
h3{font-size:1em} p{margin:4px 0}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap} th{background:#f0f0f0}
th.txt,td.txt{text-align:left} td.wrap{white-space:normal;text-align:left;overflow-wrap:anywhere;max-width:1100px}
td.flag{background:#fff3cd;color:#8a4b00;text-align:left;font-weight:600}
td.s-pass{color:#176117} td.s-flag{background:#fff3cd;color:#8a4b00;font-weight:600}
td.s-not_run{background:#f8d7da;color:#721c24;font-weight:600} td.s-skip{color:#777}
tr.top td{background:#eef6ff}
nav{font-size:13px;margin:6px 0} nav a{margin-right:10px}
ul.summary{margin:4px 0 4px 18px;padding:0} ul.summary li{margin:1px 0}
details{margin:6px 0} summary{cursor:pointer;color:#0645ad}
figure{margin:10px 0} figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:12px;color:#555} .meta{font-size:12px;color:#555}
.scroll{overflow-x:auto}
"""
PROVENANCE_FIELDS = ("model", "n", "seed", "dataset", "data_label", "device", "robench_version", "torch_version",
                     "art_version", "foolbox_version", "git_sha", "timestamp", "data_sha256", "weights_sha256",
                     "card_sha256")


@dataclasses.dataclass(frozen=True)
class Section:
    """One part of the page: an anchor ``id``, a ``title`` (also its entry in the table of contents),
    an HTML fragment, and the ``files`` the fragment refers to: (path relative to the report
    folder, bytes) pairs, e.g. ``("claims/forest.png", png_bytes)`` for ``<img src="claims/forest.png">``."""

    id: str
    title: str
    html: str
    files: tuple[tuple[str, bytes], ...] = ()


def _e(v: Any) -> str:
    return html.escape("" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v))


def _num(v: Any, digits: int) -> str:
    return "–" if v is None or pd.isna(v) else f"{float(v):.{digits}f}"


def _interval(v: Any, lo: Any, hi: Any, digits: int) -> str:
    if v is None or pd.isna(v):
        return "–"
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return _num(v, digits)
    return f"{float(v):.{digits}f} [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def _table(header: list[str], rows: list[list[str]], cls: str, *, text_cols: int = 1, raw: bool = False,
           attrs: Sequence[str] | None = None) -> str:
    """An HTML table; the first ``text_cols`` columns are left-aligned text. Cells are escaped unless
    ``raw`` (then they are already HTML)."""
    def cell(j: int, v: str) -> str:
        return v if raw else (f'<td class="txt">{_e(v)}</td>' if j < text_cols else f"<td>{_e(v)}</td>")

    head = "".join(f'<th class="txt"{(" " + attrs[j]) if attrs else ""}>{_e(h)}</th>' if j < text_cols
                   else f'<th{(" " + attrs[j]) if attrs else ""}>{_e(h)}</th>' for j, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(cell(j, v) for j, v in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="{cls}"><tr>{head}</tr>\n{body}</table></div>'


# -- the eval table: leaderboard, summary, threat model, every cell, checks, seeds ------------------
def _label(model: Any, lam: Any, scheme: Any) -> str:
    return model_label(str(model), lam, scheme)


def leaderboard_html(board: pd.DataFrame) -> str:
    """The key columns (rank with ≈ ties, model, λ, clean, the ranking cell, the headline worst case,
    AutoAttack where it ran, corruption mean, checks, flags) in one table that fits a laptop screen;
    every other column folded below it."""
    from robench.leaderboard import checks_short, flags_short, key_columns, metric_columns, rank_rule, rank_text

    keys = key_columns(board)
    rows = []
    for i, (_, r) in enumerate(board.iterrows()):
        cells = []
        for c, _h in keys:
            if c == "rank":
                cells.append(f'<td title="{_e("ranks whose 95 % interval overlaps: " + str(r["tied"]) if not pd.isna(r["tied"]) and r["tied"] else "")}">{_e(rank_text(r))}</td>')
            elif c in ("model", "lam"):
                cells.append(f'<td class="txt">{_e(r[c])}</td>')
            elif c == "checks":
                cells.append(f'<td class="txt" title="{_e(r["checks"])}">{_e(checks_short(r[c]))}</td>')
            elif c == "flags":
                short = flags_short(r[c])
                cells.append(f'<td class="{"flag" if short else "txt"}" title="{_e(r[c])}">{_e(short)}</td>')
            else:
                lo, hi = _ci_cols(c)
                text = _interval(r[c], r[lo], r[hi], 1)
                if c == "worst_case" and not pd.isna(r["worst_case_status"]) and r["worst_case_status"] not in ("", "ok"):
                    text += f" ({r['worst_case_status']}, not ranked)"
                cells.append(f"<td>{_e(text)}</td>")
        rows.append(cells)
    head = [h for _, h in keys]
    attrs = [f'data-key="{_e(c)}"' for c, _ in keys]
    key_table = _table(head, [["".join(r)] for r in rows], "leaderboard", attrs=attrs, raw=True, text_cols=3)

    detail_cols = [c for c in metric_columns(board) if "@" in c]
    details = _table(["model", "λ", *detail_cols],
                     [[str(r["model"]), str(r["lam"]), *(_interval(r[c], r[f"{c}_ci_low"], r[f"{c}_ci_high"], 1)
                                                         for c in detail_cols)] for _, r in board.iterrows()],
                     "cells", text_cols=2) if detail_cols else ""
    card = _table(["model", "λ", "data", "n", "seeds", "corruption mean of", "source", "parameters", "recipe", "epochs",
                   "label smoothing", "trained on", "card test acc %", "checks", "flags", "notes"],
                  [[str(r["model"]), str(r["lam"]), _s(r["data_label"]), str(int(r["n"])), _s(r["seeds"]),
                    _s(r["corruption_set"]), _s(r["source"]),
                    "–" if pd.isna(r["parameters"]) else f"{int(r['parameters']):,}", _s(r["recipe"]),
                    "–" if pd.isna(r["epochs"]) else str(int(r["epochs"])),
                    "–" if pd.isna(r["label_smoothing"]) else f"{r['label_smoothing']:g}", _s(r["train_device"]),
                    _num(r["card_test_acc"], 1), _s(r["checks"]), _s(r["flags"]), _s(r["notes"])]
                   for _, r in board.iterrows()], "cards", text_cols=16)
    return (f'<p class="meta">Ranked by {_e(rank_rule(board))}. ≈: the ranks whose 95 % interval overlaps the '
            "row's (they cannot be told apart at this n). Accuracies in %, [Wilson 95 % interval].</p>\n"
            f"{key_table}\n<details><summary>Every cell with its interval</summary>{details}</details>\n"
            f"<details><summary>Data, model cards, checks and flags</summary>{card}</details>")


def _row_label(r: pd.Series) -> str:
    """A leaderboard row as every view names it (its λ column is already in the one notation)."""
    from robench.results import NOT_APPLICABLE

    return str(r["model"]) if str(r["lam"]) == NOT_APPLICABLE else f"{r['model']} λ={r['lam']}"


def _s(v: Any) -> str:
    return "–" if v is None or pd.isna(v) or str(v) == "" else str(v)


def _ci_cols(col: str) -> tuple[str, str]:
    from robench.leaderboard import _ci

    return _ci(col)


def threat_model_html(df: pd.DataFrame) -> str:
    from robench.threat_model import threat_model

    items = threat_model(df).items()
    return "<ul>" + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in items) + "</ul>"


def _pool_cells(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """correct/n pooled per group, with the Wilson interval."""
    rows = []
    for key, g in df.groupby(by, sort=False, dropna=False):
        c, n = int(g["correct"].sum()), int(g["n"].sum())
        lo, hi = wilson(c, n)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "acc": c / n if n else math.nan,
                     "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def cells_html(df: pd.DataFrame) -> str:
    """Tidy wide tables: one per attack (models × ε) and one per corruption (models × severity), each
    cell the accuracy in % with its Wilson 95 % interval."""
    out = []
    df = df.assign(_label=[_label(m, l, s) for m, l, s in zip(df["model"], df["lam"], df.get("scheme", df["model"]))])
    order = list(dict.fromkeys(df["_label"]))
    for kind, axis, name in (("attack", "eps", "ε"), ("worst_case", "eps", "ε"), ("corruption", "severity", "severity")):
        part = df[df["kind"] == kind]
        for pert, g in part.groupby("perturbation", sort=True):
            pooled = _pool_cells(g, ["_label", axis])
            cols = sorted({float(v) for v in pooled[axis].dropna()})
            header = ["model", *[(_eps(v) if axis == "eps" else f"{name} {int(v)}") for v in cols]]
            rows = []
            for label in [x for x in order if x in set(pooled["_label"])]:
                mine = pooled[pooled["_label"] == label]
                row = [label]
                for v in cols:
                    hit = mine[np.isclose(mine[axis].astype(float), v)]
                    row.append("–" if hit.empty else pct(hit["acc"].iloc[0], hit["lo"].iloc[0], hit["hi"].iloc[0]))
                rows.append(row)
            title = "worst case over the attacks" if kind == "worst_case" else str(pert)
            out.append(f"<h3>{_e(title)}: accuracy % by {name}</h3>" + _table(header, rows, "cells"))
    return "\n".join(out) or "<p>No attack or corruption cells.</p>"


def _eps(v: float) -> str:
    from robench.results import format_eps

    return "ε " + format_eps(v)


def checks_html(checks: pd.DataFrame, df: pd.DataFrame, model_checks_given: bool) -> str:
    """Models × checks: pass / flag / not applicable / NOT RUN, the detail in each cell's tooltip."""
    from robench.checks import CHECKS, STATUS_WORDS, TABLE_CHECKS

    if checks.empty:
        return "<p>No checks.</p>"
    schemes = dict(zip(zip(df["model"], df["lam"].map(lambda v: None if pd.isna(v) else float(v))), df["scheme"])) \
        if "scheme" in df.columns else {}
    rows = []
    for (model, lam, dataset), g in checks.groupby(["model", checks["lam"].map(lambda v: None if pd.isna(v) else float(v)),
                                                    "dataset"], sort=False, dropna=False):
        lam = None if lam is None or pd.isna(lam) else lam
        cells = [f'<td class="txt">{_e(_label(model, lam, schemes.get((model, lam))))}</td>', f'<td class="txt">{_e(dataset)}</td>']
        for c in CHECKS:
            hit = g[g["check"] == c]
            if hit.empty:
                cells.append('<td class="s-not_run" title="no checks table given">not run</td>' if c not in TABLE_CHECKS
                             else '<td class="s-skip">–</td>')
                continue
            st = [str(s) for s in hit["status"]]
            worst = next((s for s in ("flag", "not_run", "pass", "skip") if s in st), st[0])
            tip = "; ".join(str(v) for v in list(hit["cells"].dropna()) + list(hit["detail"].dropna()) if str(v))
            cells.append(f'<td class="s-{_e(worst)}" title="{_e(tip)}">{_e(STATUS_WORDS.get(worst, worst))}</td>')
        rows.append(cells)
    note = ("" if model_checks_given else
            "<p class=\"meta\">Only the checks that need no model ran (give the report the checks table, e.g. "
            "<code>OUT_checks.parquet</code> from <code>robench eval</code>/<code>sweep</code> or "
            "<code>robench check -o</code>, for the model checks); the others are shown as not run.</p>")
    legend = ("<p class=\"meta\">passed; flagged (see the leaderboard's flags); not applicable (the table has "
              "no cells the check compares); <b>not run</b> (the model or data it needs was missing: never a pass). "
              "Hover a cell for what was measured.</p>")
    return note + _table(["model", "data set", *CHECKS], [["".join(r)] for r in rows], "checks", raw=True,
                         text_cols=2) + legend


def seeds_html(board: pd.DataFrame) -> str:
    from robench.leaderboard import seed_summary

    s = seed_summary(board)
    if s.empty or not (s["n_models"] > 1).any():
        return ""
    cols = [c for c in ("rank_value", "clean", "worst_case", "corruption_mean") if f"{c}_mean" in s.columns]
    names = {"rank_value": f"{board['rank_by'].iloc[0]} (ranked)", "clean": "clean", "worst_case":
             f"worst case @{board['worst_case_eps'].dropna().iloc[0] if board['worst_case_eps'].notna().any() else ''}",
             "corruption_mean": "corruption mean"}
    rows = [[str(r["model"]), str(r["lam"]), str(int(r["n_models"])), str(r["members"]),
             *[("–" if pd.isna(r[f"{c}_mean"]) else f"{r[f'{c}_mean']:.1f}"
                + ("" if pd.isna(r[f"{c}_sd"]) else f" ± {r[f'{c}_sd']:.1f}")) for c in cols]] for _, r in s.iterrows()]
    return ("<p class=\"meta\">Per base model and λ over its trained variants (model name tags such as "
            "<code>resnet20.s1</code>; the untagged name is seed 0): mean ± standard deviation in %, "
            "n = trained models.</p>" + _table(["model", "λ", "n", "models", *[names[c] for c in cols]], rows,
                                               "seeds", text_cols=4))


def _claims_rows(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    """The papers' claims tested on the report's tables (:func:`robench.claims.evaluate_claims`); None
    when the tables cannot be read together (e.g. the same cell from two runs), which the claims
    section then leaves out rather than guess."""
    from robench.claims import evaluate_claims

    try:
        return evaluate_claims(frames)
    except BadInput:
        return None


def summary_html(df: pd.DataFrame, board: pd.DataFrame, checks: pd.DataFrame, model_checks_given: bool, *,
                 claims: pd.DataFrame | None = None) -> str:
    """Four to six generated bullets: what was measured, the ranking and its winner (with whom it is
    tied), the papers' claims (one verdict each), the checks, the integrity flags."""
    from robench.claims import summarise
    from robench.leaderboard import rank_rule
    from robench.threat_model import threat_model

    tm = threat_model(df)
    items = []
    attacks = ", ".join(a.name for a in tm.attacks)
    what = (f"{len(board)} model{'s' if len(board) != 1 else ''} on {'; '.join(tm.data)}, n = "
            f"{', '.join(map(str, tm.n))}, seed{'s' if len(tm.seeds) != 1 else ''} {', '.join(map(str, tm.seeds))}")
    if tm.attacks:
        eps = ", ".join(_eps(e)[2:] for e in tm.eps)
        what += (f"; {' and '.join('L∞' if n == 'linf' else n.upper() for n in tm.norms)} "
                 f"attacks {attacks} at ε ∈ {{{eps}}} (hyper-parameters in the threat model below)")
    if tm.corruptions:
        what += f"; corruptions {tm.corruptions}"
    items.append(what + ".")
    ranked = board[board["rank"].notna()]
    if len(ranked):
        top = ranked.iloc[0]
        tied = [t for t in str(top["tied"]).split(";") if t] if not pd.isna(top["tied"]) else []
        items.append(f"Ranked by {rank_rule(board)}. First: {_row_label(top)} with "
                     f"{_interval(top['rank_value'], top['rank_ci_low'], top['rank_ci_high'], 1)} %"
                     + (f"; its interval overlaps those of rank{'s' if len(tied) > 1 else ''} {', '.join(tied)}, "
                        "so the order among them is not established at this n." if tied
                        else "; its interval is clear of every other row's."))
    if claims is not None and not claims.empty:
        folded = summarise(claims)
        items.append("The papers' claims (paired tests, Holm; section Claims): " + "; ".join(
            f"{r['claim']}: {r['verdict']}" + (f" (these checkpoints: {r['verdict_checkpoints']})"
                                               if r["verdict_checkpoints"] != r["verdict"] else "")
            for _, r in folded.iterrows()) + ".")
    st = checks["status"].value_counts() if not checks.empty else pd.Series(dtype=int)
    items.append(f"Checks: {int(st.get('flag', 0))} flagged, {int(st.get('not_run', 0))} not run, "
                 f"{int(st.get('pass', 0))} passed, {int(st.get('skip', 0))} not applicable"
                 + ("" if model_checks_given else " (table checks only: the model checks were not given)") + ".")
    flagged = board[board["flags"].fillna("") != ""]
    items.append("Integrity flags: none." if flagged.empty else
                 f"Integrity flags on {len(flagged)} row{'s' if len(flagged) != 1 else ''}: "
                 + "; ".join(f"{_row_label(r)}: {r['flags']}" for _, r in flagged.head(4).iterrows())
                 + (" …" if len(flagged) > 4 else "") + ".")
    if len(tm.training_seeds) and all(len(t) == 1 for t in tm.training_seeds.values()):
        items.append("One trained model per architecture and λ: a difference between two rows may be training noise.")
    return '<ul class="summary">' + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


# -- analysis tables ------------------------------------------------------------------------------
def flatness_html(df: pd.DataFrame) -> str:
    """Models × directions: the loss rise at t = 8/255, mean [95 % interval], two decimals."""
    rows = df[(df["quantity"] == "loss_increase") & df["t2"].isna() & np.isclose(df["t"].astype(float), 8 / 255)]
    if rows.empty:
        return "<p>No loss_increase rows at t = 8/255.</p>"
    rows = rows.assign(_l=[_label(m, l, s) for m, l, s in zip(rows["model"], rows["lam"], rows["scheme"])],
                       _d=[f"{d}{'' if d != 'random' else int(i)}" for d, i in zip(rows["direction"], rows["index"])])
    dirs = list(dict.fromkeys(rows["_d"]))
    body = []
    for label, g in rows.groupby("_l", sort=False):
        body.append([label, *[(_interval(h["mean"].iloc[0], h["ci_low"].iloc[0], h["ci_high"].iloc[0], 2)
                               if not (h := g[g["_d"] == d]).empty else "–") for d in dirs]])
    return ("<p class=\"meta\">loss(t = 8/255) − loss(0) along each direction, mean over examples [95 % interval]; "
            "smaller is flatter.</p>" + _table(["model", *dirs], body, "flatness"))


_STABILITY = (("lyapunov", "adversarial", 3), ("lyapunov", "random", 3), ("lyapunov_damped", "adversarial", 3),
              ("lyapunov_damped", "random", 3), ("jacobian_norm", None, 2), ("grad_norm_l2", None, 3))


def stability_html(df: pd.DataFrame) -> str:
    """Models × summary quantities, mean [95 % interval], one precision per column."""
    rows = df.assign(_l=[_label(m, l, s) for m, l, s in zip(df["model"], df["lam"], df["scheme"])])
    present = [(q, d, k) for q, d, k in _STABILITY
               if not rows[(rows["quantity"] == q) & (rows["direction"].isna() if d is None
                                                      else (rows["direction"] == d).fillna(False))].empty]
    if not present:
        return "<p>No summary quantities.</p>"
    body = []
    for label in dict.fromkeys(rows["_l"]):
        mine = rows[rows["_l"] == label]
        row = [label]
        for q, d, k in present:
            h = mine[(mine["quantity"] == q) & (mine["direction"].isna() if d is None
                                                else (mine["direction"] == d).fillna(False))]
            row.append("–" if h.empty else _interval(h["mean"].iloc[0], h["ci_low"].iloc[0], h["ci_high"].iloc[0], k))
        body.append(row)
    header = ["model", *[q.replace("_", " ") + (f" ({d})" if d else "") for q, d, _ in present]]
    return ("<p class=\"meta\">Mean over examples [95 % interval]. Lyapunov estimate: mean over the blocks of "
            "log ‖Δx_{n+1}‖/‖Δx_n‖ (damped: the damped blocks only).</p>" + _table(header, body, "stability"))


def provenance_html(path: Path, df: pd.DataFrame) -> str:
    items = [("file", path.name), ("sha256", sha256_file(path)), ("rows", len(df))]
    for c in PROVENANCE_FIELDS:
        if c in df.columns:
            vals = sorted({str(v) for v in df[c].dropna()})
            items.append((c, ", ".join(vals[:12]) + (f" … ({len(vals)} values)" if len(vals) > 12 else "")))
    return '<table class="provenance">' + "".join(f"<tr><th class=\"txt\">{_e(k)}</th><td class=\"wrap\">{_e(v)}</td></tr>"
                                                  for k, v in items) + "</table>"


# -- the page ---------------------------------------------------------------------------------------
def build_sections(tables: Sequence[tuple[Path, pd.DataFrame]], plots_dir: Path, report_dir: Path, *,
                   cards: Mapping[str, Any] | None = None) -> list[Section]:
    """robench's sections for the tables, in page order; the plots are written to ``plots_dir``
    (inside ``report_dir``, which the image links are relative to)."""
    from robench.analysis.claims_section import claims_section
    from robench.checks import table_checks
    from robench.leaderboard import leaderboard

    kinds = [(p, df, table_kind(df)) for p, df in tables]
    evals = [df for _, df, k in kinds if k == "eval"]
    given = [df for _, df, k in kinds if k == "checks"]
    sections: list[Section] = []
    if evals:
        ev = pd.concat(evals, ignore_index=True)
        model_checks = pd.concat(given, ignore_index=True) if given else None
        board = leaderboard(ev, checks=model_checks, cards=cards)
        checks = table_checks(ev)
        if model_checks is not None:
            checks = pd.concat([checks, model_checks[~model_checks["check"].isin(set(checks["check"]))]],
                               ignore_index=True)
        claims = _claims_rows([df for _, df, k in kinds if k in ("eval", "landscape", "stability")])
        sections.append(Section("summary", "Summary", summary_html(ev, board, checks, model_checks is not None,
                                                                   claims=claims)))
        sections.append(Section("leaderboard", "Leaderboard", leaderboard_html(board)))
        if claims is not None:
            sections.append(Section("claims", "Claims", claims_section(claims, plots_dir, report_dir)))
        sections.append(Section("threat-model", "Threat model", threat_model_html(ev)))
        sections.append(Section("cells", "Every cell", cells_html(ev)))
        sections.append(Section("checks", "Checks", checks_html(checks, ev, model_checks is not None)))
        seeds = seeds_html(board)
        if seeds:
            sections.append(Section("seeds", "Across training seeds", seeds))
    for k, (p, df, kind) in enumerate(kinds):
        if kind == "landscape":
            sections.append(Section(f"landscape-{k}", f"Loss landscape flatness: {p.name}", flatness_html(df)))
        elif kind == "stability":
            sections.append(Section(f"stability-{k}", f"Stability: {p.name}", stability_html(df)))
    figures = []
    for k, (p, df, kind) in enumerate(kinds):
        pngs = plot_table(df, plots_dir / f"{k:02d}_{safe_component(p.stem)}")
        if pngs:
            figures.append(f"<h3>{_e(p.name)}</h3>" + "".join(
                f'<figure><img src="{_e(url_path(q.relative_to(report_dir).as_posix()))}" alt="{_e(q.stem)}" '
                f'onload="this.dataset.loaded=1"><figcaption>{_e(q.stem.replace("_", " "))}: every point with its '
                "95 % interval</figcaption></figure>" for q in pngs))
    if figures:
        sections.append(Section("plots", "Plots", "\n".join(figures)))
    sections.append(Section("provenance", "Provenance", "".join(f"<h3>{_e(p.name)}</h3>{provenance_html(p, df)}"
                                                               for p, df in tables)))
    return sections


def render(title: str, sections: Sequence[Section], note: str = "") -> str:
    """The page: title, a one-line note, the first section (the summary), the table of contents,
    then every other section."""
    toc = "<nav>Contents: " + " ".join(f'<a href="#{_e(s.id)}">{_e(s.title)}</a>' for s in sections) + "</nav>"
    parts = [f"<h1>{_e(title)}</h1>", f'<p class="meta">{_e(note)}</p>' if note else ""]
    for i, s in enumerate(sections):
        parts.append(f'<section id="{_e(s.id)}"><h2>{_e(s.title)}</h2>\n{s.html}</section>')
        if i == 0:
            parts.append(toc)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(p for p in parts if p) + "\n</body></html>\n")


def write_report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, title: str = "robench report",
                 force: bool = False, top: Sequence[Section] = (), cards: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/plots/`` from eval, checks, landscape and stability
    tables. An existing report (``index.html`` or plots) is replaced only with ``force``; the old
    ``plots/`` folder then goes, so no stale figure stays. ``top``: extra sections placed right after
    the summary (e.g. the Claims section), with their files. ``cards``: weights sha256 → model card
    (None: the zoo's)."""
    if not paths:
        raise BadInput("give at least one results table")
    from robench.fileio import check_writable

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"-o {out} is a file; give a folder for the report")
    check_writable(out, what="-o", folder=True)
    if (out / "plots").is_symlink() or ((out / "plots").exists() and not (out / "plots").is_dir()):
        raise BadInput(f"{out / 'plots'} is a symbolic link or a file; robench does not write through links it did "
                       "not make: remove it")
    tables = [(Path(p), read_any(p)) for p in paths]  # read and check everything before writing
    for p, df in tables:
        if df.empty:
            raise BadInput(f"table {p} has no rows")
    existing = [q for q in (out / "index.html", out / "plots") if q.exists()]
    if existing and not force:
        raise BadInput(f"-o {out} already holds a report ({', '.join(q.name for q in existing)}); pass --force to "
                       "replace it, or choose another folder")
    for s in top:
        for rel, _ in s.files:
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise BadInput(f"section {s.id}: file {rel!r} must be a relative path inside the report folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create the report folder {out}: {e.strerror or e}") from None
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".plots-"))
    try:
        sections = build_sections(tables, staging, out, cards=cards)
        first = 1 if sections and sections[0].id == "summary" else 0
        sections[first:first] = list(top)
        for s in top:
            for rel, data in s.files:
                target = out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target, lambda tmp, data=data: Path(tmp).write_bytes(data), what="report file")
        page = render(title, sections, note=(
            f"generated {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} from "
            f"{len(tables)} table(s); accuracies in %, [Wilson 95 % interval]; other means with normal 95 % "
            "intervals over examples"))
        page = page.replace(f'src="{staging.name}/', 'src="plots/')
        if (out / "plots").exists():
            shutil.rmtree(out / "plots")
        os.replace(staging, out / "plots")
        os.chmod(out / "plots", 0o777 & ~_umask())
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return atomic_write_text(out / "index.html", page)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
