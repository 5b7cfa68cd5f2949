"""``robench regress --update``: bring a CI baseline up to date with the zoo by evaluating only
the checkpoints it lacks. The orchestration (configs, zoo cards, sweeps, writing) lives here so that
:mod:`robench.regress` stays a pure function of tables."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from robench.errors import BadInput
from robench.regress import stale_checkpoints, updated_baseline


def _pairs(config) -> list[tuple[str, float | None]]:
    """The (model, λ) pairs a sweep config evaluates (:meth:`robench.spec.EvalSpec.pairs`; a model
    carries its tag, ``resnet20.s1``)."""
    return config.pairs()


def update_baseline(baseline: str | os.PathLike, configs: Sequence[str | os.PathLike], *,
                    work_dir: str | os.PathLike, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Bring a baseline up to date with the zoo without re-running what it already holds.

    For every (model, λ) of the sweep ``configs``, the checkpoint the zoo resolves now is evaluated
    (a sweep of that pair alone under ``work_dir``) only when the baseline has no cell with its
    weights sha256 (new or retrained). Cells of unchanged weights are kept as they are; cells of
    weights no longer in the configs' zoo are dropped. Writes ``baseline`` (.parquet + .csv) and
    returns the new table.
    """
    import model_zoo

    from robench.results import read_table, write_table
    from robench.sweep import load_config, plan_sweep, run_sweep

    old = read_table(baseline)
    current: dict[tuple, str] = {}
    where: dict[tuple, tuple] = {}
    for path in configs:
        cfg = load_config(path)
        for model, lam in _pairs(cfg):
            card = model_zoo.load_card(model, lam=lam)
            if card is None:
                raise BadInput(f"{path}: no trained weights for {model}"
                               + ("" if lam is None else f" at λ={lam:g}") + " in the zoo")
            key = (str(path), model, lam)
            current[key] = card.weights_sha256
            where[key] = (path, cfg)
    todo = stale_checkpoints(old, current)
    log(f"regression: {len(todo)} of {len(set(current.values()))} checkpoints lack cells in {baseline}")
    frames = []
    for i, key in enumerate(todo):
        path, cfg = where[key]
        _, model, lam = key
        one = dataclasses.replace(cfg, models=[model], lams=[lam])
        plan = plan_sweep(one, out=Path(work_dir) / f"update_{i}")
        log(f"regression: evaluating {model}" + ("" if lam is None else f" λ={lam:g}") + f" ({path})")
        frames.append(run_sweep(plan, log=log))
    new = pd.concat(frames, ignore_index=True) if frames else old.iloc[0:0]
    table = updated_baseline(old, new, set(current.values()))
    if table is None:
        log(f"regression: {baseline} is up to date; nothing written")
        return old
    write_table(table, Path(baseline).with_suffix(""))
    kept = len(table) - len(new)
    log(f"regression: updated {baseline}: kept {kept} cells, added {len(new)}, dropped {len(old) - kept}")
    return table
