from __future__ import annotations

import click

from robench.cli import cli


@cli.command("leaderboard")
@click.argument("tables", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", default="results/leaderboard.csv", show_default=True, type=click.Path(),
              help="Leaderboard CSV to write.")
@click.option("--markdown", "markdown", default=None, type=click.Path(), help="Also write a Markdown table here.")
@click.option("--rank-by", default=None,
              help="clean, worst_case, corruption_mean or an attack column such as pgd@8/255 "
                   "(default: worst_case when present, else clean).")
def leaderboard_cmd(tables, out, markdown, rank_by) -> None:
    """One row per (model, λ) of result TABLES (parquet or CSV), ranked; flags integrity problems."""
    from robench.leaderboard import leaderboard, read_tables, to_markdown, write_csv, write_text

    board = leaderboard(read_tables(tables), rank_by=rank_by)
    md = to_markdown(board)
    write_csv(board, out)
    if markdown:
        write_text(md, markdown)
    click.echo(md, nl=False)
    click.echo(f"wrote {out}" + (f" and {markdown}" if markdown else ""))
