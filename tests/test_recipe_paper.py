"""`--recipe paper` is the seed code's recipe (minicheshire/InResNet train.py and InResNet.py), fact by fact.

Each test pins one fact read from the reference code: reflect padding by 2 then a 32×32 crop and a flip;
every batch of the shuffled epoch with the short last one kept (391 steps at batch 128); the initial k_n
ranges (depth 164 differs); plain cross-entropy; SGD 0.1, momentum 0.9, wd 1e-4 on all parameters;
×0.1 after epochs 80 and 120 of 160; batch 128; the final epoch's weights; the Normalize constants.
(`tests/test_packed.py` checks a whole short run against a plain loop of this recipe.)
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import model_zoo
import robench.packed
from model_zoo.arch import CIFAR10_MEAN, CIFAR10_STD
from robench.data import Dataset, crop_flip, epoch_draws, pad_images
from robench.train import RECIPES, _build, _param_groups, k_init_for, steps_per_epoch, train

PAPER = RECIPES["paper"]


def _ds(n):
    g = torch.Generator().manual_seed(0)
    return Dataset("cifar10", "train", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.arange(n) % 10, "synthetic", "0" * 64)


def test_optimizer_schedule_and_length():
    assert (PAPER.epochs, PAPER.batch_size, PAPER.lr, PAPER.momentum, PAPER.weight_decay) == (160, 128, 0.1, 0.9, 1e-4)
    assert PAPER.nesterov is False and PAPER.schedule == "multistep" and PAPER.milestones == (80, 120)
    assert PAPER.label_smoothing == 0.0  # nn.CrossEntropyLoss() as it is


def test_weight_decay_and_momentum_on_every_parameter():
    """optim.SGD(net.parameters(), lr, weight_decay=1e-4, momentum=0.9): BN weights, biases and k_n decay too."""
    model = model_zoo.create_model("inresnet20")
    groups = _param_groups(model, PAPER)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters()}
    assert any(p is model.k for p in groups[0]["params"])


def test_short_last_batch_is_kept():
    """The seed code's DataLoader(batch_size=128, shuffle=True) keeps the last 80 images: 391 steps an epoch."""
    assert steps_per_epoch(PAPER, 50_000, 128) == 391
    assert steps_per_epoch(RECIPES["fast"], 50_000, 256) == 195  # robench's own recipe drops it


def test_training_steps_over_every_image_with_the_short_batch_last(tmp_path, monkeypatch):
    sizes, real = [], robench.packed.MemberRun.step

    def step(self, b):
        sizes.append(b)
        return real(self, b)
    monkeypatch.setattr(robench.packed.MemberRun, "step", step)
    train("resnet20", _ds(20), _ds(10), recipe="paper", epochs=2, batch_size=8, run_dir=tmp_path / "run",
          progress=False, log=lambda _m: None)
    assert sizes == [8, 8, 4, 8, 8, 4]


def _reference_crop(img_chw: np.ndarray, top: int, left: int, flip: bool) -> np.ndarray:
    """The seed code's transform on one uint8 image: Reflect_Pad(2) — np.pad of the H×W×C array by 2 on every
    axis in mode "reflect", channels 2:5 kept — then RandomCrop(32, padding=0) at (top, left) and the flip."""
    hwc = img_chw.transpose(1, 2, 0)
    padded = np.pad(hwc, pad_width=2, mode="reflect")[:, :, 2:5]
    crop = padded[top:top + 32, left:left + 32]
    if flip:
        crop = crop[:, ::-1]
    return crop.transpose(2, 0, 1)


def test_crop_after_reflect_padding_by_2_as_the_seed_code():
    ds = _ds(300)
    draws = epoch_draws(torch.Generator().manual_seed(4), 300, 128, pad=PAPER.pad, drop_last=PAPER.drop_last)
    assert PAPER.pad == 2 and PAPER.pad_mode == "reflect"
    out = crop_flip(pad_images(ds.images, PAPER.pad, PAPER.pad_mode), draws.order, draws.oy, draws.ox, draws.flip,
                    (32, 32))
    assert len(out) == 300  # every image once, the short last batch included
    assert sorted(draws.order.tolist()) == list(range(300))
    for i in range(300):
        ref = _reference_crop(ds.images[draws.order[i]].numpy(), int(draws.oy[i]), int(draws.ox[i]), bool(draws.flip[i]))
        assert np.array_equal(out[i].numpy(), ref), i
    # RandomCrop(32) of a 36×36 image: offsets 0…4 in both directions; the flip with probability 1/2
    assert set(draws.oy.tolist()) == set(range(5)) == set(draws.ox.tolist())
    assert 0.35 < draws.flip.float().mean() < 0.65
    # zero padding would give other pixels at the border (the fact is not vacuous)
    zeros = crop_flip(pad_images(ds.images, 2, "zeros"), draws.order, draws.oy, draws.ox, draws.flip, (32, 32))
    assert not torch.equal(zeros, out)


