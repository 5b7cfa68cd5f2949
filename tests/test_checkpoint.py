import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model_zoo
from model_zoo.checkpoint import ARCH_HEADER_KEY, SHIPPED_ZOO, _canonical
from model_zoo.fileio import sha256_file
from robench.cli import main
from robench.errors import BadInput


def _model(name="inresnet20", **kw):
    torch.manual_seed(0)
    m = model_zoo.create_model(name, **kw)
    # make BN statistics non-trivial so that buffers are part of what must round-trip
    m.train()
    m(torch.rand(8, 3, 32, 32))
    return m.eval()


def _cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _rewrite(stem: Path, *, card_edit=None, tensors_edit=None, header_from_card=True) -> None:
    """Rewrite a saved checkpoint the way an attacker with both files would: edit the card and/or the
    tensors, write a header that agrees with the edited card, and fix the card's sha256."""
    w, c = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    card = json.loads(c.read_text())
    if card_edit:
        card_edit(card)
    tensors = load_file(str(w))
    if tensors_edit:
        tensors_edit(tensors)
    meta = {"format": "pt"}
    if header_from_card:
        meta[ARCH_HEADER_KEY] = _canonical({k: card[k] for k in model_zoo.checkpoint.ARCH_FIELDS})
    save_file(tensors, str(w), metadata=meta)
    card["weights_sha256"] = sha256_file(w)
    c.write_text(json.dumps(card))


