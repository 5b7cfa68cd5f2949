"""The packed trainer: several members in one process, each ending exactly as if trained alone; members
from the command line and from a TOML plan; one commit point an epoch (resume after a kill anywhere);
a diverging member dropped while the others go on; tagged exports; the run folder's lock."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import model_zoo
import robench.train as rt
from robench import runstate
from robench.data import Dataset
from robench.errors import BadInput
from robench.packed import Member, load_plan, members_from_lists
from robench.train import train, train_pack
from synthetic_cifar import colour_images, write_cifar10


def _quiet(_msg: str) -> None:
    pass


def _ds(n: int, seed: int = 0) -> Dataset:
    x, y = colour_images(n, seed=seed)
    return Dataset("cifar10", "train", torch.from_numpy(x), torch.from_numpy(y), "synthetic", "0" * 64)


def _member_file(run_dir, member_id: str) -> dict[str, torch.Tensor]:
    state = json.loads((run_dir / "state.json").read_text())
    return load_file(str(run_dir / state["members"][member_id]["state"]["file"]))


# every scheme, learned and fixed λ, several seeds: one architecture (depth 20)
PACK = [Member("resnet20", None, 0), Member("inresnet20", None, 1), Member("inresnet20", 0.5, 2),
        Member("lambda_inresnet20", None, 0), Member("lambda_inresnet20", 0.25, 3), Member("lmresnet20", None, 1)]


def test_each_member_of_a_pack_ends_exactly_as_if_trained_alone(tmp_path):
    """float64, the paper recipe (short last batch kept, reflect padding, wd on every parameter) for 12 steps
    over 2 epochs: every member's weights, BatchNorm statistics (and batch counts), learned k_n and momentum
    buffers equal those of `robench train --seed s` for that member alone, bit for bit."""
    train_set, test_set = _ds(44), _ds(10, seed=1)  # batch 8: five full batches and one of 4 an epoch
    kw = dict(recipe="paper", epochs=2, batch_size=8, lr=0.05, dtype=torch.float64, progress=False, log=_quiet)
    packed = train_pack(PACK, train_set, test_set, run_dir=tmp_path / "pack", **kw)
    assert packed["finished"] and not packed["diverged"]
    for m in PACK:
        alone = train(m.model, train_set, test_set, lam=m.lam, seed=m.seed, run_dir=tmp_path / m.id, **kw)
        a, b = _member_file(tmp_path / "pack", m.id), _member_file(tmp_path / m.id, m.id)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{m.id}: {k} differs from the member trained alone"
        assert packed["members"][m.id]["history"] == [{**r, "seconds": packed["members"][m.id]["history"][i]["seconds"]}
                                                      for i, r in enumerate(alone["history"])]
        # the comparison is not vacuous: float64, momentum kept, BN statistics and k_n moved
        assert a["model.fc.weight"].dtype == torch.float64 and "momentum.fc.weight" in a
        assert int(a["model.blocks.1.bn1.num_batches_tracked"]) == 12
        assert not torch.equal(a["model.blocks.1.bn1.running_mean"], torch.zeros_like(a["model.blocks.1.bn1.running_mean"]))
        if model_zoo.create_model(m.model, lam=m.lam).learned:
            torch.manual_seed(m.seed)
            k0 = model_zoo.create_model(m.model, lam=m.lam).k.double()
            assert "model.k" in a and not torch.equal(a["model.k"], k0)
    # members differ from each other (different seeds and schemes really trained different models)
    w = {m.id: _member_file(tmp_path / "pack", m.id)["model.fc.weight"] for m in PACK}
    assert len({tuple(v.flatten()[:5].tolist()) for v in w.values()}) == len(PACK)


def _reference_loop(model_name, lam, seed, x, y, *, epochs, bs, lr, pad=2):
    """The seed code's recipe written as a plain loop (float64): reflect-pad 2 (numpy) and crop + flip per
    image, every batch of the shuffled epoch (the short last one too), cross-entropy, torch's own SGD (for-loop
    implementation, a float learning rate) with momentum 0.9 and wd 1e-4 on every parameter, ×0.1 at the
    scaled milestones. Random draws in robench's order: the permutation, then per batch offsets and flips."""
    torch.manual_seed(seed)
    model = model_zoo.create_model(model_name, lam=lam).double()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4, foreach=False)
    n = len(y)
    steps = -(-n // bs)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    milestones = [round(80 * epochs / 160), round(120 * epochs / 160)]
    for epoch in range(epochs):
        model.train()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        for group in opt.param_groups:
            group["lr"] = lr * 0.1 ** sum(epoch >= m for m in milestones)
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            b = len(idx)
            oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
            ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
            fl = torch.rand(b, generator=g) < 0.5
            imgs = []
            for i, j in enumerate(idx.tolist()):
                crop = padded[j, :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
                imgs.append(crop[:, :, ::-1] if fl[i] else crop)
            xb = torch.from_numpy(np.stack(imgs).astype(np.float64) / 255.0)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@pytest.mark.parametrize("model_name,lam", [("inresnet20", None), ("lambda_inresnet20", 0.5)])
def test_paper_recipe_equals_a_plain_loop_of_the_seed_code_recipe(tmp_path, model_name, lam):
    """robench train --recipe paper does what the seed code's recipe does: 4 epochs of 20 images at batch 8
    (two full batches and a kept short one of 4 an epoch), milestones at epochs 2 and 3; float64 weights,
    BN statistics and k_n agree with a plain hand-written loop to 1e-12 (fused against for-loop SGD)."""
    ds = _ds(20)
    res = train(model_name, ds, _ds(10, seed=1), lam=lam, seed=3, recipe="paper", epochs=4, batch_size=8, lr=0.05,
                dtype=torch.float64, run_dir=tmp_path / "run", progress=False, log=_quiet)
    assert [r["lr"] for r in res["history"]] == pytest.approx([0.05, 0.05, 0.005, 0.0005])
    ref = _reference_loop(model_name, lam, 3, ds.images, ds.labels, epochs=4, bs=8, lr=0.05).state_dict()
    ours = res["model"].state_dict()
    assert ours.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(ours[k].double(), ref[k].double(), rtol=0, atol=1e-12), k
    # and the plain loop is sensitive to what it pins: dropping the short last batch gives other weights
    ref_drop = _reference_loop(model_name, lam, 3, ds.images[:16], ds.labels[:16], epochs=4, bs=8, lr=0.05)
    assert not torch.allclose(ref_drop.state_dict()["fc.weight"], ref["fc.weight"], atol=1e-6)


# -- resume: one commit point an epoch --------------------------------------------------------------
class _Killed(BaseException):
    pass


@pytest.mark.parametrize("where", ["before_commit", "between_member_files"])
def test_a_kill_between_the_epoch_files_never_trains_an_epoch_twice(tmp_path, monkeypatch, where):
    """25.8: a kill after an epoch's checkpoint files are (partly) written but before the commit leaves the run at
    the previous epoch; --resume then ends with exactly the weights and metrics of an uninterrupted run, and no
    checkpoint file of the interrupted epoch is left behind."""
    members = [Member("resnet20", None, 0), Member("inresnet20", None, 4)]
    train_set, test_set = _ds(24), _ds(10, seed=1)
    kw = dict(recipe="paper", epochs=3, batch_size=8, lr=0.05, progress=False, log=_quiet)
    a = train_pack(members, train_set, test_set, run_dir=tmp_path / "a", **kw)

    real_write, real_commit = runstate.write_member, runstate.commit
    calls = {"write": 0}

    def write(run_dir, member_id, epoch, model, opt):
        calls["write"] += 1
        if where == "between_member_files" and epoch == 2 and calls["write"] == 4:  # epoch 2's second file
            raise _Killed
        return real_write(run_dir, member_id, epoch, model, opt)

    def commit(run_dir, state):
        if where == "before_commit" and state["epoch"] == 2:
            raise _Killed
        return real_commit(run_dir, state)

    monkeypatch.setattr(runstate, "write_member", write)
    monkeypatch.setattr(runstate, "commit", commit)
    with pytest.raises(_Killed):
        train_pack(members, train_set, test_set, run_dir=tmp_path / "b", **kw)
    monkeypatch.setattr(runstate, "write_member", real_write)
    monkeypatch.setattr(runstate, "commit", real_commit)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epoch"] == 1  # the interrupted epoch 2 was never committed
    assert calls["write"] >= 3  # though epoch 2's checkpoints were (partly) written

    msgs = []
    b = train_pack(members, train_set, test_set, run_dir=tmp_path / "b", resume=True, **{**kw, "log": msgs.append})
    assert any(m.startswith("resuming a pack of 2 from epoch 1/3") for m in msgs)
    for m in members:
        sa, sb = a["members"][m.id]["model"].state_dict(), b["members"][m.id]["model"].state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (m.id, k)
        fa, fb = _member_file(tmp_path / "a", m.id), _member_file(tmp_path / "b", m.id)
        assert all(torch.equal(fa[k], fb[k]) for k in fa)  # momentum buffers too

    def rows(d):
        with open(d / "metrics.csv") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    assert rows(tmp_path / "a") == rows(tmp_path / "b") and len(rows(tmp_path / "a")) == 6
    assert sorted(p.name for p in (tmp_path / "b" / "members").iterdir()) == sorted(f"{m.id}.e0003.safetensors"
                                                                                  for m in members)


def test_resume_refuses_a_changed_checkpoint_and_the_old_state_format(tmp_path):
    ds = _ds(16)
    kw = dict(epochs=2, batch_size=8, progress=False, log=_quiet, stop_after_epoch=1)
    train("resnet20", ds, ds, run_dir=tmp_path / "run", **kw)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    f = tmp_path / "run" / state["members"]["resnet20"]["state"]["file"]
    f.write_bytes(f.read_bytes()[:-1] + b"\0")
    with pytest.raises(BadInput, match="does not match the sha256"):
        train("resnet20", ds, ds, run_dir=tmp_path / "run", resume=True, **kw)
    # a run folder of the previous trainer (state.json + state.safetensors written one after the other)
    old = tmp_path / "old"
    old.mkdir()
    (old / "state.json").write_text(json.dumps({"config": {}, "epoch": 1, "history": [], "wall_seconds": 1.0}))
    with pytest.raises(BadInput, match="older robench train .*pass --force"):
        train("resnet20", ds, ds, run_dir=old, resume=True, **kw)


def test_planted_links_are_never_written_through(tmp_path):
    """25.2 for the new run folder: links planted at the old fixed temporary names, at metrics.csv and at the lock
    leave their targets untouched; a `members` folder that is a link is refused."""
    ds = _ds(16)
    victim = tmp_path / "notes.txt"
    victim.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.csv.tmp", "state.safetensors.tmp", "state.json.tmp", "metrics.csv"):
        (run / name).symlink_to(victim)
    train("resnet20", ds, ds, epochs=1, batch_size=8, run_dir=run, force=True, progress=False, log=_quiet)
    assert victim.read_text() == "keep me" and not (run / "metrics.csv").is_symlink()
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / ".lock").symlink_to(victim)
    with pytest.raises(BadInput, match="lock file"):
        train("resnet20", ds, ds, epochs=1, batch_size=8, run_dir=run2, force=True, progress=False, log=_quiet)
    run3 = tmp_path / "run3"
    run3.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (run3 / "members").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BadInput, match="is a symlink"):
        train("resnet20", ds, ds, epochs=1, batch_size=8, run_dir=run3, force=True, progress=False, log=_quiet)
    assert victim.read_text() == "keep me" and not any((tmp_path / "elsewhere").iterdir())


