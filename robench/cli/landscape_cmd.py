"""``robench landscape``: loss and accuracy along attack and random directions (tidy table)."""
from __future__ import annotations

import click

from robench.cli import cli
from robench.cli.options import data_options, parse_number, split_list as _split
from robench.devices import resolve_device
from robench.results import check_out
from robench.spec import parse_int


@cli.command("landscape")
@click.option("--model", "models", multiple=True, required=True,
              help="NAME or NAME@LAM (fixed λ, e.g. inresnet20@0.5); repeatable or comma list.")
@click.option("--direction", "directions", multiple=True,
              help="grad_sign, pgd, random (comma list; default all three).")
@click.option("--radius", default="16/255", show_default=True, help="Grid half-width in L∞ pixels.")
@click.option("--points", default="41", show_default=True, help="Grid points in [−radius, radius] (0 and 8/255 added).")
@click.option("--random-directions", "n_random", default="1", show_default=True, help="Number of random sign directions.")
@click.option("--pgd-eps", default="8/255", show_default=True, help="ε of the PGD perturbation giving the pgd direction.")
@click.option("--grid2d", is_flag=True, help="Also the 2-D grid grad_sign × the first random direction.")
@click.option("--points2d", default="21", show_default=True, help="Points per axis of the 2-D grid.")
@data_options
@click.option("--seed", default="0", show_default=True, help="Seed of the random directions and of PGD.")
@click.option("--out", required=True, help="Write OUT.parquet and OUT.csv.")
@click.option("--force", is_flag=True, help="Replace an existing OUT table.")
def landscape_cmd(models, directions, radius, points, n_random, pgd_eps, grid2d, points2d, data_dir, dataset, n, seed,
                  batch_size, device, out, force) -> None:
    """Loss/accuracy of clip(x + t·d) along grad-sign, PGD and random directions, mean and 95% interval."""
    from robench.analysis.landscape import DIRECTIONS, flatness, landscape
    from robench.analysis.plots import model_label
    from robench.results import write_table

    resolve_device(device)  # one line before anything is read
    check_out(out, force=force)
    df = landscape(models=_split(models), directions=_split(directions) or DIRECTIONS, radius=parse_number(radius, "--radius"),
                   points=parse_int(points, "--points", 1), n_random=parse_int(n_random, "--random-directions", 1),
                   pgd_eps=parse_number(pgd_eps, "--pgd-eps"), grid2d=grid2d, points2d=parse_int(points2d, "--points2d", 1),
                   dataset=dataset, data_dir=data_dir, n=None if n is None else parse_int(n, "--n", 1), seed=parse_int(seed, "--seed", 0),
                   batch_size=None if batch_size is None else parse_int(batch_size, "--batch-size", 1), device=device, log=click.echo,
                   on_model=lambda part: write_table(part, out))  # a kill loses at most the model in flight
    flat = flatness(df)
    click.echo("loss increase at t = 8/255 (mean, 95% interval):")
    for r in flat.itertuples():
        click.echo(f"  {model_label(r.model, r.lam, r.scheme)} {r.direction}[{r.index}]: {r.loss_increase:.4f} "
                   f"[{r.ci_low:.4f}, {r.ci_high:.4f}]")
    click.echo("wrote " + ", ".join(str(p) for p in write_table(df, out)))
