from __future__ import annotations

import shlex
import time

import click

from robench.cli import cli

_STARTED = time.monotonic()  # the deadline counts from the start of the process


@cli.group("campaign")
def campaign() -> None:
    """GPU campaigns: one command per GPU window (prepare here, run there, ingest here)."""


@campaign.command("show")
@click.argument("plan", type=click.Path())
@click.option("--state", "state_path", default=None, type=click.Path(),
              help="A campaign.json (returned, or .carry/state/campaign.json) to show what is done.")
def show_cmd(plan, state_path) -> None:
    """Print the PLAN's tasks in priority order with their commands (nothing runs)."""
    from robench.campaign.plan import load_plan, train_argv
    from robench.campaign.state import load_state

    p = load_plan(plan).validate_specs()
    state = load_state(state_path, p) if state_path else {"tasks": {}}
    click.echo(f"campaign {p.name} ({p.path}, sha256 {p.sha256[:12]}…): {len(p.tasks())} tasks")
    for t in p.tasks():
        rec = state["tasks"].get(t.id, {})
        status = rec.get("status", "pending") if rec.get("fingerprint") in (None, t.fingerprint) else "changed"
        head = f"[p{t.job.priority}] {t.id} ({status})" + (f" needs {', '.join(t.job.needs)}" if t.job.needs else "")
        if t.job.kind == "train":
            members = t.members()
            argv = train_argv(members, t.job.train, plan_file=None, device="cuda", data_dir="DATA", out="ZOO",
                              run_dir="RUN")
            click.echo(f"{head}: {len(members)} members ({', '.join(m.ref for m in members)}): "
                       f"robench {shlex.join(argv)}")
        else:
            spec = t.spec.validate(check_device=False)
            click.echo(f"{head}: robench sweep: {len(spec.pairs())} models × {len(spec.seeds)} seeds, attacks "
                       f"{', '.join(spec.attacks) or '-'}, corruptions {len(spec.corruptions)}, n {spec.n or 'all'} → "
                       f"{t.out}")


@campaign.command("prepare")
@click.argument("dest", default=".carry", type=click.Path())
@click.option("--tarball", default="../shared/data/cifar10-jpeg.tar.gz", show_default=True, type=click.Path(),
              help="The CIFAR-10 JPEG tarball to carry.")
@click.option("--converter", default="../shared/tools/cifar10_from_jpeg.py", show_default=True, type=click.Path(),
              help="Its converter to the official python layout.")
@click.option("--wheels-script", default="../shared/tools/gpu_wheels.sh", show_default=True, type=click.Path(),
              help="Script that downloads the GPU machine's extra wheels into a folder (bash SCRIPT DIR).")
@click.option("--wheels", "wheels_dir", default=None, type=click.Path(),
              help="Copy this folder of wheels instead of running the script.")
@click.option("--no-wheels", is_flag=True, help="Carry no wheels.")
@click.option("--data-dir", default=None, type=click.Path(),
              help="The CPU copy of the data ingest verifies against (its test batch's sha256 goes in the manifest).")
@click.option("--plan", default="configs/campaign_gpu.toml", show_default=True, type=click.Path(),
              help="The campaign plan: with the state in DEST/state, which tasks remain and what they need.")
@click.option("--data", "data", type=click.Choice(["auto", "full", "test"]), default="auto", show_default=True,
              help="Carry the whole tarball (full), its test split only (test: needs --data-dir), or the test split "
                   "once no remaining task of the plan trains (auto).")
def prepare_cmd(dest, tarball, converter, wheels_script, wheels_dir, no_wheels, data_dir, plan, data) -> int:
    """Build the git-ignored folder DEST (default .carry) that a GPU window carries: data, converter, wheels;
    then say what the next device call sends. Exit 1 when that is over the 64 MiB a call may send."""
    from robench.campaign.prepare import prepare

    script = None if (no_wheels or wheels_dir is not None) else wheels_script
    done = prepare(dest, tarball=tarball, converter=converter, wheels_script=script,
                   wheels_dir=None if no_wheels else wheels_dir, data_dir=data_dir, plan=plan, data=data,
                   log=click.echo)
    return 1 if done.over else 0


@campaign.command("run")
@click.argument("plan", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="The folder that comes back ($OUT on the GPU machine).")
@click.option("--deadline-s", type=click.FloatRange(min=1), default=540, show_default=True,
              help="Seconds from the start of this command by which everything is written.")
@click.option("--carry", default=".carry", show_default=True, type=click.Path(),
              help="The carried folder (prepare's DEST; its state/ is the earlier windows' state).")
@click.option("--work", default=None, type=click.Path(), help="Empty scratch folder (default: a new temporary one).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when there is one), cuda or cpu.")
@click.option("--data-dir", default=None, type=click.Path(),
              help="Use this unpacked CIFAR-10 instead of the carried tarball.")
def run_cmd(plan, out, deadline_s, carry, work, device, data_dir) -> int:
    """Run one GPU window of the campaign PLAN: install, unpack, preflight, cuda tests, probe, then the
    tasks in priority order while they fit the deadline, writing into --out as they finish."""
    from robench.campaign.runner import RunOptions, run_campaign

    return run_campaign(RunOptions(plan=plan, out=out, deadline_s=deadline_s, carry=carry, work=work, device=device,
                                   data_dir=data_dir, started=_STARTED), echo=click.echo)


@campaign.command("ingest")
@click.argument("returned", type=click.Path())
@click.option("--plan", "plan", default="configs/campaign_gpu.toml", show_default=True, type=click.Path())
@click.option("--data-dir", default=None, type=click.Path(),
              help="The CPU copy of CIFAR-10 to verify on (default: the fetched copy).")
@click.option("--zoo", default=None, type=click.Path(), help="Where checkpoints go (default: model_zoo/weights).")
@click.option("--carry", default=".carry", show_default=True, type=click.Path(),
              help="Where the state for the next window goes (CARRY/state).")
@click.option("--threads", default=None, help="CPU threads (default: $ROBENCH_THREADS, else min(cores, 4)).")
@click.option("--force", is_flag=True, help="Replace result tables that exist with other content.")
def ingest_cmd(returned, plan, data_dir, zoo, carry, threads, force) -> int:
    """Verify on the CPU what a window RETURNED and install what passes; exit 1 when anything was refused."""
    from pathlib import Path

    from robench.campaign.ingest import commit_advice, ingest
    from robench.machine import resolve_threads

    import torch

    n = resolve_threads(threads)
    torch.set_num_threads(n)
    report = ingest(returned, plan=plan, data_dir=data_dir, zoo=zoo, carry=carry, threads=n, log=click.echo,
                    force=force)
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(f"installed {len(report.installed)} files, kept {len(report.kept)} installed checkpoints, refused "
               f"{len(report.refused)}; state for the next window: {report.state_path}")
    for line in commit_advice(report, Path(".")):
        click.echo(line)
    return 0 if report.ok else 1
