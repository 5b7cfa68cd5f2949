"""Worst case and row order from hand-made records (the expected values are written out, not
recomputed with the function under test)."""
from __future__ import annotations

import random

import numpy as np

from robench.aggregate import table, worst_case_records
from robench.results import pack_flags, unpack_flags


def _rec(kind, perturbation="none", eps=None, flags=(True, True, True, True), model="resnet20", seed=0, **kw):
    f = np.array(flags, dtype=bool)
    return dict(model=model, scheme="euler", lam=0.0, dataset="samples", n=len(f), kind=kind, perturbation=perturbation,
                backend=None if kind != "attack" else "art", norm="linf" if kind == "attack" else None, eps=eps,
                severity=kw.get("severity"), steps=None, seed=seed, correct=int(f.sum()), accuracy=f.mean(),
                ci_low=0.0, ci_high=1.0, seconds=1.0, flags=pack_flags(f))


CLEAN = _rec("clean", flags=[1, 1, 1, 0])
FGSM = _rec("attack", "fgsm", 0.1, [1, 1, 0, 1])
PGD = _rec("attack", "pgd", 0.1, [1, 0, 1, 1])


def test_worst_case_is_the_and_and_names_its_attacks():
    (w,) = worst_case_records([CLEAN, FGSM, PGD])
    np.testing.assert_array_equal(unpack_flags(w["flags"], 4), [True, False, False, False])
    assert w["correct"] == 1 and w["accuracy"] == 0.25  # a min over accuracies would say 0.75
    assert w["attacks"] == "fgsm+pgd" and w["complete"] is True and w["seconds"] == 3.0


def test_worst_case_is_incomplete_when_a_planned_attack_or_the_clean_row_is_missing():
    group = ("resnet20", None, "samples", 4, 0, 0.1)
    (w,) = worst_case_records([CLEAN, FGSM], planned={group: {"fgsm", "pgd"}})
    assert w["attacks"] == "fgsm" and w["complete"] is False
    np.testing.assert_array_equal(unpack_flags(w["flags"], 4), [True, True, False, False])
    (w,) = worst_case_records([FGSM, PGD], planned={group: {"fgsm", "pgd"}})
    assert w["complete"] is False  # the clean flags are not in the AND


def test_one_row_order_whatever_order_cells_finished_in():
    recs = [CLEAN, FGSM, PGD, _rec("attack", "fgsm", 0.05), _rec("corruption", "fog", severity=2),
            _rec("corruption", "fog", severity=1), _rec("clean", model="inresnet20"), _rec("clean", seed=1)]
    expected = [("resnet20", 0, "clean", "none", None), ("resnet20", 0, "attack", "fgsm", 0.05),
                ("resnet20", 0, "attack", "fgsm", 0.1), ("resnet20", 0, "attack", "pgd", 0.1),
                ("resnet20", 0, "worst_case", "worst_case", 0.05), ("resnet20", 0, "worst_case", "worst_case", 0.1),
                ("resnet20", 0, "corruption", "fog", None), ("resnet20", 0, "corruption", "fog", None),
                ("resnet20", 1, "clean", "none", None), ("inresnet20", 0, "clean", "none", None)]
    for seed in range(3):
        shuffled = recs[:]
        random.Random(seed).shuffle(shuffled)
        df = table(shuffled, models=["resnet20", "inresnet20"])
        got = [(r.model, r.seed, r.kind, r.perturbation, None if np.isnan(r.eps) else r.eps) for r in df.itertuples()]
        assert got == expected
        assert df.loc[df["kind"] == "corruption", "severity"].tolist() == [1, 2]


def test_a_row_with_empty_flags_takes_no_part_in_the_worst_case():
    """Found by the hostile-table property test: a clean row whose flags were "" (a CSV's empty cell)
    was ANDed as zero examples into its group's worst case (a numpy broadcast error in merge)."""
    from robench.aggregate import worst_case_records
    from robench.results import pack_flags

    common = dict(model="resnet20", scheme="euler", lam=0.0, dataset="samples", n=4, seed=0)
    attack = dict(common, kind="attack", perturbation="pgd", backend="art", eps=8 / 255, correct=2,
                  flags=pack_flags([True, True, False, False]))
    clean = dict(common, kind="clean", perturbation="none", eps=None, correct=3, flags="")
    (wc,) = worst_case_records([clean, attack])
    assert wc["correct"] == 2 and wc["complete"] is False  # no clean flags: the AND of the attack alone, incomplete
