"""The attack contract, on a tiny CNN trained for a few seconds on a learnable synthetic task."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

import robench.attacks as attacks
from robench.attacks import (AttackKind, AttackOutput, FixedEpsAttack, MinimalNormAttack, attack_defaults, backends_for,
                             list_attacks, make_attack, param_ranges)
from robench.attacks.registry import REGISTRY
from robench.errors import BadInput

NUM_CLASSES = 4
SIZE = 8  # 3×8×8 images

# Small budgets so the whole registry × backends runs in seconds on a busy CPU.
FAST = {
    "ifgsm": {"steps": 5, "step_size": 0.05},
    "pgd": {"steps": 5, "step_size": 0.05},
    "pgd10": {"steps": 5},
    "pgd_l2": {"steps": 5},
    "apgd_ce": {"steps": 10},
    "cw_l2": {"steps": 10, "binary_search_steps": 2, "learning_rate": 0.1, "initial_const": 1.0},
    "deepfool": {"steps": 20},
    "square": {"queries": 100, "p_init": 0.3},
    "hsj": {"steps": 3, "max_evals": 50, "init_evals": 10},
    "autoattack": {"steps": 10, "queries": 50, "target_classes": 3},
    "autoattack_art": {"steps": 10, "queries": 50, "target_classes": 3},
    "autoattack_lite": {"steps": 10, "queries": 50},
}
BIG_EPS = {"linf": 0.5, "l2": 4.0}  # an L2 ε above 1 is a real radius here (‖δ‖₂ ≤ √192)
SMALL_EPS = {"linf": 0.15, "l2": 1.5}
CASES = [(n, b) for n in list_attacks() for b in backends_for(n)]


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class = which quadrant (all three colours) is brightest."""
    g = torch.Generator().manual_seed(seed)
    x = 0.35 + 0.12 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    h = SIZE // 2
    for k in range(NUM_CLASSES):
        r, c = divmod(k, 2)
        x[y == k, :, r * h:(r + 1) * h, c * h:(c + 1) * h] += 0.3
    return x.clamp(0, 1), y


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(32, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models on a shared, busy CPU: a second intra-op thread only adds contention (~10× here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet()
    x, y = make_data(512, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    for _ in range(30):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


@pytest.fixture(scope="module")
def batch(trained) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_data(16, seed=2)
    return x, y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_tiny_model_learns_the_task(trained, batch):
    assert accuracy(trained, *batch) >= 0.9


def test_registry_names_backends_and_defaults_table():
    assert set(list_attacks()) >= {"fgsm", "ifgsm", "pgd", "pgd10", "pgd_l2", "apgd_ce", "cw_l2", "deepfool",
                                   "square", "hsj", "autoattack", "autoattack_art", "autoattack_lite"}
    assert backends_for("pgd") == ["art", "foolbox"]
    assert backends_for("autoattack") == ["pyautoattack"] and backends_for("autoattack_art") == ["art"]
    assert backends_for("square") == ["art"]
    rows = attack_defaults()
    assert [r["attack"] for r in rows] == list_attacks()
    by = {r["attack"]: r for r in rows}
    assert by["pgd"]["defaults"] == "steps=20, step_size=1/255, random_start=True"
    assert by["ifgsm"]["defaults"] == "steps=20, step_size=1/255"
    assert by["autoattack"]["defaults"] == "steps=100, target_classes=9, queries=5000"  # the standard version
    assert {r["attack"]: r["kind"] for r in rows if r["kind"] != "gradient"} == {
        "cw_l2": "minimal_norm", "deepfool": "minimal_norm", "square": "score_based", "hsj": "decision_based"}


def test_attributes_and_pgd10_step():
    atk = make_attack("pgd10", eps=8 / 255)
    assert (atk.name, atk.backend, atk.norm, atk.steps) == ("pgd10", "art", "linf", 10)
    assert atk.params == {"steps": 10, "step_size": None, "random_start": True}
    assert make_attack("cw_l2", eps=1.0, backend="foolbox").norm == "l2"
    assert make_attack("fgsm", eps=0.1).steps == 1
    # the kind is the type: minimal-norm and decision-based attacks search once, the others per ε
    for name in list_attacks():
        atk = make_attack(name, eps=0.1)
        assert isinstance(atk, MinimalNormAttack if REGISTRY[name].kind.minimal else FixedEpsAttack), name
        assert atk.kind is REGISTRY[name].kind and isinstance(atk.kind, AttackKind)


@pytest.mark.parametrize("name,backend", CASES)
def test_attack_contract(trained, batch, name, backend):
    x, y = batch
    spec_norm = make_attack(name, eps=0.1, backend=backend).norm
    clean = accuracy(trained, x, y)

    big = make_attack(name, eps=BIG_EPS[spec_norm], backend=backend, seed=0, **FAST.get(name, {}))
    out = big.run(trained, x, y)
    assert isinstance(out, AttackOutput)
    assert out.x_adv.shape == x.shape and out.x_adv.dtype == x.dtype and out.x_adv.device == x.device
    assert torch.equal(out.robust, trained(out.x_adv).argmax(1) == y)
    assert out.robust.float().mean().item() <= clean - 0.25, f"{name}/{backend} barely hurt accuracy"
    assert float(out.perturbation_norm.max()) <= big.eps + 1e-6

    small = make_attack(name, eps=SMALL_EPS[spec_norm], backend=backend, seed=3, **FAST.get(name, {}))
    runs = []
    for global_seed in (998, 999):  # the caller's global RNG state must not matter: the seed decides
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        random.seed(global_seed)
        runs.append(small(trained, x, y))
    a, b = runs
    delta = (a - x).reshape(len(x), -1).double()
    norms = delta.abs().amax(1) if spec_norm == "linf" else delta.norm(dim=1)
    assert norms.max().item() <= small.eps + 1e-6
    assert a.min().item() >= 0.0 and a.max().item() <= 1.0
    assert torch.equal(a, b), "same seed must give identical x_adv on CPU"


def test_seed_changes_random_start_but_not_global_rng(trained, batch):
    x, y = batch
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    t_state, n_state, p_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    for backend in ("art", "foolbox"):
        a = make_attack("pgd", eps=0.05, backend=backend, seed=1, steps=1)(trained, x, y)
        b = make_attack("pgd", eps=0.05, backend=backend, seed=2, steps=1)(trained, x, y)
        assert not torch.equal(a, b), f"{backend}: the seed must drive the random start"
    make_attack("square", eps=0.05, queries=5)(trained, x, y)
    assert torch.equal(torch.get_rng_state(), t_state)
    assert all(np.array_equal(u, v) for u, v in zip(np.random.get_state(), n_state))
    assert random.getstate() == p_state


def test_art_and_foolbox_pgd_agree(trained):
    x, y = make_data(128, seed=4)
    clean = accuracy(trained, x, y)
    accs = {}
    for backend in ("art", "foolbox"):
        out = make_attack("pgd", eps=0.12, backend=backend, seed=0, steps=10, step_size=0.03).run(trained, x, y)
        accs[backend] = out.robust.float().mean().item()
    assert 0.1 < accs["art"] < clean - 0.2  # ε in the interesting range, not trivially 0 or clean
    # stated tolerance: robust accuracies within 6 points (the random starts differ, the protocol does not)
    assert abs(accs["art"] - accs["foolbox"]) <= 0.06, accs
    # without the random start the two libraries take the very same steps
    same = [make_attack("pgd", eps=0.12, backend=b, random_start=False, steps=10, step_size=0.03)(trained, x, y)
            for b in ("art", "foolbox")]
    assert (same[0] - same[1]).abs().max().item() <= 1e-6


class Recorder(nn.Module):
    """Wraps a model; records (training, any param requires grad) at every forward; can explode."""

    def __init__(self, inner: nn.Module, explode_after: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.explode_after = explode_after
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, any(p.requires_grad for p in self.parameters())))
        if self.explode_after is not None and len(self.seen) > self.explode_after:
            raise RuntimeError("boom")
        return self.inner(x)


def _state(model: nn.Module):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()])


