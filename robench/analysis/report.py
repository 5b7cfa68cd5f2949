"""One static HTML page from result tables: the leaderboard (sorted, flags and recipe visible), the
landscape flatness and stability summaries, every plot (relative PNGs in ``plots/``), and the
provenance of each input table. No scripts or assets from the network: it opens from disk."""
from __future__ import annotations

import datetime
import html
import math
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from robench.analysis.plots import model_label, plot_table, read_any, table_kind
from robench.errors import BadInput
from robench.fileio import atomic_write_text, safe_component, sha256_file
from robench.safetext import url_path

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1400px;color:#222}
h1{font-size:1.6em} h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right} th{background:#f0f0f0}
td.txt{text-align:left} td.flag{background:#fff3cd;color:#8a4b00;text-align:left;font-weight:600}
figure{margin:12px 0} figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:12px;color:#555} .meta{font-size:12px;color:#555}
"""
PROVENANCE_FIELDS = ("model", "n", "seed", "dataset", "device", "robench_version", "torch_version", "art_version",
                     "foolbox_version", "git_sha", "timestamp", "data_sha256", "weights_sha256", "card_sha256")


def _e(v) -> str:
    return html.escape("" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v))


def _pct(v, lo=None, hi=None) -> str:
    if v is None or pd.isna(v):
        return "–"
    s = f"{100 * v:.1f}"
    if lo is not None and not pd.isna(lo):
        s += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return s


def leaderboard_html(df: pd.DataFrame) -> str:
    """The leaderboard of an eval table as an HTML table (accuracies in %, Wilson 95 % in brackets)."""
    from robench.leaderboard import leaderboard

    board = leaderboard(df)
    ci = {"clean": ("clean_ci_low", "clean_ci_high"), "worst_case": ("worst_case_ci_low", "worst_case_ci_high"),
          "corruption_mean": ("corruption_ci_low", "corruption_ci_high")}
    show = [c for c in ("rank", "model", "lam", "dataset", "n", "clean", "worst_case", "corruption_mean") if c in board]
    show += [c for c in board.columns if "@" in c]
    show += [c for c in board.columns if "recipe" in c]  # the training recipe, where the table carries it
    show.append("flags")
    head = "".join(f"<th>{_e(c)}</th>" for c in show)
    body = []
    for _, r in board.iterrows():
        cells = []
        for c in show:
            v = r.get(c)
            if c == "lam":
                cells.append(f"<td>{'learned/–' if pd.isna(v) else f'{v:g}'}</td>")
            elif c in ("rank", "n"):
                cells.append(f"<td>{'' if pd.isna(v) else int(v)}</td>")
            elif c == "flags":
                cells.append(f"<td class=\"{'flag' if _e(v) else 'txt'}\">{_e(v)}</td>")
            elif c in ci:
                cells.append(f"<td>{_pct(v, r.get(ci[c][0]), r.get(ci[c][1]))}</td>")
            elif isinstance(v, float) and "@" in c:
                cells.append(f"<td>{_pct(v)}</td>")
            else:
                cells.append(f"<td class=\"txt\">{_e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div style="overflow-x:auto"><table class="leaderboard"><tr>{head}</tr>\n' + "\n".join(body)
            + "</table></div>")


def _summary_html(rows: pd.DataFrame, what: str, cls: str) -> str:
    head = "<tr><th>model</th><th>what</th><th>mean</th><th>95 % interval</th><th>n</th></tr>"
    body = []
    for _, r in rows.iterrows():
        body.append(f"<tr><td class=\"txt\">{_e(model_label(r['model'], r['lam'], r['scheme']))}</td>"
                    f"<td class=\"txt\">{_e(what(r))}</td><td>{r['mean']:.4g}</td>"
                    f"<td>[{r['ci_low']:.4g}, {r['ci_high']:.4g}]</td><td>{int(r['n'])}</td></tr>")
    return f'<table class="{cls}">{head}\n' + "\n".join(body) + "</table>"


def flatness_html(df: pd.DataFrame) -> str:
    import numpy as np

    rows = df[(df["quantity"] == "loss_increase") & df["t2"].isna() & np.isclose(df["t"].astype(float), 8 / 255)]
    return _summary_html(rows.sort_values(["direction", "model", "lam"]),
                         lambda r: f"loss(8/255) − loss(0) along {r['direction']}", "flatness")


def stability_html(df: pd.DataFrame) -> str:
    rows = df[df["quantity"].isin(["lyapunov", "lyapunov_damped", "jacobian_norm", "grad_norm_l2"])]
    return _summary_html(rows.sort_values(["quantity", "direction", "model", "lam"]),
                         lambda r: r["quantity"] + (f" ({r['direction']})" if _e(r["direction"]) else ""), "stability")


def provenance_html(path: Path, df: pd.DataFrame) -> str:
    items = [("file", path.name), ("sha256", sha256_file(path)), ("rows", len(df))]
    for c in PROVENANCE_FIELDS:
        if c in df.columns:
            vals = sorted({str(v) for v in df[c].dropna()})
            items.append((c, ", ".join(vals[:12]) + (f" … ({len(vals)} values)" if len(vals) > 12 else "")))
    return '<table class="provenance">' + "".join(f"<tr><th>{_e(k)}</th><td class=\"txt\">{_e(v)}</td></tr>"
                                                  for k, v in items) + "</table>"


def write_report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, title: str = "robench report") -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/plots/*.png`` from eval, landscape and stability tables."""
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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create the report folder {out}: {e.strerror or e}") from None
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p class=\"meta\">generated {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"
             f" from {len(tables)} table(s); accuracies in %, [Wilson 95 % interval]; means with normal 95 % intervals"
             " over examples</p>"]
    sections = []
    for k, (p, df) in enumerate(tables):
        kind = table_kind(df)
        plots = plot_table(df, out / "plots" / f"{k:02d}_{safe_component(p.stem)}")
        if kind == "eval":
            sections.append(("Leaderboard: " + p.name, leaderboard_html(df)))
        elif kind == "landscape":
            sections.append(("Loss landscape flatness: " + p.name, flatness_html(df)))
        elif kind == "stability":
            sections.append(("Stability: " + p.name, stability_html(df)))
        figs = "".join(f'<figure><img src="{_e(url_path(q.relative_to(out).as_posix()))}" alt="{_e(q.stem)}" '
                       f'onload="this.dataset.loaded=1"><figcaption>{_e(q.stem)}</figcaption></figure>' for q in plots)
        sections.append(("Plots: " + p.name, figs))
    for title_, body in sections:
        parts.append(f"<h2>{_e(title_)}</h2>\n{body}")
    parts.append("<h2>Provenance</h2>" + "".join(f"<h3>{_e(p.name)}</h3>{provenance_html(p, df)}" for p, df in tables))
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    return atomic_write_text(out / "index.html", page)
