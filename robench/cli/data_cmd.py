from __future__ import annotations

import signal

import click

from robench.cli import cli


@cli.group("data")
def data_group() -> None:
    """Fetch CIFAR-10, CIFAR-100 and CIFAR-10-C (default place: $ROBENCH_HOME/data)."""


def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


@data_group.command("fetch")
@click.argument("name", type=click.Choice(["cifar10", "cifar100", "cifar10c"]))
@click.option("--dir", "data_dir", type=click.Path(), default=None,
              help="Folder to put the data folder in (default: $ROBENCH_HOME/data, where --data-dir looks by default).")
@click.option("--url", default=None,
              help="Another source of the archive: an http(s) URL (a mirror) or a local archive path.")
@click.option("--md5", default=None, help="MD5 of an archive that is not the official one (needs --url).")
@click.option("--force", is_flag=True, default=False, help="Fetch again and replace a folder that is already there.")
def fetch_cmd(name, data_dir, url, md5, force) -> None:
    """Download NAME's official archive, verify its MD5, and extract it atomically.

    A second call with the data present does nothing. An interrupted download is kept as
    <archive>.part and resumed by the next call; the data folder itself appears only when complete.
    """
    from robench.fetch import fetch

    old = signal.signal(signal.SIGTERM, _terminate)  # kill runs the same clean-up as Ctrl-C
    try:
        fetch(name, data_dir=data_dir, url=url, md5=md5, force=force, log=click.echo)
    finally:
        signal.signal(signal.SIGTERM, old)


@data_group.command("list")
@click.option("--dir", "data_dir", type=click.Path(), default=None, help="Folder to look in (default: $ROBENCH_HOME/data).")
def list_cmd(data_dir) -> None:
    """Where each data set is expected and whether it is there."""
    from pathlib import Path

    from robench.datahome import data_home
    from robench.fetch import SOURCES, is_present

    parent = Path(data_dir) if data_dir is not None else data_home()
    for name, src in SOURCES.items():
        state = "present" if is_present(name, parent) else "missing"
        click.echo(f"{name:9s} {state:8s} {parent / src.folder}")
