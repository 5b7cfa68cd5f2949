"""``robench landscape``: loss and accuracy along attack and random directions (tidy table)."""
from __future__ import annotations

import click

from robench.cli import cli
from robench.cli.options import Int, Number, SafeEcho, data_options, split_list as _split
from robench.devices import resolve_device
from robench.results import check_out


@cli.command("landscape")
@click.option("--model", "models", multiple=True, required=True,
              help="NAME, NAME@LAM (fixed λ, e.g. inresnet20@0.5), with a tag NAME@LAM.TAG (inresnet20@0.5.s2); "
                   "repeatable or comma list.")
@click.option("--direction", "directions", multiple=True,
              help="grad_sign, pgd, random (comma list; default all three).")
@click.option("--radius", default="16/255", type=Number(), show_default=True, help="Grid half-width in L∞ pixels.")
@click.option("--points", default=41, type=Int(1), show_default=True, help="Grid points in [−radius, radius] (0 and 8/255 added).")
@click.option("--random-directions", "n_random", default=1, type=Int(1), show_default=True,
              help="Number of random sign directions.")
@click.option("--pgd-eps", default="8/255", type=Number(), show_default=True,
              help="ε of the PGD perturbation giving the pgd direction.")
@click.option("--grid2d", is_flag=True, help="Also the 2-D grid grad_sign × the first random direction.")
@click.option("--points2d", default=21, type=Int(1), show_default=True, help="Points per axis of the 2-D grid.")
@data_options
@click.option("--seed", default=0, type=Int(0), show_default=True, help="Seed of the random directions and of PGD.")
@click.option("--out", required=True, help="Write OUT.parquet and OUT.csv.")
@click.option("--force", is_flag=True, help="Replace an existing OUT table.")
def landscape_cmd(models, directions, radius, points, n_random, pgd_eps, grid2d, points2d, data_dir, dataset, n, seed,
                  batch_size, device, out, force) -> None:
    """Loss/accuracy of clip(x + t·d) along grad-sign, PGD and random directions, mean and 95% interval."""
    echo = SafeEcho()  # a closed stdout (| head) must not stop the work
    from robench.analysis.landscape import DIRECTIONS, flatness, landscape
    from robench.analysis.plots import model_label
    from robench.results import write_table

    resolve_device(device)  # one line before anything is read
    check_out(out, force=force)
    df = landscape(models=_split(models), directions=_split(directions) or DIRECTIONS, radius=radius,
                   points=points, n_random=n_random, pgd_eps=pgd_eps, grid2d=grid2d, points2d=points2d,
                   dataset=dataset, data_dir=data_dir, n=n, seed=seed, batch_size=batch_size, device=device, log=echo,
                   on_model=lambda part: write_table(part, out))  # a kill loses at most the model in flight
    flat = flatness(df)
    echo("loss increase at t = 8/255 (mean, 95% interval):")
    for r in flat.itertuples():
        echo(f"  {model_label(r.model, r.lam, r.scheme)} {r.direction}[{r.index}]: {r.loss_increase:.4f} "
             f"[{r.ci_low:.4f}, {r.ci_high:.4f}]")
    echo("wrote " + ", ".join(str(p) for p in write_table(df, out)))
