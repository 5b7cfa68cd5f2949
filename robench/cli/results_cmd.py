from __future__ import annotations

import click

from robench.cli import cli


@cli.group("results")
def results() -> None:
    """Result tables: merge a sweep's finished cells into one table."""


@results.command("merge")
@click.argument("sweep_dir", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Table stem: writes OUT.parquet and OUT.csv.")
def merge_cmd(sweep_dir, out) -> None:
    """Merge the finished cells of SWEEP_DIR (plus derived worst-case rows) into one tidy table."""
    from robench.results import write_table
    from robench.sweep import merge

    df = merge(sweep_dir)
    paths = write_table(df, out)
    click.echo(f"{len(df)} rows; wrote " + ", ".join(str(p) for p in paths))
