import pytest
import torch

import model_zoo
from model_zoo import Scheme, create_model, list_models, model_info
from model_zoo.registry import _MODELS, register_cifar_resnet, register_model
from model_zoo.schemes import _SCHEMES, get_scheme, register_scheme
from robench.errors import BadInput

ALL = list_models()
# The two ResNeXt-29s are 34M/68M parameters: they build and back-propagate in the slow suite only.
HEAVY = {"resnext29_8x64d", "resnext29_16x64d", "inresnext29_8x64d", "lmresnext29_8x64d"}


def test_registry_lists_every_family():
    for pattern, expected in [("resnet*", 6), ("inresnet*", 6), ("lambda_inresnet*", 6), ("lmresnet*", 6),
                              ("*resnext29*", 4)]:
        assert len(list_models(pattern)) == expected, pattern
    assert list_models("resnet*")[:2] == ["resnet20", "resnet32"]  # natural order


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        @register_model
        def resnet20(**kw):  # noqa: F811
            return None


def test_unknown_name_lists_choices():
    with pytest.raises(BadInput, match="valid choices: .*inresnet20"):
        create_model("resnet21")


def _check_builds_and_backprops(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=7)
    x = torch.rand(2, 3, 32, 32)
    out = m(x)
    assert out.shape == (2, 7)
    out.square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


@pytest.mark.parametrize("name", [n for n in ALL if n not in HEAVY])
def test_every_model_builds_and_backpropagates(name):
    _check_builds_and_backprops(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEAVY))
def test_resnext_builds_and_backpropagates(name):
    _check_builds_and_backprops(name)


@pytest.mark.parametrize("name,paper_m", [("resnet20", 0.27), ("resnet56", 0.85), ("resnet110", 1.7),
                                          ("resnet164", 1.7), ("resnext29_8x64d", 34.4)])
def test_parameter_counts_match_papers(name, paper_m):
    with torch.device("meta"):
        m = create_model(name)
    count = sum(p.numel() for p in m.parameters()) / 1e6
    assert abs(count - paper_m) / paper_m < 0.03, count


@pytest.mark.parametrize("depth", [20, 164])
def test_lam0_is_resnet(depth):
    torch.manual_seed(1)
    res = create_model(f"resnet{depth}").eval()
    damped = create_model(f"inresnet{depth}", lam=0.0).eval()
    assert list(res.state_dict()) == list(damped.state_dict())
    assert [n for n, _ in res.named_parameters()] == [n for n, _ in damped.named_parameters()]
    damped.load_state_dict(res.state_dict())
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(res(x), damped(x))


def test_fixed_lambda_models_share_resnet_keys():
    keys = set(create_model("resnet20").state_dict())
    for name in ("inresnet20", "lambda_inresnet20"):
        assert set(create_model(name, lam=0.5).state_dict()) == keys
    assert "k" in create_model("inresnet20").state_dict()  # learned λ adds its coefficients


def test_lam1_output_ignores_identity_path():
    """With λ=1 a damped block is x_{n+1} = f(x_n): a plain CNN for every non-projection block."""
    torch.manual_seed(2)
    m = create_model("inresnet20", lam=1.0).eval()
    x = torch.rand(3, 3, 32, 32)
    h = m.conv1((x - m.mean) / m.std)
    for i, b in enumerate(m.blocks):
        if str(i) in m.projections:
            h = b(h) + m.projections[str(i)](h)
        elif i == 0:
            h = b(h) + h
        else:
            h = b(h)  # no identity term at all
    ref = m.fc(torch.relu(m.bn(h)).mean((2, 3)))
    torch.testing.assert_close(m(x), ref)
    # and it differs from the ResNet with the same weights
    res = create_model("resnet20").eval()
    res.load_state_dict(m.state_dict())
    assert not torch.allclose(res(x), m(x))


def test_learned_lambdas_exposed_and_initialised_as_reference():
    m = create_model("inresnet20")
    d = m.damping()
    assert len(d) == len(m.damped_blocks) == 9 - 3  # first block and two stage transitions stay plain
    assert all(0.2 - 1e-6 <= r["value"] <= 0.25 + 1e-6 and r["coef"] == "lam" for r in d)
    lam = model_zoo.create_model("lambda_inresnet20").damping()
    assert all(0.2 - 1e-6 <= r["value"] <= 0.25 + 1e-6 for r in lam)
    k = create_model("lmresnet20").damping()
    assert all(-0.1 - 1e-6 <= r["value"] <= 0 and r["coef"] == "k" for r in k)
    assert {r["stage"] for r in d} == {0, 1, 2}


def test_learned_lambda_receives_gradient():
    m = create_model("inresnet20")
    m(torch.rand(2, 3, 32, 32)).sum().backward()
    assert m.k.grad is not None and m.k.grad.abs().sum() > 0


@pytest.mark.parametrize("name,lam", [("resnet20", 0.5), ("lmresnet20", 0.1), ("inresnet20", 1.5), ("inresnet20", -0.1)])
def test_invalid_lambda_refused(name, lam):
    with pytest.raises(BadInput):
        create_model(name, lam=lam)


def test_normalisation_inside_model():
    m = create_model("resnet20")
    assert m.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    assert m.std.flatten().tolist() == pytest.approx([0.2023, 0.1994, 0.2010])
    assert "mean" not in m.state_dict()  # constants of the family, recorded on the card instead


