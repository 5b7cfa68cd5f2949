"""Parsers shared by several commands. They live in the library (:mod:`robench.spec`); this module
re-exports them for the commands, and splits repeatable options that also take comma lists."""
from __future__ import annotations

from robench.errors import BadInput
from robench.spec import parse_eps, parse_int, parse_lam, parse_number, parse_param, parse_severity

__all__ = ["parse_eps", "parse_int", "parse_lam", "parse_number", "parse_param", "parse_severity", "split_list"]


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
        click.option("--batch-size", default=None, metavar="N",
                     help="Images per batch (default: 250 on CPU, 1000 on CUDA)."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:i (mps where there is one)."),
    ]):
        fn = opt(fn)
    return fn