def test_save_load_exact(tmp_path):
    m = _model()
    card = model_zoo.save(m, tmp_path / "inresnet20", {"metrics": {"test_acc": 0.5}})
    assert card.scheme == "damped" and card.lam is None and len(card.weights_sha256) == 64
    entry = model_zoo.load_entry(tmp_path / "inresnet20.safetensors")
    loaded = entry.model
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(m(x), loaded(x))
    for (k, a), (_, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert entry.card.metrics["test_acc"] == 0.5 and entry.origin == "file"
    assert not loaded.training
    # nothing glued onto the module: the card travels in the record
    assert not hasattr(loaded, "card") and not hasattr(loaded, "model_name")


def test_save_needs_the_name_and_its_registered_scheme(tmp_path):
    with pytest.raises(BadInput, match="registered model name"):
        model_zoo.save(_model("resnet20"), tmp_path / "m")
    with pytest.raises(BadInput, match="registered as 'euler'"):
        model_zoo.save(_model("lmresnet20"), tmp_path / "m", name="resnet20")
    assert not list(tmp_path.glob("m.*"))
    assert model_zoo.save(_model("resnet20"), tmp_path / "m", name="resnet20").name == "resnet20"


def test_zoo_resolution_by_name_and_lambda(tmp_path, monkeypatch):
    zoo = model_zoo.user_zoo()
    model_zoo.save(_model(lam=0.25), zoo / model_zoo.zoo_stem("inresnet20", 0.25))
    e = model_zoo.load_entry("inresnet20", lam=0.25)
    assert e.model.lam == 0.25 and e.origin == "user" and e.path == zoo / "inresnet20__lam0.25.safetensors"
    with pytest.raises(BadInput, match="no trained weights for inresnet20__lam0.5.*robench train --model inresnet20 --lam 0.5"):
        model_zoo.load("inresnet20", lam=0.5)


def test_available_returns_records_with_origin_and_path(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(model_zoo.checkpoint, "SHIPPED_ZOO", shipped)
    model_zoo.save(_model("resnet20"), shipped / "resnet20")
    model_zoo.save(_model("resnet32"), shipped / "resnet32")
    model_zoo.save(_model("resnet20"), model_zoo.user_zoo() / "resnet20")
    recs = {(r.name, r.origin): r for r in model_zoo.available()}
    assert set(recs) == {("resnet20", "user"), ("resnet32", "shipped")}  # the user entry hides the shipped one
    assert recs["resnet20", "user"].path == model_zoo.user_zoo() / "resnet20.safetensors"
    assert [(r.name, r.origin) for r in model_zoo.available(origin="shipped")] == [("resnet20", "shipped"),
                                                                                  ("resnet32", "shipped")]
    with pytest.raises(BadInput, match="valid choices: user, shipped"):
        model_zoo.available(origin="elsewhere")


def test_zoo_entry_whose_card_names_another_model_refused():
    zoo = model_zoo.user_zoo()
    model_zoo.save(_model("resnet32"), zoo / "resnet32")
    for ext in (".json", ".safetensors"):
        (zoo / ("resnet32" + ext)).rename(zoo / ("resnet20" + ext))
    with pytest.raises(BadInput, match="the card is for resnet32, not resnet20"):
        model_zoo.load("resnet20")
    assert model_zoo.available() == []


def test_tampered_weights_refused(tmp_path):
    model_zoo.save(_model(), tmp_path / "inresnet20")
    w = tmp_path / "inresnet20.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="sha256"):
        model_zoo.load(tmp_path / "inresnet20")


def test_card_weights_mismatch_refused(tmp_path):
    model_zoo.save(_model("resnet20"), tmp_path / "m", name="resnet20")
    _rewrite(tmp_path / "m", card_edit=lambda c: c.update(name="resnet32"))  # a deeper network than the weights
    with pytest.raises(BadInput, match="does not fit resnet32"):
        model_zoo.load(tmp_path / "m")


@pytest.mark.parametrize("edit", [
    lambda c: c["kwargs"].update(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]),  # other normalisation
    lambda c: c.update(num_classes=11),
    lambda c: c.update(name="inresnet20", scheme="damped"),  # same keys, other function
])
def test_edited_card_refused_by_the_weights_header(tmp_path, edit):
    """14.2: the card's architectural fields are part of the weights file; editing the card alone is refused."""
    model_zoo.save(_model("resnet20"), tmp_path / "m", name="resnet20")
    card = json.loads((tmp_path / "m.json").read_text())
    edit(card)
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(BadInput, match="does not match the architecture saved with the weights"):
        model_zoo.load(tmp_path / "m")


def test_edited_normalisation_refused(tmp_path):
    model_zoo.save(_model("resnet20"), tmp_path / "m", name="resnet20")
    _rewrite(tmp_path / "m", card_edit=lambda c: c["normalisation"].update(mean=[0.5, 0.5, 0.5]))
    with pytest.raises(BadInput, match="normalisation"):
        model_zoo.load(tmp_path / "m")


def test_header_less_weights_refused(tmp_path):
    model_zoo.save(_model("resnet20"), tmp_path / "m", name="resnet20")
    _rewrite(tmp_path / "m", header_from_card=False)
    with pytest.raises(BadInput, match="no robench.arch header.*robench zoo upgrade"):
        model_zoo.load(tmp_path / "m")


def test_lm_weights_under_a_resnet_name_refused(tmp_path):
    """14.2: LM-ResNet weights (k dropped) with a consistent card and header named resnet20 do not run as resnet20."""
    model_zoo.save(_model("lmresnet20"), tmp_path / "m", name="lmresnet20")
    _rewrite(tmp_path / "m", card_edit=lambda c: c.update(name="resnet20"), tensors_edit=lambda t: t.pop("k"))
    with pytest.raises(BadInput, match="scheme 'lm' but resnet20 is registered as 'euler'"):
        model_zoo.load(tmp_path / "m")


@pytest.mark.parametrize("field,value,message", [
    ("num_classes", "ten", "num_classes must be an integer"),
    ("kwargs", [1], "kwargs must be a JSON object"),
    ("weights_sha256", None, "weights_sha256 must be 64"),
    ("metrics", None, "metrics must be a JSON object"),
    ("lam", "half", "lam must be null"),
    ("scheme", 3, "scheme must be"),
    ("damping", {"a": 1}, "damping must be a list"),
    ("metrics", {"test_acc": "95%"}, "test_acc must be a number"),
])
def test_bad_card_values_one_line(tmp_path, capsys, field, value, message):
    """14.2: every card field is validated with one line, at load and in `zoo list` (which keeps going)."""
    zoo = model_zoo.user_zoo()
    model_zoo.save(_model("resnet20"), zoo / "resnet20")
    model_zoo.save(_model("resnet32"), zoo / "resnet32")
    card = json.loads((zoo / "resnet20.json").read_text())
    card[field] = value
    (zoo / "resnet20.json").write_text(json.dumps(card))
    with pytest.raises(BadInput, match=message):
        model_zoo.load("resnet20")
    code, out, err = _cli(["zoo", "list", "resnet*"], capsys)
    assert code == 0 and "Traceback" not in err
    assert f"note: skipped {zoo / 'resnet20.json'}" in err and message.split()[0] in err
    assert any(line.split()[0] == "resnet32" and "user" in line for line in out.splitlines())
    code, _, err = _cli(["eval", "--model", "resnet20", "--n", "2"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_huge_architecture_refused_before_allocation(tmp_path):
    """14.2: kwargs widths [20000]*3 would be 14 GB of weights; refused from the card, by formula."""
    model_zoo.save(_model("resnet20"), tmp_path / "m", name="resnet20")
    _rewrite(tmp_path / "m", card_edit=lambda c: c["kwargs"].update(widths=[20000, 20000, 20000]))
    with pytest.raises(BadInput, match="parameters, more than the limit"):
        model_zoo.load(tmp_path / "m")
    _rewrite(tmp_path / "m", card_edit=lambda c: c["kwargs"].update(widths=[16, 32, 64], colour=1))
    with pytest.raises(BadInput, match="unknown architecture keyword"):
        model_zoo.load(tmp_path / "m")


@pytest.mark.parametrize("key,value", [("conv1.weight", float("nan")), ("fc.bias", float("inf")),
                                       ("bn.running_var", -1.0)])
def test_non_finite_weights_refused(tmp_path, key, value):
    """14.3: NaN/Inf weights or a negative BatchNorm variance would score 10 % everywhere and look robust."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from model_zoo.fileio import sha256_file

    model_zoo.save(_model("resnet20"), tmp_path / "resnet20")  # save itself refuses such weights (25.16)
    w, card = tmp_path / "resnet20.safetensors", tmp_path / "resnet20.json"
    state = load_file(str(w))
    with safe_open(str(w), "pt") as f:
        meta = f.metadata()
    state[key].view(-1)[0] = value
    save_file(state, str(w), metadata=meta)  # written by another tool, card sha256 brought up to date
    raw = json.loads(card.read_text())
    raw["weights_sha256"] = sha256_file(w)
    card.write_text(json.dumps(raw))
    with pytest.raises(BadInput, match=f"non-finite weights or negative BatchNorm variances in {key}"):
        model_zoo.load(tmp_path / "resnet20")


def test_zoo_escape_refused(tmp_path):
    """13.8: a card (or weights) in the zoo that links out of it is refused, by name lookup and by path."""
    zoo = model_zoo.user_zoo()
    outside = tmp_path / "outside"
    model_zoo.save(_model("resnet20"), outside / "resnet20")
    zoo.mkdir(parents=True)
    (zoo / "resnet20.json").symlink_to(outside / "resnet20.json")
    (zoo / "resnet20.safetensors").symlink_to(outside / "resnet20.safetensors")
    with pytest.raises(BadInput, match="model card .*resnet20.json escapes the zoo directory"):
        model_zoo.load("resnet20")
    # the card is a real file inside the zoo but the weights link out: refused the same way
    (zoo / "resnet20.json").unlink()
    (zoo / "resnet20.json").write_bytes((outside / "resnet20.json").read_bytes())
    with pytest.raises(BadInput, match="weights file .*resnet20.safetensors escapes the zoo directory"):
        model_zoo.load("resnet20")
    assert model_zoo.available() == []  # zoo list agrees with load
    with pytest.raises(BadInput, match="escapes"):
        model_zoo.load(zoo / "resnet20")


@pytest.mark.parametrize("kind", ["fifo", "devzero", "directory"])
def test_special_weights_files_refused_without_reading(tmp_path, kind):
    """14.7: a FIFO or a link to /dev/zero would hang the sha256; a directory gave a traceback."""
    zoo = model_zoo.user_zoo()
    model_zoo.save(_model("resnet20"), zoo / "resnet20")
    w = zoo / "resnet20.safetensors"
    w.unlink()
    if kind == "fifo":
        os.mkfifo(w)
    elif kind == "devzero":
        zoo_dev = zoo / "dev"
        zoo_dev.symlink_to("/dev")  # inside the zoo by name, a device once resolved
        w.symlink_to(zoo_dev / "zero")
    else:
        w.mkdir()
    with pytest.raises(BadInput, match="escapes|not a regular file"):
        model_zoo.load("resnet20")


def test_pickle_refused(tmp_path):
    m = _model("resnet20")
    # a pickle disguised with the right extension and a matching card
    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps(m.state_dict()))
    card = model_zoo.checkpoint._card_for(m, None, "resnet20")
    card.weights_sha256 = sha256_file(p)
    (tmp_path / "evil.json").write_text(card.to_json())
    with pytest.raises(BadInput, match="not a readable safetensors"):
        model_zoo.load(p)
    (tmp_path / "model.pt").write_bytes(pickle.dumps({}))
    with pytest.raises(BadInput, match="pickle"):
        model_zoo.load(tmp_path / "model.pt")


def test_model_zoo_imports_neither_robench_nor_torch():
    """13.4: model_zoo is a leaf (no circle through robench); listing it needs no torch."""
    code = ("import sys, model_zoo; model_zoo.model_info('inresnet20'); model_zoo.available(); "
            "print(sorted(m for m in ('robench', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "[]"
    from model_zoo.errors import BadInput as ZooBadInput
    assert ZooBadInput is BadInput


@pytest.mark.shipped_zoo
def test_shipped_weights_load_and_record_accuracy():
    """Every shipped checkpoint verifies, loads, and its card records an accuracy."""
    shipped = model_zoo.available(origin="shipped")
    assert len(shipped) >= 10
    for rec in shipped:
        e = model_zoo.load_entry(rec.name, lam=rec.lam)
        assert e.origin == "shipped" and e.path.parent == SHIPPED_ZOO
        assert e.card.metrics["test_acc"] > 0.5


def _shipped():
    return model_zoo.available(origin="shipped")


@pytest.mark.shipped_zoo
@pytest.mark.parametrize("rec", _shipped(), ids=lambda r: model_zoo.zoo_stem(r.name, r.lam))
def test_shipped_weights_classify_real_cifar10_images(rec):
    """Shipped weights are real: on Foolbox's 20 exact CIFAR-10 test images they score like their card says."""
    from robench.data import load_samples

    x, y = load_samples().as_float()
    m = model_zoo.load(rec.name, lam=rec.lam)
    with torch.no_grad():
        acc = (m(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.6, (rec.name, acc, rec.card.metrics)
    assert rec.card.dataset["test_batch_sha256"] and rec.card.training["seed"] == 0


def test_upgrade_adds_the_header_to_an_old_checkpoint(tmp_path, capsys):
    """Checkpoints saved before the header existed load again after `robench zoo upgrade`, weights unchanged."""
    m = _model("inresnet20")
    model_zoo.save(m, tmp_path / "inresnet20")
    _rewrite(tmp_path / "inresnet20", header_from_card=False)  # as an older robench wrote it
    before = json.loads((tmp_path / "inresnet20.json").read_text())
    with pytest.raises(BadInput, match="robench zoo upgrade"):
        model_zoo.load(tmp_path / "inresnet20")
    code, out, _ = _cli(["zoo", "upgrade", str(tmp_path / "inresnet20.safetensors")], capsys)
    assert code == 0 and "upgraded" in out
    after = json.loads((tmp_path / "inresnet20.json").read_text())
    assert {k: v for k, v in after.items() if k != "weights_sha256"} == {k: v for k, v in before.items() if k != "weights_sha256"}
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model_zoo.load(tmp_path / "inresnet20")(x), m(x))
    code, _, err = _cli(["zoo", "upgrade", str(tmp_path / "inresnet20")], capsys)
    assert code == 2 and "already has" in err
