"""The report's "Claims" section: the seed papers' claims as tested verdicts, as one HTML fragment.

``claims_section(rows, plots_dir, report_dir)`` takes the rows of :func:`robench.claims.evaluate_claims`,
writes the forest plot ``plots_dir/claims_forest.png`` and returns the fragment (the rule, the
verdict per claim, the plot and every tested row in a collapsed table; the report gives it its
heading). Image paths in the fragment are relative to ``report_dir``, the folder of the page.
:func:`robench.analysis.report.build_sections` puts it right after the leaderboard. No scripts, no
network assets. A view: it draws what the rows hold.
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path

import pandas as pd

from robench.claims import CLAIMS, effect_text, is_accuracy, rule, summarise
from robench.fileio import atomic_write
from robench.safetext import url_path

FOREST = "claims_forest.png"
_COLOURS = {"supported": "#2e7d32", "contradicted": "#c62828", "inconclusive": "#757575"}
_BACKGROUND = {"supported": "#e3f4e4", "contradicted": "#fbe3e3", "inconclusive": "#f2f2f2"}


def _e(v) -> str:
    return html.escape("" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v))


def _count(v) -> str:
    """A count as a whole number (the claims table stores counts beside NaN, so pandas makes them floats)."""
    return "–" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(int(v))


def _verdict_cell(word: str) -> str:
    return (f'<td class="txt verdict" style="background:{_BACKGROUND.get(word, "#fff")};font-weight:600">'
            f"{_e(word)}</td>")


def forest_plot(rows: pd.DataFrame, path: str | os.PathLike) -> Path | None:
    """Effects with their intervals, one panel per claim (its own unit; accuracies in percentage
    points), coloured by the checkpoint-level verdict; None when no row was tested."""
    from matplotlib.figure import Figure

    tested = rows[rows["p_holm"].notna()]
    claims = [c for c in CLAIMS if (tested["claim"] == c.id).any()]
    if not claims:
        return None
    sizes = [int((tested["claim"] == c.id).sum()) for c in claims]
    fig = Figure(figsize=(9.0, 1.0 + sum(0.19 * s + 0.75 for s in sizes)), dpi=110, layout="constrained")
    axes = fig.subplots(len(claims), 1, squeeze=False, gridspec_kw={"height_ratios": [s + 3 for s in sizes]})[:, 0]
    for ax, claim in zip(axes, claims):
        g = tested[tested["claim"] == claim.id]
        scale = 100.0 if is_accuracy(claim.id) else 1.0
        ys = list(range(len(g)))[::-1]
        for y, (_, r) in zip(ys, g.iterrows()):
            colour = _COLOURS.get(str(r["verdict_checkpoints"]), "#757575")
            ax.plot([scale * r["ci_low"], scale * r["ci_high"]], [y, y], color=colour, lw=1.6)
            ax.plot([scale * r["effect"]], [y], "o", color=colour, ms=3.5)
        ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
        one = g["comparison"].nunique() == 1  # one comparison (the λ path, the association): its cells suffice
        ax.set_yticks(ys, [(str(r["cell"]) if one else f"{r['comparison']} · {r['cell']}")[:70]
                           for _, r in g.iterrows()], fontsize=6.5)
        ax.set_ylim(-0.8, len(g) - 0.2)
        side = {1: "claimed: > 0", -1: "claimed: < 0", 0: "claimed: ≠ 0, monotone"}[claim.direction]
        ax.set_xlabel(f"{claim.effect}{' (pp)' if scale == 100.0 else ''}  [{side}]", fontsize=7.5)
        title = claim.statement.split(" (")[0] + (f" ({g['comparison'].iloc[0]})" if one else "")
        ax.set_title(f"{claim.id}: {title}"[:110], fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    fig.text(0.5, -0.005, "dot: effect; bar: 95 % interval; green supported, red contradicted, grey inconclusive "
             "(rule applied to the checkpoints at hand, Holm within each claim)", ha="center", va="top", fontsize=7,
             color="0.3")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def claims_section(rows: pd.DataFrame, plots_dir: str | os.PathLike, report_dir: str | os.PathLike) -> str:
    """The body of a report's "Claims" section; writes ``plots_dir/claims_forest.png`` (``plots_dir``
    inside ``report_dir``, which the image link is relative to)."""
    summary = summarise(rows)
    parts = [f'<p class="meta">The In-ResNet and LM-ResNet papers\' claims tested on the tables below '
             f"(<code>robench claims</code>). Rule: {_e(rule())}</p>"]
    head = ("<tr><th>claim</th><th>paper</th><th>verdict</th><th>these checkpoints</th><th>rows supported / "
            "contradicted</th><th>strongest row</th><th>seeds</th><th>missing</th></tr>")
    body = []
    for _, r in summary.iterrows():
        # long texts wrap (td.wrap), so the table fits the page's width
        body.append(f'<tr><td class="wrap">{_e(r["statement"])}</td><td class="txt">{_e(r["paper"])}</td>'
                    + _verdict_cell(str(r["verdict"])) + _verdict_cell(str(r["verdict_checkpoints"]))
                    + f'<td>{int(r["supported"])} / {int(r["contradicted"])} of {int(r["rows"])}</td>'
                    f'<td class="wrap">{_e(r["headline"]) or "–"}</td><td>{_count(r["n_seeds"])}</td>'
                    f'<td class="wrap">{_e(r["missing"]) or "–"}</td></tr>')
    parts.append(f'<div class="scroll"><table class="claims">{head}\n' + "\n".join(body) + "</table></div>")
    plot = forest_plot(rows, Path(plots_dir) / FOREST)
    if plot is not None:
        src = url_path(plot.relative_to(Path(report_dir)).as_posix())
        parts.append(f'<figure><img src="{_e(src)}" alt="claims forest plot" onload="this.dataset.loaded=1">'
                     "<figcaption>Effect sizes with 95 % intervals, one panel per claim</figcaption></figure>")
    rhead = ("<tr><th>claim</th><th>comparison</th><th>cell</th><th>effect [interval], p_Holm</th><th>test</th>"
             "<th>n</th><th>seeds</th><th>models</th><th>these checkpoints</th><th>verdict</th><th>detail</th></tr>")
    rbody = []
    for _, r in rows.iterrows():
        eff = effect_text(str(r["claim"]), r) if not pd.isna(r["p_holm"]) else "–"
        rbody.append(f'<tr><td class="txt">{_e(r["claim"])}</td><td class="txt">{_e(r["comparison"])}</td>'
                     f'<td class="txt">{_e(r["cell"])}</td><td>{_e(eff)}</td><td class="txt">{_e(r["test"])}</td>'
                     f'<td>{_count(r["n"])}</td><td>{_count(r["n_seeds"])}</td><td class="txt">{_e(r["models"])}</td>'
                     + _verdict_cell(str(r["verdict_checkpoints"])) + _verdict_cell(str(r["verdict"]))
                     + f'<td class="wrap">{_e(r["detail"] or r["missing"])}</td></tr>')
    parts.append(f"<details><summary>Every tested row ({len(rows)})</summary>"
                 f'<div style="overflow-x:auto"><table class="claims-rows">{rhead}\n' + "\n".join(rbody)
                 + "</table></div></details>")
    return "\n".join(parts)
