from __future__ import annotations

import click

from robench.cli import cli


@cli.command("claims")
@click.argument("tables", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", default=None, type=click.Path(),
              help="Also write one row per tested comparison as OUT.parquet + OUT.csv.")
@click.option("--force", is_flag=True, help="Replace an existing --out table.")
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="Family-wise level of the Holm adjustment; intervals at 1 − alpha.")
@click.option("--all", "show_all", is_flag=True, help="Also print every tested row, not only the verdict per claim.")
def claims_cmd(tables, out, force, alpha, show_all) -> int:
    """The In-ResNet and LM-ResNet papers' claims tested on eval, landscape and stability TABLES:
    effect, interval, test, the models / seeds / images used and a verdict per claim."""
    from robench.claims import evaluate_claims, format_rows, format_summary, rule, summarise
    from robench.results import check_out, write_table

    if out is not None:
        check_out(out, force=force)
    rows = evaluate_claims(list(tables), alpha=alpha)
    click.echo(format_summary(summarise(rows)), nl=False)
    if show_all:
        click.echo()
        click.echo(format_rows(rows), nl=False)
    click.echo(f"Rule: {rule(alpha)}")
    if out is not None:
        paths = write_table(rows, out)
        click.echo("wrote " + ", ".join(str(p) for p in paths))
    return 0
