"""Parsers shared by several commands. They live in the library (:mod:`robench.spec`); this module
re-exports them for the commands, and splits repeatable options that also take comma lists."""
from __future__ import annotations

import os
import sys

from robench.errors import BadInput
from robench.spec import parse_eps, parse_int, parse_lam, parse_number, parse_param, parse_severity

__all__ = ["Int", "Number", "SafeEcho", "parse_eps", "parse_int", "parse_lam", "parse_number", "parse_param",
           "parse_severity", "silence", "split_list"]


import click  # noqa: E402


class Int(click.ParamType):
    """A whole number ≥ ``lo`` (``--help`` shows INTEGER; a bad value is one line naming the option)."""

    name = "integer"

    def __init__(self, lo: int = 0) -> None:
        self.lo = lo

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            text = value
        else:
            text = str(value)
        try:
            return parse_int(text, _what(param), self.lo)
        except BadInput as e:
            self.fail(str(e), param, ctx)


class Number(click.ParamType):
    """A finite number or a fraction such as ``8/255`` (``--help`` shows NUMBER)."""

    name = "number"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_number(value, _what(param))
        except BadInput as e:
            self.fail(str(e), param, ctx)


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
        click.option("--n", "n", default=None, type=Int(1), help="The first N test images (default: all)."),
        click.option("--batch-size", default=None, type=Int(1),
                     help="Images per batch (default: 250 on CPU, 1000 on CUDA)."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:i (mps where there is one)."),
    ]):
        fn = opt(fn)
    return fn


def _what(param) -> str:
    return param.opts[0] if param is not None and getattr(param, "opts", None) else "value"