def _mixed_state_copy(trained: nn.Module) -> TinyNet:
    net = TinyNet()
    net.load_state_dict(trained.state_dict())
    net.train()
    net.features[1].eval()  # mixed modes must come back exactly
    params = list(net.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 7.0)  # a caller's pending gradient survives
    return net


@pytest.mark.parametrize("backend", ["art", "foolbox"])
def test_model_frozen_during_attack_and_restored_after(trained, batch, backend):
    x, y = batch
    net = _mixed_state_copy(trained)
    before = _state(net)
    rec = Recorder(net)
    make_attack("pgd", eps=0.05, backend=backend, steps=2).run(rec, x, y)
    assert rec.seen and all(s == (False, False) for s in rec.seen), "attack must run on a frozen eval model"
    after = _state(net)
    assert after[0] == before[0] and after[1] == before[1]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before[2], after[2]))


@pytest.mark.parametrize("backend", ["art", "foolbox"])
def test_state_restored_after_attack_raises(trained, batch, backend):
    x, y = batch
    net = _mixed_state_copy(trained)
    before = _state(net)
    rec = Recorder(net, explode_after=3)
    with pytest.raises(RuntimeError, match="boom"):
        make_attack("pgd", eps=0.05, backend=backend, steps=5)(rec, x, y)
    after = _state(net)
    assert after[0] == before[0] and after[1] == before[1]
    assert rec.training  # the wrapper's own training flag too


