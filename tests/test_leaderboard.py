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


# Computed by hand: accuracies are 100·correct/n (percent, like every view); CIs are Wilson 95%
# (e.g. 14/20 → [48.1027, 85.4523]); corruption_mean is the mean over (corruption, severity) cells with
# the CI of the pooled counts (resnet20: (12+10)/40); worst_case is taken at the largest ε (8/255). The
# ranking cell: no worst case separates the best row from the worst (at 8/255: 20.0 [8.1, 41.6] vs
# 10.0 [2.8, 30.1]; at 2/255 only resnet20 has one), so the one with the largest spread (8/255);
# ties of the point value share the rank, `tied` lists the ranks whose intervals overlap the row's.
EXPECTED = """\
rank,tied,model,scheme,lam,dataset,data_label,n,seeds,rank_by,rank_value,rank_ci_low,rank_ci_high,clean,clean_ci_low,clean_ci_high,worst_case,worst_case_ci_low,worst_case_ci_high,worst_case_eps,worst_case_attacks,worst_case_status,corruption_mean,corruption_ci_low,corruption_ci_high,corruption_set,source,parameters,recipe,epochs,label_smoothing,train_device,card_test_acc,notes,fgsm@2/255,fgsm@2/255_ci_low,fgsm@2/255_ci_high,fgsm@8/255,fgsm@8/255_ci_low,fgsm@8/255_ci_high,pgd@8/255,pgd@8/255_ci_low,pgd@8/255_ci_high,worst_case@2/255,worst_case@2/255_ci_low,worst_case@2/255_ci_high,worst_case@8/255,worst_case@8/255_ci_low,worst_case@8/255_ci_high,checks,flags
1,1;3,inresnet20,damped,0.5,samples,samples (sha256 dddddddd),20,0,worst_case@8/255,20.0,8.0658,41.6017,70.0,48.1027,85.4523,20.0,8.0658,41.6017,8/255,fgsm+pgd,ok,60.0,44.5959,73.6517,gaussian_noise × severities 1–2 (generated),,272378,,,,,,,,,,30.0,14.5477,51.8973,25.0,11.1862,46.8701,,,,20.0,8.0658,41.6017,"1 passed, 0 flagged, 2 not applicable; model checks not run",
1,1;3,inresnet20,damped,learned,samples,samples (sha256 dddddddd),20,0,worst_case@8/255,20.0,8.0658,41.6017,50.0,29.9298,70.0702,20.0,8.0658,41.6017,8/255,fgsm+pgd,ok,,,,,,272384,,,,,,,,,,60.0,38.6582,78.1193,15.0,5.2369,36.0419,,,,20.0,8.0658,41.6017,"1 passed, 0 flagged, 2 not applicable; model checks not run",robust_gt_clean;worst_gt_attack
3,1,resnet20,euler,0,samples,samples (sha256 dddddddd),20,0,worst_case@8/255,10.0,2.7866,30.1034,75.0,53.1299,88.8138,10.0,2.7866,30.1034,8/255,fgsm+pgd,ok,55.0,39.8291,69.2947,gaussian_noise × severities 1–2 (generated),,272378,,,,,,,45.0,25.8198,65.7915,20.0,8.0658,41.6017,10.0,2.7866,30.1034,45.0,25.8198,65.7915,10.0,2.7866,30.1034,"2 passed, 0 flagged, 1 not applicable; model checks not run",
,,lmresnet20,lm,–,samples,samples (sha256 dddddddd),10,0;1,worst_case@8/255,,,,,,,,,,8/255,,,,,,,,272384,,,,,,,,,,25.0,11.1862,46.8701,10.0,1.7876,40.415,,,,,,,"0 passed, 0 flagged, 6 not applicable; model checks not run",missing_clean;mixed_n;mixed_seeds
"""


def test_leaderboard_equals_hand_computed_csv():
    assert leaderboard(hand_table(), cards={}).to_csv(index=False) == EXPECTED


def test_rank_by_clean_and_order_independence():
    df = hand_table()
    board = leaderboard(df.sample(frac=1.0, random_state=3), rank_by="clean", cards={})
    assert list(zip(board["model"], board["lam"], board["rank"].fillna(0))) == [
        ("resnet20", "0", 1), ("inresnet20", "0.5", 2), ("inresnet20", "learned", 3), ("lmresnet20", "–", 0)]
    assert set(board["rank_by"]) == {"clean"} and board["rank_value"].tolist()[:3] == [75.0, 70.0, 50.0]
    # the default ranking does not depend on the order of the input rows
    assert leaderboard(df.iloc[::-1], cards={}).to_csv(index=False) == EXPECTED


