"""robench.train on tiny synthetic data: it learns, it resumes exactly, it writes a loadable checkpoint.

The learnable task: class k is an image of colour k under heavy per-pixel noise (tests/synthetic_cifar.py),
written in the official CIFAR-10 layout so the card's data fingerprint is a real file hash.
"""
import csv
import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

import model_zoo
from robench.data import Dataset, load_cifar
from robench.errors import BadInput
from robench.results import wilson
from robench.train import RECIPES, evaluate_accuracy, lr_at, train
from synthetic_cifar import colour_images, write_cifar10

N_TRAIN, N_TEST = 260, 100  # 52 images per data_batch_i


def _quiet(_msg: str) -> None:
    pass


def _write_colour_cifar(root, n_train: int, n_test: int):
    x, y = colour_images(n_train, seed=0)
    k = n_train // 5
    parts = [(x[i * k:(i + 1) * k], y[i * k:(i + 1) * k]) for i in range(5)]
    folder = write_cifar10(root, parts, colour_images(n_test, seed=1))
    return load_cifar("cifar10", root, "train"), load_cifar("cifar10", root, "test"), folder


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Train with one intra-op thread: at these batch sizes a second thread gains little, and on shared
    cores its OpenMP barriers can stall a step for a whole time slice (measured here: 2.6 s of CPU for the
    short training run with one thread, 81 s with two, while other jobs held the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """resnet20 trained for 2 short epochs on the colour task, with its final checkpoint in a zoo dir."""
    root = tmp_path_factory.mktemp("train")
    train_set, test_set, folder = _write_colour_cifar(root / "data", N_TRAIN, N_TEST)
    torch.manual_seed(0)  # train() seeds the initialisation the same way, so this is its starting point
    before = evaluate_accuracy(model_zoo.create_model("resnet20"), test_set.images, test_set.labels)
    result = train("resnet20", train_set, test_set, recipe="fast", epochs=2, batch_size=16, lr=0.05, seed=0,
                   run_dir=root / "run", out=root / "zoo", data_label_text="synthetic colours", progress=False,
                   log=_quiet)
    return dict(result=result, before=before, root=root, folder=folder, train_set=train_set, test_set=test_set)


def test_short_training_learns(learned):
    res, test_set = learned["result"], learned["test_set"]
    assert learned["before"] <= 0.25  # an untrained net is at chance (0.1) on ten balanced classes
    assert res["finished"] and len(res["history"]) == 2
    acc = res["test_acc"]
    low, _ = wilson(round(acc * N_TEST), N_TEST)
    assert acc >= 0.7 and low > 0.5, f"test accuracy {acc} did not rise clearly above chance"
    assert res["history"][-1]["loss"] < res["history"][0]["loss"]
    # the returned accuracy is the model's, measured again from scratch
    assert evaluate_accuracy(res["model"], test_set.images, test_set.labels) == pytest.approx(acc, abs=1e-5)
    with open(learned["root"] / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and float(rows[-1]["test_acc"]) == acc


def test_final_checkpoint_and_card(learned):
    res, root, test_set = learned["result"], learned["root"], learned["test_set"]
    assert res["card_path"] == str(root / "zoo" / "resnet20.json")
    card = json.loads((root / "zoo" / "resnet20.json").read_text())
    assert card["name"] == "resnet20" and card["metrics"]["test_acc"] == res["test_acc"]
    assert card["metrics"]["n_test"] == N_TEST
    t = card["training"]
    assert t["seed"] == 0 and t["device"].startswith("cpu") and t["amp"] == "fp32"
    assert t["recipe"]["name"] == "fast" and t["recipe"]["epochs"] == 2
    assert t["recipe"]["batch_size"] == 16 and t["recipe"]["lr"] == 0.05
    d = card["dataset"]
    assert d["label"] == "synthetic colours" and d["n_train"] == N_TRAIN and d["n_test"] == N_TEST
    assert d["test_batch_sha256"] == hashlib.sha256((learned["folder"] / "test_batch").read_bytes()).hexdigest()

    loaded = model_zoo.load(root / "zoo" / "resnet20")
    x = test_set.images[:16].float() / 255
    with torch.no_grad():
        assert torch.equal(loaded(x), res["model"].eval()(x))
    assert evaluate_accuracy(loaded, test_set.images, test_set.labels) == pytest.approx(res["test_acc"], abs=1e-5)


# -- resume --------------------------------------------------------------------------------
def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.parametrize("model_name,recipe", [("resnet20", "paper"), ("inresnet20", "fast")])
def test_resume_after_interruption_is_exact(tmp_path, model_name, recipe):
    # 24 images, batch 8: 3 steps an epoch; the paper recipe's drop (×0.1) falls at epoch 2 of 3, the
    # fast recipe has two parameter groups and nesterov, the learned-λ model an extra parameter.
    train_set, test_set, _ = _write_colour_cifar(tmp_path / "data", 24, 10)
    kw = dict(recipe=recipe, epochs=3, batch_size=8, lr=0.05, seed=5, progress=False, log=_quiet)
    a = train(model_name, train_set, test_set, run_dir=tmp_path / "a", out=tmp_path / "zoo_a", **kw)

    b1 = train(model_name, train_set, test_set, run_dir=tmp_path / "b", out=tmp_path / "zoo_b",
               stop_after_epoch=1, **kw)
    assert not b1["finished"] and len(b1["history"]) == 1
    assert not (tmp_path / "zoo_b").exists()  # no final checkpoint from an unfinished run
    state = (tmp_path / "b" / "state.json").read_bytes()
    assert json.loads(state)["epoch"] == 1

    # a different configuration is refused, and nothing in the run dir changes
    for change in (dict(lr=0.1), dict(batch_size=4), dict(seed=6), dict(epochs=4)):
        with pytest.raises(BadInput, match="different configuration"):
            train(model_name, train_set, test_set, run_dir=tmp_path / "b", resume=True, **{**kw, **change})
    other = train_set.first(16)
    with pytest.raises(BadInput, match="different configuration"):
        train(model_name, other, test_set, run_dir=tmp_path / "b", resume=True, **kw)
    assert (tmp_path / "b" / "state.json").read_bytes() == state

    msgs = []
    b = train(model_name, train_set, test_set, run_dir=tmp_path / "b", out=tmp_path / "zoo_b", resume=True,
              **{**kw, "log": msgs.append})
    assert any(m.startswith("resuming") and "epoch 1/3" in m for m in msgs)
    assert b["finished"] and len(b["history"]) == 3
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert _rows(tmp_path / "a" / "metrics.csv") == _rows(tmp_path / "b" / "metrics.csv")
    # the final checkpoints hold the same weights (compared as tensors: safetensors writes its metadata
    # in no fixed order, so the files' bytes may differ)
    # seed 5 is the tagged variant model.s5 (seed 0 alone is untagged)
    ea, eb = (model_zoo.load_entry(tmp_path / z / f"{model_name}.s5") for z in ("zoo_a", "zoo_b"))
    for k, v in ea.model.state_dict().items():
        assert torch.equal(v, eb.model.state_dict()[k]), k
    assert ea.card.metrics == eb.card.metrics
    # and the run really trained: the weights moved away from the seeded initialisation
    torch.manual_seed(5)
    init = model_zoo.create_model(model_name).state_dict()
    assert not torch.equal(init["fc.weight"], sa["fc.weight"])


def test_bad_arguments(tmp_path):
    x, y = colour_images(16, seed=0)
    ds = Dataset("cifar10", "train", torch.from_numpy(x), torch.from_numpy(y), "synthetic", "0" * 64)
    kw = dict(run_dir=tmp_path / "run", out=tmp_path / "zoo", progress=False, log=_quiet)
    with pytest.raises(BadInput, match="valid choices: paper, fast"):
        train("resnet20", ds, ds, recipe="slow", **kw)
    with pytest.raises(BadInput, match="larger than the training set"):
        train("resnet20", ds, ds, batch_size=32, **kw)
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="'cuda' is not available here.*valid choices: cpu"):
            train("resnet20", ds, ds, device="cuda", **kw)
    for bad in ("gpu", "meta", "cuda:99"):
        with pytest.raises(BadInput, match="valid choices: cpu"):
            train("resnet20", ds, ds, device=bad, **kw)
    with pytest.raises(BadInput, match="unknown model"):
        train("resnet21", ds, ds, **kw)
    assert not (tmp_path / "run").exists() and not (tmp_path / "zoo").exists()


# -- learning-rate schedules ------------------------------------------------------------------
def test_paper_schedule_drops_at_80_and_120():
    rec, spe = RECIPES["paper"], 391
    assert (rec.lr, rec.epochs, rec.milestones) == (0.1, 160, (80, 120))
    lr = {e: lr_at(rec, e * spe, spe, 160) for e in range(160)}
    assert all(lr[e] == pytest.approx(0.1) for e in range(80))
    assert all(lr[e] == pytest.approx(0.01) for e in range(80, 120))
    assert all(lr[e] == pytest.approx(0.001) for e in range(120, 160))
    assert lr_at(rec, 80 * spe - 1, spe, 160) == pytest.approx(0.1)  # the last step of epoch 79
    # a shortened run keeps the shape: 16 epochs drop at 8 and 12
    short = [lr_at(rec, e * 10, 10, 16) for e in range(16)]
    assert short == pytest.approx([0.1] * 8 + [0.01] * 4 + [0.001] * 4)


def test_fast_schedule_warms_up_then_decays_to_zero():
    rec, spe, epochs = RECIPES["fast"], 50, 30
    total = spe * epochs
    lrs = np.array([lr_at(rec, s, spe, epochs) for s in range(total + 1)])
    peak = int(lrs.argmax())
    assert lrs[peak] == pytest.approx(rec.lr)
    assert 0.1 * total <= peak <= 0.2 * total  # warm-up is a short first part
    assert lrs[0] < 0.2 * rec.lr
    assert np.all(np.diff(lrs[:peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) < 0)
    assert lrs[-1] == 0.0 and lrs[total - 1] < 0.01 * rec.lr
    assert np.all(lrs >= 0)
    # an lr override scales the whole curve
    half = dataclasses.replace(rec, lr=rec.lr / 2)
    assert lr_at(half, 700, spe, epochs) == pytest.approx(lr_at(rec, 700, spe, epochs) / 2)


def test_train_command_puts_a_fixed_lambda_model_into_the_zoo(tmp_path, capsys):
    """`robench train` end to end: the start-up line states λ, the zoo gets the λ-named checkpoint whose card
    records λ and the epochs, and metrics.csv has a row per epoch."""
    from robench.cli import main

    _write_colour_cifar(tmp_path / "data", 60, 20)
    zoo, run = tmp_path / "zoo", tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "inresnet20", "--lam", "0.5", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
              "--batch-size", "12", "--out", str(zoo), "--run-dir", str(run)])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    assert "training inresnet20 (λ=0.5) on cifar10: 60 train / 20 test" in out.out
    card = json.loads((zoo / "inresnet20__lam0.5.json").read_text())
    assert card["lam"] == 0.5 and card["training"]["recipe"]["epochs"] == 1 and card["training"]["recipe"]["batch_size"] == 12
    with open(run / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]


