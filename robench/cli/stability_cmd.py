"""``robench stability``: damping profile, per-block perturbation gain, Lyapunov estimate, Jacobian norm."""
from __future__ import annotations

import click

from robench.cli import cli
from robench.cli.options import data_options, parse_number, split_list as _split
from robench.devices import resolve_device
from robench.results import check_out
from robench.spec import parse_int


@cli.command("stability")
@click.option("--model", "models", multiple=True, required=True,
              help="NAME or NAME@LAM (fixed λ, e.g. inresnet20@0.5); repeatable or comma list.")
@click.option("--eps", default="1/255", show_default=True, help="L∞ size of the input perturbation carried through the blocks.")
@click.option("--iters", default="20", show_default=True, help="Power iterations for the Jacobian spectral norm.")
@data_options
@click.option("--seed", default="0", show_default=True, help="Seed of the random perturbation and power iteration.")
@click.option("--out", required=True, help="Write OUT.parquet and OUT.csv.")
@click.option("--force", is_flag=True, help="Replace an existing OUT table.")
def stability_cmd(models, eps, iters, data_dir, dataset, n, seed, batch_size, device, out, force) -> None:
    """Per model and λ: coefficients per block, gains ‖Δx_{n+1}‖/‖Δx_n‖, Lyapunov estimate, Jacobian and gradient norms."""
    from robench.analysis.stability import stability
    from robench.results import write_table

    resolve_device(device)  # one line before anything is read
    check_out(out, force=force)
    df = stability(models=_split(models), eps=parse_number(eps, "--eps"), iters=parse_int(iters, "--iters", 1), dataset=dataset,
                   data_dir=data_dir, n=None if n is None else parse_int(n, "--n", 1), seed=parse_int(seed, "--seed", 0),
                   batch_size=None if batch_size is None else parse_int(batch_size, "--batch-size", 1), device=device, log=click.echo,
                   on_model=lambda part: write_table(part, out))  # a kill loses at most the model in flight
    summary = df[df["quantity"].isin(["lyapunov", "lyapunov_damped", "jacobian_norm", "grad_norm_l2"])]
    click.echo(summary[["model", "lam", "quantity", "direction", "mean", "ci_low", "ci_high"]].to_string(index=False))
    click.echo("wrote " + ", ".join(str(p) for p in write_table(df, out)))
