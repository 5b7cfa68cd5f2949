"""Issue 25, numbers: every number read is checked against what it claims (CIFAR batches,
CIFAR-10-C labels, stored cells, tables), attacks never score NaN logits, a module is checked on
every batch, `robench check` checks what the table ran on, and a full disk loses no table. Each
test is named after its finding and fails on the code before the fix."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import robench
from engine_helpers import save_fitted
from robench.errors import BadInput
from robench.results import read_table, to_frame, wilson, write_table

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_cifar import colour_images, write_cifar10  # noqa: E402
from test_byo_model import Tiny  # noqa: E402
from test_hardening_files import row, sweep_with_cells  # noqa: E402


# -- 25.3 CIFAR-10-C labels --------------------------------------------------------------------
def _c10c(tmp_path: Path, labels: np.ndarray) -> Path:
    from robench.data import load_samples

    s = load_samples()
    root = tmp_path / "c10c"
    root.mkdir(exist_ok=True)
    np.save(root / "gaussian_noise.npy", np.ascontiguousarray(np.tile(s.images[:4].numpy(), (5, 1, 1, 1))
                                                               .transpose(0, 2, 3, 1)))
    np.save(root / "labels.npy", labels)
    clean = (s.images.numpy(), s.labels.numpy())
    write_cifar10(tmp_path / "clean", [clean] * 5, clean)
    return root


def test_25_3_reordered_cifar10c_labels_are_refused_and_are_part_of_the_fingerprint(tmp_path):
    from robench.corruptions import load_cifar10c
    from robench.data import load_samples

    save_fitted("resnet20")
    labels = load_samples().labels[:4].numpy()
    kw = dict(models=["resnet20"], corruptions=["gaussian_noise"], severities=[1], n=4,
              data_dir=tmp_path / "clean", progress=False)
    good = robench.evaluate(corruption_dir=_c10c(tmp_path, np.tile(labels, 5)), **kw)
    assert good[good["kind"] == "corruption"]["accuracy"].tolist() == [0.5]
    sha_good = load_cifar10c(tmp_path / "c10c", "gaussian_noise", 1).sha256
    _c10c(tmp_path, np.tile(labels[::-1], 5))  # same images, labels reordered
    with pytest.raises(BadInput, match="does not match the clean CIFAR-10 test labels"):
        robench.evaluate(corruption_dir=tmp_path / "c10c", **kw)
    assert load_cifar10c(tmp_path / "c10c", "gaussian_noise", 1).sha256 != sha_good


# -- 25.5 NaN logits during attacks ------------------------------------------------------------
class NanOffGrid(Tiny):
    """Finite logits on 8-bit images and while gradients are taken; NaN logits on other images
    scored without gradients (how adversarial images are scored)."""

    def forward(self, x):
        out = self.net(x)
        if torch.is_grad_enabled():
            return out
        off = ((x * 255 - (x * 255).round()).abs() > 1e-3).flatten(1).any(1)
        return torch.where(off[:, None], torch.full_like(out, float("nan")), out)


def test_25_5_nan_logits_on_adversarial_images_are_refused_not_scored():
    with pytest.raises(BadInput, match="non-finite logits"):
        robench.evaluate(model=NanOffGrid(), name="nanny", attacks=["pgd"], eps=["8/255"], n=10, progress=False)


# -- 25.6 CIFAR batch content ------------------------------------------------------------------
@pytest.mark.parametrize("what,edit", [
    ("labels shifted to 10–19", lambda d: d.update({b"labels": [v + 10 for v in d[b"labels"]]})),
    ("float labels", lambda d: d.update({b"labels": [v + 0.5 for v in d[b"labels"]]})),
    ("boolean labels", lambda d: d.update({b"labels": [bool(v % 2) for v in d[b"labels"]]})),
    ("int64 pixels above 255", lambda d: d.update({b"data": d[b"data"].astype(np.int64) + 200})),
    ("float pixels", lambda d: d.update({b"data": d[b"data"].astype(np.float32) / 255})),
])
def test_25_6_out_of_range_batch_content_is_refused(tmp_path, what, edit):
    from robench.data import load_cifar

    tiny = colour_images(8, seed=0)
    folder = write_cifar10(tmp_path, [tiny] * 5, tiny)
    with open(folder / "test_batch", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    edit(d)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(BadInput, match="not a CIFAR batch file"):
        load_cifar("cifar10", tmp_path)


# -- 25.7 stored cells are checked against their flags -----------------------------------------
def test_25_7_a_stored_cell_whose_numbers_disagree_with_its_flags_is_refused(tmp_path, capsys):
    from robench.cli import main

    lie = row(kind="attack", pert="fgsm", eps=8 / 255, flags=(0, 0, 0, 0))
    lie.update(correct=4, accuracy=1.0, ci_low=wilson(4, 4)[0], ci_high=wilson(4, 4)[1])  # flags say 0 of 4
    sweep = sweep_with_cells(tmp_path, row(), lie)
    with pytest.raises(SystemExit) as e:
        main(["results", "merge", str(sweep), "-o", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "stored cell" in err and "0000000000000001.json" in err and "flags" in err, err
    assert not (tmp_path / "m.parquet").exists()


# -- 25.19 the module output check covers every batch -------------------------------------------
class FewColumnsForBigBatches(Tiny):
    def forward(self, x):
        out = self.net(x)
        return out if len(x) <= 2 else out[:, :5]


def test_25_19_a_module_that_answers_larger_batches_with_fewer_classes_is_refused():
    with pytest.raises(BadInput, match=r"shape \(N, 10\)"):
        robench.evaluate(model=FewColumnsForBigBatches(), name="few", n=10, batch_size=5, progress=False)


def test_25_19_the_shape_is_checked_on_every_batch_during_the_cells():
    from robench.executors import _correct

    net = FewColumnsForBigBatches()
    x, y = torch.rand(10, 3, 32, 32), torch.zeros(10, dtype=torch.long)
    with pytest.raises(BadInput, match="logits must be"):
        _correct(net, x, y, 5, "clean", lambda k: None, 10)


# -- 25.20 robench check checks what the table ran on -------------------------------------------
def test_25_20_check_does_not_run_model_checks_for_another_model_or_other_data(tmp_path):
    from robench.checks import run_checks

    save_fitted("resnet20")
    df = robench.evaluate(model=Tiny(), name="resnet20x", n=4, progress=False)
    df["model"] = "resnet20"  # a module evaluated under the zoo's name
    checks = run_checks(df, transfer_source=None)
    model_checks = checks[checks["check"].isin(["zero_gradient", "nondeterministic", "large_eps_survives"])]
    # not run (never "pass", and not "skip", which means "does not apply"): issue 24.3's word
    assert (model_checks["status"] == "not_run").all() and model_checks["detail"].str.contains("origin module").all()
    zoo = robench.evaluate(models=["resnet20"], n=4, progress=False)
    zoo["data_sha256"] = "e" * 64  # the rows ran on other data than the samples found now
    checks = run_checks(zoo, transfer_source=None)
    grad = checks[checks["check"] == "zero_gradient"]
    assert grad["status"].tolist() == ["not_run"] and "not the data the table's rows ran on" in grad["detail"].iloc[0]


# -- 25.22 a full disk does not lose the table ---------------------------------------------------
def test_25_22_a_full_disk_at_the_end_of_eval_rescues_the_table(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    from robench.cli import main

    save_fitted("resnet20")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    real = pd.DataFrame.to_parquet

    def full(self, path, *a, **k):
        if "out" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "resnet20", "--attack", "fgsm", "--n", "4", "--no-checks",
              "--out", str(tmp_path / "out" / "t")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "No space left on device" in err and "saved to" in err, err
    rescued = list((tmp_path / "tmp" / "robench-rescued").glob("t-*.csv"))
    assert len(rescued) == 1 and err.strip().endswith("(move it where it belongs)")
    table = read_table(rescued[0])
    assert table["kind"].tolist() == ["clean", "attack", "worst_case"]


# -- 25.13 / 25.15: malformed tables and odd values --------------------------------------------
def test_25_13_a_model_name_with_math_markup_plots_as_text(tmp_path):
    from robench.analysis.plots import plot_tables

    write_table(to_frame([row(model=r"$\foo$"), row(model=r"$\foo$", kind="attack", pert="pgd", eps=8 / 255)]),
                tmp_path / "t")
    assert len(plot_tables([tmp_path / "t.csv"], tmp_path / "plots")) == 2


def test_25_15_a_deeply_nested_user_card_breaks_nothing_else(tmp_path, capsys):
    import model_zoo
    from robench.cli import main

    save_fitted("resnet20")
    zoo = model_zoo.user_zoo()
    (zoo / "inresnet20.json").write_text('{"name": ' + "[" * 100_000 + "]" * 100_000 + "}")
    records, problems = model_zoo.scan_zoo()
    assert [r.name for r in records] == ["resnet20"] and len(problems) == 1
    df = robench.evaluate(models=["resnet20"], n=2, progress=False)
    write_table(df, tmp_path / "t")
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", str(tmp_path / "t.parquet")])
    assert e.value.code == 0, capsys.readouterr().err


def test_25_15_lambda_seed_and_train_values_are_checked_before_work():
    from robench.packed import parse_seed
    from robench.spec import parse_int, parse_lam

    with pytest.raises(BadInput, match="6 significant digits"):
        parse_lam("0.5000000001")
    with pytest.raises(BadInput, match="denormal"):
        parse_lam(5e-324)  # would name the file __lam4.94066e-324, another model than λ = 0
    assert str(parse_lam("-0")) == "0.0"  # not -0.0, which names another file
    with pytest.raises(BadInput, match="in \\[0, 9223372036854775807\\]"):
        parse_int(str(2 ** 64), "seed (--seed)", 0, 2 ** 63 - 1)
    # the learning rate's bounds: tests/test_packed.py::test_train_refuses_a_learning_rate_that_is_not_positive_and_finite
    with pytest.raises(BadInput, match="seed"):
        parse_seed(2 ** 70)


# -- smaller findings --------------------------------------------------------------------------
def test_markdown_and_html_in_names_stay_literal_in_the_leaderboard():
    from robench.leaderboard import leaderboard, to_markdown

    evil = "<img src=x onerror=alert(1)>|[a](http://e.vil)_x_$y$\x1b[2J"
    md = to_markdown(leaderboard(to_frame([row(model=evil)]), cards={}))
    import re

    lines = md.splitlines()
    head = next(i for i, t in enumerate(lines) if t.startswith("| rank"))  # after the ranking rule
    line = lines[head + 2]
    assert not re.search(r"(?<!\\)[<>\[\]$|]", line.split(" | ")[1]) and "\x1b" not in line
    assert line.count(" | ") == lines[head].count(" | ")  # the name's | did not add a column


def test_report_image_links_are_url_encoded_and_resolve(tmp_path):
    import re
    import urllib.parse

    from robench.analysis.report import write_report

    write_table(to_frame([row(), row(kind="attack", pert="pgd", eps=8 / 255)]), tmp_path / "a #b?%")
    page = write_report([tmp_path / "a #b?%.csv"], tmp_path / "rep").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs and all(not set(s) & set(" #?%") - {"%"} for s in srcs)
    assert all((tmp_path / "rep" / urllib.parse.unquote(s)).is_file() for s in srcs)


def test_a_module_returning_complex_or_integer_logits_is_one_line():
    class Complex(Tiny):
        def forward(self, x):
            return torch.complex(self.net(x), self.net(x))

    with pytest.raises(BadInput, match="real float"):
        robench.evaluate(model=Complex(), name="cx", n=4, progress=False)


def test_a_module_that_raises_during_an_attack_is_one_line():
    class FailsOnGradients(Tiny):
        def forward(self, x):
            if torch.is_grad_enabled() and x.requires_grad:
                raise ValueError("no gradients here")
            return self.net(x)

    with pytest.raises(BadInput, match="model 'fg' failed during .*ValueError: no gradients here"):
        robench.evaluate(model=FailsOnGradients(), name="fg", attacks=["fgsm"], n=4, progress=False)


@pytest.mark.parametrize("call,match", [
    (lambda: robench.landscape(models=["resnet20"], radius=16), "did you mean 16/255"),
    (lambda: robench.landscape(models=["resnet20"], pgd_eps=8), "did you mean 8/255"),
    (lambda: robench.stability(models=["resnet20"], eps=2), "did you mean 2/255"),
])
def test_eps_like_options_of_the_analyses_are_in_0_1(call, match):
    with pytest.raises(BadInput, match=match):
        call()


def test_error_messages_show_control_characters_escaped(tmp_path, capsys):
    from robench.cli import main

    df = to_frame([row()])
    df.loc[0, "kind"] = "\x1b[2Jboom"
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(SystemExit):
        main(["leaderboard", str(tmp_path / "t.csv")])
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b" in err and len(err.strip().splitlines()) == 1


def test_checks_and_analysis_tables_are_checked_value_by_value(tmp_path):
    from robench.analysis.common import read_analysis
    from robench.checks import read_checks

    checks = pd.read_csv(Path(__file__).parents[1] / "results" / "baseline_cifar1000_checks.csv")
    checks.loc[0, "status"] = "maybe"
    checks.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(BadInput, match="status 'maybe' is not one of pass, flag, skip"):
        read_checks(tmp_path / "c.csv")
    land = pd.read_parquet(Path(__file__).parents[1] / "results" / "lambda_study_depth20_landscape.parquet")
    land.loc[3, "mean"] = 99.0  # outside its own interval
    land.to_parquet(tmp_path / "l.parquet")
    with pytest.raises(BadInput, match="does not contain the mean"):
        read_analysis(tmp_path / "l.parquet")


def test_a_large_analysis_seed_is_used_not_overflowed():
    save_fitted("resnet20")
    df = robench.stability(models=["resnet20"], n=2, iters=1, seed=2 ** 62, batch_size=2)
    assert set(df["seed"]) == {2 ** 62}


def test_a_planted_plots_link_in_a_report_folder_is_refused(tmp_path):
    from robench.analysis.report import write_report

    write_table(to_frame([row()]), tmp_path / "t")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "plots").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BadInput, match="symbolic link"):
        write_report([tmp_path / "t.csv"], tmp_path / "rep")
    assert list((tmp_path / "elsewhere").iterdir()) == []
