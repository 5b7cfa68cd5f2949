"""The leaderboard of a hand-made table equals a hand-computed CSV."""
import math

import pandas as pd
import pytest

from robench.errors import BadInput
from robench.leaderboard import format_eps, leaderboard, to_markdown
from robench.results import to_frame, wilson, write_table

E8, E2 = 8 / 255, 2 / 255


def rec(model, lam, kind, pert, correct, *, n=20, eps=None, sev=None, seed=0, backend=None, scheme="damped"):
    lo, hi = wilson(correct, n)
    return dict(model=model, scheme=scheme, lam=lam, dataset="samples", n=n, kind=kind, perturbation=pert,
                backend=backend, eps=eps, severity=sev, seed=seed, correct=correct, accuracy=correct / n,
                ci_low=lo, ci_high=hi, data_sha256="d" * 64, weights_sha256=f"{model}{lam}")


def hand_table():
    nan = math.nan
    r = dict(scheme="euler")
    return to_frame([
        rec("resnet20", 0.0, "clean", "none", 15, **r),
        rec("resnet20", 0.0, "attack", "fgsm", 9, eps=E2, backend="art", **r),
        rec("resnet20", 0.0, "attack", "fgsm", 4, eps=E8, backend="art", **r),
        rec("resnet20", 0.0, "attack", "pgd", 2, eps=E8, backend="art", **r),
        rec("resnet20", 0.0, "worst_case", "worst_case", 9, eps=E2, **r),
        rec("resnet20", 0.0, "worst_case", "worst_case", 2, eps=E8, **r),
        rec("resnet20", 0.0, "corruption", "gaussian_noise", 12, sev=1, **r),
        rec("resnet20", 0.0, "corruption", "gaussian_noise", 10, sev=2, **r),
        rec("inresnet20", 0.5, "clean", "none", 14),
        rec("inresnet20", 0.5, "attack", "fgsm", 6, eps=E8, backend="art"),
        rec("inresnet20", 0.5, "attack", "pgd", 5, eps=E8, backend="art"),
        rec("inresnet20", 0.5, "worst_case", "worst_case", 4, eps=E8),
        rec("inresnet20", 0.5, "corruption", "gaussian_noise", 13, sev=1),
        rec("inresnet20", 0.5, "corruption", "gaussian_noise", 11, sev=2),
        # learned λ: FGSM above clean and a worst case above PGD are both impossible → flagged
        rec("inresnet20", nan, "clean", "none", 10),
        rec("inresnet20", nan, "attack", "fgsm", 12, eps=E8, backend="art"),
        rec("inresnet20", nan, "attack", "pgd", 3, eps=E8, backend="art"),
        rec("inresnet20", nan, "worst_case", "worst_case", 4, eps=E8),
        # no clean row, cells on different n and seeds
        rec("lmresnet20", nan, "attack", "fgsm", 5, eps=E8, backend="art", scheme="lm"),
        rec("lmresnet20", nan, "attack", "pgd", 1, n=10, seed=1, eps=E8, backend="art", scheme="lm"),
    ])