@pytest.mark.parametrize("fast_bf16, amp, warned", [(False, True, True), (True, True, False), (False, False, False)])
def test_amp_warns_on_a_cpu_without_bf16_kernels(tmp_path, monkeypatch, fast_bf16, amp, warned):
    """--amp on a CPU without oneDNN bf16 kernels is many times slower than fp32 (an AVX2 EPYC here: 18 against
    216 images/s for ResNet-20); the run says so before it starts, and only then. The card names the CPU's ISA."""
    import robench.train as rt

    monkeypatch.setattr(rt, "cpu_has_fast_bf16", lambda: fast_bf16)
    x, y = colour_images(16, seed=0)
    ds = Dataset("cifar10", "train", torch.from_numpy(x), torch.from_numpy(y), "synthetic", "0" * 64)
    lines: list[str] = []
    res = train("resnet20", ds, ds, epochs=1, batch_size=16, amp=amp, run_dir=tmp_path / "run", out=tmp_path / "zoo",
                progress=False, log=lines.append)
    assert res["finished"]
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    assert len(warnings) == int(warned)
    if warned:
        assert "no oneDNN bf16 kernels" in warnings[0] and "without --amp" in warnings[0]
        assert lines.index(warnings[0]) < next(i for i, ln in enumerate(lines) if ln.startswith("epoch 1/1"))
    card = json.loads((tmp_path / "zoo" / "resnet20.json").read_text())
    assert card["training"]["device"] == f"cpu:{rt.cpu_name()} ({torch.backends.cpu.get_cpu_capability()})"
    assert card["training"]["amp"] == ("bfloat16" if amp else "fp32")


