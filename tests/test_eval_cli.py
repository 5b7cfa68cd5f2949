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
    assert "8/255" in stdout and "0.500" in stdout and "worst_case" in stdout


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


BAD = {
    "unknown model": (["--model", "resnet21"], "resnet20"),
    "unknown attack": (["--model", "resnet20", "--attack", "pgdx"], "fgsm"),
    "unknown corruption": (["--model", "resnet20", "--corruption", "rain"], "gaussian_noise"),
    "unknown backend": (["--model", "resnet20", "--attack", "fgsm", "--backend", "torchattacks"], "art, foolbox"),
    "malformed eps": (["--model", "resnet20", "--attack", "fgsm", "--eps", "8/"], "8/255"),
    "eps divide by zero": (["--model", "resnet20", "--attack", "fgsm", "--eps", "2/255,8/0"], "8/255"),
    "lam above 1": (["--model", "inresnet20", "--lam", "1.5"], "[0, 1]"),
    "lam on resnet": (["--model", "resnet20", "--lam", "0.5"], "damped"),
    "no weights for lam": (["--model", "inresnet20", "--lam", "0.25"], "robench train --model inresnet20 --lam 0.25"),
    "severity 0": (["--model", "resnet20", "--corruption", "contrast", "--severity", "0"], "1, 2, 3, 4, 5"),
    "severity 6": (["--model", "resnet20", "--corruption", "contrast", "--severity", "2,6"], "1, 2, 3, 4, 5"),
    "n zero": (["--model", "resnet20", "--n", "0"], "positive"),
    "n above data": (["--model", "resnet20", "--n", "21"], "20 images"),
    "missing data dir": (["--model", "resnet20", "--data-dir", "/nonexistent/cifar"], "does not exist"),
    "missing corruption dir": (["--model", "resnet20", "--corruption", "fog", "--corruption-dir", "/nonexistent/c"],
                               "does not exist"),
    "unknown device": (["--model", "resnet20", "--device", "tpu"], "cpu"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_one_line_exit_2_and_no_file(case, zoo, tmp_path, capsys):
    args, hint = BAD[case]
    out = tmp_path / "results" / "X"
    code, stdout, stderr = run(["eval", *args, "--out", str(out)], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr + stdout
    assert hint in lines[0]
    assert not out.parent.exists()
