from __future__ import annotations

import click

from robench.cli import cli


@cli.group("zoo")
def zoo() -> None:
    """The model zoo: registered architectures and trained weights."""


@zoo.command("list")
@click.argument("pattern", default="*")
def zoo_list(pattern: str) -> None:
    """Every registered model matching PATTERN with parameter count, scheme, λ and trained weights."""
    import model_zoo
    from robench.zoo_table import format_rows, zoo_rows

    records, problems = model_zoo.scan_zoo(pattern)
    rows = zoo_rows(pattern, records)
    if not rows:
        click.echo(f"no registered model matches {pattern!r}")
    else:
        click.echo(format_rows(rows))
    for p in problems:  # one bad card must not hide the rest of the zoo
        click.echo(f"note: skipped {p.path}: {' '.join(p.problem.split())}", err=True)
