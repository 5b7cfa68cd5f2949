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
from robench.aggregate import table
from robench.results import pack_flags, wilson, write_table


_THREE = (("resnet20", "euler", 0.0), ("inresnet20", "damped", 0.5), ("inresnet20", "damped", None))
# the λ study's eight models, with long names, λ and learned λ: the widest leaderboard a study makes
_MANY = (("resnet20", "euler", 0.0), *(("inresnet20", "damped", v) for v in (0.25, 0.5, 0.75, 1.0)),
         ("inresnet20", "damped", None), ("lambda_inresnet20", "lambda_damped", None), ("lmresnet20", "lm", None))


def _eval_table(path, models=_THREE):
    rng = np.random.default_rng(0)
    recs = []
    for model, scheme, lam in models:
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
    write_table(table(recs), path)  # with the worst-case rows robench derives from the flags
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

    img = np.asarray(Image.open(tmp_path / "plots" / "00_ev" / "accuracy_vs_lambda.png").convert("L"), dtype=float)
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
    assert '<table class="leaderboard">' in text and "inresnet20" in text and ">learned<" in text
    assert "learned/–" not in text and "NaN" not in text  # one λ notation (issue 24.6)
    assert '<table class="flatness">' in text and '<table class="stability">' in text
    assert "Provenance" in text and "ab" * 32 in text
    # a summary first, then the contents, then the sections they link to
    ids = re.findall(r'<section id="([^"]+)"', text)
    assert ids[:6] == ["summary", "leaderboard", "claims", "threat-model", "cells", "checks"] and ids[-2:] == ["plots", "provenance"]
    assert text.index('<section id="summary"') < text.index("<nav>Contents:") < text.index('<section id="leaderboard"')
    assert all(f'href="#{i}"' in text for i in ids)
    # the checks: no checks table was given, so the model checks show as not run, never as passed
    checks = re.search(r'<table class="checks">(.*?)</table>', text, re.S).group(1)
    assert checks.count(">not run<") == 3 * 4 and "zero_gradient" in checks
    assert "http://" not in text and "https://" not in text  # nothing from the network
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) >= 9 and all((page.parent / s).is_file() for s in srcs)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path, *args, size="1280,2400"):
    """Headless Chromium as this sandbox needs it (no sandbox, no GPU, no network)."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000",
             f"--window-size={size}"]
    return subprocess.run([*flags, *args], capture_output=True, text=True, timeout=120)


# Measures, once the page has loaded, where the leaderboard's key column headers and its first row are
# and how wide the page is; the test reads the numbers back from the dumped DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const box = e => { const b = e.getBoundingClientRect(); return {text: e.textContent, left: b.left, top: b.top,
                                                                  right: b.right, bottom: b.bottom}; };
  const table = document.querySelector("table.leaderboard");
  document.body.setAttribute("data-probe", JSON.stringify({width: innerWidth, height: innerHeight,
    scroll_width: document.documentElement.scrollWidth,
    keys: [...table.querySelectorAll("th[data-key]")].map(box),
    first_row: [...table.querySelectorAll("tr:nth-child(2) td")].map(box)}));
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_leaderboard_key_columns_are_visible_without_scrolling_on_a_1366x768_screen(tmp_path):
    """Issue 24.6: the report's 26-column leaderboard overflowed the page with the columns that matter
    off-screen. At 1366×768 (a laptop; the viewport is smaller still, under the browser's chrome) every
    key column header and the first row must be on the first screen, and the page must not scroll sideways."""
    import html
    import json

    ev = _eval_table(tmp_path / "ev", models=_MANY)
    land, stab = _analysis_tables(tmp_path)
    page = write_report([ev, land, stab], tmp_path / "report", title="a study")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", probe.as_uri(), size="1366,768").stdout
    m = re.search(r'data-probe="([^"]*)"', dom)
    assert m, dom[-2000:]
    got = json.loads(html.unescape(m.group(1)))
    assert got["width"] == 1366 and 500 < got["height"] <= 768
    assert got["scroll_width"] <= got["width"]  # nothing scrolls sideways
    keys = [k["text"] for k in got["keys"]]
    assert keys[:4] == ["rank", "model", "λ", "clean %"] and "checks" in keys and "flags" in keys
    assert any("(ranked)" in k for k in keys)
    for box in got["keys"] + got["first_row"]:
        assert 0 <= box["left"] and box["right"] <= got["width"] and 0 <= box["top"] and box["bottom"] <= got["height"], box


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_every_plot_visible(report_page, tmp_path):
    page = report_page
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    n_img = len(re.findall(r"<img ", dom))
    assert n_img >= 9
    assert len(re.findall(r'data-loaded="1"', dom)) == n_img  # every image decoded (its onload fired)
    rows = re.search(r'<table class="leaderboard">(.*?)</table>', dom, re.S)
    assert rows and rows.group(1).count("<tr>") == 1 + 3  # header + one row per (model, λ)
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (2400, 1280) and img.std() > 20  # a rendered page, not a blank one


def test_plot_and_report_refuse_to_overwrite_without_force(tmp_path, capsys):
    """Issues 24.6 / 25.9: plot and report replaced earlier output silently, while every other command
    refuses without --force; and `plot A B -o d` let B's figures replace A's."""
    from robench.cli import main

    a, b = _eval_table(tmp_path / "a"), _eval_table(tmp_path / "b", models=_MANY)
    written = plot_tables([a, b], tmp_path / "plots")
    assert {p.parent.name for p in written} == {"00_a", "01_b"}  # one folder per table: nothing replaced
    assert len({p for p in written}) == len(written)
    before = {p: p.stat().st_mtime_ns for p in written}
    for argv in (["plot", str(a), "-o", str(tmp_path / "plots")], ["report", str(a), "-o", str(tmp_path / "rep")]):
        if argv[0] == "report":
            with pytest.raises(SystemExit) as e:
                main(argv)
            assert e.value.code == 0
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "pass --force" in err and len(err.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in written} == before
    old_page = (tmp_path / "rep" / "index.html").read_text()
    stale = tmp_path / "rep" / "plots" / "stale.png"
    stale.write_bytes(b"x")
    with pytest.raises(SystemExit) as e:
        main(["report", str(b), "-o", str(tmp_path / "rep"), "--force"])
    assert e.value.code == 0
    assert (tmp_path / "rep" / "index.html").read_text() != old_page and not stale.exists()
    with pytest.raises(SystemExit) as e:
        main(["plot", str(b), "-o", str(tmp_path / "plots"), "--force"])
    assert e.value.code == 0


def test_report_takes_extra_sections_at_the_top_with_their_files(tmp_path):
    """The hook for other sections: a (id, title, html, files) section placed after the summary."""
    from robench.analysis.report import Section

    ev = _eval_table(tmp_path / "ev")
    notes = Section("notes", "Notes", '<p>trained on the JPEG copy</p><img src="notes/figure.png">',
                    files=(("notes/figure.png", b"\x89PNG fake"),))
    page = write_report([ev], tmp_path / "r", top=[notes])
    text = page.read_text()
    ids = re.findall(r'<section id="([^"]+)"', text)
    assert ids[:3] == ["summary", "notes", "leaderboard"] and 'href="#notes"' in text
    assert (tmp_path / "r" / "notes" / "figure.png").read_bytes() == b"\x89PNG fake"
    with pytest.raises(BadInput, match="relative path inside the report folder"):
        write_report([ev], tmp_path / "r2", top=[Section("x", "X", "", files=(("../evil.png", b""),))])