# Computed by hand: accuracies are correct/n; CIs are Wilson 95% (e.g. 14/20 → [0.481027, 0.854523]);
# corruption_mean is the mean over (corruption, severity) cells with the CI of the pooled counts
# (resnet20: (12+10)/40); worst_case is taken at the largest ε (8/255); ties share the rank.
EXPECTED = """\
rank,model,scheme,lam,dataset,n,seeds,recipe,epochs,label_smoothing,train_device,clean,clean_ci_low,clean_ci_high,worst_case,worst_case_ci_low,worst_case_ci_high,worst_case_eps,worst_case_attacks,worst_case_status,corruption_mean,corruption_ci_low,corruption_ci_high,fgsm@2/255,fgsm@8/255,pgd@8/255,worst_case@2/255,worst_case@8/255,checks,flags
1,inresnet20,damped,0.5,samples,20,0,,,,,0.7,0.481027,0.854523,0.2,0.080658,0.416017,8/255,fgsm+pgd,ok,0.6,0.445959,0.736517,,0.3,0.25,,0.2,"1 passed, 0 flagged, 2 not applicable; model checks not run",
1,inresnet20,damped,,samples,20,0,,,,,0.5,0.299298,0.700702,0.2,0.080658,0.416017,8/255,fgsm+pgd,ok,,,,,0.6,0.15,,0.2,"1 passed, 0 flagged, 2 not applicable; model checks not run",robust_gt_clean;worst_gt_attack
3,resnet20,euler,0.0,samples,20,0,,,,,0.75,0.531299,0.888138,0.1,0.027866,0.301034,8/255,fgsm+pgd,ok,0.55,0.398291,0.692947,0.45,0.2,0.1,0.45,0.1,"2 passed, 0 flagged, 1 not applicable; model checks not run",
,lmresnet20,lm,,samples,10,0;1,,,,,,,,,,,8/255,,,,,,,0.25,0.1,,,"0 passed, 0 flagged, 6 not applicable; model checks not run",missing_clean;mixed_n;mixed_seeds
"""


def test_leaderboard_equals_hand_computed_csv():
    assert leaderboard(hand_table(), cards={}).to_csv(index=False) == EXPECTED


def test_rank_by_clean_and_order_independence():
    df = hand_table()
    board = leaderboard(df.sample(frac=1.0, random_state=3), rank_by="clean", cards={})
    assert list(zip(board["model"], board["lam"].fillna(-1), board["rank"].fillna(0))) == [
        ("resnet20", 0.0, 1), ("inresnet20", 0.5, 2), ("inresnet20", -1, 3), ("lmresnet20", -1, 0)]
    # the default ranking does not depend on the order of the input rows
    assert leaderboard(df.iloc[::-1], cards={}).to_csv(index=False) == EXPECTED


def test_invalid_rank_by_lists_the_metrics():
    with pytest.raises(BadInput, match=r"unknown --rank-by metric 'robust'; valid choices: clean, worst_case, "
                                       r"corruption_mean, fgsm@2/255, fgsm@8/255, pgd@8/255"):
        leaderboard(hand_table(), rank_by="robust", cards={})


def test_backend_joins_the_column_name_only_when_an_attack_has_several():
    df = to_frame([rec("resnet20", 0.0, "clean", "none", 15, scheme="euler"),
                   rec("resnet20", 0.0, "attack", "pgd", 3, eps=E8, backend="art", scheme="euler"),
                   rec("resnet20", 0.0, "attack", "pgd", 4, eps=E8, backend="foolbox", scheme="euler"),
                   rec("resnet20", 0.0, "attack", "fgsm", 5, eps=0.03, backend="art", scheme="euler")])
    board = leaderboard(df, cards={})
    assert [c for c in board.columns if "@" in c] == ["fgsm@0.03", "pgd:art@8/255", "pgd:foolbox@8/255"]
    assert board["flags"].iloc[0] == "" and board["rank"].iloc[0] == 1  # ranked by clean: no worst-case rows
    assert format_eps(8 / 255) == "8/255" and format_eps(0.0) == "0/255"


def test_duplicate_cells_and_mixed_weights_are_flagged():
    df = hand_table()
    dup = df[(df["model"] == "resnet20") & (df["kind"] == "clean")].copy()
    dup["weights_sha256"] = "other"
    board = leaderboard(pd.concat([df, dup], ignore_index=True), cards={})
    flags = board.loc[board["model"] == "resnet20", "flags"].iloc[0]
    assert flags == "duplicate_cells"  # the duplicate is dropped (first kept), so weights stay unmixed
    df.loc[df["model"] == "resnet20", "weights_sha256"] = ["a", "b"] + ["a"] * 6
    board = leaderboard(df, cards={})
    assert board.loc[board["model"] == "resnet20", "flags"].iloc[0] == "mixed_weights"


