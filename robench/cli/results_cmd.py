from __future__ import annotations

import click

from robench.cli import cli


@cli.group("results")
def results() -> None:
    """Result tables: merge a sweep's finished cells into one table."""


@results.command("merge")
@click.argument("sweep_dir", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Table stem: writes OUT.parquet and OUT.csv.")
@click.option("--force", is_flag=True, help="Replace an existing OUT table.")
def merge_cmd(sweep_dir, out, force) -> None:
    """Merge the finished cells of SWEEP_DIR (plus derived worst-case rows) into one tidy table."""
    from robench.results import check_out, write_table
    from robench.sweep import merge

    check_out(out, force=force, what="-o")
    df = merge(sweep_dir)
    paths = write_table(df, out)
    click.echo(f"{len(df)} rows; wrote " + ", ".join(str(p) for p in paths))
