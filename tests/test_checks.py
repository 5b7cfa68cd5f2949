"""Gradient-masking checks: each check has a positive (masked / broken model or table) and a negative case.

The models are nearest-neighbour classifiers over the 20 bundled CIFAR-10 samples (clean accuracy
100 %, analytic, no training): the plain one has honest gradients and breaks at large ε; the masked
one quantises its input with ``round`` first (zero gradient everywhere), the noisy one adds fresh
noise on every forward pass.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from robench.checks import CHECKS, CHECKS_SCHEMA, flag_words, read_checks, run_checks, table_checks, write_checks
from robench.data import load_dataset
from robench.results import wilson


class NearestSample(nn.Module):
    """Logits = −‖x − prototype‖² / T summed into the prototype's class."""

    def __init__(self, protos: torch.Tensor, labels: torch.Tensor, *, quantise: bool = False, noise: float = 0.0):
        super().__init__()
        self.register_buffer("protos", protos.flatten(1).clone())
        self.register_buffer("onehot", nn.functional.one_hot(labels, 10).float())
        self.quantise, self.noise = quantise, noise

    def forward(self, x):
        if self.quantise:  # a saturating/quantising layer before the classifier: zero gradient everywhere
            x = torch.round(x * 15) / 15
        d = torch.cdist(x.flatten(1), self.protos) ** 2
        logits = (-d / 50.0).softmax(dim=1) @ self.onehot * 20
        if self.noise:
            logits = logits + self.noise * torch.randn_like(logits)
        return logits


@pytest.fixture(scope="module")
def samples():
    x, y = load_dataset("samples").as_float()
    return x, y