def test_a_second_train_on_the_same_run_folder_is_refused(tmp_path):
    ds = _ds(16)
    with runstate.locked(tmp_path / "run"):
        with pytest.raises(BadInput, match="another robench train is using the run folder"):
            train("resnet20", ds, ds, epochs=1, batch_size=8, run_dir=tmp_path / "run", resume=True,
                  progress=False, log=_quiet)


# -- a diverging member -----------------------------------------------------------------------------
def _poison(monkeypatch, member_id: str) -> None:
    """Give one member a NaN weight at the start: its loss is NaN from the first step (a diverged run)."""
    real = rt._build

    def build(member, rec, **kw):
        model = real(member, rec, **kw)
        if member.id == member_id:
            with torch.no_grad():
                model.fc.weight[0, 0] = float("nan")
        return model
    monkeypatch.setattr(rt, "_build", build)


def test_a_diverging_member_is_reported_and_dropped_the_others_go_on(tmp_path, monkeypatch):
    members = [Member("resnet20", None, 0), Member("inresnet20", 0.5, 0), Member("inresnet20", 0.5, 1)]
    ds = _ds(16)
    kw = dict(recipe="paper", epochs=2, batch_size=8, lr=0.05, progress=False)
    clean = train_pack(members, ds, ds, run_dir=tmp_path / "clean", log=_quiet, **kw)
    _poison(monkeypatch, "inresnet20__lam0.5")
    msgs: list[str] = []
    res = train_pack(members, ds, ds, run_dir=tmp_path / "run", out=tmp_path / "zoo", log=msgs.append, **kw)
    assert res["diverged"] == ["inresnet20__lam0.5"]
    assert any("inresnet20__lam0.5 diverged in epoch 1" in m and "the other 2 member(s) go on" in m for m in msgs)
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == sorted(
        f"{s}.{e}" for s in ("resnet20", "inresnet20__lam0.5.s1") for e in ("json", "safetensors"))
    # the others are untouched by their neighbour's NaNs: the same weights as in the clean pack
    for mid in ("resnet20", "inresnet20__lam0.5.s1"):
        a, b = clean["members"][mid]["model"].state_dict(), res["members"][mid]["model"].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["members"]["inresnet20__lam0.5"]["status"] == "diverged"
    assert state["members"]["inresnet20__lam0.5"]["diverged"]["epoch"] == 1