def test_schemes():
    assert create_model("lmresnet20").scheme is get_scheme("lm")
    assert create_model("lambda_inresnet20").scheme.value == "lambda_damped"


@pytest.mark.parametrize("name", ALL)
def test_model_info_matches_the_built_model_without_building(name):
    """13.3: the registry entry knows scheme, λ, classes and size; the meta-device build agrees."""
    info = model_info(name)
    with torch.device("meta"):
        m = create_model(name)
    assert info.scheme == m.scheme.value and info.learned == m.learned and info.num_classes == m.num_classes
    assert info.takes_lam == (info.scheme in ("damped", "lambda_damped")) and info.dataset == "cifar10"
    assert info.params == sum(p.numel() for p in m.parameters())


def test_a_new_scheme_is_one_registered_definition(monkeypatch):
    """13.3: a scheme (update rule, λ, k init) and a model using it are one definition each."""
    monkeypatch.setattr("model_zoo.schemes._SCHEMES", dict(_SCHEMES))
    monkeypatch.setattr("model_zoo.registry._MODELS", dict(_MODELS))
    half = register_scheme(Scheme("half", "x_{n+1} = x_n + (1−λ_n) f(x_n)", step=lambda f, x, prev, lam: x + (1 - lam) * f,
                                  takes_lam=True, learned=True, k_init=(0.5, 0.5), lam_of_k=lambda k: k.clamp(0, 1)))
    register_cifar_resnet("halfresnet20", "half", {"layers": (3, 3, 3)})
    info = model_info("halfresnet20")
    assert (info.scheme, info.takes_lam, info.learned) == ("half", True, True)
    torch.manual_seed(0)
    m = create_model("halfresnet20", lam=1.0).eval()
    res = create_model("resnet20").eval()
    res.load_state_dict(m.state_dict())
    x = torch.rand(2, 3, 32, 32)
    h = m.conv1((x - m.mean) / m.std)
    for i, b in enumerate(m.blocks):  # λ=1 drops f in the damped blocks: only projections and block 0 remain
        if str(i) in m.projections:
            h = b(h) + m.projections[str(i)](h)
        elif i == 0:
            h = b(h) + h
    torch.testing.assert_close(m(x), m.fc(torch.relu(m.bn(h)).mean((2, 3))))
    learned = create_model("halfresnet20")
    assert learned.k.shape == (6,) and all(r["value"] == 0.5 for r in learned.damping())
    assert "halfresnet20" in model_zoo.models_markdown() and half.update in model_zoo.models_markdown()


def test_models_markdown_lists_every_registered_model_once():
    md = model_zoo.models_markdown()
    assert md.splitlines()[0] == "| scheme | update | names |"
    assert "| `lm` | x_{n+1} = (1−k_n) x_n + k_n x_{n−1} + f(x_n) | `lmresnet20…164`, `lmresnext29_8x64d` |" in md
    assert "`resnet20…164`, `resnext29_8x64d`, `resnext29_16x64d`" in md


def test_no_attributes_glued_onto_models():
    assert not hasattr(create_model("resnet20"), "model_name")


def test_bad_architecture_keywords_one_line():
    with pytest.raises(BadInput, match="widths must be 3 positive integers"):
        create_model("resnet20", widths=[16, "32", 64])
    with pytest.raises(BadInput, match="unknown scheme 'rk4'; valid choices: euler, damped"):
        get_scheme("rk4")


def _reference_forward(m, x, scheme):
    """The four update rules written out independently of model_zoo.schemes (as in the README table)."""
    h = m.conv1((x - m.mean) / m.std)
    prev = h
    for i, b in enumerate(m.blocks):
        if str(i) in m.projections or i == 0:
            sc = m.projections[str(i)](h) if str(i) in m.projections else h
            h, prev = b(h) + sc, sc
            continue
        f, slot = b(h), m.damped_blocks.index(i)
        if scheme == "euler":
            out = h + f
        elif scheme == "damped":
            out = f + (1 - torch.relu(1 - m.k)[slot]) * h
        elif scheme == "lambda_damped":
            out = (1 + torch.relu(m.k)[slot]) * f + (1 - torch.relu(m.k)[slot]) * h
        else:
            out = f + (1 - m.k[slot]) * h + m.k[slot] * prev
        h, prev = out, h
    return m.fc(torch.nn.functional.adaptive_avg_pool2d(torch.relu(m.bn(h)), 1).flatten(1))


@pytest.mark.parametrize("name", ["resnet20", "inresnet20", "lambda_inresnet20", "lmresnet20"])
def test_scheme_records_compute_the_documented_updates_exactly(name):
    """13.3: moving the update rules into registered schemes keeps every scheme's logits bit-identical."""
    torch.manual_seed(3)
    m = create_model(name).eval()
    if m.learned:
        with torch.no_grad():
            m.k.uniform_(-0.5, 1.5)  # both sides of the relu kinks
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), _reference_forward(m, x, m.scheme.value))


def test_split_tag_separates_a_trained_variant_from_its_architecture():
    from model_zoo import split_tag

    assert split_tag("resnet20.s1") == ("resnet20", "s1")
    assert split_tag("resnet20") == ("resnet20", None)
    assert split_tag("inresnet20@0.5") == ("inresnet20@0.5", None)  # a number is not a tag
    assert split_tag("inresnet20@0.5.s2") == ("inresnet20@0.5", "s2")
