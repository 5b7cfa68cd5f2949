import json
import pickle

import pytest
import torch

import model_zoo
from robench.errors import BadInput


def _model(name="inresnet20", **kw):
    torch.manual_seed(0)
    m = model_zoo.create_model(name, **kw)
    # make BN statistics non-trivial so that buffers are part of what must round-trip
    m.train()
    m(torch.rand(8, 3, 32, 32))
    return m.eval()


def test_save_load_exact(tmp_path):
    m = _model()
    card = model_zoo.save(m, tmp_path / "inresnet20", {"metrics": {"test_acc": 0.5}})
    assert card.scheme == "damped" and card.lam is None and len(card.weights_sha256) == 64
    loaded = model_zoo.load(tmp_path / "inresnet20.safetensors")
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(m(x), loaded(x))
    for (k, a), (_, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.card.metrics["test_acc"] == 0.5
    assert not loaded.training


def test_zoo_resolution_by_name_and_lambda(tmp_path, monkeypatch):
    zoo = model_zoo.user_zoo()
    model_zoo.save(_model(lam=0.25), zoo / model_zoo.zoo_stem("inresnet20", 0.25))
    m = model_zoo.load("inresnet20", lam=0.25)
    assert m.lam == 0.25
    with pytest.raises(BadInput, match="no trained weights for inresnet20__lam0.5.*robench train --model inresnet20 --lam 0.5"):
        model_zoo.load("inresnet20", lam=0.5)


def test_tampered_weights_refused(tmp_path):
    model_zoo.save(_model(), tmp_path / "m")
    w = tmp_path / "m.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="sha256"):
        model_zoo.load(tmp_path / "m")


def test_card_weights_mismatch_refused(tmp_path):
    model_zoo.save(_model("resnet20"), tmp_path / "m")
    card = json.loads((tmp_path / "m.json").read_text())
    card["name"] = "resnet32"  # the card claims a deeper network than the weights hold
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(BadInput, match="does not fit resnet32"):
        model_zoo.load(tmp_path / "m")


def test_pickle_refused(tmp_path):
    m = _model("resnet20")
    # a pickle disguised with the right extension and a matching card
    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps(m.state_dict()))
    card = model_zoo.checkpoint._card_for(m, None)
    card.weights_sha256 = model_zoo.checkpoint.sha256_file(p)
    (tmp_path / "evil.json").write_text(card.to_json())
    with pytest.raises(BadInput, match="not a readable safetensors"):
        model_zoo.load(p)
    (tmp_path / "model.pt").write_bytes(pickle.dumps({}))
    with pytest.raises(BadInput, match="pickle"):
        model_zoo.load(tmp_path / "model.pt")


def test_name_escaping_zoo_refused():
    with pytest.raises(BadInput):
        model_zoo.load("../../etc/passwd")


@pytest.mark.shipped_zoo
def test_shipped_weights_load_and_record_accuracy():
    """Every shipped checkpoint verifies, loads, and its card records an accuracy."""
    shipped = _shipped()
    for card in shipped:
        m = model_zoo.load(card.name, lam=card.lam)
        assert m.card.metrics["test_acc"] > 0.5


def _shipped():
    return [c for c in model_zoo.available() if c.dataset.get("zoo") == str(model_zoo.checkpoint.SHIPPED_ZOO)]


@pytest.mark.shipped_zoo
@pytest.mark.parametrize("card", _shipped(), ids=lambda c: model_zoo.zoo_stem(c.name, c.lam))
def test_shipped_weights_classify_real_cifar10_images(card):
    """Shipped weights are real: on Foolbox's 20 exact CIFAR-10 test images they score like their card says."""
    from robench.data import load_samples

    x, y = load_samples().as_float()
    m = model_zoo.load(card.name, lam=card.lam)
    with torch.no_grad():
        acc = (m(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.6, (card.name, acc, card.metrics)
    assert card.dataset["test_batch_sha256"] and card.training["seed"] == 0