def test_train_command_exits_1_naming_the_diverged_member(tmp_path, capsys, monkeypatch):
    from robench.cli import main

    _write_data(tmp_path / "data", 30)
    _poison(monkeypatch, "resnet20.s1")
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "resnet20", "--seed", "0,1", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
              "--batch-size", "12", "--out", str(tmp_path / "zoo"), "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr()
    assert e.value.code == 1
    assert "error: 1 of 2 member(s) diverged and were not saved: resnet20.s1" in out.err
    assert (tmp_path / "zoo" / "resnet20.json").exists() and not (tmp_path / "zoo" / "resnet20.s1.json").exists()


# -- members ----------------------------------------------------------------------------------------
def test_members_are_every_model_lam_and_seed_where_lam_applies():
    ms = members_from_lists(["resnet20", "inresnet20"], ["learned", "0.25", "0.5"], ["0", "1", "2"])
    assert [m.id for m in ms if m.model == "resnet20"] == ["resnet20", "resnet20.s1", "resnet20.s2"]
    assert len(ms) == 3 + 9
    assert Member("inresnet20", 0.5, 2) in ms and Member("inresnet20", None, 0) in ms
    assert Member("inresnet20", 0.25, 1).id == "inresnet20__lam0.25.s1"
    assert [m.id for m in members_from_lists(["lmresnet20"])] == ["lmresnet20"]
    with pytest.raises(BadInput, match="λ \\(--lam\\) does not apply to resnet20"):
        members_from_lists(["resnet20"], ["0.5"])
    with pytest.raises(BadInput, match="one architecture .*resnet20 and resnet32 differ"):
        members_from_lists(["resnet20", "resnet32"])
    with pytest.raises(BadInput, match="listed twice"):
        members_from_lists(["resnet20"], None, ["1", "1"])
    for bad in ("-1", str(2**70), "1.5", "x"):
        with pytest.raises(BadInput, match="seed"):
            members_from_lists(["resnet20"], None, [bad])
    with pytest.raises(BadInput, match="unknown model"):
        members_from_lists(["resnet21"])


