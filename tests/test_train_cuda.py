"""The trainer on a CUDA device (`-m cuda`; skipped without a GPU): a train step and a packed step against the
CPU, CUDA-graph replay against eager steps, and the learning rate following the schedule across a milestone
while the graph replays.

Tolerances: CPU and GPU convolutions differ in summation order, so CPU-vs-CUDA compares use rtol 1e-3 /
atol 1e-4 after ≤ 10 fp32 steps (TF32 off); a wrong step (learning rate, data, momentum) moves weights by
≫ 1e-3. Graph-vs-eager compares the same kernels: they must agree to the device's own run-to-run
noise, measured in the test as the difference between two eager runs (zero when every kernel is
deterministic, which then demands bit-equality).
"""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import model_zoo
import robench.packed
from robench.data import Dataset
from robench.packed import Member
from robench.train import RECIPES, lr_at, time_pack_step, train_pack

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _exact_cuda():
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved


def _ds(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Dataset("cifar10", "train", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n,), generator=g), "synthetic", "0" * 64)


def _states(run_dir) -> dict[str, dict[str, torch.Tensor]]:
    """Every member's last committed checkpoint: weights, BN statistics, k_n and momentum buffers."""
    state = json.loads((run_dir / "state.json").read_text())
    return {mid: load_file(str(run_dir / m["state"]["file"])) for mid, m in state["members"].items()}


def _max_diff(a, b) -> float:
    worst = 0.0
    for mid in a:
        assert a[mid].keys() == b[mid].keys()
        for k in a[mid]:
            if a[mid][k].is_floating_point():
                worst = max(worst, (a[mid][k].double() - b[mid][k].double()).abs().max().item())
            else:
                assert torch.equal(a[mid][k], b[mid][k]), (mid, k)
    return worst


def _assert_close(cuda, cpu):
    for mid in cpu:
        for k in cpu[mid]:
            torch.testing.assert_close(cuda[mid][k], cpu[mid][k], rtol=1e-3, atol=1e-4, msg=f"{mid} {k}")


def _quiet(_m):
    pass


def test_a_train_step_on_cuda_matches_cpu(tmp_path):
    train_set, test_set = _ds(32), _ds(16, 1)
    kw = dict(recipe="fast", epochs=1, batch_size=8, lr=0.05, progress=False, log=_quiet)
    m = [Member("inresnet20", None, 1)]
    train_pack(m, train_set, test_set, device="cuda", cuda_graphs=False, run_dir=tmp_path / "cuda", **kw)
    train_pack(m, train_set, test_set, device="cpu", run_dir=tmp_path / "cpu", **kw)
    _assert_close(_states(tmp_path / "cuda"), _states(tmp_path / "cpu"))


def test_a_packed_step_replayed_as_a_cuda_graph_matches_cpu(tmp_path, monkeypatch):
    """Three members, the paper recipe (a kept short batch runs eagerly between replays), 10 steps."""
    captures = []
    real = robench.packed.PackStepper._capture
    monkeypatch.setattr(robench.packed.PackStepper, "_capture", lambda self, b: (captures.append(b), real(self, b)))
    members = [Member("resnet20", None, 0), Member("inresnet20", None, 1), Member("lambda_inresnet20", 0.5, 2)]
    train_set, test_set = _ds(36), _ds(16, 1)
    kw = dict(recipe="paper", epochs=2, batch_size=8, lr=0.05, progress=False, log=_quiet)
    res = train_pack(members, train_set, test_set, device="cuda", cuda_graphs=True, warmup_steps=2,
                     run_dir=tmp_path / "cuda", out=tmp_path / "zoo", **kw)
    assert captures == [8] and res["finished"]
    train_pack(members, train_set, test_set, device="cpu", run_dir=tmp_path / "cpu", **kw)
    _assert_close(_states(tmp_path / "cuda"), _states(tmp_path / "cpu"))
    card = json.loads((tmp_path / "zoo" / "inresnet20.s1.json").read_text())["training"]
    assert card["device"].startswith("cuda:") and card["cuda_graphs"] is True and card["pack_size"] == 3


