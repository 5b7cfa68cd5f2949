"""``robench stability``: damping profile, per-block perturbation gain, Lyapunov estimate, Jacobian norm."""
from __future__ import annotations

import click

from robench.cli import cli
from robench.cli.options import Int, Number, SafeEcho, data_options, split_list as _split
from robench.devices import resolve_device
from robench.results import check_out


@cli.command("stability")
@click.option("--model", "models", multiple=True, required=True,
              help="NAME, NAME@LAM (fixed λ, e.g. inresnet20@0.5), with a tag NAME@LAM.TAG (inresnet20@0.5.s2); "
                   "repeatable or comma list.")
@click.option("--eps", default="1/255", type=Number(), show_default=True,
              help="L∞ size of the input perturbation carried through the blocks.")
@click.option("--iters", default=20, type=Int(1), show_default=True, help="Power iterations for the Jacobian spectral norm.")
@data_options
@click.option("--seed", default=0, type=Int(0), show_default=True, help="Seed of the random perturbation and power iteration.")
@click.option("--out", required=True, help="Write OUT.parquet and OUT.csv.")
@click.option("--force", is_flag=True, help="Replace an existing OUT table.")
def stability_cmd(models, eps, iters, data_dir, dataset, n, seed, batch_size, device, out, force) -> None:
    """Per model and λ: coefficients per block, gains ‖Δx_{n+1}‖/‖Δx_n‖, Lyapunov estimate, Jacobian and gradient norms."""
    echo = SafeEcho()  # a closed stdout (| head) must not stop the work
    from robench.analysis.stability import stability
    from robench.results import write_table

    resolve_device(device)  # one line before anything is read
    check_out(out, force=force)
    df = stability(models=_split(models), eps=eps, iters=iters, dataset=dataset, data_dir=data_dir, n=n, seed=seed,
                   batch_size=batch_size, device=device, log=echo,
                   on_model=lambda part: write_table(part, out))  # a kill loses at most the model in flight
    summary = df[df["quantity"].isin(["lyapunov", "lyapunov_damped", "jacobian_norm", "grad_norm_l2"])]
    echo(summary[["model", "lam", "quantity", "direction", "mean", "ci_low", "ci_high"]].to_string(index=False))
    echo("wrote " + ", ".join(str(p) for p in write_table(df, out)))