@pytest.mark.parametrize("name,lo,hi", [
    ("inresnet20", 0.75, 0.8), ("inresnet110", 0.75, 0.8), ("inresnet164", 0.8, 0.9),
    ("lambda_inresnet20", 0.2, 0.25), ("lambda_inresnet56", 0.2, 0.25), ("lambda_inresnet164", 0.1, 0.2),
])
def test_initial_k_as_the_seed_code_draws_it(name, lo, hi):
    """InResNet.py: ks ~ U(0.75, 0.8) (In-ResNet) or U(0.2, 0.25) (λ-In-ResNet) at every depth; "for 164-layer
    experiments, use [0.8, 0.9] for In-ResNet or [0.1, 0.2] for λ-In-ResNet"."""
    model = _build(robench.packed.Member(name, None, 0), PAPER, num_classes=10, dev=torch.device("cpu"),
                   dtype=torch.float32)
    k = model.k.detach()
    assert len(k) > 1 and bool((k >= lo).all()) and bool((k <= hi).all())
    assert float(k.max() - k.min()) > 0.2 * (hi - lo)  # drawn over the range, not a constant
    if name.endswith("164"):
        assert k_init_for(PAPER, name) == (lo, hi)
        # the scheme's default range stays for robench's own recipe
        fast = _build(robench.packed.Member(name, None, 0), RECIPES["fast"], num_classes=10, dev=torch.device("cpu"),
                      dtype=torch.float32)
        assert not bool(((fast.k >= lo) & (fast.k <= hi)).all())


def test_normalisation_constants_are_the_seed_codes():
    """transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)), inside robench's models."""
    assert CIFAR10_MEAN == (0.4914, 0.4822, 0.4465) and CIFAR10_STD == (0.2023, 0.1994, 0.2010)
    m = model_zoo.create_model("inresnet20")
    assert m.mean.flatten().tolist() == pytest.approx(CIFAR10_MEAN) and m.std.flatten().tolist() == pytest.approx(CIFAR10_STD)


def test_the_final_epochs_weights_are_exported(tmp_path):
    """The seed code saves the net after epoch 160 (no best-epoch selection): the zoo entry is the last epoch's."""
    res = train("resnet20", _ds(24), _ds(10), recipe="paper", epochs=3, batch_size=8, lr=0.05, run_dir=tmp_path / "run",
                out=tmp_path / "zoo", progress=False, log=lambda _m: None)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    last = load_file(str(tmp_path / "run" / state["members"]["resnet20"]["state"]["file"]))
    assert state["epoch"] == 3
    exported = model_zoo.load(tmp_path / "zoo" / "resnet20").state_dict()
    for k, v in exported.items():
        assert torch.equal(v, last[f"model.{k}"]), k
    card = json.loads((tmp_path / "zoo" / "resnet20.json").read_text())
    assert card["metrics"]["test_acc"] == res["history"][-1]["test_acc"]
    assert card["training"]["recipe"]["epochs"] == 3 and card["training"]["recipe"]["milestones"] == [80, 120]
    assert card["training"]["k_init"] is None  # ResNet learns no k_n


def test_the_card_records_the_initial_k_range(tmp_path):
    for name, want in [("lambda_inresnet20", [0.2, 0.25]), ("inresnet164", [0.8, 0.9])]:
        train(name, _ds(8), _ds(4), recipe="paper", epochs=1, batch_size=8, run_dir=tmp_path / name,
              out=tmp_path / "zoo", progress=False, log=lambda _m: None)
        assert json.loads((tmp_path / "zoo" / f"{name}.json").read_text())["training"]["k_init"] == want
