from __future__ import annotations

import sys

import click

from robench.cli import cli
from robench.cli.options import Int, SafeEcho as _Stdout, parse_param, silence as _silence, split_list


def build_spec(models, lams, attacks, eps, params, corruptions, severities, data_dir, dataset, corruption_dir, n,
               batch_size, device, seeds, backend, threads, config, tf32=False):
    """The options (and ``--config FILE.toml`` underneath them) → an unvalidated EvalSpec; an option
    given on the command line replaces the config's value."""
    from robench.spec import EvalSpec, load_spec

    base = load_spec(config) if config is not None else EvalSpec()
    attack_params: dict[str, dict] = {a: dict(p) for a, p in base.attack_params}
    for text in params:
        attack, key, value = parse_param(text)
        attack_params.setdefault(attack, {})[key] = value
    given = {
        "models": split_list(models) or None, "lams": split_list(lams) or None, "attacks": split_list(attacks) or None,
        "eps": split_list(eps) or None, "corruptions": split_list(corruptions) or None,
        "severities": split_list(severities) or None, "seeds": split_list(seeds) or None, "data_dir": data_dir,
        "dataset": dataset, "corruption_dir": corruption_dir, "n": n, "batch_size": batch_size, "device": device,
        "backend": backend, "threads": threads, "tf32": True if tf32 else None,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    return base.replace(**changes, attack_params=attack_params)


@cli.command("eval")
@click.option("--model", "models", multiple=True,
              help="NAME, NAME.TAG (resnet20.s1), NAME@LAM or NAME@LAM.TAG (inresnet20@0.5.s2); repeatable or "
                   "comma list; see `robench zoo list`.")
@click.option("--lam", "lams", multiple=True, help="'learned' or a fixed λ in [0,1] (repeatable); damped models only.")
@click.option("--attack", "attacks", multiple=True, help="Attack name (repeatable or comma list).")
@click.option("--eps", "eps", multiple=True, help="ε in pixel units, in (0, 1], comma list: 2/255,8/255 (default 8/255).")
@click.option("--param", "params", multiple=True, metavar="ATTACK.NAME=VALUE",
              help="Attack hyper-parameter, e.g. pgd.steps=50 (repeatable).")
@click.option("--corruption", "corruptions", multiple=True, help="Corruption name (repeatable or comma list).")
@click.option("--severity", "severities", multiple=True, help="Corruption severities 1..5 (comma list; default all).")
@click.option("--data-dir", default=None, help="Folder holding cifar-10-batches-py/ (default: the copy `robench data fetch` made for --dataset, else the 20 bundled samples).")
@click.option("--dataset", type=click.Choice(["samples", "cifar10", "cifar100"]), default=None,
              help="Default: samples, or cifar10 when --data-dir is given.")
@click.option("--corruption-dir", default=None,
              help="Folder holding CIFAR-10-C (<corruption>.npy, labels.npy; `robench data fetch cifar10c` puts it in "
                   "~/.cache/robench/data/CIFAR-10-C); needs the clean CIFAR-10 split.")
@click.option("--n", "n", type=Int(1), default=None, help="Evaluate the first N test images (default: all).")
@click.option("--batch-size", type=Int(1), default=None,
              help="Images per batch (default: 256 on CPU, 1000 on CUDA); part of a cell's identity.")
@click.option("--device", default=None, help="cpu or cuda[:i] (default cpu).")
@click.option("--tf32", is_flag=True, default=None,
              help="Allow TensorFloat-32 convolutions and matmuls on CUDA (default: IEEE fp32, deterministic).")
@click.option("--seed", "seeds", multiple=True, help="Seed(s) of attacks and corruptions (comma list; default 0).")
@click.option("--backend", default=None, help="Attack library: art or foolbox (default: each attack's own).")
@click.option("--threads", default=None, type=Int(1),
              help="CPU threads (default: $ROBENCH_THREADS, else min(cores, 4)).")
@click.option("--config", "config", default=None, type=click.Path(),
              help="A TOML spec (the sweep's format); options given here replace its values.")
@click.option("--out", default=None, help="Write the table to OUT.parquet and OUT.csv ('-': CSV on stdout).")
@click.option("--force", is_flag=True, help="Overwrite an existing OUT table.")
@click.option("--checks/--no-checks", "run_checks", default=True, show_default=True,
              help="Run the gradient-masking and sanity checks on the cells afterwards (OUT_checks.parquet/.csv).")
def eval_cmd(models, lams, attacks, eps, params, corruptions, severities, data_dir, dataset, corruption_dir, n,
             batch_size, device, tf32, seeds, backend, threads, config, out, force, run_checks) -> None:
    """Evaluate zoo models on clean data, attacks and corruptions; one row per cell with a Wilson 95% CI.

    The first line names the checkpoints used (shipped / user zoo / file, and the path). Files are
    written before the table is printed."""
    import contextlib

    from robench.engine import evaluate_spec, summary
    from robench.fileio import output_lock
    from robench.results import check_out, table_paths, write_csv_stream, write_table_or_rescue

    from robench.devices import resolve_device

    spec = build_spec(models, lams, attacks, eps, params, corruptions, severities, data_dir, dataset, corruption_dir,
                      n, batch_size, device, seeds, backend, threads, config, tf32)
    resolve_device(spec.device)  # one line before anything is read
    to_stdout = out == "-"
    checks_out = None if out is None or to_stdout else checks_stem(out)
    lock = contextlib.nullcontext()
    if out is not None and not to_stdout:
        check_out(out, force=force, inputs=[config] if config else ())
        if run_checks:
            check_out(checks_out, force=force, what="the checks table")
        # two evals writing one table: the second is refused now instead of both writing at the end
        lock = output_lock(table_paths(out)[0].with_suffix(""),
                           busy=f"another robench is writing the table {out}; wait for it or choose another --out")
    echo = _Stdout(err=to_stdout)  # with --out - stdout carries the CSV only
    if run_checks and checks_asked():
        checks_preflight(spec)
    with lock:
        try:
            df = evaluate_spec(spec, log=echo)
        except KeyboardInterrupt:
            click.echo("interrupted: robench eval holds its cells in memory, so nothing was written; for a run that "
                       "keeps every finished cell and resumes, put these options in a TOML config and run "
                       "`robench sweep CONFIG`", err=True)
            raise click.exceptions.Exit(130) from None
        if to_stdout:
            try:
                write_csv_stream(df, sys.stdout)
                sys.stdout.flush()
            except BrokenPipeError:
                _silence(sys.stdout)
        elif out is not None:
            paths = write_table_or_rescue(df, out)  # a full disk now must not lose every cell that ran
            echo("wrote " + ", ".join(str(p) for p in paths))
        if run_checks:
            report_checks(df, spec.validate(check_device=False), checks_out, echo)
    echo(summary(df).to_string(index=False))
    if out is None:
        echo("the table was not saved: add --out results/NAME to write results/NAME.parquet and .csv "
             "(or --out - for the CSV on stdout)")


def checks_asked() -> bool:
    """Whether --checks was given on the command line (not just the default)."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source("run_checks") == ParameterSource.COMMANDLINE


def checks_preflight(spec) -> None:
    """--checks asked for explicitly: what the model checks need beyond the evaluation itself (the
    transfer source's weights) must be there, else one line before any cell runs."""
    from model_zoo.checkpoint import resolve
    from robench.errors import BadInput

    if resolve(TRANSFER_SOURCE, lam=None) is None and any(m != TRANSFER_SOURCE for m in spec.models):
        raise BadInput(f"--checks: the transfer check needs trained {TRANSFER_SOURCE} weights in the zoo (its PGD "
                       f"examples are transferred), and there are none; train them with `robench train --model "
                       f"{TRANSFER_SOURCE}`, or leave out --checks to run the other checks only")


TRANSFER_SOURCE = "resnet20"


def checks_stem(out: str) -> str:
    """Where the checks of the table ``out`` go: ``x`` / ``x.parquet`` → ``x_checks``."""
    from robench.results import table_paths

    return str(table_paths(out)[0].with_suffix("")) + "_checks"


def report_checks(df, spec, out: str | None, echo, checks=None) -> None:
    """Run the gradient-masking and sanity checks on the cells of ``df`` (unless ``checks`` holds
    them already); write them to ``out`` (a table stem) when given; print one line per model and
    every flag."""
    from robench.checks import flag_words, run_checks, summaries, write_checks

    from robench.results import lam_text

    if checks is None:
        checks = run_checks(df, device=spec.device, data_dir=spec.data_dir, batch_size=spec.batch_size,
                            transfer_source=TRANSFER_SOURCE, progress=echo)
    if out is not None:
        echo("wrote " + ", ".join(str(p) for p in write_checks(checks, out)))
    words = flag_words(checks)
    for (model, lam, dataset), text in summaries(checks).items():
        label = model if lam is None else f"{model} λ={lam_text(lam)}"
        flags = words.get((model, lam, dataset))
        echo(f"checks: {label} ({dataset}): {text}" + (f"; flags: {', '.join(flags)}" if flags else ""))