def test_train_refuses_to_replace_a_run_or_zoo_entry_without_force(tmp_path):
    """14.4: a second run onto the same run folder or zoo entry was silently replaced."""
    x, y = colour_images(16, seed=0)
    ds = Dataset("cifar10", "train", torch.from_numpy(x), torch.from_numpy(y), "synthetic", "0" * 64)
    kw = dict(epochs=1, batch_size=16, progress=False, log=_quiet)
    train("resnet20", ds, ds, run_dir=tmp_path / "run", out=tmp_path / "zoo", **kw)
    card = (tmp_path / "zoo" / "resnet20.json").read_bytes()
    with pytest.raises(BadInput, match="run folder .*run already exists; pass --resume .* or --force"):
        train("resnet20", ds, ds, run_dir=tmp_path / "run", out=tmp_path / "zoo", **kw)
    with pytest.raises(BadInput, match="resnet20.json already exists; pass --force"):
        train("resnet20", ds, ds, run_dir=tmp_path / "run2", out=tmp_path / "zoo", **kw)
    assert (tmp_path / "zoo" / "resnet20.json").read_bytes() == card and not (tmp_path / "run2").exists()
    train("resnet20", ds, ds, run_dir=tmp_path / "run", out=tmp_path / "zoo", lr=0.05, force=True, **kw)
    assert json.loads((tmp_path / "zoo" / "resnet20.json").read_text())["training"]["recipe"]["lr"] == 0.05