def test_eps_zero_is_clean(trained, batch):
    x, y = batch
    out = make_attack("pgd", eps=0.0).run(trained, x, y)
    assert torch.equal(out.x_adv, x)
    assert out.robust.float().mean().item() == accuracy(trained, x, y)


def test_minimal_norm_output_is_projected_and_scored_there(trained, batch):
    x, y = batch
    atk = make_attack("deepfool", eps=1.2, backend="foolbox", steps=20)
    out = atk.run(trained, x, y)
    assert float(out.perturbation_norm.max()) <= 1.2 + 1e-6
    assert torch.equal(out.robust, trained(out.x_adv).argmax(1) == y)
    # projection really binds at this ε: some unbounded DeepFool points (‖δ‖₂ ≈ 0.9…1.6) lie outside
    assert 0.0 < out.robust.float().mean().item() < 1.0


@pytest.mark.parametrize("call,match", [
    (lambda: make_attack("nope", eps=0.1), "choose one of: fgsm"),
    (lambda: make_attack("square", eps=0.1, backend="foolbox"), "choose one of: art"),
    (lambda: make_attack("pgd", eps=0.1, backend="cleverhans"), "choose one of: art, foolbox"),
    (lambda: make_attack("pgd", eps=-0.1), "ε must be"),
    (lambda: make_attack("pgd", eps=float("nan")), "ε must be"),
    (lambda: make_attack("pgd", eps=0.1, stepz=3), "valid: steps, step_size, random_start"),
    (lambda: make_attack("pgd", eps=0.1, steps=0), r"steps=0 is out of range; valid: an integer in \[1, 10\*\*5\]"),
    (lambda: make_attack("pgd", eps=0.1, steps=10**12), r"valid: an integer in \[1, 10\*\*5\]"),
    (lambda: make_attack("square", eps=0.1, queries=10**7), r"valid: an integer in \[1, 10\*\*6\]"),
    (lambda: make_attack("apgd_ce", eps=0.1, restarts=101), r"restarts=101 .* \[1, 100\]"),
    (lambda: make_attack("pgd", eps=0.1, step_size=2.0), r"step_size=2.0 .* \(0, 1\] or None"),
    (lambda: make_attack("pgd", eps=0.1, steps=float("inf")), "steps=inf"),
    (lambda: make_attack("pgd", eps=0.1, random_start=1), "True or False"),
    (lambda: make_attack("pgd", eps=8), r"ε=8 is above 1.*did you mean 8/255\?"),
    (lambda: make_attack("autoattack", eps=2.0), "did you mean 2/255"),
    (lambda: make_attack("fgsm", eps=0.1, steps=3), "valid: none"),
])
def test_bad_input(call, match):
    with pytest.raises(BadInput, match=match):
        call()


def test_bad_tensors(trained, batch):
    x, y = batch
    atk = make_attack("fgsm", eps=0.1)
    with pytest.raises(BadInput, match=r"\[0,1\]"):
        atk(trained, (x - 0.5) / 0.25, y)  # normalised input: normalisation belongs in the model
    with pytest.raises(BadInput, match="labels must be in"):
        atk(trained, x, y + NUM_CLASSES)
    with pytest.raises(BadInput, match="shape"):
        atk(trained, x, y[:3])


