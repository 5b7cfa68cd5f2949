from __future__ import annotations

import click

from robench.cli import cli


@cli.command("compare")
@click.argument("tables", nargs=-1, required=True, type=click.Path())
@click.option("--a", "a", required=True, metavar="MODEL",
              help="Model A (the reference): NAME or NAME@LAM, e.g. resnet20.")
@click.option("--b", "b", required=True, metavar="MODEL", help="Model B: NAME or NAME@LAM, e.g. inresnet20@0.5.")
@click.option("--lam", default=None, metavar="LAM",
              help="λ of model B (a number in [0, 1] or 'learned'); same as --b NAME@LAM.")
@click.option("--seeds", type=click.Choice(["0", "all"]), default="0", show_default=True,
              help="0: the untagged checkpoints only; all: every trained variant (resnet20.s1, …) as a training seed.")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Intervals at 1 − alpha; tests two-sided.")
@click.option("-o", "--out", default=None, type=click.Path(), help="Also write the table as OUT.parquet + OUT.csv.")
@click.option("--force", is_flag=True, help="Replace an existing --out table.")
def compare_cmd(tables, a, b, lam, seeds, alpha, out, force) -> int:
    """Paired comparison B − A on every cell two models share in result TABLES: accuracy difference,
    interval and test from the per-example flags on the same images, Holm-adjusted across cells."""
    from robench.comparison import compare, format_comparison
    from robench.errors import BadInput
    from robench.results import check_out, write_table

    if lam is not None:
        if "@" in b:
            raise BadInput(f"--lam and --b {b} both give model B's λ; give it once")
        b = f"{b}@{lam}"
    if out is not None:
        check_out(out, force=force)
    table = compare(tables, a=a, b=b, seeds=None if seeds == "0" else seeds, alpha=alpha)
    click.echo(format_comparison(table), nl=False)
    notes = sorted({str(v) for v in table["note"] if v})
    click.echo(f"B − A in percentage points, {100 * (1 - alpha):g} % intervals; p two-sided, Holm-adjusted over "
               f"{len(table)} cells." + "".join(f" {n[:1].upper()}{n[1:]}." for n in notes))
    if out is not None:
        paths = write_table(table, out)
        click.echo("wrote " + ", ".join(str(p) for p in paths))
    return 0
