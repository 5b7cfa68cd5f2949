"""``robench noise-protocol``: CIFAR-10-C noise files under robench's and the seed code's protocol."""
from __future__ import annotations

import click

from robench.cli import cli
from robench.cli.options import Int, SafeEcho, split_list as _split
from robench.results import check_out


@cli.command("noise-protocol")
@click.option("--model", "models", multiple=True, required=True,
              help="NAME, NAME@LAM (fixed λ, e.g. inresnet20@0.5), with a tag NAME@LAM.TAG (inresnet20@0.5.s2); "
                   "repeatable or comma list.")
@click.option("--corruption-dir", default=None,
              help="Folder holding CIFAR-10-C (<corruption>.npy, labels.npy); default: the copy "
                   "`robench data fetch cifar10c` made.")
@click.option("--data-dir", default=None,
              help="Folder holding the clean cifar-10-batches-py/ whose test labels CIFAR-10-C's must equal "
                   "(default: the copy `robench data fetch cifar10` made).")
@click.option("--corruption", "corruptions", multiple=True,
              help="CIFAR-10-C file names without .npy (default: the reference's impulse, speckle, gaussian, shot noise).")
@click.option("--protocol", type=click.Choice(["both", "standard", "reference"]), default="both", show_default=True,
              help="reference: per-file mean/std normalisation, severities pooled; standard: robench's per-severity.")
@click.option("--n", "n", default=None, type=Int(1), help="The first N images of each severity (default: all).")
@click.option("--batch-size", default=None, type=Int(1), help="Images per batch (default: 500 on CPU, 2500 on CUDA).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:i.")
@click.option("--out", default=None, help="Write OUT.parquet and OUT.csv.")
@click.option("--force", is_flag=True, help="Replace an existing OUT table.")
def noise_cmd(models, corruption_dir, data_dir, corruptions, protocol, n, batch_size, device, out, force) -> None:
    """Noise robustness on real CIFAR-10-C: per-severity (standard) and pooled, file-normalised (reference)."""
    echo = SafeEcho()  # a closed stdout (| head) must not stop the work
    from robench.analysis.noise_protocol import REFERENCE_NOISE, noise_protocol
    from robench.results import write_table

    from robench.devices import resolve_device

    resolve_device(device)  # one line before anything is read
    if out is not None:
        check_out(out, force=force)
    df = noise_protocol(models=_split(models), corruption_dir=corruption_dir,
                        corruptions=_split(corruptions) or REFERENCE_NOISE, n=n,
                        batch_size=batch_size, device=device, data_dir=data_dir, log=echo)
    if protocol != "both":
        df = df[df["protocol"] == protocol].reset_index(drop=True)
    view = df.assign(severity=df["severity"].astype("string").fillna("pooled"))
    echo(view[["model", "lam", "corruption", "protocol", "severity", "accuracy", "ci_low", "ci_high"]]
         .to_string(index=False))
    if out is not None:
        echo("wrote " + ", ".join(str(p) for p in write_table(df, out)))