def test_cli_writes_csv_and_markdown(tmp_path, capsys):
    from robench.cli import main

    write_table(hand_table(), tmp_path / "t")
    out, md = tmp_path / "lb" / "leaderboard.csv", tmp_path / "lb.md"
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", str(tmp_path / "t.parquet"), "-o", str(out), "--markdown", str(md)])
    assert e.value.code == 0
    assert out.read_text() == EXPECTED
    text = md.read_text()
    assert "| 1 | inresnet20 | 0.5 | samples | 20 | – | 70.0 [48.1, 85.5] | 20.0 [8.1, 41.6] |" in text
    # the CSV copy of the same table gives the same leaderboard
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", str(tmp_path / "t.csv"), "-o", str(tmp_path / "from_csv.csv")])
    assert e.value.code == 0
    assert (tmp_path / "from_csv.csv").read_text() == EXPECTED


def _with_wc_columns(df, attacks: dict, complete: dict):
    """Add the engine's worst-case columns (``attacks``, ``complete``) to a table built here."""
    df = df.copy()
    df["attacks"] = [attacks.get((m, k)) if k == "worst_case" else None for m, k in zip(df["model"], df["kind"])]
    df["complete"] = pd.array([complete.get((m, k)) if k == "worst_case" else None
                               for m, k in zip(df["model"], df["kind"])], dtype="boolean")
    return df


def _unfinished_and_finished():
    r = dict(scheme="euler")
    return to_frame([
        # a sweep still running: only FGSM has finished for resnet20, so its worst case is FGSM's
        rec("resnet20", 0.0, "clean", "none", 17, **r),
        rec("resnet20", 0.0, "attack", "fgsm", 7, eps=E8, backend="art", **r),
        rec("resnet20", 0.0, "worst_case", "worst_case", 7, eps=E8, **r),
        rec("inresnet20", 0.5, "clean", "none", 17),
        rec("inresnet20", 0.5, "attack", "fgsm", 8, eps=E8, backend="art"),
        rec("inresnet20", 0.5, "attack", "pgd", 1, eps=E8, backend="art"),
        rec("inresnet20", 0.5, "worst_case", "worst_case", 1, eps=E8),
    ])


def test_incomplete_worst_case_is_shown_but_never_ranked():
    df = _with_wc_columns(_unfinished_and_finished(), {("resnet20", "worst_case"): "fgsm",
                                                       ("inresnet20", "worst_case"): "fgsm+pgd"},
                          {("resnet20", "worst_case"): False, ("inresnet20", "worst_case"): True})
    board = leaderboard(df, cards={})
    top = board.iloc[0]
    assert (top["model"], top["rank"], top["worst_case_status"]) == ("inresnet20", 1, "ok")
    r = board[board["model"] == "resnet20"].iloc[0]
    assert pd.isna(r["rank"]) and r["worst_case"] == 0.35 and r["worst_case_status"] == "incomplete"
    assert r["worst_case_attacks"] == "fgsm" and "incomplete_worst_case(8/255)" in r["flags"]
    md = to_markdown(board)
    assert "35.0 [18.1, 56.7] (incomplete: fgsm, not ranked)" in md
    # ranking by clean is unaffected: the worst case's status matters only for worst-case metrics
    assert leaderboard(df, rank_by="clean", cards={})["rank"].tolist() == [1, 1]


def test_worst_case_of_other_attacks_is_mismatched_in_old_tables_too():
    # an old table without `attacks`/`complete`: the attacks come from the cells the table holds
    board = leaderboard(_unfinished_and_finished(), cards={})
    r = board[board["model"] == "resnet20"].iloc[0]
    assert pd.isna(r["rank"]) and r["worst_case_status"] == "mismatched"
    assert "mismatched_worst_case(8/255: lacks pgd)" in r["flags"]
    assert board[board["model"] == "inresnet20"]["rank"].iloc[0] == 1


