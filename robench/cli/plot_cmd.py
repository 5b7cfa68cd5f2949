"""``robench plot``: PNG figures from eval, landscape and stability tables."""
from __future__ import annotations

import click

from robench.cli import cli


@cli.command("plot")
@click.argument("tables", nargs=-1, required=True)
@click.option("-o", "--out-dir", required=True, help="Folder for the PNGs (created; one subfolder per table when "
                                                        "several are given).")
@click.option("--force", is_flag=True, help="Replace the plots of a folder that already holds some.")
def plot_cmd(tables, out_dir, force) -> None:
    """Accuracy vs ε / λ / severity, landscape curves and stability profiles, every point with its 95% interval."""
    from robench.analysis.plots import plot_tables

    for p in plot_tables(list(tables), out_dir, force=force):
        click.echo(f"wrote {p}")
