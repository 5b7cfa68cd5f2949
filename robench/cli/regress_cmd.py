from __future__ import annotations

import click

from robench.cli import cli


@cli.command("regress")
@click.option("--baseline", required=True, type=click.Path(), help="Baseline results table (parquet or CSV).")
@click.argument("results", type=click.Path())
@click.option("--alpha", type=float, default=0.01, show_default=True, help="One-sided significance level.")
@click.option("--changed-only", is_flag=True, help="Print only cells whose accuracy changed.")
@click.option("--allow-missing", is_flag=True,
              help="Accept baseline cells the results lack (by default they fail the check, exit 1).")
def regress_cmd(baseline, results, alpha, changed_only, allow_missing) -> int:
    """Flag cells of RESULTS significantly worse than in the baseline (exit 1 on a regression or a missing cell)."""
    from robench.regress import format_report, regress
    from robench.results import read_table

    rep = regress(read_table(baseline), read_table(results), alpha=alpha, allow_missing=allow_missing)
    click.echo(format_report(rep, show_all=not changed_only))
    if not rep.regressions.empty:
        click.echo("regression: " + "; ".join(rep.regressions["cell"]), err=True)
    if rep.missing and not allow_missing:
        click.echo(f"missing: {len(rep.missing)} baseline cells are not in the results (listed above); "
                   "pass --allow-missing to accept that", err=True)
    return 0 if rep.ok else 1
