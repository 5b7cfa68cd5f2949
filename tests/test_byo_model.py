"""Bring your own model: any nn.Module through robench.evaluate(model=..., name=...), and a user
package's @register_model found through the robench.models entry-point group."""
from __future__ import annotations

import re
import textwrap

import pytest
import torch
from torch import nn

import robench
from robench.cli import main
from robench.errors import BadInput
from robench.results import read_table


class Tiny(nn.Module):
    """A small classifier on [0,1] images; normalisation is its own business."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, classes))

    def forward(self, x):
        return self.net((x - 0.5) / 0.25)


def test_any_module_is_evaluated_with_origin_module():
    net = Tiny().train()
    df = robench.evaluate(model=net, name="mynet", attacks=["fgsm"], eps=["4/255"], n=6, progress=False)
    assert not net.training  # put in eval mode
    assert df["model"].tolist() == ["mynet"] * 3 and df["kind"].tolist() == ["clean", "attack", "worst_case"]
    assert (df["origin"] == "module").all() and df["card_sha256"].isna().all()
    assert df["weights_sha256"].str.fullmatch("[0-9a-f]{64}").all()
    with torch.no_grad():
        from robench.data import load_samples

        x, y = load_samples().as_float()
        expected = int((net(x[:6]).argmax(1) == y[:6]).sum())
    assert df["correct"].iloc[0] == expected


class Const(nn.Module):
    def __init__(self, out) -> None:
        super().__init__()
        self.out = out
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.out(x, self.calls)


@pytest.mark.parametrize("out,words", [
    (lambda x, k: torch.zeros(len(x), 7), "shape (N, 10)"),
    (lambda x, k: torch.zeros(len(x)), "shape (N, 10)"),
    (lambda x, k: torch.full((len(x), 10), float("nan")), "non-finite logits"),
    # finite when checked, NaN during the clean cell: the cell stops with a clear error
    (lambda x, k: torch.zeros(len(x), 10) if k == 1 else torch.full((len(x), 10), float("inf")), "non-finite logits"),
])
def test_a_module_that_is_not_a_classifier_of_the_data_is_refused(out, words):
    with pytest.raises(BadInput, match=re.escape(words)):
        robench.evaluate(model=Const(out), name="bad", n=4, progress=False)


PLUGIN = '''
from model_zoo import CifarResNet, register_model


@register_model(scheme="euler")
def plugnet8(**kw):
    return CifarResNet(block="basic", layers=(1, 1, 1), scheme="euler", **kw)
'''


@pytest.fixture
def private_registry(monkeypatch):
    """The plugin's registration must not leak into other tests' list_models()."""
    import sys

    import model_zoo.registry
    import robench.plugins

    monkeypatch.setattr(model_zoo.registry, "_MODELS", dict(model_zoo.registry._MODELS))
    monkeypatch.setattr(robench.plugins, "_loaded", set())
    yield
    sys.modules.pop("robench_testplug", None)


def test_a_registered_user_model_is_found_through_its_entry_point(tmp_path, monkeypatch, capsys, private_registry):
    import model_zoo

    site = tmp_path / "site"
    (site / "robench_testplug").mkdir(parents=True)
    (site / "robench_testplug" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "robench_testplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: robench-testplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[robench.models]\nplugnet8 = robench_testplug\n")
    monkeypatch.syspath_prepend(str(site))

    def run(argv):
        with pytest.raises(SystemExit) as e:
            main(argv)
        return e.value.code, capsys.readouterr()

    # found by name, but the zoo still needs trained weights for it
    code, out = run(["eval", "--model", "plugnet8", "--n", "4"])
    assert code == 2 and "no trained weights for plugnet8" in out.err and "robench train --model plugnet8" in out.err
    model_zoo.save(model_zoo.create_model("plugnet8"), model_zoo.user_zoo() / "plugnet8")
    code, out = run(["eval", "--model", "plugnet8", "--n", "4", "--out", str(tmp_path / "t")])
    assert code == 0, out.err
    df = read_table(tmp_path / "t.parquet")
    assert df["model"].tolist() == ["plugnet8"] and df["origin"].tolist() == ["user"]
