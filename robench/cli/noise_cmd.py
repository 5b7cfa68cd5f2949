"""``robench noise-protocol``: CIFAR-10-C noise files under robench's and the seed code's protocol."""
from __future__ import annotations

import click

from robench.cli import cli
from robench.cli.options import split_list as _split
from robench.results import check_out
from robench.spec import parse_int


@cli.command("noise-protocol")
@click.option("--model", "models", multiple=True, required=True,
              help="NAME or NAME@LAM (fixed λ, e.g. inresnet20@0.5); repeatable or comma list.")
@click.option("--corruption-dir", required=True, help="Folder holding CIFAR-10-C (<corruption>.npy, labels.npy).")
@click.option("--corruption", "corruptions", multiple=True,
              help="CIFAR-10-C file names without .npy (default: the reference's impulse, speckle, gaussian, shot noise).")
@click.option("--protocol", type=click.Choice(["both", "standard", "reference"]), default="both", show_default=True,
              help="reference: per-file mean/std normalisation, severities pooled; standard: robench's per-severity.")
@click.option("--n", "n", default=None, metavar="N", help="The first N images of each severity (default: all).")
@click.option("--batch-size", default=None, metavar="N", help="Images per batch (default: 500 on CPU, 2500 on CUDA).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:i.")
@click.option("--out", default=None, help="Write OUT.parquet and OUT.csv.")
@click.option("--force", is_flag=True, help="Replace an existing OUT table.")
def noise_cmd(models, corruption_dir, corruptions, protocol, n, batch_size, device, out, force) -> None:
    """Noise robustness on real CIFAR-10-C: per-severity (standard) and pooled, file-normalised (reference)."""
    from robench.analysis.noise_protocol import REFERENCE_NOISE, noise_protocol
    from robench.results import write_table

    from robench.devices import resolve_device

    resolve_device(device)  # one line before anything is read
    if out is not None:
        check_out(out, force=force)
    df = noise_protocol(models=_split(models), corruption_dir=corruption_dir,
                        corruptions=_split(corruptions) or REFERENCE_NOISE, n=None if n is None else parse_int(n, "--n", 1),
                        batch_size=None if batch_size is None else parse_int(batch_size, "--batch-size", 1), device=device, log=click.echo)
    if protocol != "both":
        df = df[df["protocol"] == protocol].reset_index(drop=True)
    view = df.assign(severity=df["severity"].astype("string").fillna("pooled"))
    click.echo(view[["model", "lam", "corruption", "protocol", "severity", "accuracy", "ci_low", "ci_high"]]
               .to_string(index=False))
    if out is not None:
        click.echo("wrote " + ", ".join(str(p) for p in write_table(df, out)))
