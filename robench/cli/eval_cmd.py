from __future__ import annotations

import os
from pathlib import Path

import click

from robench.cli import cli
from robench.cli.options import parse_lam, parse_number
from robench.errors import BadInput


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also take comma lists: ``--eps 2/255,8/255 --eps 16/255``."""
    out = []
    for v in values:
        parts = [p.strip() for p in str(v).split(",")]
        if any(not p for p in parts):
            raise BadInput(f"empty item in the list {v!r}; separate values with single commas")
        out += parts
    return out


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInput(f"malformed {what} {text!r}; write a whole number") from None


def _check_out(out: str) -> None:
    """Fail now, not after hours of attacks, when --out cannot be written."""
    p = Path(out)
    if p.is_dir():
        raise BadInput(f"--out {out} is a directory; give a file stem such as results/eval (writes .parquet and .csv)")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise BadInput(f"--out {out}: cannot create files under {parent}")


@cli.command("eval")
@click.option("--model", "models", multiple=True, required=True,
              help="Registered model name (repeatable or comma list; see `robench zoo list`).")
@click.option("--lam", "lams", multiple=True, help="'learned' or a fixed λ in [0,1] (repeatable); damped models only.")
@click.option("--attack", "attacks", multiple=True, help="Attack name (repeatable or comma list).")
@click.option("--eps", "eps", multiple=True, help="ε in pixel units, comma list: 2/255,8/255 (default 8/255).")
@click.option("--corruption", "corruptions", multiple=True, help="Corruption name (repeatable or comma list).")
@click.option("--severity", "severities", multiple=True, help="Corruption severities 1..5 (comma list; default all).")
@click.option("--data-dir", default=None, help="Folder holding cifar-10-batches-py/ (default: the 20 bundled samples).")
@click.option("--dataset", type=click.Choice(["samples", "cifar10", "cifar100"]), default=None,
              help="Default: samples, or cifar10 when --data-dir is given.")
@click.option("--corruption-dir", default=None, help="Folder holding CIFAR-10-C (<corruption>.npy, labels.npy).")
@click.option("--n", "n", type=str, default=None, metavar="N", help="Evaluate the first N test images (default: all).")
@click.option("--batch-size", type=str, default="256", show_default=True, metavar="N")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:i].")
@click.option("--seed", "seeds", multiple=True, help="Seed(s) of attacks and corruptions (comma list; default 0).")
@click.option("--backend", default=None, help="Attack library: art or foolbox (default: each attack's own).")
@click.option("--out", default=None, help="Write the table to OUT.parquet and OUT.csv.")
def eval_cmd(models, lams, attacks, eps, corruptions, severities, data_dir, dataset, corruption_dir, n, batch_size,
             device, seeds, backend, out) -> None:
    """Evaluate zoo models on clean data, attacks and corruptions; one row per cell with a Wilson 95% CI."""
    from robench.engine import SEVERITIES, evaluate, summary
    from robench.results import write_table

    models = _split(models)
    lam_values = [parse_lam(v) for v in _split(lams)] or [None]
    attacks = _split(attacks)
    eps_values = [parse_number(v, "ε (--eps)") for v in _split(eps)]
    corruptions = _split(corruptions)
    sev = [_int(v, "severity (--severity)") for v in _split(severities)]
    seed_values = [_int(v, "seed (--seed)") for v in _split(seeds)] or [0]
    n_value = None if n is None else _int(n, "n (--n)")
    if n_value is not None and n_value < 1:
        raise BadInput(f"--n must be a positive whole number, got {n}")
    bs = _int(batch_size, "batch size (--batch-size)")
    if bs < 1:
        raise BadInput(f"--batch-size must be a positive whole number, got {batch_size}")
    if eps_values and not attacks:
        from robench.attacks import list_attacks

        raise BadInput(f"--eps applies to attacks; add --attack (valid choices: {', '.join(list_attacks())})")
    if sev and not corruptions:
        raise BadInput("--severity applies to corruptions; add --corruption")
    if corruption_dir is not None and not corruptions:
        raise BadInput("--corruption-dir needs --corruption naming the corruptions to read from it")
    if out is not None:
        _check_out(out)

    df = evaluate(models=models, lams=lam_values, attacks=attacks, eps=eps_values or [8 / 255],
                  corruptions=corruptions, severities=sev or list(SEVERITIES), seeds=seed_values, dataset=dataset,
                  data_dir=data_dir, n=n_value, batch_size=bs, device=device, backend=backend,
                  corruption_dir=corruption_dir, log=click.echo)
    click.echo(summary(df).to_string(index=False))
    if out is not None:
        paths = write_table(df, out)
        click.echo("wrote " + ", ".join(str(p) for p in paths))
