"""Parsers shared by several commands. They live in the library (:mod:`robench.spec`); this module
re-exports them for the commands, and splits repeatable options that also take comma lists."""
from __future__ import annotations

import os
import sys

from robench.errors import BadInput
from robench.spec import parse_eps, parse_int, parse_lam, parse_number, parse_param, parse_severity

__all__ = ["SafeEcho", "parse_eps", "parse_int", "parse_lam", "parse_number", "parse_param", "parse_severity",
           "silence", "split_list"]


def silence(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null, so the interpreter's final flush cannot
    complain about a closed pipe either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


class SafeEcho:
    """stdout (or stderr) that survives a closed pipe (``robench sweep ... | head -1``): after the
    first BrokenPipeError further output is dropped quietly and the command goes on with its work
    and writes its files. ``SafeEcho()(line)`` or ``echo(line, err=True)`` for the other stream."""

    def __init__(self, err: bool = False) -> None:
        self.err = err
        self.closed = {False: False, True: False}

    def __call__(self, line: str = "", *, err: bool | None = None, nl: bool = True) -> None:
        import click

        to_err = self.err if err is None else err
        if self.closed[to_err]:
            return
        stream = sys.stderr if to_err else sys.stdout
        try:
            click.echo(line, err=to_err, nl=nl)
            stream.flush()
        except BrokenPipeError:
            self.closed[to_err] = True
            silence(stream)


def split_list(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also take comma lists: ``--eps 2/255,8/255 --eps 16/255``."""
    out = []
    for v in values:
        parts = [p.strip() for p in str(v).split(",")]
        if any(not p for p in parts):
            raise BadInput(f"empty item in the list {v!r}; separate values with single commas")
        out += parts
    return out


def data_options(fn):
    """The data and device options the analysis commands share (data set, folder, first n, batch, device)."""
    import click

    for opt in reversed([
        click.option("--data-dir", default=None,
                     help="Folder holding cifar-10-batches-py/ (default: the copy `robench data fetch` made for "
                          "--dataset, else the 20 bundled samples)."),
        click.option("--dataset", type=click.Choice(["samples", "cifar10", "cifar100"]), default=None),
        click.option("--n", "n", default=None, metavar="N", help="The first N test images (default: all)."),
        click.option("--batch-size", default="250", show_default=True, metavar="N"),
        click.option("--device", default="cpu", show_default=True),
    ]):
        fn = opt(fn)
    return fn
