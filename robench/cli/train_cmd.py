from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import click

from robench.cli import cli
from robench.cli.options import Int, SafeEcho, split_list


def coefficient_text(model, lam: float | None) -> str:
    """How the run's per-block coefficients are set, for the start-up line."""
    if lam is not None:
        return f"λ={lam:g}"
    return "learned coefficients" if model.learned else "no per-block coefficients"


# options a plan may set too; given both ways they are refused
_PLAN_SETTINGS = {"recipe": "--recipe", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr"}


@cli.command("train")
@click.option("--model", "models", multiple=True,
              help="Registered model name (see `robench zoo list`); repeat it, or give a comma list, to train a pack.")
@click.option("--lam", default=None,
              help="Fixed λ in [0,1] for damped models, or a comma list such as learned,0.25,0.5 (one member each); "
                   "default: learned.")
@click.option("--seed", "seeds", default="0", show_default=True,
              help="Seed, or a comma list such as 0,1,2 (one member each; seed s≠0 is saved as name.s<s>).")
@click.option("--plan", type=click.Path(dir_okay=False), default=None,
              help="TOML plan: [[members]] tables (model, lam, seed) and optional recipe, epochs, batch_size, lr.")
@click.option("--data-dir", default=None, type=click.Path(),
              help="Folder holding cifar-10-batches-py/ (or cifar-100-python/); default: the copy `robench data fetch` made.")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100"]), default="cifar10", show_default=True)
@click.option("--recipe", type=click.Choice(["paper", "fast"]), default="fast", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the recipe's epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=float, default=None, help="Override the recipe's peak learning rate.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:i].")
@click.option("--amp/--no-amp", default=False, help="bf16 autocast.")
@click.option("--tf32", is_flag=True, help="Allow TensorFloat-32 convolutions and matmuls on CUDA (default: IEEE fp32).")
@click.option("--compile/--no-compile", "compile_", default=False, help="torch.compile the models (no CUDA graphs then).")
@click.option("--cuda-graphs/--no-cuda-graphs", default=None,
              help="Replay the pack's step as a CUDA graph (default: on with --device cuda).")
@click.option("--tag", default=None,
              help="Tag of the checkpoint (NAME.TAG in the zoo) of a single member; default: s<seed> for a seed other "
                   "than 0, none for seed 0 (the untagged name is the seed-0 checkpoint).")
@click.option("--out", type=click.Path(), default=None, help="Zoo directory for the final weights (default: the user zoo).")
@click.option("--run-dir", type=click.Path(), default=None, help="Epoch checkpoints + metrics.csv (default under $ROBENCH_HOME/runs).")
@click.option("--resume/--no-resume", default=False, help="Continue from the last epoch checkpoint in --run-dir.")
@click.option("--data-label", default=None, help='Human label of the data, e.g. "CIFAR-10 (JPEG copy)".')
@click.option("--n", "n", type=click.IntRange(min=1), default=None, help="Train on the first N training images only.")
@click.option("--threads", default=None, type=Int(1),
              help="CPU threads (default: $ROBENCH_THREADS, else min(cores, 4)).")
@click.option("--force/--no-force", default=False, help="Replace an existing run folder or zoo entry.")
@click.pass_context
def train_cmd(ctx, models, lam, seeds, tag, plan, data_dir, dataset, recipe, epochs, batch_size, lr, device, amp, tf32,
              compile_, cuda_graphs, out, run_dir, resume, data_label, n, threads, force) -> None:
    """Train zoo models on CIFAR and put each final checkpoint, with its card, into a zoo.

    Several --model / --lam / --seed values train a pack: every combination, in one process, each member
    ending exactly as if trained alone."""
    echo = SafeEcho()  # a closed stdout (| head) must not stop the training
    import model_zoo
    from model_zoo.checkpoint import user_zoo
    from robench.data import load_cifar
    from robench.devices import device_label
    from robench.errors import BadInput
    from robench.machine import resolve_threads
    from robench.packed import load_plan, members_from_lists, pack_digest
    from robench.train import _device, check_pack_outputs, train_pack

    if plan is not None:
        if models:
            raise BadInput("give the members either with --model/--lam/--seed or in --plan, not both")
        p = load_plan(plan)
        members = p.pop("members")
        for key, value in p.items():
            if ctx.get_parameter_source(key) == click.core.ParameterSource.COMMANDLINE:
                raise BadInput(f"{key} is set both in the plan {plan} and by {_PLAN_SETTINGS[key]}; choose one")
        recipe, epochs, batch_size, lr = (p.get("recipe", recipe), p.get("epochs", epochs),
                                          p.get("batch_size", batch_size), p.get("lr", lr))
    else:
        if not models:
            raise BadInput("missing --model (a registered name; see `robench zoo list`), or give a --plan")
        members = members_from_lists(split_list(models), split_list((lam,)) if lam is not None else None,
                                     split_list((seeds,)))
    if tag is not None:
        if len(members) != 1:
            raise BadInput(f"--tag names one checkpoint, but the pack has {len(members)} members; a pack's members "
                           "are tagged by their seeds (s1, s2, …)")
        members = [dataclasses.replace(members[0], tag=tag)]
    n_threads = resolve_threads(threads)
    dev = _device(device)  # refused before any data is read
    if tf32 and dev.type != "cuda":
        raise BadInput(f"--tf32 applies to CUDA devices, not {device}; drop it or use --device cuda")
    if cuda_graphs and (dev.type != "cuda" or compile_):
        raise BadInput("--cuda-graphs needs --device cuda and no --compile")
    out = Path(out) if out else user_zoo()
    single = len(members) == 1
    if run_dir is None:
        name = (f"{members[0].id}-{recipe}-seed{members[0].seed}" if single
                else f"pack{len(members)}-{recipe}-{pack_digest(members)}")
        run_dir = user_zoo().parent / "runs" / name
    check_pack_outputs(members, run_dir, out, resume=resume, force=force)  # before reading any data
    train_set = load_cifar(dataset, data_dir, "train").first(n)
    test_set = load_cifar(dataset, data_dir, "test")
    import torch

    torch.set_num_threads(n_threads)
    common = (f"on {dataset}: {len(train_set)} train / {len(test_set)} test, recipe {recipe}, device {device_label(dev)}"
              f"{' (tf32)' if tf32 else ''}, "
              f"{n_threads} threads; run dir {run_dir}")
    if single:
        m = members[0]
        coeffs = coefficient_text(model_zoo.create_model(m.model, lam=m.lam), m.lam)
        echo(f"training {m.model} ({coeffs}{'' if m.seed == 0 else f', seed {m.seed}'}) {common}")
    else:
        echo(f"training a pack of {len(members)}: {', '.join(m.id for m in members)} {common}")
    result = train_pack(members, train_set, test_set, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr,
                        device=dev, amp=amp, tf32=tf32, compile=compile_, cuda_graphs=cuda_graphs, run_dir=run_dir,
                        resume=resume, out=out, data_label_text=data_label,
                        progress=os.environ.get("ROBENCH_PROGRESS", "1") != "0", force=force,
                        log=echo)
    if result["diverged"]:
        echo(f"error: {len(result['diverged'])} of {len(members)} member(s) diverged and were not saved: "
                   f"{', '.join(result['diverged'])}", err=True)
        sys.exit(1)
