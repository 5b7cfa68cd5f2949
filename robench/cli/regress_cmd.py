from __future__ import annotations

import click

from robench.cli import cli


@cli.command("regress")
@click.option("--baseline", required=True, type=click.Path(), help="Baseline results table (parquet or CSV).")
@click.argument("results", nargs=-1, type=click.Path())
@click.option("--alpha", type=float, default=0.01, show_default=True, help="One-sided significance level.")
@click.option("--changed-only", is_flag=True, help="Print only cells whose accuracy changed.")
@click.option("--allow-missing", is_flag=True,
              help="Accept baseline cells the results lack (by default they fail the check, exit 1).")
@click.option("--refresh", is_flag=True,
              help="Replace the baseline by RESULTS (on purpose: commit it with a message saying why the numbers moved).")
@click.option("--update", is_flag=True,
              help="Evaluate only the checkpoints of the --config sweeps whose weights the baseline lacks, "
                   "keep the cells of unchanged weights, and rewrite the baseline.")
@click.option("--config", "configs", multiple=True, type=click.Path(), help="Sweep config(s) for --update (repeatable).")
def regress_cmd(baseline, results, alpha, changed_only, allow_missing, refresh, update, configs) -> int:
    """Flag cells of RESULTS (one or more tables, read together) significantly worse than in the
    baseline: exit 1 on a regression or on a baseline cell the results lack."""
    import tempfile
    from pathlib import Path

    from robench.errors import BadInput
    from robench.leaderboard import read_tables
    from robench.baseline import update_baseline
    from robench.regress import format_report, regress
    from robench.results import read_table, write_table

    if refresh and update:
        raise BadInput("--refresh and --update exclude each other; choose one")
    if update:
        if results or not configs:
            raise BadInput("--update takes the sweep configs with --config, and no RESULTS tables")
        with tempfile.TemporaryDirectory(prefix="robench-regress-") as work:
            update_baseline(baseline, configs, work_dir=work, log=click.echo)
        return 0
    if configs:
        raise BadInput("--config applies to --update")
    if not results:
        raise BadInput("give at least one RESULTS table to compare with the baseline")
    if refresh:
        from robench.results import check_out

        check_out(baseline, force=True, what="--baseline", inputs=results)
    new = read_tables(results)
    if refresh:
        paths = write_table(new, Path(baseline).with_suffix("") if Path(baseline).suffix in (".parquet", ".csv")
                            else Path(baseline))
        click.echo(f"regression: refreshed {', '.join(str(p) for p in paths)} ({len(new)} cells)")
        return 0
    rep = regress(read_table(baseline), new, alpha=alpha, allow_missing=allow_missing)
    click.echo(format_report(rep, show_all=not changed_only))
    if not rep.regressions.empty:
        click.echo("regression: " + "; ".join(rep.regressions["cell"]), err=True)
    if rep.missing and not allow_missing:
        click.echo(f"missing: {len(rep.missing)} baseline cells are not in the results (listed above); "
                   "pass --allow-missing to accept that", err=True)
    return 0 if rep.ok else 1
