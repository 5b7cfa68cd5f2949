"""`robench eval`: a real run writes parquet + CSV and says n=20; bad input is one line, exit 2, no file."""
from __future__ import annotations

import pytest

from engine_helpers import expected_clean_flags, save_fitted
from robench.cli import main
from robench.results import read_table, unpack_flags


@pytest.fixture
def zoo():
    save_fitted("resnet20")
    save_fitted("inresnet20")


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_eval_samples_fgsm_writes_both_tables(zoo, tmp_path, capsys):
    out = tmp_path / "res" / "X"
    code, stdout, stderr = run(["eval", "--model", "resnet20", "--attack", "fgsm", "--eps", "8/255",
                                "--out", str(out)], capsys)
    assert code == 0, stderr
    assert "n=20" in stdout
    for suffix in (".parquet", ".csv"):
        df = read_table(out.with_name("X" + suffix))
        assert df["kind"].tolist() == ["clean", "attack", "worst_case"]
        assert (df["n"] == 20).all() and (df["dataset"] == "samples").all()
        assert df["eps"].iloc[1] == pytest.approx(8 / 255) and df["perturbation"].iloc[1] == "fgsm"
        assert (unpack_flags(df["flags"].iloc[0], 20) == expected_clean_flags(20)).all()
    # the printed table carries the accuracy and CI of each row
    assert "8/255" in stdout and "50.0" in stdout and "[29.9, 70.1]" in stdout and "worst_case" in stdout
    assert "the table was not saved" not in stdout


def test_eval_lists_and_lambda(zoo, tmp_path, capsys):
    code, stdout, stderr = run(["eval", "--model", "resnet20,inresnet20", "--lam", "learned", "--corruption",
                                "contrast", "--severity", "1,5", "--n", "6", "--batch-size", "4"], capsys)
    assert code == 0, stderr
    lines = [ln.split() for ln in stdout.splitlines() if ln.split()[:1] in (["resnet20"], ["inresnet20"])]
    assert [(ln[0], ln[1], ln[2]) for ln in lines] == [("resnet20", "0", "clean"), ("resnet20", "0", "corruption"),
                                                       ("resnet20", "0", "corruption"), ("inresnet20", "learned", "clean"),
                                                       ("inresnet20", "learned", "corruption"),
                                                       ("inresnet20", "learned", "corruption")]
    assert "n=6" in stdout
    # without --out the table is printed only, and the command says so and how to save it
    assert stdout.rstrip().splitlines()[-1].startswith("the table was not saved: add --out results/NAME")


# Bad input of `robench eval` is tested with every other command's in test_bad_input.py.


def test_first_line_names_the_checkpoint_and_files_come_before_the_table(zoo, tmp_path, capsys):
    import model_zoo

    out = tmp_path / "X"
    code, stdout, stderr = run(["eval", "--model", "resnet20", "--out", str(out)], capsys)
    assert code == 0, stderr
    lines = stdout.splitlines()
    path = model_zoo.user_zoo() / "resnet20.safetensors"
    assert lines[0] == f"checkpoints: resnet20 (user, {path})"
    wrote = next(i for i, ln in enumerate(lines) if ln.startswith("wrote "))
    table = next(i for i, ln in enumerate(lines) if ln.split()[:1] == ["model"])
    assert wrote < table
    assert read_table(out.with_suffix(".parquet"))["origin"].tolist() == ["user"]


def test_existing_table_needs_force(zoo, tmp_path, capsys):
    out = tmp_path / "X"
    assert run(["eval", "--model", "resnet20", "--n", "4", "--out", str(out)], capsys)[0] == 0
    before = out.with_suffix(".csv").read_bytes()
    code, _, stderr = run(["eval", "--model", "resnet20", "--out", str(out)], capsys)
    assert code == 2 and "--force" in stderr and out.with_suffix(".csv").read_bytes() == before
    code, _, stderr = run(["eval", "--model", "resnet20", "--out", str(out), "--force"], capsys)
    assert code == 0, stderr
    assert read_table(out.with_suffix(".csv"))["n"].tolist() == [20]