def test_graph_replay_equals_eager_for_20_steps(tmp_path, monkeypatch):
    """Two members, 20 steps of the one-cycle schedule (a new learning rate every step): 3 eager warm-up steps,
    then 17 replays of the captured graph, against 20 eager steps."""
    replays = []
    real = robench.packed.PackStepper.step

    def step(self, b):
        real(self, b)
        replays.append(self.replays)
    monkeypatch.setattr(robench.packed.PackStepper, "step", step)
    members = [Member("inresnet20", None, 0), Member("lmresnet20", None, 3)]
    train_set, test_set = _ds(160), _ds(16, 1)
    kw = dict(recipe="fast", epochs=1, batch_size=8, lr=0.05, device="cuda", progress=False, log=_quiet)
    train_pack(members, train_set, test_set, cuda_graphs=True, warmup_steps=3, run_dir=tmp_path / "graph", **kw)
    assert replays == [0, 0, 0] + list(range(1, 18))
    train_pack(members, train_set, test_set, cuda_graphs=False, run_dir=tmp_path / "eager1", **kw)
    train_pack(members, train_set, test_set, cuda_graphs=False, run_dir=tmp_path / "eager2", **kw)
    graph, eager1, eager2 = (_states(tmp_path / d) for d in ("graph", "eager1", "eager2"))
    noise = _max_diff(eager1, eager2)
    diff = _max_diff(graph, eager1)
    assert diff <= 10 * noise, f"graph replay differs from eager by {diff:.3g} (eager run-to-run: {noise:.3g})"
    # and it really trained (the weights moved)
    torch.manual_seed(0)
    init = model_zoo.create_model("inresnet20").fc.weight.detach()
    assert not torch.allclose(graph["inresnet20"]["model.fc.weight"], init)


def test_learning_rate_follows_the_schedule_across_a_milestone_inside_the_graph(tmp_path, monkeypatch):
    """The paper recipe over 4 epochs of 4 steps: milestones at epochs 2 and 3 (steps 8 and 12) fall while the
    graph captured at step 3 (learning rate 0.05) replays; the device learning rate of every step is the
    schedule's, and the weights equal eager training's."""
    seen = []
    real = robench.packed.PackStepper.step

    def step(self, b):
        real(self, b)
        seen.append((self.replays, [r.lr.item() for r in self.runs]))
    monkeypatch.setattr(robench.packed.PackStepper, "step", step)
    members = [Member("inresnet20", 0.5, 0), Member("resnet20", None, 2)]
    train_set, test_set = _ds(64), _ds(16, 1)
    kw = dict(recipe="paper", epochs=4, batch_size=16, lr=0.05, device="cuda", progress=False, log=_quiet)
    train_pack(members, train_set, test_set, cuda_graphs=True, warmup_steps=3, run_dir=tmp_path / "graph", **kw)
    want = [lr_at(dataclasses.replace(RECIPES["paper"], lr=0.05), s, 4, 4) for s in range(16)]
    assert want[7] == pytest.approx(0.05) and want[8] == pytest.approx(0.005) and want[12] == pytest.approx(0.0005)
    assert [r for r, _ in seen] == [0, 0, 0] + list(range(1, 14))  # steps 3…15 are replays
    for s, (_, lrs) in enumerate(seen):
        assert lrs == [pytest.approx(want[s], rel=1e-6)] * 2, s
    seen.clear()
    train_pack(members, train_set, test_set, cuda_graphs=False, run_dir=tmp_path / "eager1", **kw)
    train_pack(members, train_set, test_set, cuda_graphs=False, run_dir=tmp_path / "eager2", **kw)
    graph, eager1, eager2 = (_states(tmp_path / d) for d in ("graph", "eager1", "eager2"))
    noise = _max_diff(eager1, eager2)
    assert _max_diff(graph, eager1) <= 10 * noise


def test_bf16_pack_with_graphs_trains_and_says_so_on_the_card(tmp_path):
    members = [Member("inresnet20", None, 0), Member("inresnet20", None, 1)]
    res = train_pack(members, _ds(64), _ds(32, 1), recipe="paper", epochs=2, batch_size=16, amp=True, device="cuda",
                     run_dir=tmp_path / "run", out=tmp_path / "zoo", progress=False, log=_quiet)
    assert res["finished"] and not res["diverged"]
    for mid in ("inresnet20", "inresnet20.s1"):
        t = json.loads((tmp_path / "zoo" / f"{mid}.json").read_text())["training"]
        assert t["precision"] == "bfloat16-autocast" and t["channels_last"] is True and t["cuda_graphs"] is True
        assert t["device"].startswith("cuda:")
        assert all(torch.isfinite(v).all() for v in _states(tmp_path / "run")[mid].values() if v.is_floating_point())


def test_time_pack_step_on_cuda_with_graphs():
    """The campaign probe's measure runs on the device with the graph captured after the warm-up."""
    ms_graph = time_pack_step("resnet20", 4, steps=5, warmup=2, batch_size=128, device="cuda", amp=True)
    ms_eager = time_pack_step("resnet20", 4, steps=5, warmup=2, batch_size=128, device="cuda", amp=True,
                              cuda_graphs=False)
    assert 0 < ms_graph and 0 < ms_eager
