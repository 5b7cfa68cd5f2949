"""Sweeps: kill -9 at several points, resume, and get the table of an uninterrupted run; config
changes are detected; results merge; the Ray executor."""
import dataclasses
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import model_zoo
from robench.errors import BadInput
from robench.results import KEY, read_table
from robench.sweep import SweepConfig, load_config, merge, plan_sweep, run_sweep

TINY = """
models = ["resnet20"]
dataset = "samples"
n = 4
attacks = ["fgsm"]
eps = ["4/255", 0.03137254901960784]
corruptions = ["gaussian_noise"]
severities = [1, 2]
"""
VOLATILE = ["seconds", "timestamp"]


def _save(name, lam=None, seed=0):
    torch.manual_seed(seed)
    m = model_zoo.create_model(name, lam=lam)
    m.train()
    m(torch.rand(8, 3, 32, 32))  # non-trivial BN statistics so that predictions differ between images
    return model_zoo.save(m.eval(), model_zoo.user_zoo() / model_zoo.zoo_stem(name, lam))


@pytest.fixture
def zoo():
    _save("resnet20")


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return p


def _cli(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", "from robench.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def _parts(out):
    return sorted(p.name for p in (out / "cells").glob("*.json") if not p.name.startswith(".tmp-"))


def _stable(df):
    return df.drop(columns=VOLATILE).reset_index(drop=True)


# Faults are injected from outside the production code: a subprocess wraps the disk store's put
# (kill right after the K-th part file is in place) or os.replace (kill right before the K-th part
# file is committed, leaving a complete temp file), then runs the ordinary CLI.
KILLER = """
import os, signal, sys
import robench.store as store
stage, k = sys.argv[1], int(sys.argv[2])
count = [0]
def hit():
    count[0] += 1
    if count[0] == k:
        os.kill(os.getpid(), signal.SIGKILL)
if stage == "after":
    put = store.DiskStore.put
    def killing_put(self, cell, record):
        put(self, cell, record)
        hit()
    store.DiskStore.put = killing_put
else:
    replace = os.replace
    def killing_replace(src, dst):
        if os.path.basename(os.path.dirname(dst)) == "cells":
            hit()
        replace(src, dst)
    os.replace = killing_replace
from robench.cli import main
main(sys.argv[3:])
"""


def _killed_cli(stage, k, args):
    return subprocess.run([sys.executable, "-c", KILLER, stage, str(k), *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ), timeout=300)


def test_kill9_at_two_points_then_resume_equals_uninterrupted(zoo, tiny, tmp_path):
    ref = run_sweep(plan_sweep(load_config(tiny), out=tmp_path / "ref"), log=lambda m: None)
    assert len(ref) == 7  # clean, 2 × fgsm, 2 × gaussian_noise, 2 derived worst-case rows
    assert sorted(ref["kind"]) == ["attack"] * 2 + ["clean"] + ["corruption"] * 2 + ["worst_case"] * 2

    out = tmp_path / "killed"
    # 1) killed right after its first part file is in place
    r = _killed_cli("after", 1, ["sweep", tiny, "--out", out])
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert "0 already done, 5 to run" in r.stdout
    assert len(_parts(out)) == 1 and not (out / "results.parquet").exists()
    # 2) killed between writing the temp file of its 2nd cell and committing it: a complete temp file stays
    r = _killed_cli("before_replace", 2, ["sweep", tiny, "--out", out])
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert "1 already done, 4 to run" in r.stdout
    assert len(_parts(out)) == 2
    assert len(list((out / "cells").glob(".tmp-*"))) == 1
    merged = merge(out)
    assert len(merged) == 2 + 1  # the temp file is ignored (+1 worst case: the fgsm cell has flags)
    assert merged.loc[merged["kind"] == "worst_case", "complete"].tolist() == [True]  # clean + fgsm@4/255: all planned
    # 3) resume to the end
    plan = plan_sweep(load_config(tiny), out=out)
    assert len(plan.done) == 2 and len(plan.pending) == 3
    df = run_sweep(plan, log=lambda m: None)
    assert len(_parts(out)) == 5 and not list((out / "cells").glob(".tmp-*"))
    assert not df.duplicated(list(KEY)).any()
    pd.testing.assert_frame_equal(_stable(df), _stable(ref))
    pd.testing.assert_frame_equal(_stable(read_table(out / "results.parquet")), _stable(ref))
    assert df.loc[df["kind"] == "worst_case", "complete"].tolist() == [True, True]
    # every file of the store is an ordinary 0644 file, like every other output
    modes = {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert modes == {oct(0o666 & ~_umask())}
    # 4) a finished sweep reruns nothing
    plan = plan_sweep(load_config(tiny), out=out)
    assert "5 already done, 0 to run" in plan.describe()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_dry_run_prints_plan_and_writes_nothing(zoo, tiny, tmp_path, capsys):
    from robench.cli import main

    with pytest.raises(SystemExit) as e:
        main(["sweep", str(tiny), "--out", str(tmp_path / "dry"), "--dry-run"])
    assert e.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("plan: 5 cells (1 model/λ pair, 1 seed, samples n=4), 0 already done, 5 to run")
    assert [ln.strip() for ln in out[1:-1]] == ["resnet20 clean seed=0", "resnet20 fgsm[art] ε=4/255 seed=0",
                                                "resnet20 fgsm[art] ε=8/255 seed=0", "resnet20 gaussian_noise s1 seed=0",
                                                "resnet20 gaussian_noise s2 seed=0"]
    # issue 24.5: --dry-run says how long the run would take
    assert re.fullmatch(r"estimate: about \d+ (s|min) for 5 cells on this machine \(rough, ±50 %: a forward pass of "
                        r"each model timed here on 64 images; .*\)", out[-1])
    assert not (tmp_path / "dry").exists()


def test_progress_counter_goes_on_after_a_resume_with_an_eta(zoo, tiny, tmp_path, capsys):
    """Issue 24.5: the resume counter restarted at 1, sweeps reported in bursts, no ETA."""
    from robench.cli import main

    out = tmp_path / "s"
    r = _killed_cli("after", 2, ["sweep", tiny, "--out", out, "--no-checks"])
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert "[1/5] resnet20 clean seed=0: " in r.stdout  # killed while storing the 2nd cell, before its line
    assert "[2–3/5] running resnet20 fgsm[art] ε=4/255,8/255 seed=0 (2 cells)" in r.stdout  # a group starts
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(tiny), "--out", str(out), "--no-checks", "--dry-run"])
    assert "fitted to the seconds of the cells already finished here" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(tiny), "--out", str(out), "--no-checks"])
    assert e.value.code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert [ln.split("]")[0] + "]" for ln in lines] == ["[3/5]", "[4/5]", "[5/5]"]
    assert all(" · ETA " in ln for ln in lines[:-1]) and " · ETA " not in lines[-1]
    assert re.search(r"\[3/5\] resnet20 fgsm\[art\] ε=8/255 seed=0: \d+\.\d %", lines[0])


