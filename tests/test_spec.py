"""The evaluation spec: one validate() for the CLI, TOML and Python; parsers never raise anything
but a one-line BadInput (property-based)."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robench.errors import BadInput
from robench.spec import EvalSpec, parse_eps, parse_lam, parse_severity, spec_from_dict

TEXT_OR_NUMBER = st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                           st.booleans(), st.none(), st.fractions().map(str))


def _one_line(e: BadInput) -> bool:
    return "\n" not in str(e) and str(e).strip() != ""


@settings(max_examples=300, deadline=None)
@given(TEXT_OR_NUMBER)
def test_parsers_give_a_value_or_one_line_bad_input(value):
    for parse, ok in ((parse_eps, lambda v: 0.0 < v <= 1.0), (parse_severity, lambda v: v in (1, 2, 3, 4, 5)),
                      (parse_lam, lambda v: v is None or 0.0 <= v <= 1.0)):
        try:
            v = parse(value)
        except BadInput as e:
            assert _one_line(e)
        else:
            assert ok(v) and (v is None or math.isfinite(v))


def test_eps_in_pixel_units():
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps(0.5) == 0.5
    with pytest.raises(BadInput, match=r"did you mean 8/255\?"):
        parse_eps("8")
    with pytest.raises(BadInput, match=r"\(0, 1\]"):
        parse_eps(2.0)


TOML_VALUE = st.recursive(
    st.one_of(st.text(max_size=8), st.integers(-5, 300), st.floats(allow_nan=False, allow_infinity=False),
              st.booleans()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=2)),
    max_leaves=6)
KEYS = st.sampled_from(["models", "lams", "attacks", "eps", "attack_params", "corruptions", "severities", "seeds", "n",
                        "dataset", "batch_size", "threads", "backend", "device", "bogus"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, TOML_VALUE, max_size=5), st.sampled_from([["resnet20"], ["inresnet20"], None]))
def test_random_config_values_give_a_valid_spec_or_one_line_bad_input(raw, models):
    if models is not None:
        raw = {**raw, "models": models}
    try:
        spec = spec_from_dict(raw, source="c.toml").validate(check_device=False)
    except BadInput as e:
        assert _one_line(e)
    else:
        assert spec.models and all(0.0 < e <= 1.0 for e in (spec.eps or ()))
        assert spec.batch_size >= 1 and spec.threads >= 1


def test_cli_toml_and_python_build_the_same_spec(tmp_path):
    from robench.cli.eval_cmd import build_spec
    from robench.spec import load_spec

    cfg = tmp_path / "c.toml"
    cfg.write_text('models = ["inresnet20"]\nlams = [0.5, "learned"]\nattacks = ["pgd"]\neps = ["8/255"]\n'
                   '[attack_params.pgd]\nsteps = 5\n')
    python = EvalSpec(models=["inresnet20"], lams=[0.5, None], attacks=["pgd"], eps=[8 / 255],
                      attack_params={"pgd": {"steps": 5}}, threads=1).validate()
    toml = load_spec(cfg).replace(threads=1).validate()
    cli = build_spec(("inresnet20",), ("0.5,learned",), ("pgd",), ("8/255",), ("pgd.steps=5",), (), (), None, None,
                     None, None, None, None, (), None, "1", None).validate()
    assert python == toml == cli


def test_threads_default_and_environment(monkeypatch):
    import os

    from robench.machine import resolve_threads

    monkeypatch.delenv("ROBENCH_THREADS", raising=False)
    assert resolve_threads(None) == min(os.cpu_count(), 4)
    monkeypatch.setenv("ROBENCH_THREADS", "3")
    assert resolve_threads(None) == 3 and resolve_threads("2") == 2
    monkeypatch.setenv("ROBENCH_THREADS", "many")
    with pytest.raises(BadInput, match="ROBENCH_THREADS"):
        resolve_threads(None)