def test_every_hyper_parameter_has_a_range_that_admits_its_default():
    rows = param_ranges()
    assert {(r["attack"], r["param"]) for r in rows} == {(n, k) for n, spec in REGISTRY.items() for k in spec.params}
    for name, spec in REGISTRY.items():
        for key, p in spec.params.items():
            assert p.check(name, key, p.default) == p.default  # the default lies inside the range
            if p.kind != "bool":
                with pytest.raises(BadInput, match="out of range; valid: "):
                    p.check(name, key, p.hi * 10 + 1)


def test_run_is_run_eps_with_one_eps(trained, batch):
    """Today's single-ε results are unchanged: run(ε) and run_eps([..., ε, ...]) agree bit for bit."""
    x, y = batch
    for name, backend, kw in [("pgd", "art", {"steps": 3}), ("fgsm", "foolbox", {}),
                              ("deepfool", "foolbox", {"steps": 20})]:
        eps = [0.05, 0.0, 0.15] if name != "deepfool" else [0.5, 0.0, 1.5]
        outs = make_attack(name, eps=0.1, backend=backend, seed=4, **kw).run_eps(trained, x, y, eps)
        assert len(outs) == 3
        for e, out in zip(eps, outs):
            single = make_attack(name, eps=e, backend=backend, seed=4, **kw).run(trained, x, y)
            assert torch.equal(out.x_adv, single.x_adv), (name, e)
            assert torch.equal(out.robust, single.robust)
            assert float(out.perturbation_norm.max()) <= e + 1e-6
        assert torch.equal(outs[1].x_adv, x)