def _table(model: str, cells: dict[tuple[str, float], int], n: int = 20, dataset: str = "samples") -> pd.DataFrame:
    """A results table built in the test: clean 20/20 plus the given (attack, ε) → correct cells."""
    rows = [{"model": model, "lam": math.nan, "dataset": dataset, "n": n, "kind": "clean", "perturbation": "none",
             "eps": math.nan, "seed": 0, "correct": n, "accuracy": 1.0}]
    for (att, eps), c in cells.items():
        lo, hi = wilson(c, n)
        rows.append({"model": model, "lam": math.nan, "dataset": dataset, "n": n, "kind": "attack",
                     "perturbation": att, "eps": eps, "seed": 0, "correct": c, "accuracy": c / n,
                     "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def _status(checks: pd.DataFrame, model: str, check: str) -> str:
    r = checks[(checks["model"] == model) & (checks["check"] == check)]
    assert len(r) == 1, r
    return str(r["status"].iloc[0])


E = 64 / 255


def test_masked_model_is_flagged_and_honest_model_is_not(samples):
    x, y = samples
    honest, masked, noisy = NearestSample(x, y), NearestSample(x, y, quantise=True), NearestSample(x, y, noise=1.0)
    # white-box PGD at 64/255: honest model 0/20, masked model keeps 20/20 (the gradient is zero)
    table = pd.concat([_table("honest", {("pgd", E): 0}), _table("masked", {("pgd", E): 20}),
                       _table("noisy", {("pgd", E): 0})], ignore_index=True)
    checks = run_checks(table, models={"honest": honest, "masked": masked, "noisy": noisy, "source": honest},
                        transfer_source="source")
    assert list(checks.columns) == list(CHECKS_SCHEMA)
    assert set(checks["check"]) == set(CHECKS)
    # zero gradient: every example of the masked model, none of the honest one
    assert _status(checks, "masked", "zero_gradient") == "flag"
    assert checks[(checks["model"] == "masked") & (checks["check"] == "zero_gradient")]["value"].iloc[0] == 1.0
    assert _status(checks, "honest", "zero_gradient") == "pass"
    # large-ε sanity attack: the masked model survives PGD at 64/255, the honest one does not
    assert _status(checks, "masked", "large_eps_survives") == "flag"
    assert _status(checks, "honest", "large_eps_survives") == "pass"
    # transfer from the honest model breaks the masked one, which white-box PGD could not
    assert _status(checks, "masked", "transfer_stronger") == "flag"
    assert _status(checks, "honest", "transfer_stronger") == "pass"
    # non-deterministic forward pass
    assert _status(checks, "noisy", "nondeterministic") == "flag"
    assert _status(checks, "honest", "nondeterministic") == "pass"
    assert _status(checks, "masked", "nondeterministic") == "pass"
    words = flag_words(checks)
    assert [w.split("(")[0] for w in words[("masked", None, "samples")]] == ["zero_gradient", "large_eps_survives",
                                                                             "transfer_stronger"]
    assert "transfer pgd@64/255 from source" in words[("masked", None, "samples")][2]
    assert ("honest", None, "samples") not in words


def test_single_step_stronger_than_iterative():
    n = 1000
    masked = table_checks(_table("m", {("fgsm", 8 / 255): 50, ("pgd", 8 / 255): 400}, n=n, dataset="cifar10"))
    normal = table_checks(_table("m", {("fgsm", 8 / 255): 400, ("pgd", 8 / 255): 50}, n=n, dataset="cifar10"))
    close = table_checks(_table("m", {("fgsm", 8 / 255): 390, ("pgd", 8 / 255): 400}, n=n, dataset="cifar10"))
    assert _status(masked, "m", "single_step_stronger") == "flag"
    assert masked[masked["check"] == "single_step_stronger"]["cells"].iloc[0] == "fgsm@8/255 5.0% < pgd@8/255 40.0%"
    assert _status(normal, "m", "single_step_stronger") == "pass"
    assert _status(close, "m", "single_step_stronger") == "pass"  # within the intervals


def test_accuracy_rising_with_eps():
    up = table_checks(_table("m", {("pgd", 2 / 255): 100, ("pgd", 8 / 255): 300}, n=1000))
    down = table_checks(_table("m", {("pgd", 2 / 255): 300, ("pgd", 8 / 255): 100}, n=1000))
    assert _status(up, "m", "accuracy_rises_with_eps") == "flag"
    assert "pgd@8/255 30.0% > pgd@2/255 10.0%" in up[up["check"] == "accuracy_rises_with_eps"]["cells"].iloc[0]
    assert _status(down, "m", "accuracy_rises_with_eps") == "pass"


def test_black_box_stronger_than_every_white_box():
    e = 8 / 255
    strong = table_checks(_table("m", {("square", e): 50, ("pgd", e): 300, ("fgsm", e): 400}, n=1000))
    weak = table_checks(_table("m", {("square", e): 350, ("pgd", e): 300, ("fgsm", e): 400}, n=1000))
    alone = table_checks(_table("m", {("square", e): 50}, n=1000))
    assert _status(strong, "m", "black_box_stronger") == "flag"
    assert _status(weak, "m", "black_box_stronger") == "pass"
    assert _status(alone, "m", "black_box_stronger") == "skip"


def test_checks_table_round_trips(tmp_path):
    checks = table_checks(_table("m", {("fgsm", 8 / 255): 50, ("pgd", 8 / 255): 400}, n=1000))
    write_checks(checks, tmp_path / "c")
    for suffix in (".parquet", ".csv"):
        back = read_checks(tmp_path / f"c{suffix}")
        pd.testing.assert_frame_equal(back, checks)


def test_a_check_that_cannot_run_is_not_run_never_a_pass():
    """Issue 24.3: a missing model or data set turned four model checks into "skip" and the
    leaderboard said "2 passed, 0 flagged, 5 skipped", which reads as clean."""
    from robench.checks import summaries
    from robench.errors import BadInput

    table = _table("resnet20", {("pgd", 8 / 255): 0})
    checks = run_checks(table, transfer_source=None)
    not_run = checks[checks["status"] == "not_run"]
    assert not_run["check"].tolist() == ["zero_gradient", "nondeterministic", "large_eps_survives", "transfer_stronger"]
    assert not_run["detail"].str.contains("no trained weights").all()
    assert summaries(checks)[("resnet20", None, "samples")] == "0 passed, 0 flagged, 3 not applicable, 4 not run"
    # asked for explicitly: one line naming what is missing, before any check runs
    with pytest.raises(BadInput, match=r"the model checks cannot run: missing the model resnet20 \(no trained weights"):
        run_checks(table, transfer_source=None, require=True)
    with pytest.raises(BadInput, match="missing the cifar10 data"):
        run_checks(_table("resnet20", {("pgd", 8 / 255): 0}, dataset="cifar10"), transfer_source=None, require=True,
                   data_dir="/nonexistent/data")


def test_old_checks_tables_read_a_missing_model_as_not_run(tmp_path):
    old = run_checks(_table("resnet20", {("pgd", 8 / 255): 0}), transfer_source=None)
    old.loc[old["status"] == "not_run", "status"] = "skip"  # what tables said before `not_run` existed
    write_checks(old, tmp_path / "old")
    back = read_checks(tmp_path / "old.parquet")
    assert (back["status"] == "not_run").sum() == 4 and (back["status"] == "skip").sum() == 3


def test_check_cli_refuses_when_the_model_checks_cannot_run(tmp_path, capsys):
    from robench.cli import main
    from robench.results import to_frame, write_table

    write_table(to_frame(_table("resnet20", {("fgsm", 8 / 255): 2, ("pgd", 8 / 255): 15}).to_dict("records")),
                tmp_path / "t")
    with pytest.raises(SystemExit) as e:
        main(["check", str(tmp_path / "t.parquet"), "--transfer-source", "none", "-o", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "the model checks cannot run: missing the model resnet20 (no trained weights" in err
    assert not list(tmp_path.glob("c.*"))


def test_check_cli_writes_the_table_refuses_overwrite_and_names_bad_models(tmp_path, capsys):
    from engine_helpers import save_fitted
    from robench.cli import main
    from robench.results import to_frame, write_table

    save_fitted("resnet20")

    write_table(to_frame(_table("resnet20", {("fgsm", 8 / 255): 2, ("pgd", 8 / 255): 15}).to_dict("records")),
                tmp_path / "t")
    args = ["check", str(tmp_path / "t.parquet"), "--transfer-source", "none", "-o", str(tmp_path / "c")]
    with pytest.raises(SystemExit) as e:
        main(args)
    captured = capsys.readouterr()
    out = captured.out
    assert e.value.code == 0
    assert "single_step_stronger     flag  fgsm@8/255 10.0% < pgd@8/255 75.0%" in out
    # progress: a line per check and model on stderr, as each finishes
    assert "checks [1/1] resnet20 samples n=20 seed=0: zero_gradient passed (" in captured.err
    c = read_checks(tmp_path / "c.parquet")
    assert set(c["status"]) <= {"pass", "flag", "skip"} and len(c) == 7
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "c.parquet exists; pass --force" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["check", str(tmp_path / "t.parquet"), "--model", "resnet56"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--model resnet56 is not in the table; valid choices: resnet20" in err
