"""``robench report``: one static HTML page with the leaderboard, plots and provenance."""
from __future__ import annotations

import click

from robench.cli import cli


@cli.command("report")
@click.argument("tables", nargs=-1, required=True)
@click.option("-o", "--out-dir", required=True, help="Folder for index.html and plots/ (created).")
@click.option("--title", default="robench report", show_default=True)
def report_cmd(tables, out_dir, title) -> None:
    """Leaderboard (sorted, flags and recipe visible), plots and provenance of eval/landscape/stability tables."""
    from robench.analysis.report import write_report

    click.echo(f"wrote {write_report(list(tables), out_dir, title=title)}")