class CountingNet(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def test_minimal_norm_attack_searches_once_for_all_eps(trained, batch):
    x, y = batch
    eps = [0.25, 0.5, 1.0, 2.0, 4.0]
    atk = make_attack("deepfool", eps=1.0, backend="foolbox", steps=20)
    counted = CountingNet(trained)
    atk.run_eps(counted, x, y, eps[:1])
    one = counted.calls
    counted.calls = 0
    outs = atk.run_eps(counted, x, y, eps)
    # one search + one scoring forward per extra ε, not five searches
    assert counted.calls == one + len(eps) - 1
    acc = [o.robust.float().mean().item() for o in outs]
    assert acc == sorted(acc, reverse=True) and acc[0] > acc[-1]  # one search projected: monotone in ε
    fixed = CountingNet(trained)
    make_attack("pgd", eps=0.1, steps=3).run_eps(fixed, x, y, [0.05, 0.1])
    single = CountingNet(trained)
    make_attack("pgd", eps=0.1, steps=3).run(single, x, y)
    assert fixed.calls == 2 * single.calls - 1  # fixed-ε: one search per ε (the model check once)


def test_run_eps_bad_eps_list(trained, batch):
    x, y = batch
    atk = make_attack("pgd", eps=0.1, steps=1)
    for bad, match in [([], "non-empty"), (0.1, "non-empty"), ([0.1, 8], "did you mean 8/255"), ([-1.0], "ε must")]:
        with pytest.raises(BadInput, match=match):
            atk.run_eps(trained, x, y, bad)


def test_standard_autoattack_at_least_as_strong_as_apgd_ce(trained):
    """Issue 15: the standard AutoAttack (ART composition) lowers accuracy at least as much as ART's APGD-CE
    alone on the same examples (APGD-CE is its first component, seeded alike), and its extra components
    break more."""
    x, y = make_data(48, seed=6)
    eps = 0.12  # APGD-CE leaves ~40 %: room for the other components
    ce = make_attack("apgd_ce", eps=eps, seed=0, steps=10).run(trained, x, y).robust
    aa = make_attack("autoattack_art", eps=eps, seed=0, steps=10, queries=100).run(trained, x, y).robust
    lite = make_attack("autoattack_lite", eps=eps, seed=0, steps=10, queries=100).run(trained, x, y).robust
    assert not (aa & ~ce).any(), "an example APGD-CE broke survived AutoAttack"
    assert aa.sum() <= ce.sum() and aa.sum() <= lite.sum()
    assert ce.float().mean() > 0.2  # ε leaves something for the later components to do


def test_standard_autoattack_apgd_keeps_an_adversarial_iterate_the_last_step_lost(trained, batch):
    """ART 1.20's APGD returns its last iterate; the standard AutoAttack keeps the first
    misclassified point any APGD forward saw (the paper keeps the best point)."""
    from robench.attacks import art_backend

    x, y = batch
    adv = make_attack("pgd", eps=0.5, steps=5, step_size=0.1).run(trained, x, y)
    assert (~adv.robust).sum() >= 4
    aa = art_backend._StandardAutoAttack(art_backend.classifier(trained, x, NUM_CLASSES), 0.5,
                                         {"steps": 1, "target_classes": 1, "queries": 1}, len(x))

    class WandersBack:
        """Evaluates the adversarial points (as an APGD iterate would), then returns the clean ones."""

        def generate(self, x, y):
            with torch.no_grad():
                aa.tracked_clf.model(adv.x_adv)
            return x

    out = aa._apgd(WandersBack(), x.numpy(), y.numpy(), None)
    got = torch.from_numpy(out)
    fooled = ~adv.robust
    assert torch.equal(got[fooled], adv.x_adv[fooled]) and torch.equal(got[~fooled], x[~fooled])


def test_autoattack_is_the_authors_code_batch_by_batch(trained):
    """`autoattack` runs pyautoattack's standard AutoAttack on each batch with the batch's seed: its
    per-example flags equal those of calling the reference directly, batch by batch (the cross-check
    benchmarks/autoattack_crosscheck.py runs at full budget on CIFAR-10)."""
    from pyautoattack import AutoAttack

    from robench.executors import batch_seed, run_attack_group

    x, y = make_data(24, seed=7)
    x = x.contiguous(memory_format=torch.channels_last)  # as robench holds images (the reference needs NCHW)
    eps, budget = 0.12, {"steps": 5, "queries": 30, "target_classes": 3}
    torch.manual_seed(11)
    state = torch.get_rng_state()
    (res,) = run_attack_group(trained, x, y, attack="autoattack", eps=[eps], backend=None, params=budget, seed=5,
                              batch_size=12)
    assert torch.equal(torch.get_rng_state(), state)  # the reference seeds torch globally; the wrapper restores it
    assert res.backend == "pyautoattack"
    ref = []
    for b, i in enumerate(range(0, len(y), 12)):
        aa = AutoAttack(trained.eval(), norm="Linf", eps=eps, version="standard", seed=batch_seed(5, b), device="cpu")
        aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = budget["steps"]
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = budget["target_classes"]
        aa.square.n_queries = budget["queries"]
        _, y_adv = aa.run_standard_evaluation(x[i:i + 12].contiguous(), y[i:i + 12], batch_size=12)
        ref.append((y_adv == y[i:i + 12]).numpy())
    np.testing.assert_array_equal(res.flags, np.concatenate(ref))
    assert 0 < res.flags.sum() < accuracy(trained, x, y) * len(y)  # ε left something and broke something


def test_art_pgd_makes_no_forward_passes_beyond_its_steps_and_the_scoring(trained, batch):
    """ART's PGD computed its success rate (two forward passes over the batch) only to log it, even with
    nobody listening: 10 % of a PGD-20 (benchmarks/eval_throughput.py). While ART's logger is quiet the
    rate is not computed; with INFO on, it is, and the adversarial examples are the same."""
    import logging

    x, y = batch
    full = []
    hook = trained.register_forward_hook(lambda m, inp, out: full.append(inp[0].shape[0] == len(x)))
    try:
        quiet = make_attack("pgd", eps=8 / 255, seed=3).run(trained, x, y)
        assert sum(full) == 20 + 1  # 20 gradient steps, then robench's scoring pass
        art_log = logging.getLogger("art")
        level = art_log.level
        art_log.setLevel(logging.INFO)
        try:
            full.clear()
            loud = make_attack("pgd", eps=8 / 255, seed=3).run(trained, x, y)
        finally:
            art_log.setLevel(level)
        assert sum(full) == 20 + 1 + 2  # ART's logged success rate: clean and adversarial predictions
    finally:
        hook.remove()
    assert torch.equal(quiet.x_adv, loud.x_adv) and torch.equal(quiet.robust, loud.robust)
