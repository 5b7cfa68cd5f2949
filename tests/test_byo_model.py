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
    assert net.training  # evaluated in eval mode, handed back in the mode it came in
    net.eval()
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


class WithState(nn.Module):
    """BatchNorm and dropout (train mode changes the output), one frozen layer, a buffer of its own."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8 * 15 * 15, 10)
        self.register_buffer("scale", torch.tensor(4.0))

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1)) * self.scale


def _state(net: nn.Module) -> dict:
    return {
        "mode": {n: m.training for n, m in net.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in net.named_parameters()},
        "channels_last": {n: t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
                          and not t.is_contiguous() for n, t in net.state_dict().items()},
        "device": {n: str(t.device) for n, t in net.state_dict().items()},
        "storage": {n: t.data_ptr() for n, t in net.state_dict().items()},
        "values": {n: t.clone() for n, t in net.state_dict().items()},
    }


def test_evaluate_leaves_the_callers_module_exactly_as_found():
    """Issues 24.4 / 25.18: evaluate(model=net) used to hand the module back in eval mode, with every
    parameter frozen and its convolution weights in channels_last (a model evaluated mid-training
    silently stopped learning)."""
    net = WithState().train()
    net.head.bias.requires_grad_(False)  # a mix, so "all True" cannot pass by accident
    before = _state(net)
    df = robench.evaluate(model=net, name="mynet", attacks=["fgsm"], eps=["4/255"], n=8, progress=False)
    after = _state(net)
    for what in ("mode", "requires_grad", "channels_last", "device", "storage"):
        assert after[what] == before[what], what
    assert all(torch.equal(after["values"][k], v) for k, v in before["values"].items())
    assert net.training and net.bn.training and not net.head.bias.requires_grad and net.conv.weight.requires_grad
    # ... and it was evaluated in eval mode (BatchNorm on its running statistics, no dropout)
    from robench.data import load_samples

    x, y = load_samples().as_float()
    with torch.no_grad():
        expected = int((net.eval()(x[:8]).argmax(1) == y[:8]).sum())
    assert df["correct"].iloc[0] == expected


def test_a_failing_evaluation_also_gives_the_module_back():
    net = WithState().train()
    before = _state(net)
    with pytest.raises(BadInput):
        robench.evaluate(model=net, name="mynet", attacks=["fgsm"], eps=["4/255"], n=8, progress=False,
                         corruptions=["no_such_corruption"])
    net2 = WithState().train()
    calls = []

    def boom(module, inp, out):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("the user's hook fails mid-evaluation")
    net2.head.register_forward_hook(boom)
    before2 = _state(net2)
    with pytest.raises(BadInput, match="RuntimeError: the user's hook fails mid-evaluation"):  # one line, its cause
        robench.evaluate(model=net2, name="mynet", attacks=["fgsm"], eps=["4/255"], n=8, progress=False)
    for b, n in ((before, net), (before2, net2)):
        after = _state(n)
        for what in ("mode", "requires_grad", "channels_last", "device", "storage"):
            assert after[what] == b[what], what


@pytest.mark.cuda
def test_evaluate_on_cuda_leaves_a_cpu_module_on_the_cpu():
    net = WithState().train()
    before = _state(net)
    robench.evaluate(model=net, name="mynet", attacks=["fgsm"], eps=["4/255"], n=8, device="cuda", progress=False)
    after = _state(net)
    for what in ("mode", "requires_grad", "channels_last", "device", "storage"):
        assert after[what] == before[what], what