def test_ctrl_c_keeps_the_finished_cells_and_says_how_to_resume(zoo, tiny, tmp_path, capsys, monkeypatch):
    """Issue 24.5: Ctrl-C printed only "interrupted"."""
    import robench.store as store
    from robench.cli import main

    put, count = store.DiskStore.put, [0]

    def put_then_interrupt(self, cell, record):
        put(self, cell, record)
        count[0] += 1
        if count[0] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(store.DiskStore, "put", put_then_interrupt)
    out = tmp_path / "s"
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(tiny), "--out", str(out), "--no-checks"])
    err = capsys.readouterr().err
    assert e.value.code == 130
    assert f"interrupted: 3 of 5 cells are kept in {out} (each is saved as it finishes); resume with: robench sweep " \
           f"{tiny} --out {out}" in err
    assert len(_parts(out)) == 3


def test_sweep_data_dir_overrides_the_config(zoo, tmp_path, capsys):
    """Issue 24.2: the README's config pointed at data/, and `sweep` had no --data-dir to say otherwise."""
    import numpy as np

    from robench.cli import main
    from synthetic_cifar import write_cifar10

    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 2)) for _ in range(5)]
    write_cifar10(tmp_path / "mine", parts, (rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 6)))
    cfg = tmp_path / "c.toml"
    cfg.write_text('models = ["resnet20"]\ndataset = "cifar10"\ndata_dir = "nowhere"\nn = 3\nout = "o"\n')
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(cfg), "--dry-run"])
    assert e.value.code == 2 and "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(cfg), "--dry-run", "--data-dir", str(tmp_path / "mine")])
    assert e.value.code == 0 and "cifar10 n=3" in capsys.readouterr().out