def test_plan_file(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('recipe = "paper"\nepochs = 2\n[[members]]\nmodel = "resnet20"\nseed = [0, 1]\n'
                    '[[members]]\nmodel = ["inresnet20", "lambda_inresnet20"]\nlam = ["learned", 0.5]\n')
    p = load_plan(plan)
    assert p["recipe"] == "paper" and p["epochs"] == 2
    assert [m.id for m in p["members"]] == ["resnet20", "resnet20.s1", "inresnet20", "inresnet20__lam0.5",
                                            "lambda_inresnet20", "lambda_inresnet20__lam0.5"]
    for text, match in [('epochs = 2\n', "needs \\[\\[members\\]\\]"),
                        ('[[members]]\nmodel = "resnet20"\ncolour = 1\n', "unknown: colour"),
                        ('optimizer = "adam"\n[[members]]\nmodel = "resnet20"\n', "unknown key\\(s\\) optimizer"),
                        ('[[members]\n', "not valid TOML"),
                        ('epochs = 0\n[[members]]\nmodel = "resnet20"\n', "epochs"),
                        ('[[members]]\nmodel = ["resnet20", "resnet56"]\n', "one architecture")]:
        plan.write_text(text)
        with pytest.raises(BadInput, match=match):
            load_plan(plan)


# -- the command ------------------------------------------------------------------------------------
def _write_data(root, n_train: int, n_test: int = 20):
    x, y = colour_images(n_train, seed=0)
    k = n_train // 5
    write_cifar10(root, [(x[i * k:(i + 1) * k], y[i * k:(i + 1) * k]) for i in range(5)], colour_images(n_test, seed=1))


def test_train_command_trains_a_pack_and_exports_tagged_members(tmp_path, capsys):
    """`robench train --model resnet20,inresnet20 --lam learned,0.5 --seed 0,1`: six members in one run; seed 0 is
    the untagged entry, seed 1 is tagged s1; each card says trainer packed, the pack, device and precision, and the
    member's seed; the weights load."""
    from robench.cli import main

    _write_data(tmp_path / "data", 30)
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "resnet20,inresnet20", "--lam", "learned,0.5", "--seed", "0,1", "--data-dir",
              str(tmp_path / "data"), "--epochs", "1", "--batch-size", "12", "--recipe", "paper", "--out",
              str(tmp_path / "zoo"), "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    ids = ["resnet20", "resnet20.s1", "inresnet20", "inresnet20.s1", "inresnet20__lam0.5", "inresnet20__lam0.5.s1"]
    assert f"training a pack of 6: {', '.join(ids)} on cifar10: 30 train / 20 test, recipe paper" in out.out
    for mid in ids:
        card = json.loads((tmp_path / "zoo" / f"{mid}.json").read_text())
        t = card["training"]
        assert t["trainer"] == "packed" and t["pack"] == ids and t["pack_size"] == 6
        assert t["seed"] == (1 if mid.endswith(".s1") else 0)
        assert t["device"].startswith("cpu:") and t["precision"] == "fp32" and t["channels_last"] is True
        assert t["recipe"]["name"] == "paper" and t["recipe"]["pad_mode"] == "reflect" and not t["recipe"]["drop_last"]
        assert card["lam"] == (0.5 if "__lam0.5" in mid else None)
        model_zoo.load(tmp_path / "zoo" / mid)
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert [r["member"] for r in csv.DictReader(f)] == ids


def test_train_command_plan_and_conflicts(tmp_path, capsys):
    from robench.cli import main

    _write_data(tmp_path / "data", 30)
    plan = tmp_path / "plan.toml"
    plan.write_text('epochs = 1\nbatch_size = 12\n[[members]]\nmodel = "lmresnet20"\nseed = [0, 2]\n')
    base = ["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "zoo"), "--run-dir",
            str(tmp_path / "run"), "--plan", str(plan)]
    for extra, match in [(["--model", "resnet20"], "either with --model"), (["--epochs", "2"], "epochs is set both")]:
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        assert e.value.code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as e:
        main(base)
    assert e.value.code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "zoo").glob("*.json")) == ["lmresnet20.json", "lmresnet20.s2.json"]
    assert json.loads((tmp_path / "zoo" / "lmresnet20.s2.json").read_text())["training"]["recipe"]["epochs"] == 1
    with pytest.raises(SystemExit) as e:
        main(["train", "--data-dir", str(tmp_path / "data")])
    assert e.value.code == 2 and "missing --model" in capsys.readouterr().err