def test_invalid_rank_by_lists_the_metrics():
    with pytest.raises(BadInput, match=r"unknown --rank-by metric 'robust'; valid choices: clean, worst_case, "
                                       r"corruption_mean, fgsm@2/255, fgsm@8/255, pgd@8/255, worst_case@2/255, "
                                       r"worst_case@8/255"):
        leaderboard(hand_table(), rank_by="robust", cards={})


def test_backend_joins_the_column_name_only_when_an_attack_has_several():
    df = to_frame([rec("resnet20", 0.0, "clean", "none", 15, scheme="euler"),
                   rec("resnet20", 0.0, "attack", "pgd", 3, eps=E8, backend="art", scheme="euler"),
                   rec("resnet20", 0.0, "attack", "pgd", 4, eps=E8, backend="foolbox", scheme="euler"),
                   rec("resnet20", 0.0, "attack", "fgsm", 5, eps=0.03, backend="art", scheme="euler")])
    board = leaderboard(df, cards={})
    assert [c for c in board.columns if "@" in c and not c.endswith("_ci_low") and not c.endswith("_ci_high")] == [
        "fgsm@0.03", "pgd:art@8/255", "pgd:foolbox@8/255"]
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
    assert "| 1 ≈1, 3 | inresnet20 | 0.5 | 70.0 [48.1, 85.5] | 20.0 [8.1, 41.6] | 60.0 [44.6, 73.7] | passed (table " \
           "checks only) |  |" in text
    assert "| rank | model | λ | clean % | worst case @8/255 % (ranked) | corruption mean % | checks | flags |" in text
    assert "- **Threat model**: L∞, ε ∈ {2/255, 8/255}" in text  # the threat model heads the Markdown
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
    assert pd.isna(r["rank"]) and r["worst_case"] == 35.0 and r["worst_case_status"] == "incomplete"
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
    assert r["parameters"] == 272378  # ResNet-20 (a fixed-λ In-ResNet-20 has the same parameters)


def test_checks_join_the_flags_as_words_with_their_cells():
    from robench.checks import to_checks_frame

    df = hand_table()
    # a table-only check computed from the table itself: FGSM far below PGD at the same ε
    df.loc[(df["model"] == "resnet20") & (df["perturbation"] == "pgd"), ["correct", "accuracy"]] = [18, 0.9]
    checks = to_checks_frame([{"model": "inresnet20", "lam": 0.5, "dataset": "samples", "n": 20, "seed": 0,
                               "check": "zero_gradient", "status": "flag", "value": 1.0, "threshold": 0.0,
                               "cells": "clean: 20/20 examples", "detail": "", "n_checked": 20, "seconds": 0.1}])
    board = leaderboard(df, checks=checks, cards={})
    flags = dict(zip(zip(board["model"], board["lam"]), board["flags"]))
    assert flags[("inresnet20", "0.5")] == "zero_gradient(clean: 20/20 examples)"
    checks_col = dict(zip(zip(board["model"], board["lam"]), board["checks"]))
    assert checks_col[("inresnet20", "0.5")] == "1 passed, 1 flagged, 2 not applicable"  # model checks ran
    assert checks_col[("resnet20", "0")].endswith("; model checks not run")
    assert "single_step_stronger(fgsm@8/255 20.0% < pgd@8/255 90.0%)" in flags[("resnet20", "0")]


def test_markdown_key_table_then_every_cell_with_its_interval():
    md = to_markdown(leaderboard(hand_table(), cards={}))
    lines = md.splitlines()
    key = next(ln for ln in lines if ln.startswith("| rank"))
    assert "fgsm@" not in key  # the key table holds the key columns; the cells follow below
    assert "| model | λ | fgsm@2/255 | fgsm@8/255 | pgd@8/255 | worst_case@2/255 | worst_case@8/255 |" in md
    assert "| resnet20 | 0 | 45.0 [25.8, 65.8] | 20.0 [8.1, 41.6] | 10.0 [2.8, 30.1] | 45.0 [25.8, 65.8] | " \
           "10.0 [2.8, 30.1] |" in md


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


