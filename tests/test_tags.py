"""Seeds in the zoo: ``name.tag`` trained variants (``resnet20.s1``, ``inresnet20@0.5.s2``) through the
checkpoint API, ``zoo list``, ``eval`` / ``evaluate``, sweep configs, merge, leaderboard and regress;
bad input is one line, exit 2, nothing written (the style of test_bad_input.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import model_zoo
from engine_helpers import fitted_model
from model_zoo.checkpoint import ARCH_HEADER_KEY, read_header_metadata
from robench.errors import BadInput


def _save(name, lam=None, tag=None, *, const=None, seed=None):
    """A fitted (or, with ``const``, constant-class) ``name`` in the user zoo under its tag."""
    m = fitted_model(name, lam)
    if const is not None:
        m = model_zoo.create_model(name, lam=lam).eval()
        with torch.no_grad():
            m.fc.weight.zero_()
            m.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(const), 10).float())
    card = {"training": {"seed": seed}} if seed is not None else None
    return model_zoo.save(m, model_zoo.user_zoo() / model_zoo.zoo_stem(name, lam, tag), card, name=name, tag=tag)


@pytest.fixture
def zoo():
    """resnet20 (seed 0, fitted: even samples right), resnet20.s1 (always class 3), inresnet20@0.5.s2."""
    _save("resnet20")
    _save("resnet20", tag="s1", const=3, seed=1)
    _save("inresnet20", 0.5, "s2", seed=2)


def run(argv, capsys):
    from robench.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


# -- the checkpoint API ----------------------------------------------------------------------
def test_tags_are_validated_and_s0_is_the_untagged_name():
    assert model_zoo.check_tag("s1") == "s1" and model_zoo.check_tag("paper_2") == "paper_2"
    assert model_zoo.check_tag("s0") is None and model_zoo.canonical_name("resnet20.s0") == "resnet20"
    assert model_zoo.seed_tag(0) is None and model_zoo.seed_tag(3) == "s3" and model_zoo.tag_seed("s12") == 12
    for bad in ("1a", "a-b", "s01", "", "x" * 65, "a.b", "../x"):
        with pytest.raises(BadInput, match="malformed"):
            model_zoo.check_tag(bad)
    with pytest.raises(BadInput, match="malformed tag 'x-y'"):
        model_zoo.parse_model_name("resnet20.x-y")
    with pytest.raises(BadInput, match="tag s1 names training seed 1 but the seed is 3"):
        model_zoo.train_tag(3, "s1")
    assert model_zoo.train_tag(3) == "s3" and model_zoo.train_tag(0) is None
    assert model_zoo.train_tag(3, "long") == "long"
    assert model_zoo.model_info("resnet20.s1") == model_zoo.model_info("resnet20")


def test_save_writes_the_tag_into_stem_card_and_header(zoo):
    z = model_zoo.user_zoo()
    assert model_zoo.zoo_stem("inresnet20", 0.5, "s2") == "inresnet20__lam0.5.s2"
    assert model_zoo.zoo_stem("inresnet20.s2", 0.5) == "inresnet20__lam0.5.s2"  # a table's model column
    assert model_zoo.zoo_stem("resnet20", None, "s0") == "resnet20"
    assert sorted(p.name for p in z.iterdir()) == [
        "inresnet20__lam0.5.s2.json", "inresnet20__lam0.5.s2.safetensors", "resnet20.json", "resnet20.s1.json",
        "resnet20.s1.safetensors", "resnet20.safetensors"]
    card = json.loads((z / "resnet20.s1.json").read_text())
    assert card["tag"] == "s1" and card["training"]["seed"] == 1 and card["name"] == "resnet20"
    assert json.loads(read_header_metadata(z / "resnet20.s1.safetensors")[ARCH_HEADER_KEY])["tag"] == "s1"
    # an untagged header is what it was before tags (no tag key), so old checkpoints keep their sha256
    assert "tag" not in json.loads(read_header_metadata(z / "resnet20.safetensors")[ARCH_HEADER_KEY])


def test_load_by_tagged_name_gets_that_variant(zoo):
    x = torch.rand(4, 3, 32, 32)
    e0, e1 = model_zoo.load_entry("resnet20"), model_zoo.load_entry("resnet20.s1")
    assert e0.card.tag is None and e1.card.tag == "s1" and e1.card.model == "resnet20.s1"
    assert (e1.model(x).argmax(1) == 3).all() and e0.card.weights_sha256 != e1.card.weights_sha256
    assert model_zoo.load_entry("resnet20.s0").card.weights_sha256 == e0.card.weights_sha256
    assert model_zoo.load_entry("inresnet20.s2", lam=0.5).card.tag == "s2"
    with pytest.raises(BadInput, match="no trained weights for inresnet20__lam0.5 .*inresnet20 at λ=0.5 has "
                                       "inresnet20.s2; train it with `robench train --model inresnet20 --lam 0.5`"):
        model_zoo.load_entry("inresnet20", lam=0.5)


def test_unknown_tag_names_the_tags_that_exist_and_the_train_command(zoo):
    with pytest.raises(BadInput) as e:
        model_zoo.load_entry("resnet20.s9")
    msg = str(e.value)
    assert "no trained weights for resnet20.s9" in msg and "resnet20 has resnet20, resnet20.s1" in msg
    assert "`robench train --model resnet20 --seed 9`" in msg and "\n" not in msg
    with pytest.raises(BadInput, match="`robench train --model resnet20 --tag paper`"):
        model_zoo.load_entry("resnet20.paper")


def test_a_renamed_or_retagged_checkpoint_is_refused(zoo):
    z = model_zoo.user_zoo()
    for suffix in (".json", ".safetensors"):  # pass seed 1's weights off as seed 2 by renaming the files
        shutil.copy(z / f"resnet20.s1{suffix}", z / f"resnet20.s2{suffix}")
    with pytest.raises(BadInput, match="the card is for resnet20.s1, not resnet20.s2"):
        model_zoo.load_entry("resnet20.s2")
    records, problems = model_zoo.scan_zoo("resnet20")
    assert sorted(r.model for r in records) == ["resnet20", "resnet20.s1"]
    assert [p.path.name for p in problems] == ["resnet20.s2.json"]
    # ... and with the card edited to match the new name: the tag in the weights' header says s1
    card = json.loads((z / "resnet20.s2.json").read_text())
    card.update(tag="s2", training={**card["training"], "seed": 2})
    (z / "resnet20.s2.json").write_text(json.dumps(card))
    with pytest.raises(BadInput, match="tag: card 's2', weights 's1'"):
        model_zoo.load_entry("resnet20.s2")
    # an untagged card of tagged weights (the seed-1 weights as the seed-0 name) is refused the same way
    for suffix in (".json", ".safetensors"):
        shutil.copy(z / f"resnet20.s1{suffix}", z / f"resnet20{suffix}")
    card = json.loads((z / "resnet20.json").read_text())
    card.update(tag=None, training={**card["training"], "seed": 0})
    (z / "resnet20.json").write_text(json.dumps(card))
    with pytest.raises(BadInput, match="tag: card None, weights 's1'"):
        model_zoo.load_entry("resnet20")


def test_card_seed_and_tag_must_agree(tmp_path):
    tmp_path = tmp_path / "zoo"
    tmp_path.mkdir()
    m = model_zoo.create_model("resnet20")
    with pytest.raises(BadInput, match="trained with seed 3 but has no tag.*tag='s3'"):
        model_zoo.save(m, tmp_path / "resnet20", {"training": {"seed": 3}})
    with pytest.raises(BadInput, match="tag s1 names training seed 1 but training.seed is 3"):
        model_zoo.save(m, tmp_path / "resnet20.s1", {"training": {"seed": 3}}, tag="s1")
    with pytest.raises(BadInput, match=r"file name resnet20 does not match .*\(its zoo stem is resnet20.s1;"):
        model_zoo.save(m, tmp_path / "resnet20", tag="s1")
    with pytest.raises(BadInput, match="card says tag 's2' but tag='s1'"):
        model_zoo.save(m, tmp_path / "resnet20.s1", {"tag": "s2"}, tag="s1")
    with pytest.raises(BadInput, match="malformed tag"):
        model_zoo.save(m, tmp_path / "x", name="resnet20", tag="../evil")
    assert not any(tmp_path.iterdir())
    card = model_zoo.save(m, tmp_path / "resnet20", {"training": {"seed": 0}}, tag="s0")  # s0: the untagged name
    assert card.tag is None and (tmp_path / "resnet20.json").exists()
    # a hand-edited card whose tag is s0 is refused (one spelling)
    raw = json.loads((tmp_path / "resnet20.json").read_text())
    (tmp_path / "resnet20.json").write_text(json.dumps({**raw, "tag": "s0"}))
    with pytest.raises(BadInput, match="tag must be null for the seed-0 checkpoint"):
        model_zoo.load_entry(tmp_path / "resnet20")


def test_zoo_list_shows_one_row_per_checkpoint_with_its_tag(zoo, capsys):
    code, out, err = run(["zoo", "list", "resnet20"], capsys)
    assert code == 0, err
    rows = [ln.split()[0] for ln in out.splitlines()[1:]]
    assert rows == ["resnet20", "resnet20.s1"]
    code, out, _ = run(["zoo", "list", "*.s*"], capsys)
    assert [ln.split()[0] for ln in out.splitlines()[1:]] == ["inresnet20.s2", "resnet20.s1"]
    assert out.splitlines()[1].split()[3] == "0.5"  # the λ column keeps λ


# -- evaluation, sweeps, merge, leaderboard, regress -----------------------------------------
def test_evaluate_tagged_models_puts_the_tag_in_the_model_column(zoo):
    import robench

    df = robench.evaluate(models=["resnet20.s1", "resnet20.s0", "inresnet20@0.5.s2"], n=8, progress=False)
    assert df["model"].tolist() == ["resnet20.s1", "resnet20", "inresnet20.s2"]
    assert df["lam"].tolist()[:2] == [0.0, 0.0] and df["lam"].iloc[2] == 0.5
    cards = {m: model_zoo.load_card(m, lam=lam) for m, lam in (("resnet20.s1", None), ("resnet20", None),
                                                                ("inresnet20.s2", 0.5))}
    assert df["weights_sha256"].tolist() == [c.weights_sha256 for c in cards.values()]
    # the seed-1 variant predicts class 3 everywhere (one of the first 8 samples is a 3); the seed-0
    # one gets the even samples right
    assert df["correct"].tolist()[:2] == [1, 4]


def test_eval_cli_model_at_lam_with_tag_and_checks(zoo, tmp_path, capsys):
    import pandas as pd

    from robench.results import read_table

    out = tmp_path / "t"
    code, stdout, err = run(["eval", "--model", "inresnet20@0.5.s2,resnet20.s1", "--attack", "fgsm", "--n", "4",
                             "--out", out], capsys)
    assert code == 0, err
    df = read_table(str(out) + ".parquet")
    assert set(zip(df["model"], df["lam"].fillna(-1))) == {("inresnet20.s2", 0.5), ("resnet20.s1", 0.0)}
    assert "inresnet20.s2" in stdout.splitlines()[0]  # the checkpoints line
    checks = pd.read_parquet(str(out) + "_checks.parquet")  # the model checks loaded the tagged weights
    assert set(checks["model"]) == {"inresnet20.s2", "resnet20.s1"}
    assert not checks["detail"].astype(str).str.contains("no trained weights").any()


def test_sweep_config_merge_leaderboard_and_regress_carry_the_tag(zoo, tmp_path, capsys):
    from robench.leaderboard import leaderboard
    from robench.baseline import _pairs
    from robench.regress import regress
    from robench.results import read_table
    from robench.sweep import load_config, merge, plan_sweep, run_sweep

    cfg = tmp_path / "c.toml"
    cfg.write_text('models = ["resnet20.s1", "inresnet20@0.5.s2", "resnet20"]\nn = 4\nattacks = ["fgsm"]\n')
    spec = load_config(cfg)
    assert _pairs(spec) == [("resnet20.s1", None), ("inresnet20.s2", 0.5), ("resnet20", None)]
    plan = plan_sweep(spec, out=tmp_path / "sw")
    assert set(plan.weights) == {"resnet20.s1", "inresnet20__lam0.5.s2", "resnet20"}
    df = run_sweep(plan, log=lambda m: None)
    assert list(dict.fromkeys(df["model"])) == ["resnet20.s1", "inresnet20.s2", "resnet20"]  # the config's order
    assert merge(tmp_path / "sw").equals(df)
    board = leaderboard(df)
    # the leaderboard writes λ as text, one notation in every view ("0" for ResNet)
    assert sorted(zip(board["model"], board["lam"])) == [("inresnet20.s2", "0.5"), ("resnet20", "0"),
                                                         ("resnet20.s1", "0")]
    # regress matches cells by the full name: the seed-1 variant is not the seed-0 model
    seed1 = df[df["model"] == "resnet20.s1"].reset_index(drop=True)
    rep = regress(seed1, seed1)
    assert rep.ok and len(rep.diff) == len(seed1) and set(rep.diff["model"]) == {"resnet20.s1"}
    other = seed1.assign(model="resnet20")
    with pytest.raises(BadInput, match="no cell in common"):
        regress(seed1, other)
    both = df[df["model"].isin(["resnet20", "resnet20.s1"])].reset_index(drop=True)
    rep = regress(both, both[both["model"] == "resnet20"].reset_index(drop=True))
    assert {k[0] for k in rep.missing} == {"resnet20.s1"} and not rep.ok
    # the CLI on the written table
    code, out, err = run(["regress", "--baseline", tmp_path / "sw" / "results.parquet",
                          tmp_path / "sw" / "results.parquet"], capsys)
    assert code == 0, err
    assert "resnet20.s1 λ=0 attack fgsm" in out and "inresnet20.s2 λ=0.5 attack fgsm" in out
    assert read_table(tmp_path / "sw" / "results.parquet")["model"].str.contains(r"\.s[12]$").sum() > 0


def test_train_exports_seed_s_as_tag_s(tmp_path):
    from robench.data import Dataset
    from robench.train import train
    from synthetic_cifar import colour_images

    x, y = colour_images(16, seed=0)
    ds = Dataset("cifar10", "train", torch.from_numpy(x), torch.from_numpy(y), "synthetic", "0" * 64)
    kw = dict(epochs=1, batch_size=16, progress=False, log=lambda m: None)
    train("resnet20", ds, ds, run_dir=tmp_path / "r2", out=tmp_path / "zoo", seed=2, **kw)
    train("resnet20", ds, ds, run_dir=tmp_path / "r0", out=tmp_path / "zoo", seed=0, **kw)
    train("resnet20", ds, ds, run_dir=tmp_path / "rp", out=tmp_path / "zoo", seed=0, tag="paper", **kw)
    names = sorted(p.name for p in (tmp_path / "zoo").glob("*.json"))
    assert names == ["resnet20.json", "resnet20.paper.json", "resnet20.s2.json"]
    cards = {n: json.loads((tmp_path / "zoo" / n).read_text()) for n in names}
    assert [(c["tag"], c["training"]["seed"]) for c in cards.values()] == [(None, 0), ("paper", 0), ("s2", 2)]
    with pytest.raises(BadInput, match="tag s1 names training seed 1 but the seed is 2"):
        train("resnet20", ds, ds, run_dir=tmp_path / "bad", out=tmp_path / "zoo", seed=2, tag="s1", **kw)
    assert not (tmp_path / "bad").exists()


def test_analysis_models_take_the_tagged_spelling():
    from robench.analysis.common import ModelSpec

    assert ModelSpec.parse("inresnet20@0.5.s2") == ModelSpec("inresnet20.s2", 0.5)
    assert ModelSpec.parse("resnet20.s1") == ModelSpec("resnet20.s1", None)
    assert ModelSpec.parse("resnet20.s0") == ModelSpec("resnet20", None)


# -- bad input: one line, exit 2, nothing written ---------------------------------------------
OUT = "OUT"

BAD = [
    ("eval-unknown-tag", ["eval", "--model", "resnet20.s9", "--out", OUT],
     "resnet20 has resnet20, resnet20.s1; train it with `robench train --model resnet20 --seed 9`"),
    ("eval-unknown-tag-at-lam", ["eval", "--model", "inresnet20@0.5.s3", "--out", OUT],
     "inresnet20 at λ=0.5 has inresnet20.s2; train it with `robench train --model inresnet20 --lam 0.5 --seed 3`"),
    ("eval-model-lam-conflicts-with-lam", ["eval", "--model", "inresnet20@0.5.s2", "--lam", "0.25", "--out", OUT],
     "λ=0.25 (--lam / lams) conflicts with inresnet20@0.5.s2, which fixes its own λ"),
    ("eval-malformed-tag", ["eval", "--model", "resnet20.x-y", "--out", OUT], "malformed tag 'x-y'"),
    ("eval-lam-after-tag", ["eval", "--model", "inresnet20.s2@0.5", "--out", OUT],
     "write the λ before the tag, inresnet20@0.5.s2"),
    ("eval-lam-in-name-on-resnet", ["eval", "--model", "resnet20@0.5.s1", "--out", OUT],
     "λ=0.5 in 'resnet20@0.5.s1' does not apply to resnet20"),
    ("eval-lam-in-name-above-1", ["eval", "--model", "inresnet20@2.s2", "--out", OUT], "must be in [0, 1]"),
    ("eval-unknown-model-with-tag", ["eval", "--model", "resnet7.s1", "--out", OUT], "unknown model 'resnet7'"),
    ("sweep-unknown-tag", ["sweep", "{root}/s9.toml", "--out", OUT],
     "no trained weights for resnet20.s9 in the zoo"),
    ("sweep-conflicting-lam", ["sweep", "{root}/conflict.toml", "--out", OUT], "conflicts with inresnet20@0.5"),
    ("train-seed-tag-mismatch", ["train", "--model", "resnet20", "--seed", "3", "--tag", "s1", "--data-dir",
                                 "{root}/nodata", "--out", OUT], "tag s1 names training seed 1 but the seed is 3"),
    ("train-tagged-model-name", ["train", "--model", "resnet20.s1", "--data-dir", "{root}/nodata", "--out", OUT],
     "--model takes the registered name (resnet20); the checkpoint's tag comes from --seed"),
    ("train-tag-on-a-pack", ["train", "--model", "resnet20", "--seed", "0,1", "--tag", "paper", "--data-dir",
                             "{root}/nodata", "--out", OUT], "--tag names one checkpoint, but the pack has 2 members"),
    ("train-malformed-tag", ["train", "--model", "resnet20", "--tag", "a/b", "--data-dir", "{root}/nodata",
                             "--out", OUT], "malformed tag 'a/b'"),
]


@pytest.mark.parametrize("case_id,argv,expected", BAD, ids=[c[0] for c in BAD])
def test_bad_tags_exit_2_with_one_line(zoo, tmp_path, capsys, case_id, argv, expected):
    (tmp_path / "s9.toml").write_text('models = ["resnet20.s9"]\nn = 2\n')
    (tmp_path / "conflict.toml").write_text('models = ["inresnet20@0.5"]\nlams = [0.25]\nn = 2\n')
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    args = [str(tmp_path / "out" / "r") if a == OUT else a.replace("{root}", str(tmp_path)) for a in argv]
    code, _, err = run(args, capsys)
    lines = err.strip("\n").splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