def test_train_says_it_will_shadow_a_shipped_checkpoint(tmp_path, monkeypatch):
    """14.4: the user zoo wins lookups, so training into it hides the shipped weights; the run says so."""
    import robench.train as rt

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "resnet20.json").write_text("{}")
    monkeypatch.setattr(model_zoo.checkpoint, "SHIPPED_ZOO", shipped)
    notes = rt.check_outputs("resnet20", None, tmp_path / "run", model_zoo.user_zoo())
    assert len(notes) == 1 and "will shadow the shipped" in notes[0] and str(shipped / "resnet20.safetensors") in notes[0]
    assert rt.check_outputs("resnet20", None, tmp_path / "run", tmp_path / "elsewhere") == []
    assert rt.check_outputs("resnet32", None, tmp_path / "run", model_zoo.user_zoo()) == []


def test_train_command_n_threads_and_force(tmp_path, capsys, monkeypatch):
    """14.9: `train --n` takes the first N training images, `--threads` (or ROBENCH_THREADS) sets the threads;
    a second run needs --force."""
    from robench.cli import main

    _write_colour_cifar(tmp_path / "data", 60, 20)
    argv = ["train", "--model", "resnet20", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "12",
            "--out", str(tmp_path / "zoo"), "--run-dir", str(tmp_path / "run"), "--n", "24"]
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("ROBENCH_THREADS", "1")
        with pytest.raises(SystemExit) as e:
            main(argv)
        out = capsys.readouterr()
        assert e.value.code == 0, out.err
        assert "on cifar10: 24 train / 20 test" in out.out and "1 threads" in out.out
        assert json.loads((tmp_path / "zoo" / "resnet20.json").read_text())["dataset"]["n_train"] == 24
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: run folder") and "--force" in err
        with pytest.raises(SystemExit) as e:
            main(argv + ["--threads", "two"])
        assert e.value.code == 2 and "Invalid value for '--threads': malformed --threads 'two'" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_resolve_threads(monkeypatch):
    from robench.machine import resolve_threads

    monkeypatch.delenv("ROBENCH_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(16)))
    assert resolve_threads() == 4 and resolve_threads(2) == 2 and resolve_threads("3") == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    assert resolve_threads(None) == 2
    monkeypatch.setenv("ROBENCH_THREADS", "1")
    assert resolve_threads() == 1 and resolve_threads(3) == 3
    for bad in ("0", "-1", "2.5", "many"):
        monkeypatch.setenv("ROBENCH_THREADS", bad)
        with pytest.raises(BadInput, match="ROBENCH_THREADS must be a whole number"):
            resolve_threads()
    with pytest.raises(BadInput, match="--threads"):
        resolve_threads(0)
