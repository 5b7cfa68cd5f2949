from __future__ import annotations

import click

from robench.cli import cli


@cli.command("sweep")
@click.argument("config", type=click.Path())
@click.option("--out", default=None, type=click.Path(), help="Output folder (overrides the config's `out`).")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan, run nothing, write nothing.")
@click.option("--executor", default="local", show_default=True, help="local or ray.")
@click.option("--address", default=None, help="Ray cluster address (default: start a local Ray instance).")
@click.option("--threads", default=None, metavar="N",
              help="CPU threads per executor process (default: the config's, $ROBENCH_THREADS, else min(cores, 4)).")
@click.option("--tf32", is_flag=True, help="Allow TensorFloat-32 on CUDA (overrides the config's tf32; default IEEE fp32).")
@click.option("--force", is_flag=True, help="Write into an existing folder that is not a sweep store.")
@click.option("--checks/--no-checks", "run_checks", default=True, show_default=True,
              help="Run the gradient-masking and sanity checks on the finished table (OUT/checks.parquet/.csv).")
def sweep_cmd(config, out, dry_run, executor, address, threads, tf32, force, run_checks) -> None:
    """Run the grid of a TOML CONFIG resumably: finished cells are kept, a rerun does only the rest."""
    from robench.errors import BadInput
    from robench.sweep import EXECUTORS, load_config, plan_sweep, run_sweep

    if executor not in EXECUTORS:
        raise BadInput(f"unknown executor {executor!r}; valid choices: {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise BadInput("--address applies to the ray executor; add --executor ray")
    spec = load_config(config)
    if threads is not None:
        spec = spec.replace(threads=threads)
    if tf32:
        spec = spec.replace(tf32=True)
    if executor == "local":
        from robench.devices import resolve_device

        resolve_device(spec.device)  # one line before anything is read (Ray workers check their own)
    plan = plan_sweep(spec, out=out, executor=executor, force=force)
    click.echo(plan.describe())
    if dry_run:
        for cell in plan.pending[:20]:
            click.echo(f"  {cell.label()}")
        if len(plan.pending) > 20:
            click.echo(f"  … and {len(plan.pending) - 20} more")
        return
    df = run_sweep(plan, executor=executor, address=address, log=click.echo)
    click.echo(f"wrote {plan.out / 'results.parquet'} and .csv ({len(df)} rows)")
    if run_checks:
        from robench.cli.eval_cmd import report_checks

        report_checks(df, spec.validate(check_device=False), str(plan.out / "checks"), click.echo)
