"""Plots and the HTML report from tables built in the test; the page is rendered in headless Chromium."""
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from robench.analysis import landscape as ls
from robench.analysis import stability as st
from robench.analysis.common import finish
from robench.analysis.plots import plot_tables
from robench.analysis.report import write_report
from robench.errors import BadInput
from robench.results import pack_flags, to_frame, wilson, write_table


def _eval_table(path):
    rng = np.random.default_rng(0)
    recs = []
    for model, scheme, lam in (("resnet20", "euler", 0.0), ("inresnet20", "damped", 0.5), ("inresnet20", "damped", None)):
        for kind, pert, eps, sev in (("clean", "none", None, None), ("attack", "fgsm", 2 / 255, None),
                                     ("attack", "fgsm", 8 / 255, None), ("corruption", "gaussian_noise", None, 1),
                                     ("corruption", "gaussian_noise", None, 3)):
            flags = rng.random(40) < (0.9 if kind == "clean" else 0.5)
            lo, hi = wilson(int(flags.sum()), 40)
            recs.append({"model": model, "scheme": scheme, "lam": np.nan if lam is None else lam, "dataset": "cifar10",
                         "n": 40, "kind": kind, "perturbation": pert, "backend": "art" if kind == "attack" else None,
                         "norm": "linf" if kind == "attack" else None, "eps": eps, "severity": sev, "seed": 0,
                         "correct": int(flags.sum()), "accuracy": flags.mean(), "ci_low": lo, "ci_high": hi,
                         "data_sha256": "ab" * 32, "flags": pack_flags(flags)})
    write_table(to_frame(recs), path)
    return path.with_suffix(".parquet")


def _analysis_tables(tmp_path):
    from model_zoo.resnet import CifarResNet

    torch.manual_seed(0)
    model = CifarResNet(layers=(1, 2, 1), stem_width=4, widths=(4, 4, 8), scheme="damped", lam=None).eval()
    x, y = torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4])
    base = {"model": "inresnet_tiny", "scheme": "damped", "lam": np.nan, "dataset": "samples", "n": 5, "seed": 0}
    land = finish([{"analysis": "landscape", **base, **r}
                   for r in ls.aggregate(ls.per_example(model, x, y, directions=("grad_sign", "random"), points=5))],
                  ls.COLUMNS)
    stab = finish([{"analysis": "stability", **base, **r}
                   for r in st.aggregate(model, st.per_example(model, x, y, iters=2))], st.COLUMNS)
    write_table(land, tmp_path / "land")
    write_table(stab, tmp_path / "stab")
    return tmp_path / "land.parquet", tmp_path / "stab.csv"  # one parquet, one CSV: both readers


def test_plot_writes_the_figures_each_table_supports(tmp_path):
    ev = _eval_table(tmp_path / "ev")
    land, stab = _analysis_tables(tmp_path)
    names = {p.name for p in plot_tables([ev, land, stab], tmp_path / "plots")}
    assert {"accuracy_vs_lambda.png", "accuracy_vs_eps_fgsm.png", "accuracy_vs_severity_gaussian_noise.png",
            "landscape_grad_sign.png", "landscape_random0.png", "landscape_flatness.png",
            "stability_coefficients.png", "stability_gain.png", "stability_summary.png"} <= names
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "plots" / "accuracy_vs_lambda.png").convert("L"), dtype=float)
    assert img.shape[0] > 200 and img.std() > 10  # drawn, not blank


def test_plot_of_a_missing_table_is_bad_input_and_writes_nothing(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        plot_tables([tmp_path / "nope.parquet"], tmp_path / "plots")
    assert not (tmp_path / "plots").exists()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    ev = _eval_table(tmp_path / "ev")
    land, stab = _analysis_tables(tmp_path)
    return write_report([ev, land, stab], tmp_path / "report", title="test report")


def test_report_page_has_leaderboard_summaries_plots_and_provenance(report_page):
    page = report_page
    text = page.read_text()
    assert '<table class="leaderboard">' in text and "inresnet20" in text and "learned/–" in text
    assert '<table class="flatness">' in text and '<table class="stability">' in text
    assert "Provenance" in text and "ab" * 32 in text
    assert "http://" not in text and "https://" not in text  # nothing from the network
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) >= 9 and all((page.parent / s).is_file() for s in srcs)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_every_plot_visible(report_page, tmp_path):
    page = report_page
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    n_img = len(re.findall(r"<img ", dom))
    assert n_img >= 9
    assert len(re.findall(r'data-loaded="1"', dom)) == n_img  # every image decoded (its onload fired)
    rows = re.search(r'<table class="leaderboard">(.*?)</table>', dom, re.S)
    assert rows and rows.group(1).count("<tr>") == 1 + 3  # header + one row per (model, λ)
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (2400, 1280) and img.std() > 20  # a rendered page, not a blank one