def test_changed_config_is_detected_not_mixed(zoo, tiny, tmp_path):
    out = tmp_path / "s"
    cfg = load_config(tiny)
    small = cfg.replace(attacks=(), eps=None, corruptions=(), severities=None)  # the clean cell only
    run_sweep(plan_sweep(small, out=out), log=lambda m: None)
    # extending the grid runs only the new cells
    plan = plan_sweep(cfg, out=out)
    assert len(plan.done) == 1 and len(plan.pending) == 4
    # another n
    with pytest.raises(BadInput, match="n=4.*n=5"):
        plan_sweep(cfg.replace(n=5), out=out)
    # other attack parameters for an already finished cell
    one_step = cfg.replace(attacks=["ifgsm"], eps=[8 / 255], corruptions=(), severities=None,
                           attack_params={"ifgsm": {"steps": 1}})
    run_sweep(plan_sweep(one_step, out=out), log=lambda m: None)
    with pytest.raises(BadInput, match="ifgsm.*other settings.*'steps', 2"):
        plan_sweep(one_step.replace(attack_params={"ifgsm": {"steps": 2}}), out=out)
    # a stored cell whose key was tampered with
    part = next((out / "cells").glob("*.json"))
    data = json.loads(part.read_text())
    data["key"] = data["key"].replace("resnet20", "resnet32")
    part.write_text(json.dumps(data))
    with pytest.raises(BadInput, match="does not match the plan"):
        plan_sweep(cfg, out=out)
    part.write_text("{ torn")
    with pytest.raises(BadInput, match="unreadable"):
        plan_sweep(cfg, out=out)
    part.unlink()
    # retrained weights (new sha256) for a model the sweep already ran
    _save("resnet20", seed=1)
    with pytest.raises(BadInput, match="weights of resnet20 changed"):
        plan_sweep(cfg, out=out)


# sweep configs; a campaign plan (configs/campaign_*.toml, [[jobs]]) is tested in test_campaign.py
CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "configs").glob("*.toml") if "[[jobs]]" not in p.read_text())


@pytest.mark.shipped_zoo
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_plan_against_the_shipped_zoo(path, tmp_path):
    """Every config in configs/ names registered models, attacks and corruptions and only (model, λ)
    pairs with shipped weights, so the README's sweep commands start on a fresh install (on the bundled
    images here: the real data's folder is the user's)."""
    config = dataclasses.replace(load_config(path), dataset="samples", data_dir=None, n=None)
    plan = plan_sweep(config, out=tmp_path / "out")
    assert plan.pending and not (tmp_path / "out").exists()


def test_missing_weights_name_the_training_command(zoo, tmp_path):
    cfg = SweepConfig(models=["resnet20", "inresnet20"], lams=[0.5, None], n=2, dataset="samples", out=str(tmp_path / "o"))
    with pytest.raises(BadInput, match=r"inresnet20__lam0.5, inresnet20 .*robench train --model inresnet20 --lam 0.5"):
        plan_sweep(cfg)
    assert not (tmp_path / "o").exists()


