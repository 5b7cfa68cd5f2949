from __future__ import annotations

import shlex
import signal

import click

from robench.cli import cli
from robench.cli.options import Int, SafeEcho


def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt

RAY_ONLY = ("--gpus-per-task", "--retries", "--batches-per-task", "--ray-timeout")


@cli.command("sweep")
@click.argument("config", type=click.Path())
@click.option("--out", default=None, type=click.Path(), help="Output folder (overrides the config's `out`).")
@click.option("--data-dir", default=None, type=click.Path(),
              help="Folder holding cifar-10-batches-py/ (overrides the config's `data_dir`; default: the config's, "
                   "else the copy `robench data fetch` made).")
@click.option("--dry-run", is_flag=True, help="Validate, print the plan and a rough time estimate; run nothing, write nothing.")
@click.option("--executor", default="local", show_default=True, help="local or ray.")
@click.option("--address", default=None,
              help="Ray cluster address, host:port as `ray start --head` prints it (default: start a local Ray instance).")
@click.option("--threads", default=None, type=Int(1), metavar="N",
              help="CPU threads (default: the config's, $ROBENCH_THREADS, else min(cores, 4)); with --executor ray "
                   "the CPUs each task reserves and its threads (default 1).")
@click.option("--tf32", is_flag=True, help="Allow TensorFloat-32 on CUDA (overrides the config's tf32; default IEEE fp32).")
@click.option("--gpus-per-task", "gpus", default=None, type=float, metavar="F",
              help="Ray, device cuda: GPUs each task reserves (default 1; 0.25 packs four tasks on a GPU).")
@click.option("--retries", default=None, type=int, metavar="N",
              help="Ray: re-runs of a task lost with its worker or node (default 3).")
@click.option("--batches-per-task", default=None, type=int, metavar="K",
              help="Ray: image batches per attack task (default 1; attacks are also split per ε).")
@click.option("--ray-timeout", default=None, type=float, metavar="S",
              help="Ray: seconds to wait for the cluster, its preflight, or a node able to run a task (default 60).")
@click.option("--force", is_flag=True, help="Write into an existing folder that is not a sweep store.")
@click.option("--checks/--no-checks", "run_checks", default=True, show_default=True,
              help="Run the gradient-masking and sanity checks on the finished table (OUT/checks.parquet/.csv); "
                   "with --executor ray on the cluster.")
def sweep_cmd(config, out, data_dir, dry_run, executor, address, threads, tf32, gpus, retries, batches_per_task,
              ray_timeout, force, run_checks) -> None:
    """Run the grid of a TOML CONFIG resumably: finished cells are kept, a rerun does only the rest.

    A line per finished cell with a counter over the whole plan (it goes on after a resume) and an
    ETA; Ctrl-C keeps every finished cell and says how to resume."""
    echo = SafeEcho()  # a closed stdout (| head) must not stop the work
    from robench.errors import BadInput
    from robench.sweep import EXECUTORS, estimate, finished, load_config, plan_sweep, run_sweep, sweep_checks

    if executor not in EXECUTORS:
        raise BadInput(f"unknown executor {executor!r}; valid choices: {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise BadInput("--address applies to the ray executor; add --executor ray")
    given = [o for o, v in zip(RAY_ONLY, (gpus, retries, batches_per_task, ray_timeout)) if v is not None]
    ray_options = None
    if given and executor != "ray":
        raise BadInput(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to the ray executor; "
                       "add --executor ray")
    if executor == "ray":
        from robench.ray_executor import RayOptions, import_ray

        import_ray()  # says how to install Ray before any planning
        defaults = RayOptions()
        ray_options = RayOptions(address=address, gpus=gpus,
                                 retries=defaults.retries if retries is None else retries,
                                 batches_per_task=defaults.batches_per_task if batches_per_task is None else batches_per_task,
                                 timeout=defaults.timeout if ray_timeout is None else ray_timeout)
    spec = load_config(config)
    if threads is not None:
        spec = spec.replace(threads=threads)
    if data_dir is not None:
        spec = spec.replace(data_dir=data_dir)
    if tf32:
        spec = spec.replace(tf32=True)
    if executor == "local":
        from robench.devices import resolve_device

        resolve_device(spec.device)  # one line before anything is read (Ray workers check their own)
    plan = plan_sweep(spec, out=out, executor=executor, force=force)
    if ray_options is not None:
        ray_options.validate(plan.config.device)
    echo(plan.describe())
    if dry_run:
        for cell in plan.pending[:20]:
            echo(f"  {cell.label()}")
        if len(plan.pending) > 20:
            echo(f"  … and {len(plan.pending) - 20} more")
        if plan.pending:
            from robench.progress import duration

            seconds, how = estimate(plan)
            echo(f"estimate: about {duration(seconds)} for {len(plan.pending)} cells on this machine "
                       f"(rough, ±50 %: {how})")
        return
    if run_checks:
        from robench.cli.eval_cmd import checks_asked, checks_preflight

        if checks_asked():
            checks_preflight(plan.config)
    old = signal.signal(signal.SIGTERM, _terminate)  # kill (TERM) keeps the cells and says so, like Ctrl-C
    try:
        df = run_sweep(plan, executor=executor, log=echo, ray_options=ray_options)
    except KeyboardInterrupt:
        resume = ["robench", "sweep", config, "--out", str(plan.out)]
        if data_dir is not None:
            resume += ["--data-dir", data_dir]
        if executor != "local":
            resume += ["--executor", executor] + (["--address", address] if address else [])
        echo(f"interrupted: {finished(plan)} of {len(plan.cells)} cells are kept in {plan.out} (each is saved "
                   f"as it finishes); resume with: {shlex.join(resume)}", err=True)
        raise click.exceptions.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    echo(f"wrote {plan.out / 'results.parquet'} and .csv ({len(df)} rows)")
    if run_checks:
        from robench.cli.eval_cmd import report_checks

        checks = sweep_checks(df, plan, executor=executor, ray_options=ray_options, log=echo)
        report_checks(df, plan.config, str(plan.out / "checks"), echo, checks=checks)