def test_param_and_config_build_the_same_spec(zoo, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('models = ["resnet20"]\nattacks = ["pgd"]\neps = ["4/255"]\nn = 4\n'
                   '[attack_params.pgd]\nsteps = 3\n')
    code, stdout, stderr = run(["eval", "--config", str(cfg), "--out", str(tmp_path / "a")], capsys)
    assert code == 0, stderr
    a = read_table(tmp_path / "a.parquet")
    assert a.loc[a["kind"] == "attack", "steps"].tolist() == [3] and (a["n"] == 4).all()
    # an option replaces the config's value; --param is the CLI's attack_params
    code, stdout, stderr = run(["eval", "--config", str(cfg), "--param", "pgd.steps=2", "--param",
                                "pgd.random_start=false", "--n", "6", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, stderr
    b = read_table(tmp_path / "b.parquet")
    assert b.loc[b["kind"] == "attack", "steps"].tolist() == [2] and (b["n"] == 6).all()


def test_out_dash_writes_csv_to_stdout(zoo, tmp_path, capsys):
    import io

    import pandas as pd

    code, stdout, stderr = run(["eval", "--model", "resnet20", "--n", "4", "--out", "-"], capsys)
    assert code == 0, stderr
    df = pd.read_csv(io.StringIO(stdout))
    assert df["kind"].tolist() == ["clean"] and df["n"].tolist() == [4]
    assert "checkpoints: resnet20" in stderr and not (tmp_path / "-.csv").exists()


def test_full_disk_leaves_no_half_pair(zoo, tmp_path, capsys, monkeypatch):
    import errno

    import pandas as pd

    def no_space(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", no_space)
    out = tmp_path / "res" / "X"
    code, stdout, stderr = run(["eval", "--model", "resnet20", "--n", "4", "--out", str(out)], capsys)
    assert code == 2
    assert stderr.count("\n") == 1 and "No space left on device" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in out.parent.iterdir()) == []  # neither file, no temp file


def test_closed_stdout_keeps_the_files_and_exits_quietly(zoo, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "X"
    cmd = (f"set -o pipefail; {sys.executable} -c 'from robench.cli import main; main()' eval --model resnet20 "
           f"--attack fgsm --n 4 --out {out} | head -1")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("checkpoints: resnet20") and r.stdout.count("\n") == 1
    assert r.stderr == ""
    assert read_table(out.with_suffix(".parquet"))["kind"].tolist() == ["clean", "attack", "worst_case"]


def test_line_per_cell_without_a_terminal(zoo, capsys, monkeypatch):
    monkeypatch.setenv("ROBENCH_PROGRESS", "1")
    code, stdout, stderr = run(["eval", "--model", "resnet20", "--attack", "fgsm", "--eps", "2/255,8/255",
                                "--n", "4", "--threads", "1"], capsys)
    assert code == 0, stderr
    assert "\r" not in stdout + stderr
    done = [ln for ln in stdout.splitlines() if ln.startswith("[") and "running" not in ln]
    assert [ln.split(":")[0] for ln in done] == ["[1/3] resnet20 clean seed=0", "[2/3] resnet20 fgsm[art] ε=2/255 seed=0",
                                                 "[3/3] resnet20 fgsm[art] ε=8/255 seed=0"]
    assert "[2–3/3] running resnet20 fgsm[art] ε=2/255,8/255 seed=0 (2 cells)" in stdout  # said as the group starts
    assert " % (" in done[0] and " · ETA " in done[0] and " · ETA " not in done[-1]  # percent, ETA until the end
    assert "1 thread" in stdout


def test_progress_bars_only_on_a_terminal_and_tqdm_disable_is_honoured(monkeypatch):
    import sys

    from robench.executors import progress_enabled

    monkeypatch.setenv("ROBENCH_PROGRESS", "1")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress_enabled(True)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not progress_enabled(True)
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress_enabled(True)


def test_eval_runs_the_checks_on_its_cells_and_writes_them_beside_the_table(zoo, tmp_path, capsys):
    from robench.checks import read_checks

    out = tmp_path / "X"
    code, stdout, stderr = run(["eval", "--model", "resnet20", "--attack", "fgsm", "--eps", "8/255",
                                "--out", str(out)], capsys)
    assert code == 0, stderr
    checks = read_checks(tmp_path / "X_checks.parquet")
    assert set(checks["model"]) == {"resnet20"}
    zero = checks[checks["check"] == "zero_gradient"]
    assert zero["status"].tolist() == ["pass"] and zero["value"].iloc[0] == 0.0
    assert "checks: resnet20" in stdout and "passed" in stdout
    # a second run may not replace the checks table either (even with the table itself gone)
    for suffix in (".parquet", ".csv"):
        (tmp_path / ("X" + suffix)).unlink()
    code, _, stderr = run(["eval", "--model", "resnet20", "--out", str(out)], capsys)
    assert code == 2 and "the checks table" in stderr and "X_checks.parquet" in stderr
    # and --no-checks runs none
    code, stdout, stderr = run(["eval", "--model", "resnet20", "--no-checks", "--out", str(tmp_path / "Y")], capsys)
    assert code == 0, stderr
    assert not (tmp_path / "Y_checks.parquet").exists() and "checks:" not in stdout


def test_checks_asked_for_explicitly_must_be_able_to_run(tmp_path, capsys):
    """Issue 24.3: checks that cannot run are an error for the command that asked for them."""
    save_fitted("inresnet20")  # no resnet20: the transfer check has no source
    code, stdout, stderr = run(["eval", "--model", "inresnet20", "--checks", "--out", str(tmp_path / "X")], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "--checks: the transfer check needs trained resnet20 weights" in stderr
    assert "checkpoints:" not in stdout and not list(tmp_path.glob("X*"))  # refused before any cell ran
    # by default (not asked for) the check that cannot run is shown as "not run", never as passed
    code, stdout, stderr = run(["eval", "--model", "inresnet20", "--attack", "fgsm", "--out", str(tmp_path / "X")],
                               capsys)
    assert code == 0, stderr
    assert "transfer_stronger not run (0.0 s): cannot load the transfer source resnet20" in stdout
    assert "checks: inresnet20 (samples): 3 passed, 0 flagged, 3 not applicable, 1 not run" in stdout
