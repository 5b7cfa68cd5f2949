"""``robench report``: one static HTML page with the leaderboard, plots and provenance."""
from __future__ import annotations

import click

from robench.cli import cli


@cli.command("report")
@click.argument("tables", nargs=-1, required=True)
@click.option("-o", "--out-dir", required=True, help="Folder for index.html and plots/ (created).")
@click.option("--title", default="robench report", show_default=True)
@click.option("--force", is_flag=True, help="Replace the report (index.html and plots/) already in OUT_DIR.")
def report_cmd(tables, out_dir, title, force) -> None:
    """Summary, leaderboard, threat model, every cell, checks, plots and provenance of eval, checks,
    landscape and stability TABLES, as one static page (OUT_DIR/index.html + plots/)."""
    from robench.analysis.report import write_report

    click.echo(f"wrote {write_report(list(tables), out_dir, title=title, force=force)}")
