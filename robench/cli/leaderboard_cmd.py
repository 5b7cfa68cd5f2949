from __future__ import annotations

from pathlib import Path

import click

from robench.cli import cli


@cli.command("leaderboard")
@click.argument("tables", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", default=None, type=click.Path(),
              help="Also write the leaderboard CSV here (default: print the Markdown table only, write nothing).")
@click.option("--markdown", "markdown", default=None, type=click.Path(), help="Also write the Markdown table here.")
@click.option("--checks", "checks", multiple=True, type=click.Path(),
              help="Checks table(s) from `robench check -o` whose flagged checks join the flags column "
                   "(default: only the checks that need no model).")
@click.option("--force", is_flag=True, help="Replace existing output files.")
@click.option("--rank-by", default=None, metavar="CELL",
              help="clean, worst_case, corruption_mean, an attack cell such as pgd@2/255 or a worst-case cell such "
                   "as worst_case@4/255 (default: the worst case at the largest ε where the best model's 95% interval "
                   "lies above the worst model's).")
def leaderboard_cmd(tables, out, markdown, checks, force, rank_by) -> None:
    """One row per (model, λ) of result TABLES (parquet or CSV), ranked; flags integrity problems.

    Accuracies in percent with Wilson 95% intervals; ranks whose intervals overlap are marked ≈."""
    import pandas as pd

    from robench.checks import read_checks
    from robench.errors import BadInput
    from robench.leaderboard import leaderboard, read_tables, to_markdown, write_csv, write_text

    from robench.fileio import check_writable
    from robench.results import check_not_inputs

    written = [p for p in (out, markdown) if p]
    for path, what in ((out, "-o"), (markdown, "--markdown")):
        if path is not None:
            check_writable(path, what=what)
            if Path(path).exists() and not force:
                raise BadInput(f"{path} exists; pass --force to replace it")
    check_not_inputs(written, [*tables, *checks], what="leaderboard output")
    check_table = pd.concat([read_checks(c) for c in checks], ignore_index=True) if checks else None
    from robench import threat_model

    table = read_tables(tables)
    board = leaderboard(table, rank_by=rank_by, checks=check_table)
    md = to_markdown(board, header=threat_model.to_markdown(threat_model.threat_model(table)))
    if out:
        write_csv(board, out)
    if markdown:
        write_text(md, markdown)
    click.echo(md, nl=False)
    if written:
        click.echo("wrote " + " and ".join(written))