def test_recipe_columns_come_from_the_card_with_the_same_weights():
    from model_zoo.checkpoint import ModelCard

    card = ModelCard(name="resnet20", scheme="euler", lam=None, weights_sha256="resnet200.0",
                     training={"device": "cpu:AMD EPYC", "recipe": {"name": "fast", "epochs": 60,
                                                                    "label_smoothing": 0.1}})
    board = leaderboard(hand_table(), cards={"resnet200.0": card})
    r = board[board["model"] == "resnet20"].iloc[0]
    assert (r["recipe"], r["epochs"], r["label_smoothing"], r["train_device"]) == ("fast", 60, 0.1, "cpu:AMD EPYC")
    assert pd.isna(board[board["model"] == "lmresnet20"]["recipe"].iloc[0])  # no card with its weights
    assert "| fast, 60 ep, ls 0.1, cpu:AMD EPYC |" in to_markdown(board)


def test_checks_join_the_flags_as_words_with_their_cells():
    from robench.checks import to_checks_frame

    df = hand_table()
    # a table-only check computed from the table itself: FGSM far below PGD at the same ε
    df.loc[(df["model"] == "resnet20") & (df["perturbation"] == "pgd"), ["correct", "accuracy"]] = [18, 0.9]
    checks = to_checks_frame([{"model": "inresnet20", "lam": 0.5, "dataset": "samples", "n": 20, "seed": 0,
                               "check": "zero_gradient", "status": "flag", "value": 1.0, "threshold": 0.0,
                               "cells": "clean: 20/20 examples", "detail": "", "n_checked": 20, "seconds": 0.1}])
    board = leaderboard(df, checks=checks, cards={})
    flags = dict(zip(zip(board["model"], board["lam"].fillna(-1)), board["flags"]))
    assert flags[("inresnet20", 0.5)] == "zero_gradient(clean: 20/20 examples)"
    checks_col = dict(zip(zip(board["model"], board["lam"].fillna(-1)), board["checks"]))
    assert checks_col[("inresnet20", 0.5)] == "1 passed, 1 flagged, 2 not applicable"  # model checks ran
    assert checks_col[("resnet20", 0.0)].endswith("; model checks not run")
    assert "single_step_stronger(fgsm@8/255 20.0% < pgd@8/255 90.0%)" in flags[("resnet20", 0.0)]


def test_markdown_does_not_repeat_the_headline_worst_case():
    md = to_markdown(leaderboard(hand_table(), cards={}))
    header = md.splitlines()[0]
    assert "worst_case @8/255" in header and "worst_case@8/255" not in header and "worst_case@2/255" in header


def test_cli_writes_nothing_by_default_and_never_overwrites_without_force(tmp_path, monkeypatch, capsys):
    from robench.cli import main

    write_table(hand_table(), tmp_path / "t")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", "t.parquet"])
    assert e.value.code == 0
    assert "| rank | model |" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix) == ["t.csv", "t.parquet"]  # nothing written
    (tmp_path / "lb.csv").write_text("keep me\n")
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", "t.parquet", "-o", "lb.csv"])
    assert e.value.code == 2 and "lb.csv exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "lb.csv").read_text() == "keep me\n"
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", "t.parquet", "-o", "lb.csv", "--force"])
    assert e.value.code == 0 and (tmp_path / "lb.csv").read_text() == EXPECTED


def test_recipe_columns_are_read_from_the_zoo_by_default():
    import model_zoo

    card = model_zoo.save(model_zoo.create_model("resnet20"), model_zoo.user_zoo() / "resnet20",
                          card={"training": {"device": "cpu:AMD EPYC", "recipe": {"name": "paper", "epochs": 160,
                                                                                  "label_smoothing": 0.0}}})
    df = hand_table()
    df.loc[df["model"] == "resnet20", "weights_sha256"] = card.weights_sha256
    r = leaderboard(df).set_index("model").loc["resnet20"]
    assert (r["recipe"], r["epochs"], r["label_smoothing"], r["train_device"]) == ("paper", 160, 0.0, "cpu:AMD EPYC")
