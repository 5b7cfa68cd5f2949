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
    from robench.safetext import terminal_text

    for p in problems:  # one bad card must not hide the rest of the zoo
        click.echo(terminal_text(f"note: skipped {p.path}: {' '.join(p.problem.split())}"), err=True)


@zoo.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--arch", required=True, help="Registered model the weights are for, e.g. inresnet110.")
@click.option("--source", type=click.Choice(["inresnet", "lmresnet"]), default=None,
              help="Reference code that saved FILE: minicheshire/InResNet or 2prime/LM-ResNet (default: by --arch).")
@click.option("--lam", default=None, help="Fixed λ for a damped model (the file's ks are then unused).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Zoo directory (default: the user zoo).")
@click.option("--force/--no-force", default=False, help="Replace an existing zoo entry.")
def zoo_import(file: str, arch: str, source: str | None, lam: str | None, out: str | None, force: bool) -> None:
    """Import a state dict saved by the papers' reference code (torch.save(model.state_dict(), FILE))."""
    from model_zoo.checkpoint import user_zoo
    from model_zoo.importer import import_reference
    from model_zoo.registry import check_model_name
    from robench.cli.options import parse_lam

    check_model_name(arch)
    stem = import_reference(file, arch, source=source, lam=parse_lam(lam), out=out or user_zoo(), force=force)
    click.echo(f"imported {file} as {arch}: {stem}.safetensors + {stem.name}.json")


@zoo.command("upgrade")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def zoo_upgrade(paths: tuple[str, ...]) -> None:
    """Add the architecture header to checkpoints saved by an older robench (trusting their cards)."""
    from model_zoo.checkpoint import upgrade

    for p in paths:
        card = upgrade(p)
        click.echo(f"upgraded {p}: weights sha256 {card.weights_sha256}")
