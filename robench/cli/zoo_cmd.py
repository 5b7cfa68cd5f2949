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
    from robench.zoo_table import zoo_table

    df = zoo_table(pattern)
    if df.empty:
        click.echo(f"no registered model matches {pattern!r}")
        return
    click.echo(df.to_string(index=False))
