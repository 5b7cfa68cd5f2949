"""``robench plot``: PNG figures from eval, landscape and stability tables."""
from __future__ import annotations

import click

from robench.cli import cli


@cli.command("plot")
@click.argument("tables", nargs=-1, required=True)
@click.option("-o", "--out-dir", required=True, help="Folder for the PNGs (created).")
def plot_cmd(tables, out_dir) -> None:
    """Accuracy vs ε / λ / severity, landscape curves and stability profiles, with 95% interval bands."""
    from robench.analysis.plots import plot_tables

    for p in plot_tables(list(tables), out_dir):
        click.echo(f"wrote {p}")