@pytest.mark.parametrize("lr", ["-1", "nan", "inf", "0", "11"])
def test_train_refuses_a_learning_rate_that_is_not_positive_and_finite(tmp_path, lr):
    with pytest.raises(BadInput, match=r"learning rate \(--lr\) must be a number in \(0, 10\]"):
        train("resnet20", _ds(16), _ds(16), lr=float(lr), run_dir=tmp_path / "run", progress=False, log=_quiet)
    assert not os.path.exists(tmp_path / "run")


def test_time_pack_step_times_the_trainers_own_step(monkeypatch):
    """The campaign's probe measure (ms per model-step): it runs robench's step (MemberRun.step) for every member,
    warm-up and timed steps, and refuses what it cannot time."""
    import robench.packed

    calls = []
    real = robench.packed.MemberRun.step
    monkeypatch.setattr(robench.packed.MemberRun, "step", lambda self, b: (calls.append((self.member.seed, b)), real(self, b)))
    ms = rt.time_pack_step("resnet20", 2, steps=2, warmup=1, batch_size=8)
    assert ms > 0 and calls == [(0, 8), (1, 8)] * 4  # 1 warm-up + 1 untimed + 2 timed steps of both members
    with pytest.raises(BadInput, match="positive"):
        rt.time_pack_step("resnet20", 0)
    with pytest.raises(BadInput, match="unknown recipe"):
        rt.time_pack_step("resnet20", 1, recipe="slow")