def test_second_sweep_on_a_locked_out_dir_is_refused(zoo, tiny, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(BadInput, match="another sweep is writing"):
            run_sweep(plan_sweep(load_config(tiny), out=out), log=lambda m: None)
    assert not (out / "cells").exists() or not _parts(out)


def test_results_merge_cli(zoo, tiny, tmp_path):
    from robench.cli import main

    cfg = load_config(tiny)
    out = tmp_path / "m"
    df = run_sweep(plan_sweep(cfg.replace(corruptions=(), severities=None), out=out), log=lambda m: None)
    with pytest.raises(SystemExit) as e:
        main(["results", "merge", str(out), "-o", str(tmp_path / "merged")])
    assert e.value.code == 0
    merged = read_table(tmp_path / "merged.parquet")
    pd.testing.assert_frame_equal(merged, df)
    csv = read_table(tmp_path / "merged.csv")
    assert list(csv["correct"]) == list(df["correct"])


def test_merge_of_a_partial_sweep_marks_incomplete_worst_cases(zoo, tiny, tmp_path, capsys):
    from robench.cli import main

    cfg = load_config(tiny).replace(corruptions=(), severities=None, eps=["4/255"])
    out = tmp_path / "p"
    both = plan_sweep(cfg.replace(attacks=["fgsm", "ifgsm"]), out=out)
    with both.store.open():
        pass  # the sweep starts (sweep.json records its plan) and is killed before any cell finishes
    run_sweep(plan_sweep(cfg, out=out), log=lambda m: None)  # later only fgsm ran
    with pytest.raises(SystemExit) as e:
        main(["results", "merge", str(out), "-o", str(tmp_path / "merged")])
    assert e.value.code == 0
    df = read_table(tmp_path / "merged.parquet")
    worst = df[df["kind"] == "worst_case"]
    assert worst["attacks"].tolist() == ["fgsm"] and worst["complete"].tolist() == [False]
    assert df.loc[df["kind"] != "worst_case", "attacks"].isna().all()
    assert df.loc[df["kind"] != "worst_case", "complete"].isna().all()


def _ray_or_skip():
    try:
        import ray
    except ImportError:
        pytest.skip("Ray is not installed (pip install 'robench[ray]')")
    return ray


@pytest.mark.slow
def test_ray_executor_fills_the_same_store(zoo, tiny, tmp_path, monkeypatch):
    ray = _ray_or_skip()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # else a new local Ray writes a token into ~/.ray
    ref = run_sweep(plan_sweep(load_config(tiny), out=tmp_path / "ref"), log=lambda m: None)
    out = tmp_path / "ray"
    # one cell done locally first: Ray must skip it and fill in the rest
    cfg = load_config(tiny)
    run_sweep(plan_sweep(cfg.replace(attacks=(), eps=None, corruptions=(), severities=None), out=out),
              log=lambda m: None)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.time()
        plan = plan_sweep(cfg, out=out)
        assert len(plan.pending) == 4
        df = run_sweep(plan, executor="ray", log=lambda m: None)
        print(f"ray sweep: {time.time() - t0:.1f} s")
    finally:
        ray.shutdown()
    assert len(_parts(out)) == 5
    pd.testing.assert_frame_equal(_stable(df), _stable(ref))


@pytest.mark.shipped_zoo
def test_shipped_configs_and_readme_commands_run_after_a_fetch(tmp_path, monkeypatch):
    """Issue 24.2: the README's config and commands used `data_dir = "data"`, a folder the README never
    creates; after `robench data fetch cifar10` they must run as written, from any working directory."""
    import numpy as np

    from robench.datahome import fetched_dir
    from synthetic_cifar import write_cifar10

    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 2)) for _ in range(5)]
    test = (rng.integers(0, 256, (1000, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 1000))
    write_cifar10(fetched_dir("cifar10").parent, parts, test)  # where `robench data fetch cifar10` puts it
    monkeypatch.chdir(tmp_path)  # no data/ folder here
    for path in CONFIGS:
        plan = plan_sweep(load_config(path), out=tmp_path / path.stem)
        assert plan.pending and plan.data.source.startswith(str(fetched_dir("cifar10").parent)) or \
            plan.data.name == "samples", path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "--data-dir data " not in readme and "--corruption-dir data/" not in readme and 'data_dir = "data"' not in readme
