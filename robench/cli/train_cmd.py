from __future__ import annotations

import os
from pathlib import Path

import click

from robench.cli import cli
from robench.cli.options import parse_lam


def coefficient_text(model, lam: float | None) -> str:
    """How the run's per-block coefficients are set, for the start-up line."""
    if lam is not None:
        return f"λ={lam:g}"
    return "learned coefficients" if model.learned else "no per-block coefficients"


@cli.command("train")
@click.option("--model", "model_name", required=True, help="Registered model name (see `robench zoo list`).")
@click.option("--lam", default=None, help="Fixed λ in [0,1] for damped models; default: learned.")
@click.option("--data-dir", default=None, type=click.Path(),
              help="Folder holding cifar-10-batches-py/ (or cifar-100-python/); default: the copy `robench data fetch` made.")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100"]), default="cifar10", show_default=True)
@click.option("--recipe", type=click.Choice(["paper", "fast"]), default="fast", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the recipe's epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=float, default=None, help="Override the recipe's peak learning rate.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:i].")
@click.option("--amp/--no-amp", default=False, help="bf16/fp16 autocast.")
@click.option("--tf32", is_flag=True, help="Allow TensorFloat-32 convolutions and matmuls on CUDA (default: IEEE fp32).")
@click.option("--compile/--no-compile", "compile_", default=False, help="torch.compile the model.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Zoo directory for the final weights (default: the user zoo).")
@click.option("--run-dir", type=click.Path(), default=None, help="Epoch checkpoints + metrics.csv (default under $ROBENCH_HOME/runs).")
@click.option("--resume/--no-resume", default=False, help="Continue from the last epoch checkpoint in --run-dir.")
@click.option("--data-label", default=None, help='Human label of the data, e.g. "CIFAR-10 (JPEG copy)".')
@click.option("--n", "n", type=click.IntRange(min=1), default=None, help="Train on the first N training images only.")
@click.option("--threads", default=None,
              help="CPU threads (default: $ROBENCH_THREADS, else min(cores, 4)).")
@click.option("--force/--no-force", default=False, help="Replace an existing run folder or zoo entry.")
def train_cmd(model_name, lam, data_dir, dataset, recipe, epochs, batch_size, lr, device, amp, tf32, compile_, seed,
              out, run_dir, resume, data_label, n, threads, force) -> None:
    """Train a zoo model on CIFAR and put the final checkpoint, with its card, into a zoo."""
    import model_zoo
    from model_zoo.checkpoint import user_zoo, zoo_stem
    from model_zoo.registry import check_model_name
    from robench.data import load_cifar
    from robench.devices import determinism, device_label, resolve_device
    from robench.errors import BadInput
    from robench.machine import resolve_threads
    from robench.train import check_outputs, train

    dev = resolve_device(device)  # one line before anything is built or read
    if tf32 and dev.type != "cuda":
        raise BadInput(f"--tf32 applies to CUDA devices, not {device}; drop it or use --device cuda")
    check_model_name(model_name)
    lam_v = parse_lam(lam)
    n_threads = resolve_threads(threads)
    # validates λ against the model before loading data
    coeffs = coefficient_text(model_zoo.create_model(model_name, lam=lam_v), lam_v)
    out = Path(out) if out else user_zoo()
    if run_dir is None:
        run_dir = user_zoo().parent / "runs" / f"{zoo_stem(model_name, lam_v)}-{recipe}-seed{seed}"
    check_outputs(model_name, lam_v, run_dir, out, resume=resume, force=force)  # before reading any data
    train_set = load_cifar(dataset, data_dir, "train").first(n)
    test_set = load_cifar(dataset, data_dir, "test")
    import torch

    torch.set_num_threads(n_threads)
    click.echo(f"training {model_name} ({coeffs}) on {dataset}: "
               f"{len(train_set)} train / {len(test_set)} test, recipe {recipe}, device {device_label(dev)}"
               f"{' (tf32)' if tf32 else ''}, {n_threads} threads; run dir {run_dir}")
    with determinism(dev, tf32=tf32):  # cuDNN deterministic, TF32 only with --tf32 (on CUDA; nothing on CPU)
        train(model_name, train_set, test_set, lam=lam_v, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr,
              device=str(dev), amp=amp, tf32=tf32, compile=compile_, seed=seed, run_dir=run_dir, resume=resume, out=out,
              data_label_text=data_label, progress=os.environ.get("ROBENCH_PROGRESS", "1") != "0", force=force,
              log=lambda m: click.echo(m, err=False))