def _floor_table(n=100):
    """Three models: at 8/255 all at the floor (0–2 %, intervals overlapping); at 2/255 60 / 40 / 20 %."""
    rows = []
    for model, lam, clean, at2, at8 in (("resnet20", 0.0, 90, 20, 2), ("inresnet20", 0.5, 88, 40, 0),
                                        ("inresnet20", math.nan, 87, 60, 1)):
        scheme = "euler" if model == "resnet20" else "damped"
        rows.append(rec(model, lam, "clean", "none", clean, n=n, scheme=scheme))
        for eps, c in ((E2, at2), (E8, at8)):
            rows.append(rec(model, lam, "attack", "pgd", c, n=n, eps=eps, backend="art", scheme=scheme))
            rows.append(rec(model, lam, "worst_case", "worst_case", c, n=n, eps=eps, scheme=scheme))
    return to_frame(rows)


def test_default_ranking_cell_is_where_the_models_are_not_all_at_the_floor():
    """Issues 24.6 / 26.3: the leaderboard ranked at 8/255, where every model sat at 0–3 % with overlapping
    intervals (at n = 100 the order there is noise). Rule: the worst case at the largest ε at which the best
    model's 95 % interval lies above the worst model's."""
    from robench.leaderboard import rank_rule

    board = leaderboard(_floor_table(), cards={})
    assert set(board["rank_by"]) == {"worst_case@2/255"}
    assert list(zip(board["model"], board["lam"], board["rank"])) == [
        ("inresnet20", "learned", 1), ("inresnet20", "0.5", 2), ("resnet20", "0", 3)]
    assert board["rank_value"].tolist() == [60.0, 40.0, 20.0]
    assert rank_rule(board).startswith("worst_case@2/255: the largest ε at which the best model's 95 % interval lies "
                                       "above the worst model's (60.0 [50.2, 69.1] vs 20.0 [13.3, 28.9] %); at larger "
                                       "ε the intervals of best and worst overlap")
    # the headline worst case is still the largest ε, shown (not ranked) beside the ranking cell
    assert board["worst_case_eps"].tolist() == ["8/255"] * 3


def test_rank_by_a_chosen_cell_with_ties_marked_where_intervals_overlap(tmp_path, capsys):
    from robench.cli import main

    df = _floor_table()
    cell = (df["model"] == "resnet20") & (df["kind"] == "attack") & (df["eps"] == E2)
    df.loc[cell, ["correct", "accuracy"]] = [35, 0.35]
    df.loc[cell, ["ci_low", "ci_high"]] = wilson(35, 100)  # a consistent row: tables are checked when read
    board = leaderboard(df, rank_by="pgd@2/255", cards={})
    assert set(board["rank_by"]) == {"pgd@2/255"} and board["rank_value"].tolist() == [60.0, 40.0, 35.0]
    # 40 % [30.9, 49.8] and 35 % [26.4, 44.7] overlap; 60 % [50.2, 69.1] is clear of both
    assert board["tied"].fillna("").tolist() == ["", "3", "2"]
    write_table(df, tmp_path / "t")
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", str(tmp_path / "t.parquet"), "--rank-by", "pgd@2/255"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "Ranked by pgd@2/255 (chosen with --rank-by)" in out
    assert "| 1 | inresnet20 | learned |" in out and "| 2 ≈3 | inresnet20 | 0.5 |" in out and "| 3 ≈2 | resnet20 | 0 |" in out
    assert "pgd@2/255 % (ranked)" in out


def test_seed_summary_aggregates_trained_seeds_by_base_model_and_lambda():
    """Trained variants `resnet20.s1` (the tag names a training seed) flow in as their own rows and are
    aggregated per (base model, λ): mean, sd and the number of trained models of each column."""
    from robench.leaderboard import seed_summary

    rows = []
    for model, clean, at8 in (("resnet20", 15, 2), ("resnet20.s1", 13, 4), ("resnet20.s2", 14, 6),
                              ("inresnet20", 16, 5)):
        scheme = "euler" if model.startswith("resnet") else "damped"
        lam = 0.0 if scheme == "euler" else math.nan
        rows += [rec(model, lam, "clean", "none", clean, scheme=scheme),
                 rec(model, lam, "attack", "pgd", at8, eps=E8, backend="art", scheme=scheme),
                 rec(model, lam, "worst_case", "worst_case", at8, eps=E8, scheme=scheme)]
    board = leaderboard(to_frame(rows), cards={})
    assert len(board) == 4 and set(board["model"]) == {"resnet20", "resnet20.s1", "resnet20.s2", "inresnet20"}
    s = seed_summary(board).set_index("model")
    r = s.loc["resnet20"]
    assert (r["lam"], r["n_models"], r["members"]) == ("0", 3, "resnet20;resnet20.s1;resnet20.s2")
    assert r["clean_mean"] == pytest.approx(70.0) and r["clean_sd"] == pytest.approx(5.0) and r["clean_n"] == 3
    assert r["pgd@8/255_mean"] == pytest.approx(20.0) and r["pgd@8/255_sd"] == pytest.approx(10.0)
    assert s.loc["inresnet20", "n_models"] == 1 and math.isnan(s.loc["inresnet20", "clean_sd"])
    md = to_markdown(board)
    assert "Across training seeds" in md and "| resnet20 | 0 | 3 | resnet20;resnet20.s1;resnet20.s2 |" in md


