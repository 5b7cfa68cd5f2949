"""`robench zoo import`: state dicts in the naming of the papers' reference code become zoo checkpoints.

The reference state dicts are made here from robench models by renaming (projections → downsample21/31 or
downsample1, k → a per-block ks list with entries the reference never reads, LM's k → 1 − k), plus the
modules the reference builds but never uses; importing must give back the same function.
"""
import pytest
import torch

import model_zoo
from model_zoo.importer import convert_reference_state
from robench.cli import main
from robench.errors import BadInput


def _robench_model(name, lam=None):
    torch.manual_seed(0)
    m = model_zoo.create_model(name, lam=lam)
    m.train()
    m(torch.rand(4, 3, 32, 32))  # non-trivial BatchNorm statistics
    if getattr(m, "learned", False):
        with torch.no_grad():  # dyadic values: 1 − (1 − k) == k exactly, so logits can be compared exactly
            m.k.copy_(torch.tensor([-0.0625, 0.125, 0.25, -0.03125, 0.5, 0.0]).repeat(10)[: m.k.numel()])
    return m.eval()


def _reference_state(m, source, *, prefix=""):
    stage_of = [s for s, n in enumerate(m.config["layers"]) for _ in range(n)]
    ref = {}
    for k, v in m.state_dict().items():
        if k == "k":
            continue
        if k.startswith("projections."):
            _, block, rest = k.split(".", 2)
            block = int(block)
            k = f"{'downsample1' if block == 0 else f'downsample{stage_of[block] + 1}1'}.downsample.{rest}"
        ref[k] = v.clone()
    n = len(m.blocks)
    ks = [torch.full((1,), 9.0) for _ in range(n)]  # 9: entries the reference never reads
    if "k" in m.state_dict():
        for slot, b in enumerate(m.damped_blocks):
            ks[b] = (1 - m.k[slot] if source == "lmresnet" else m.k[slot]).detach().reshape(1).clone()
    if m.scheme.value != "euler":
        ref.update({f"ks.{i}": k for i, k in enumerate(ks)})
    # built but never used in the reference forward pass
    for name, c in (("bn1", 16),):
        ref.update({f"{name}.weight": torch.ones(c), f"{name}.bias": torch.zeros(c), f"{name}.running_mean": torch.zeros(c),
                    f"{name}.running_var": torch.ones(c), f"{name}.num_batches_tracked": torch.tensor(0)})
    if "0" not in m.projections:  # Downsample(16, 64) of the basic-block networks
        ref.update({"downsample1.downsample.0.weight": torch.ones(16), "downsample1.downsample.2.weight": torch.zeros(64, 16, 1, 1)})
    if m.scheme.value == "euler":
        ref["downsample22.downsample.2.weight"] = torch.zeros(32, 16, 1, 1)
    return {prefix + k: v for k, v in ref.items()}


@pytest.mark.parametrize("name,source,lam,prefix", [
    ("inresnet20", "inresnet", None, ""),
    ("lambda_inresnet20", "inresnet", None, "module."),
    ("lmresnet20", "lmresnet", None, ""),
    ("resnet20", "inresnet", None, "module."),
    ("inresnet20", "inresnet", 0.5, ""),
    ("inresnet164", "inresnet", None, ""),
])
def test_reference_state_dict_imports_to_identical_logits(tmp_path, capsys, name, source, lam, prefix):
    m = _robench_model(name, lam)
    path = tmp_path / "ref.pth"
    torch.save(_reference_state(m, source, prefix=prefix), path)
    argv = ["zoo", "import", str(path), "--arch", name, "--source", source, "--out", str(tmp_path / "zoo")]
    if lam is not None:
        argv += ["--lam", str(lam)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0, capsys.readouterr().err
    entry = model_zoo.load_entry(tmp_path / "zoo" / model_zoo.zoo_stem(name, lam))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(entry.model(x), m(x))
    assert entry.card.training["imported_from"] in ("minicheshire/InResNet", "2prime/LM-ResNet")
    with pytest.raises(SystemExit) as e:  # a second import does not replace the entry silently
        main(argv)
    assert e.value.code == 2 and "--force" in capsys.readouterr().err


def test_mismatch_names_the_offending_keys():
    m = _robench_model("inresnet20")
    ref = _reference_state(m, "inresnet")
    del ref["downsample31.downsample.2.weight"], ref["ks.4"]
    ref["blocks.3.conv3.weight"] = torch.zeros(1)
    ref["fc.bias"] = torch.zeros(7)
    with pytest.raises(BadInput, match=r"missing: downsample31\.downsample\.2\.weight, ks\.4; "
                                       r"unexpected: blocks\.3\.conv3\.weight; wrong shape: fc\.bias \(7,\)"):
        convert_reference_state(ref, "inresnet20", source="inresnet")
    with pytest.raises(BadInput, match="--source lmresnet does not make inresnet20"):
        convert_reference_state(ref, "inresnet20", source="lmresnet")


def test_pickled_whole_model_refused_with_how_to_save_a_state_dict(tmp_path, capsys):
    """The reference code saves `torch.save(self.net, ...)`: a pickle robench will not execute."""
    path = tmp_path / "net.pth"
    torch.save(_robench_model("resnet20"), path)
    with pytest.raises(SystemExit) as e:
        main(["zoo", "import", str(path), "--arch", "resnet20", "--out", str(tmp_path / "zoo")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "torch.save(model.state_dict(), path)" in err
    assert not (tmp_path / "zoo").exists()
