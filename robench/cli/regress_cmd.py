from __future__ import annotations

import click

from robench.cli import cli


@cli.command("regress")
@click.option("--baseline", required=True, type=click.Path(), help="Baseline results table (parquet or CSV).")
@click.argument("results", type=click.Path())
@click.option("--alpha", type=float, default=0.01, show_default=True, help="One-sided significance level.")
@click.option("--changed-only", is_flag=True, help="Print only cells whose accuracy changed.")
def regress_cmd(baseline, results, alpha, changed_only) -> int:
    """Flag cells of RESULTS significantly worse than in the baseline (exit 1 on any regression)."""
    from robench.regress import format_report, regress
    from robench.results import read_table

    rep = regress(read_table(baseline), read_table(results), alpha=alpha)
    click.echo(format_report(rep, show_all=not changed_only))
    if not rep.ok:
        click.echo("regression: " + "; ".join(rep.regressions["cell"]), err=True)
        return 1
    return 0
