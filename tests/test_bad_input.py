"""Bad input across the CLI: every case ends in one line ``error: …`` on stderr, exit code 2, no
traceback, and no output file."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import model_zoo
from robench.results import to_frame, wilson, write_table

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_cifar import colour_images, write_cifar10  # noqa: E402


@pytest.fixture
def env(tmp_path):
    """A zoo with resnet20 and inresnet20 (learned λ), a tiny CIFAR-10 folder, a results table and a sweep."""
    torch.manual_seed(0)
    for name in ("resnet20", "inresnet20"):
        model_zoo.save(model_zoo.create_model(name), model_zoo.user_zoo() / name)
    tiny = colour_images(8, seed=0)
    write_cifar10(tmp_path / "data", [tiny] * 5, tiny)
    truncated = tmp_path / "truncated"
    write_cifar10(truncated, [tiny] * 5, tiny)
    batch = truncated / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:1000])
    rows = [dict(model="resnet20", scheme="euler", lam=0.0, dataset="samples", n=20, kind="clean", perturbation="none",
                 backend=None, eps=None, severity=None, seed=0, correct=15, accuracy=0.75,
                 ci_low=wilson(15, 20)[0], ci_high=wilson(15, 20)[1])]
    write_table(to_frame(rows), tmp_path / "table")
    other = dict(rows[0], n=10, correct=5, accuracy=0.5, ci_low=wilson(5, 10)[0], ci_high=wilson(5, 10)[1])
    write_table(to_frame([other]), tmp_path / "other")
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 this is not a parquet file")
    # malformed tables (25.13): each breaks one claim a robench table makes
    good = rows[0]
    for name, change in {"acc_text": dict(accuracy="high"), "n_zero": dict(n=0), "n_nan": dict(n=float("nan")),
                         "correct_gt_n": dict(correct=25), "lam_learned": dict(lam="learned"),
                         "acc_not_ratio": dict(accuracy=0.95)}.items():
        pd.DataFrame([{**good, **change}]).to_csv(tmp_path / f"{name}.csv", index=False)
    (tmp_path / "zero.csv").write_bytes(b"")
    cells = tmp_path / "badcells"
    (cells / "cells").mkdir(parents=True)
    (cells / "sweep.json").write_text(json.dumps({"robench_sweep": 1}))
    (cells / "cells" / "0123456789abcdef.json").write_text(json.dumps(
        {"cell_id": "0123456789abcdef", "record": {**good, "n": "abc"}}))
    (tmp_path / "deep.toml").write_text("models = " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "wrong.csv").write_text("a,b\n1,2\n")
    cfg = 'models = ["resnet20"]\ndataset = "samples"\nn = 2\n'
    (tmp_path / "ok.toml").write_text(cfg)
    for name, text in {"unknown_key": cfg + "epochs = 3\n", "bad_toml": "models = [resnet20\n",
                       "bad_eps": cfg + 'attacks = ["fgsm"]\neps = ["8//255"]\n',
                       "bad_lam": 'models = ["inresnet20"]\nlams = [1.5]\nn = 2\n',
                       "lam_no_model": cfg + "lams = [0.5]\n",
                       "sev6": cfg + 'corruptions = ["gaussian_noise"]\nseverities = [6]\n',
                       "n_big": 'models = ["resnet20"]\nn = 21\n',
                       "n_neg": 'models = ["resnet20"]\nn = -1\n',
                       "no_weights": 'models = ["inresnet20"]\nlams = [0.25]\nn = 2\n',
                       "unknown_attack": cfg + 'attacks = ["pgdd"]\n',
                       "missing_data": 'models = ["resnet20"]\ndata_dir = "/nonexistent/cifar"\nn = 2\n',
                       "bad_device": cfg + 'device = "tpu"\n',
                       "eps2": cfg + 'attacks = ["fgsm"]\neps = [2.0]\n',
                       "n3": 'models = ["resnet20"]\ndataset = "samples"\nn = 3\n'}.items():
        (tmp_path / f"{name}.toml").write_text(text)
    return tmp_path


def _tamper_weights(root: Path) -> None:
    w = model_zoo.user_zoo() / "resnet20.safetensors"
    data = bytearray(w.read_bytes())
    data[-8:] = b"\x00" * 8
    w.write_bytes(bytes(data))


def _corrupt_card(root: Path) -> None:
    (model_zoo.user_zoo() / "resnet20.json").write_text("{ not json")


def _lam_half(root: Path) -> None:
    torch.manual_seed(0)
    model_zoo.save(model_zoo.create_model("inresnet20", lam=0.5), model_zoo.user_zoo() / "inresnet20__lam0.5")


LONG = "x" * 300


OUT = "OUT"  # replaced by a fresh path that must not exist afterwards

# (id, argv, expected piece of the message, setup)
CASES = [
    ("eval-unknown-model", ["eval", "--model", "resnet7", "--out", OUT], "unknown model 'resnet7'", None),
    ("eval-unknown-attack", ["eval", "--model", "resnet20", "--attack", "pgdd", "--out", OUT], "unknown attack", None),
    ("eval-unknown-corruption", ["eval", "--model", "resnet20", "--corruption", "fog2", "--out", OUT],
     "unknown corruption", None),
    ("eval-malformed-eps", ["eval", "--model", "resnet20", "--attack", "fgsm", "--eps", "8//255", "--out", OUT],
     "malformed ε", None),
    ("eval-negative-eps", ["eval", "--model", "resnet20", "--attack", "fgsm", "--eps", "-1/255", "--out", OUT],
     "ε", None),
    ("eval-lam-above-1", ["eval", "--model", "inresnet20", "--lam", "1.5", "--out", OUT], "[0, 1]", None),
    ("eval-lam-on-resnet", ["eval", "--model", "resnet20", "--lam", "0.5", "--out", OUT], "does not apply", None),
    ("eval-severity-0", ["eval", "--model", "resnet20", "--corruption", "gaussian_noise", "--severity", "0",
                         "--out", OUT], "severity", None),
    ("eval-severity-6", ["eval", "--model", "resnet20", "--corruption", "gaussian_noise", "--severity", "6",
                         "--out", OUT], "severity", None),
    ("eval-negative-n", ["eval", "--model", "resnet20", "--n", "-3", "--out", OUT], "--n", None),
    ("eval-n-too-large", ["eval", "--model", "resnet20", "--n", "21", "--out", OUT], "larger than", None),
    ("eval-missing-data-dir", ["eval", "--model", "resnet20", "--data-dir", "/nonexistent/cifar", "--out", OUT],
     "does not exist", None),
    ("eval-truncated-data", ["eval", "--model", "resnet20", "--data-dir", "{root}/truncated", "--out", OUT],
     "truncated", None),
    ("eval-tampered-checkpoint", ["eval", "--model", "resnet20", "--out", OUT], "does not match its card",
     _tamper_weights),
    ("eval-corrupt-card", ["eval", "--model", "resnet20", "--out", OUT], "unreadable", _corrupt_card),
    ("eval-no-trained-weights", ["eval", "--model", "inresnet20", "--lam", "0.5", "--out", OUT],
     "robench train --model inresnet20 --lam 0.5", None),
    ("eval-unknown-backend", ["eval", "--model", "resnet20", "--attack", "fgsm", "--backend", "torchattacks",
                              "--out", OUT], "backend", None),
    ("eval-eps-divide-by-zero", ["eval", "--model", "resnet20", "--attack", "fgsm", "--eps", "2/255,8/0", "--out", OUT],
     "8/255", None),
    ("eval-eps-8-means-8/255", ["eval", "--model", "resnet20", "--attack", "fgsm", "--eps", "8", "--out", OUT],
     "did you mean 8/255?", None),
    ("eval-eps-zero", ["eval", "--model", "resnet20", "--attack", "fgsm", "--eps", "0", "--out", OUT], "(0, 1]", None),
    ("eval-eps-without-attack", ["eval", "--model", "resnet20", "--eps", "8/255", "--out", OUT], "add --attack", None),
    ("eval-unknown-device", ["eval", "--model", "resnet20", "--device", "tpu", "--out", OUT], "valid choices: cpu",
     None),
    ("eval-bad-threads", ["eval", "--model", "resnet20", "--threads", "0", "--out", OUT], "--threads", None),
    ("eval-malformed-param", ["eval", "--model", "resnet20", "--attack", "pgd", "--param", "steps=3", "--out", OUT],
     "ATTACK.NAME=VALUE", None),
    ("eval-param-unknown-name", ["eval", "--model", "resnet20", "--attack", "pgd", "--param", "pgd.stepz=3",
                                 "--out", OUT], "unknown hyper-parameter", None),
    ("eval-param-for-absent-attack", ["eval", "--model", "resnet20", "--attack", "fgsm", "--param", "pgd.steps=3",
                                      "--out", OUT], "not among the attacks", None),
    ("eval-corruption-dir-without-data-dir", ["eval", "--model", "resnet20", "--corruption", "fog", "--corruption-dir",
                                              "{root}/data", "--out", OUT], "matching clean CIFAR-10 test split", None),
    ("eval-out-exists", ["eval", "--model", "resnet20", "--out", "{root}/table"], "--force", None),
    ("eval-out-not-utf8", ["eval", "--model", "resnet20", "--out", "{root}/bad\udcffname"], "not valid UTF-8", None),
    ("eval-config-unknown-key", ["eval", "--config", "{root}/unknown_key.toml", "--out", OUT], "unknown key epochs",
     None),
    ("eval-no-model", ["eval", "--out", OUT], "no model given", None),
    ("sweep-eps-above-1", ["sweep", "{root}/eps2.toml", "--out", OUT], "(0, 1]", None),
    ("sweep-out-not-a-store", ["sweep", "{root}/ok.toml", "--out", "{root}/data"], "not a sweep store", None),
    ("leaderboard-unreadable", ["leaderboard", "{root}/garbage.parquet", "-o", OUT], "unreadable", None),
    ("leaderboard-wrong-schema", ["leaderboard", "{root}/wrong.csv", "-o", OUT], "not a robench table", None),
    ("leaderboard-missing-table", ["leaderboard", "{root}/nope.parquet", "-o", OUT], "does not exist", None),
    ("leaderboard-bad-rank-by", ["leaderboard", "{root}/table.parquet", "-o", OUT, "--rank-by", "pgd@8/255"],
     "unknown --rank-by metric 'pgd@8/255'; valid choices: clean", None),
    ("regress-no-matching-cells", ["regress", "--baseline", "{root}/other.parquet", "{root}/table.parquet"],
     "no cell in common", None),
    ("regress-unreadable-baseline", ["regress", "--baseline", "{root}/garbage.parquet", "{root}/table.csv"],
     "unreadable", None),
    ("sweep-unknown-key", ["sweep", "{root}/unknown_key.toml", "--out", OUT], "unknown key epochs; valid keys: models",
     None),
    ("sweep-invalid-toml", ["sweep", "{root}/bad_toml.toml", "--out", OUT], "not valid TOML", None),
    ("sweep-missing-config", ["sweep", "{root}/none.toml", "--out", OUT], "does not exist", None),
    ("sweep-malformed-eps", ["sweep", "{root}/bad_eps.toml", "--out", OUT], "malformed ε", None),
    ("sweep-lam-above-1", ["sweep", "{root}/bad_lam.toml", "--out", OUT], "[0, 1]", None),
    ("sweep-lam-on-resnet", ["sweep", "{root}/lam_no_model.toml", "--out", OUT], "does not apply", None),
    ("sweep-severity-6", ["sweep", "{root}/sev6.toml", "--out", OUT], "severity", None),
    ("sweep-n-too-large", ["sweep", "{root}/n_big.toml", "--out", OUT], "larger than", None),
    ("sweep-negative-n", ["sweep", "{root}/n_neg.toml", "--out", OUT], "positive whole number", None),
    ("sweep-no-trained-weights", ["sweep", "{root}/no_weights.toml", "--out", OUT],
     "robench train --model inresnet20 --lam 0.25", None),
    ("sweep-unknown-attack", ["sweep", "{root}/unknown_attack.toml", "--out", OUT], "unknown attack 'pgdd'", None),
    ("sweep-missing-data-dir", ["sweep", "{root}/missing_data.toml", "--out", OUT], "does not exist", None),
    ("sweep-unknown-executor", ["sweep", "{root}/ok.toml", "--out", OUT, "--executor", "slurm"],
     "valid choices: local, ray", None),
    ("sweep-address-without-ray", ["sweep", "{root}/ok.toml", "--out", OUT, "--address", "auto"],
     "--address applies to the ray executor", None),
    ("train-unknown-model", ["train", "--model", "resnet21", "--data-dir", "{root}/data", "--out", OUT],
     "unknown model 'resnet21'", None),
    ("train-lam-on-resnet", ["train", "--model", "resnet20", "--lam", "0.5", "--data-dir", "{root}/data", "--out", OUT],
     "does not apply", None),
    ("train-missing-data-dir", ["train", "--model", "resnet20", "--data-dir", "/nonexistent/cifar", "--out", OUT],
     "cifar10 not found: expected /nonexistent/cifar/cifar-10-batches-py/", None),
    ("train-batch-larger-than-data", ["train", "--model", "resnet20", "--data-dir", "{root}/data", "--batch-size", "64",
                                      "--out", OUT], "larger than the training set", None),
    ("sweep-unknown-device", ["sweep", "{root}/bad_device.toml", "--out", OUT], "unknown device 'tpu'", None),
    ("sweep-tampered-checkpoint", ["sweep", "{root}/ok.toml", "--out", OUT], "does not match its card",
     _tamper_weights),
    ("results-merge-not-a-sweep", ["results", "merge", "{root}/data", "-o", OUT], "not a sweep folder", None),
    # issue 25.13: malformed tables and cells are one line, never a traceback
    ("leaderboard-accuracy-as-text", ["leaderboard", "{root}/acc_text.csv"], "accuracy must be a number", None),
    ("leaderboard-n-zero", ["leaderboard", "{root}/n_zero.csv"], "n must be a whole number in [1,", None),
    ("leaderboard-n-nan", ["leaderboard", "{root}/n_nan.csv"], "n is missing", None),
    ("leaderboard-correct-above-n", ["leaderboard", "{root}/correct_gt_n.csv"], "correct 25 is outside [0, n]", None),
    ("leaderboard-lam-learned-text", ["leaderboard", "{root}/lam_learned.csv"], "lam must be a number", None),
    ("leaderboard-accuracy-not-correct-over-n", ["leaderboard", "{root}/acc_not_ratio.csv"],
     "accuracy 0.95 is not correct/n = 15/20", None),
    ("regress-correct-above-n", ["regress", "--baseline", "{root}/table.parquet", "{root}/correct_gt_n.csv"],
     "correct 25 is outside", None),
    ("plot-corrupt-table", ["plot", "{root}/garbage.parquet", "-o", OUT], "unreadable", None),
    ("plot-n-zero", ["plot", "{root}/n_zero.csv", "-o", OUT], "n must be a whole number", None),
    ("report-corrupt-table", ["report", "{root}/garbage.parquet", "-o", OUT], "unreadable", None),
    ("report-zero-byte-table", ["report", "{root}/zero.csv", "-o", OUT], "unreadable", None),
    ("plot-zero-byte-table", ["plot", "{root}/zero.csv", "-o", OUT], "unreadable", None),
    ("results-merge-bad-cell-field", ["results", "merge", "{root}/badcells", "-o", OUT],
     "n must be a number, got 'abc'", None),
    # issue 25.14: unwritable, over-long and non-UTF-8 outputs are refused before any work
    ("leaderboard-out-too-long", ["leaderboard", "{root}/table.parquet", "-o", "{root}/" + LONG + ".csv"],
     "longer than the 255 bytes", None),
    ("report-out-not-utf8", ["report", "{root}/table.parquet", "-o", "{root}/bad\udcffdir"], "not valid UTF-8", None),
    ("plot-out-under-a-file", ["plot", "{root}/table.parquet", "-o", "{root}/file/plots"], "is not a folder", None),
    ("sweep-out-under-a-file", ["sweep", "{root}/ok.toml", "--out", "{root}/file/sweep"], "is not a folder", None),
    ("eval-out-too-long", ["eval", "--model", "resnet20", "--out", "{root}/" + LONG], "longer than the 255", None),
    ("zoo-import-out-under-a-file", ["zoo", "import", "{root}/table.csv", "--arch", "resnet20", "--out",
                                     "{root}/file/zoo"], "not a folder", None),
    # issue 25.15: odd values are refused before the cells run
    ("eval-lam-finer-than-checkpoint-names", ["eval", "--model", "inresnet20", "--lam", "0.5000000001", "--out", OUT],
     "6 significant digits", _lam_half),
    ("eval-seed-2-64", ["eval", "--model", "resnet20", "--seed", str(2 ** 64), "--out", OUT],
     "seed (--seed) must be a whole number in [0, 9223372036854775807]", None),
    ("sweep-deep-toml", ["sweep", "{root}/deep.toml", "--out", OUT], "nests arrays or tables too deeply", None),
    ("train-negative-lr", ["train", "--model", "resnet20", "--data-dir", "{root}/data", "--lr", "-1", "--out", OUT],
     "learning rate (--lr) must be a number in (0, 10]", None),
    ("train-nan-lr", ["train", "--model", "resnet20", "--data-dir", "{root}/data", "--lr", "nan", "--out", OUT],
     "learning rate", None),
    ("train-seed-2-70", ["train", "--model", "resnet20", "--data-dir", "{root}/data", "--seed", str(2 ** 70),
                         "--out", OUT], "seed (--seed) must be a whole number in [0, 4294967295]", None),
    ("train-device-meta", ["train", "--model", "resnet20", "--data-dir", "{root}/data", "--device", "meta",
                           "--out", OUT], "device 'meta' is not available", None),
    # issue 25.11: sizes and waits are bounded
    ("eval-threads-100000", ["eval", "--model", "resnet20", "--threads", "100000", "--out", OUT], "--threads", None),
    ("landscape-points-1e8", ["landscape", "--model", "resnet20", "--points", str(10 ** 8), "--out", OUT],
     "landscape points must be a whole number in [1, 1,001]", None),
    ("landscape-points2d-1e5", ["landscape", "--model", "resnet20", "--grid2d", "--points2d", str(10 ** 5),
                                "--out", OUT], "2-D grid must be a whole number in [1, 101]", None),
    ("stability-iters-1e8", ["stability", "--model", "resnet20", "--iters", str(10 ** 8), "--out", OUT],
     "power iterations (--iters) must be a whole number in [1, 1,000]", None),
    ("landscape-radius-16", ["landscape", "--model", "resnet20", "--radius", "16", "--out", OUT],
     "did you mean 16/255?", None),
    ("noise-protocol-without-clean-split", ["noise-protocol", "--model", "resnet20", "--corruption-dir", "{root}",
                                            "--out", OUT], "needs the clean CIFAR-10 test split", None),
]


def _snapshot(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case_id,argv,expected,setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(env, capsys, case_id, argv, expected, setup):
    from robench.cli import main

    if setup is not None:
        setup(env)
    out = env / "out" / "result"
    args = [str(out) if a == OUT else a.replace("{root}", str(env)) for a in argv]
    capsys.readouterr()
    before = _snapshot(env)
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]
    assert not (env / "out").exists()
    assert _snapshot(env) == before  # nothing written, nothing touched


def test_reusing_a_sweep_folder_with_another_n_is_refused(env, capsys):
    from robench.cli import main
    from robench.sweep import load_config, plan_sweep, run_sweep

    # a finished one-cell sweep at n=2, re-used with n=3
    run_sweep(plan_sweep(load_config(env / "ok.toml"), out=env / "sweep"), log=lambda m: None)
    before = _snapshot(env)
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(env / "n3.toml"), "--out", str(env / "sweep")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "n=2" in err and "n=3" in err
    assert _snapshot(env) == before


@pytest.mark.parametrize("argv", [["leaderboard", "{root}/wrong.csv", "-o", "{root}/lb.csv"],
                                  ["sweep", "{root}/unknown_key.toml", "--out", "{root}/s2"]])
def test_real_process_prints_one_line_and_exits_2(env, argv):
    args = [a.replace("{root}", str(env)) for a in argv]
    r = subprocess.run([sys.executable, "-c", "from robench.cli import main; main()", *args], capture_output=True,
                       text=True, env=os.environ.copy(), timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (env / "lb.csv").exists() and not (env / "s2").exists()


@pytest.mark.parametrize("argv,hint", [
    (["eval", "--model", "resnt20"], "unknown model 'resnt20' (did you mean 'resnet20'?); valid choices:"),
    (["eval", "--model", "ResNet20"], "(did you mean 'resnet20'?)"),
    (["eval", "--model", "resnet20", "--attack", "pdg"], "unknown attack 'pdg' (did you mean 'pgd'?); valid choices:"),
    (["eval", "--model", "resnet20", "--corruption", "gausian_noise"],
     "unknown corruption 'gausian_noise' (did you mean 'gaussian_noise'?); valid choices:"),
    (["landscape", "--model", "inresnt20@0.5", "--out", "x"], "(did you mean 'inresnet20'?)"),
])
def test_a_mistyped_name_gets_did_you_mean(argv, hint, capsys):
    """Issue 24.7: no "did you mean" for model, attack and corruption names."""
    from robench.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and hint in err
