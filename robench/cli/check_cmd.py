from __future__ import annotations

from pathlib import Path

import click

from robench.cli import cli
from robench.cli.options import SafeEcho


@cli.command("check")
@click.argument("tables", nargs=-1, required=True, type=click.Path())
@click.option("--model", "models", multiple=True, help="Check only these models (repeatable; default: all in the table).")
@click.option("--data-dir", default=None, type=click.Path(), help="Folder holding the CIFAR data set the table names.")
@click.option("--n", "n", type=int, default=None, help="Check only the table's cells with this n.")
@click.option("--transfer-source", default="resnet20", show_default=True,
              help="Zoo model whose PGD examples are transferred ('none' skips the transfer check).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:i: where the models and data go.")
@click.option("--batch-size", default=None, metavar="N", help="Images per batch (default: 250 on CPU, 1000 on CUDA).")
@click.option("-o", "--out", default=None, type=click.Path(),
              help="Write the checks table here (OUT.parquet + OUT.csv); default: print only.")
@click.option("--force", is_flag=True, help="Replace an existing checks table.")
def check_cmd(tables, models, data_dir, n, transfer_source, device, batch_size, out, force) -> int:
    """Gradient-masking and sanity checks for every (model, λ, dataset, seed) of result TABLES.

    Every model and data set the checks need must be there (the zoo weights, the data set the table
    names, the transfer source): anything missing is one error line before any check runs."""
    echo = SafeEcho()  # a closed stdout (| head) must not stop the work
    from robench.checks import run_checks, write_checks
    from robench.devices import resolve_device
    from robench.errors import BadInput
    from robench.leaderboard import read_tables
    from robench.safetext import terminal_text
    from robench.spec import parse_int

    resolve_device(device)  # one line before anything is read
    batch = None if batch_size is None else parse_int(batch_size, "--batch-size", 1)
    table = read_tables(tables)
    if models:
        unknown = sorted(set(models) - set(table["model"]))
        if unknown:
            raise BadInput(f"--model {unknown[0]} is not in the table; valid choices: {', '.join(sorted(set(table['model'])))}")
        table = table[table["model"].isin(models)]
    if n is not None:
        ns = sorted({int(v) for v in table["n"]})
        if n not in ns:
            raise BadInput(f"--n {n}: the table has no cells with n={n}; valid choices: {', '.join(map(str, ns))}")
        table = table[table["n"] == n]
    if out is not None:
        from robench.results import check_out

        check_out(out, force=True, what="-o", inputs=tables)  # writable, not an input
        stem = Path(out).with_suffix("") if Path(out).suffix in (".parquet", ".csv") else Path(out)
        existing = [p for p in (stem.with_name(stem.name + ".parquet"), stem.with_name(stem.name + ".csv")) if p.exists()]
        if existing and not force:
            raise BadInput(f"{existing[0]} exists; pass --force to replace it")
    source = None if transfer_source.lower() == "none" else transfer_source
    checks = run_checks(table, device=device, data_dir=data_dir, transfer_source=source, batch_size=batch,
                        progress=lambda line: echo(line, err=True), require=True)
    if out is not None:
        write_checks(checks, stem)
    from robench.checks import STATUS_WORDS
    from robench.results import lam_text

    schemes = _schemes(table)
    for _, r in checks.iterrows():
        lam = lam_text(r["lam"], schemes.get(r["model"]))
        what = r["cells"] if r["status"] == "flag" else ("" if r["status"] == "pass" else r["detail"])
        echo(terminal_text(f"{r['model']} λ={lam} {r['dataset']} n={r['n']} seed={r['seed']}  {r['check']:<24} "
                           f"{r['status']:<4}  {what}"))  # names from the table never rewrite the terminal
    counts = checks["status"].value_counts()
    echo(f"{len(checks)} checks: " + ", ".join(f"{int(counts.get(s, 0))} {STATUS_WORDS[s]}" for s in STATUS_WORDS)
         + (f"; wrote {stem}.parquet and .csv" if out is not None else ""))
    return 0


def _schemes(table) -> dict:
    """model → its scheme, where the table says (for the λ notation)."""
    if "scheme" not in table.columns:
        return {}
    return {m: s for m, s in zip(table["model"], table["scheme"]) if isinstance(s, str)}