def test_threat_model_states_norm_eps_attacks_hyper_parameters_data_and_seeds():
    from robench.threat_model import threat_model

    df = _floor_table()
    df["norm"] = df["norm"].where(df["kind"] != "attack", "linf")
    df["params"] = df["params"].where(df["kind"] != "attack", '{"random_start":true,"step_size":0.00392156862745098,"steps":20}')
    df["data_label"] = "CIFAR-10, other copy (sha256 b6c1f1e1)"
    items = dict(threat_model(df).items())
    assert items["Threat model"].startswith("L∞, ε ∈ {2/255, 8/255} in pixel units of [0, 1] images; untargeted")
    assert items["Attack pgd"] == "linf, backend art, untargeted; random_start=True, step_size=1/255, steps=20"
    assert items["Data"] == "CIFAR-10, other copy (sha256 b6c1f1e1); n = 100 (the first n test images)"
    assert items["Seeds"].startswith("attack/corruption seed 0; one trained model per architecture and λ")


@pytest.mark.shipped_zoo
@pytest.mark.parametrize("table,checks,view", [
    ("lambda_study_depth20", "lambda_study_depth20_checks", "lambda_study_depth20_leaderboard"),
    ("baseline_cifar1000", "baseline_cifar1000_checks", "leaderboard"),
])
def test_committed_leaderboard_views_are_fresh(table, checks, view):
    """Issue 24.6: the committed views went stale (regenerating added a column). Regenerate with
    `robench leaderboard results/T.parquet --checks results/T_checks.parquet -o results/V.csv
    --markdown results/V.md --force` (ROBENCH_HOME empty: only the shipped cards)."""
    from pathlib import Path

    from robench import threat_model
    from robench.checks import read_checks
    from robench.leaderboard import read_tables

    res = Path(__file__).parent.parent / "results"
    df = read_tables([res / f"{table}.parquet"])
    board = leaderboard(df, checks=read_checks(res / f"{checks}.parquet"))
    assert board.to_csv(index=False) == (res / f"{view}.csv").read_text()
    md = to_markdown(board, header=threat_model.to_markdown(threat_model.threat_model(df)))
    assert md == (res / f"{view}.md").read_text()


@pytest.mark.shipped_zoo
def test_committed_report_shows_the_current_leaderboard():
    from pathlib import Path

    from robench.analysis.report import leaderboard_html
    from robench.checks import read_checks
    from robench.leaderboard import read_tables

    res = Path(__file__).parent.parent / "results"
    board = leaderboard(read_tables([res / "lambda_study_depth20.parquet"]),
                        checks=read_checks(res / "lambda_study_depth20_checks.parquet"))
    assert leaderboard_html(board) in (res / "lambda_study_depth20_report" / "index.html").read_text()


def test_autoattack_is_a_key_column_where_it_ran():
    from robench.leaderboard import key_columns

    df = _floor_table()
    extra = [rec(m, lam, "attack", "autoattack", c, n=100, eps=E8, backend="art", scheme=s)
             for m, lam, s, c in (("resnet20", 0.0, "euler", 1), ("inresnet20", 0.5, "damped", 0))]
    board = leaderboard(pd.concat([df, to_frame(extra)], ignore_index=True), cards={})
    heads = [h for _, h in key_columns(board)]
    assert "autoattack@8/255 %" in heads and heads.index("autoattack@8/255 %") < heads.index("checks")
    assert "| autoattack@8/255 % |" in to_markdown(board)
