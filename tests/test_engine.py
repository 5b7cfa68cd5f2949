"""The evaluation engine: tidy table, flags, worst case, first-n, determinism, corruptions, files."""
from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

import model_zoo
import robench
from engine_helpers import expected_clean_flags, save_fitted
from robench.corruptions import corrupt
from robench.data import load_samples
from robench.engine import Cell, EvalSpec, batch_seed, plan_cells, row_key
from robench.errors import BadInput
from synthetic_cifar import write_cifar10
from robench.results import KEY, SCHEMA, read_table, run_key, unpack_flags, wilson, write_table

EPS = 4 / 255
FAST = {"pgd": {"steps": 2}}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One zoo for the module: a fitted ResNet-20, In-ResNet-20 with learned λ and with λ=0.5."""
    path = tmp_path_factory.mktemp("robench_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBENCH_HOME", str(path))
        save_fitted("resnet20")
        save_fitted("inresnet20")
        save_fitted("inresnet20", lam=0.5)
    return path


@pytest.fixture
def zoo(home, monkeypatch):
    monkeypatch.setenv("ROBENCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def table(home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBENCH_HOME", str(home))
        mp.setenv("ROBENCH_PROGRESS", "0")
        return robench.evaluate(models=["resnet20", "inresnet20"], lams=[None, 0.5], attacks=["fgsm", "pgd"],
                                eps=[EPS], corruptions=["gaussian_noise"], severities=[3], n=10, batch_size=4,
                                attack_params=FAST)


def _flags(row) -> np.ndarray:
    return unpack_flags(row["flags"], int(row["n"]))


def test_schema_and_dtypes_exact(table):
    assert list(table.columns) == list(SCHEMA)
    assert {c: str(t) for c, t in table.dtypes.items()} == SCHEMA
    # per (model, λ): clean + 2 attacks + worst case + 1 corruption; λ=0.5 only for the damped model
    assert len(table) == 3 * 5
    assert sorted(table["kind"].value_counts().items()) == [("attack", 6), ("clean", 3), ("corruption", 3),
                                                            ("worst_case", 3)]
    assert (table["n"] == 10).all() and (table["dataset"] == "samples").all()


def test_counts_and_wilson_ci(table):
    for _, r in table.iterrows():
        flags = _flags(r)
        assert r["correct"] == flags.sum()
        assert r["accuracy"] == r["correct"] / r["n"]
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
        assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson(int(r["correct"]), int(r["n"])))


def test_clean_flags_are_the_known_predictions(table):
    for _, r in table[table["kind"] == "clean"].iterrows():
        np.testing.assert_array_equal(_flags(r), expected_clean_flags(10))
        assert r["accuracy"] == 0.5


def test_columns_per_kind_and_provenance(table, home, monkeypatch):
    monkeypatch.setenv("ROBENCH_HOME", str(home))
    lam = {(r["model"], r["lam"] if not math.isnan(r["lam"]) else "nan") for _, r in table.iterrows()}
    assert lam == {("resnet20", 0.0), ("inresnet20", "nan"), ("inresnet20", 0.5)}
    attacks = table[table["kind"] == "attack"]
    assert set(attacks["backend"]) == {"art"} and set(attacks["norm"]) == {"linf"}
    assert (attacks["eps"] == EPS).all()
    assert dict(zip(attacks["perturbation"], attacks["steps"])) == {"fgsm": 1, "pgd": 2}
    clean = table[table["kind"] == "clean"]
    assert clean["backend"].isna().all() and clean["eps"].isna().all() and clean["severity"].isna().all()
    corr = table[table["kind"] == "corruption"]
    assert (corr["perturbation"] == "gaussian_noise").all() and (corr["severity"] == 3).all()
    assert (table["data_sha256"] == load_samples().sha256).all()
    for name, lam_v, lam_col in [("resnet20", None, 0.0), ("inresnet20", 0.5, 0.5)]:
        rows = table[(table["model"] == name) & (table["lam"] == lam_col)]
        assert len(rows) == 5 and (rows["weights_sha256"] == model_zoo.load_card(name, lam=lam_v).weights_sha256).all()
    row = table.iloc[0]
    assert row["git_sha"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", row["git_sha"])
    assert (table["origin"] == "user").all()  # the module's zoo is $ROBENCH_HOME/zoo
    for name, lam_v in [("resnet20", None), ("inresnet20", 0.5)]:
        card = model_zoo.user_zoo() / (model_zoo.zoo_stem(name, lam_v) + ".json")
        rows = table[(table["model"] == name) & (table["kind"] != "worst_case")]
        assert (rows["card_sha256"].dropna() == hashlib.sha256(card.read_bytes()).hexdigest()).any()
    assert row["torch_version"] == torch.__version__ and row["robench_version"] == robench.__version__
    assert row["device"] == "cpu" and (table["seconds"] > 0).all()


def test_rows_record_the_data_identity_and_every_attack_hyper_parameter(table):
    """Issue 24.2/24.6: rows said `cifar10` whatever copy it was, and recorded `steps` but not
    step_size, random_start or restarts, so no threat-model statement could be made from a table."""
    assert (table["data_label"] == "CIFAR-10 samples (foolbox, 20 PNG originals)").all()
    assert set(table[table["perturbation"] == "fgsm"]["params"]) == {"{}"}
    # every hyper-parameter, the defaults included, as canonical JSON (sorted keys, no spaces)
    pgd = table[(table["perturbation"] == "pgd")]["params"]
    assert set(pgd) == {'{"random_start":true,"step_size":0.00392156862745098,"steps":2}'}
    wc = table[table["kind"] == "worst_case"]["params"]
    assert set(wc) == {'{"fgsm":{},"pgd":{"random_start":true,"step_size":0.00392156862745098,"steps":2}}'}
    assert table[table["kind"].isin(["clean", "corruption"])]["params"].isna().all()


def test_worst_case_is_and_of_clean_and_attack_flags(table):
    worst = table[table["kind"] == "worst_case"]
    assert len(worst) == 3
    for _, w in worst.iterrows():
        same = table[(table["model"] == w["model"]) & (table["lam"].fillna(-1) == (-1 if math.isnan(w["lam"]) else w["lam"]))]
        members = same[(same["kind"] == "clean") | ((same["kind"] == "attack") & (same["eps"] == w["eps"]))]
        assert sorted(members["kind"]) == ["attack", "attack", "clean"]
        expected = np.logical_and.reduce([_flags(r) for _, r in members.iterrows()])
        np.testing.assert_array_equal(_flags(w), expected)
        assert w["correct"] == expected.sum() <= members["correct"].min()
        assert w["norm"] == "linf" and pd.isna(w["backend"])
        assert w["attacks"] == "fgsm+pgd" and w["complete"]


def test_rows_match_the_planned_cells(table):
    spec = EvalSpec(models=["resnet20", "inresnet20"], lams=[None, 0.5], attacks=["fgsm", "pgd"], eps=[EPS],
                    corruptions=["gaussian_noise"], severities=[3], attack_params=FAST).validate()
    cells = plan_cells(spec, n=10, dataset="samples")
    rows = {row_key(r) for _, r in table[table["kind"] != "worst_case"].iterrows()}
    assert rows == {c.table_key() for c in cells}
    assert len({c.cell_id() for c in cells}) == len(cells)
    pgd = next(c for c in cells if c.perturbation == "pgd")
    assert pgd.key()[len(KEY)] == (("steps", 2),)  # overrides are part of the identity
    # so are the batch size and the device kind (attack seeds are drawn per batch), and rows record them
    assert pgd.key()[-2:] == (256, "cpu") == pgd.run_key()
    assert {run_key(r) for _, r in table.iterrows()} == {(4, "cpu")}  # the fixture ran with batch_size=4


def test_cell_key_is_stable_and_normalised():
    a = Cell(model="inresnet20", lam=1, kind="attack", perturbation="pgd", backend="art", eps=8 / 255, severity=None,
             seed=0, n=20, dataset="samples", params={"steps": 3, "random_start": False})
    b = Cell(model="inresnet20", lam=1.0, kind="attack", perturbation="pgd", backend="art", eps=8 / 255,
             severity=None, seed=0, n=20, dataset="samples", params=(("random_start", False), ("steps", 3)))
    assert a == b and a.key() == b.key() and a.cell_id() == b.cell_id() and re.fullmatch(r"[0-9a-f]{16}", a.cell_id())
    assert a.cell_id() != Cell(**{**a.__dict__, "seed": 1}).cell_id()
    assert a.cell_id() != Cell(**{**a.__dict__, "batch_size": 100}).cell_id() != \
        Cell(**{**a.__dict__, "batch_size": 100, "device": "cuda"}).cell_id()
    assert batch_seed(0, 0) == batch_seed(0, 0) != batch_seed(0, 1) != batch_seed(1, 1)


def test_plan_applies_lambda_only_where_it_exists_and_validates():
    spec = EvalSpec(models=["resnet20", "lmresnet20", "inresnet20"], lams=[None, 0.25]).validate()
    cells = plan_cells(spec, n=5, dataset="samples")
    assert [(c.model, c.lam) for c in cells] == [("resnet20", None), ("lmresnet20", None), ("inresnet20", None),
                                                 ("inresnet20", 0.25)]
    for kwargs, words in [
        (dict(models=["resnet20"], lams=[0.5]), "does not apply"),
        (dict(models=["inresnet20"], lams=[1.5]), "[0, 1]"),
        (dict(models=["nosuchnet"]), "valid choices"),
        (dict(models=["resnet20"], attacks=["nosuch"]), "valid choices"),
        (dict(models=["resnet20"], attacks=["fgsm"], eps=[-1.0]), "ε"),
        (dict(models=["resnet20"], attacks=["apgd_ce"], backend="foolbox"), "valid choices"),
        (dict(models=["resnet20"], corruptions=["gaussian_noise"], severities=[6]), "severity"),
        (dict(models=["resnet20"], corruptions=["frost"]), "corruption-dir"),
    ]:
        with pytest.raises(BadInput, match=re.escape(words)):
            EvalSpec(**kwargs).validate()


def test_n_takes_the_first_images(zoo):
    small = robench.evaluate(models=["resnet20"], n=5, progress=False)
    big = robench.evaluate(models=["resnet20"], n=10, progress=False)
    assert small["n"].tolist() == [5] and big["n"].tolist() == [10]
    np.testing.assert_array_equal(_flags(small.iloc[0]), _flags(big.iloc[0])[:5])
    np.testing.assert_array_equal(_flags(big.iloc[0]), expected_clean_flags(10))


def test_same_seed_same_table_and_the_seed_matters():
    # a model on the edge for this budget: which examples survive depends on PGD's random start
    save_fitted("resnet20", margin=3.0)
    kw = dict(models=["resnet20"], attacks=["pgd"], eps=[EPS], corruptions=["shot_noise"], severities=[3], n=20,
              batch_size=8, attack_params={"pgd": {"steps": 1, "step_size": 0.5 / 255}}, progress=False)
    a, b, other = robench.evaluate(**kw), robench.evaluate(**kw), robench.evaluate(seeds=[1], **kw)
    timing = ["seconds", "timestamp"]
    pd.testing.assert_frame_equal(a.drop(columns=timing), b.drop(columns=timing))
    assert (other["seed"] == 1).all()
    changed = a["flags"] != other["flags"]
    assert not changed[a["kind"] == "clean"].any() and changed[a["kind"] == "attack"].all()


def test_corruption_is_independent_of_batch_size_and_applied_to_the_whole_set():
    # a model whose predictions flip under tiny input changes, so two noise draws give different flags
    save_fitted("resnet20", margin=0.1)
    kw = dict(models=["resnet20"], corruptions=["shot_noise", "contrast"], severities=[3], n=20, progress=False)
    whole, batched = robench.evaluate(batch_size=20, **kw), robench.evaluate(batch_size=3, **kw)
    for df in (whole, batched):
        assert list(df["kind"]) == ["clean", "corruption", "corruption"]
    assert whole["flags"].tolist() == batched["flags"].tolist()
    # the flags are those of the first-20 set corrupted at once with the cell's seed …
    model = model_zoo.load("resnet20")
    x, y = load_samples().as_float()
    with torch.no_grad():
        for name in ("shot_noise", "contrast"):
            pred = model(corrupt(name, x, 3, seed=0)).argmax(1) == y
            np.testing.assert_array_equal(_flags(whole[whole["perturbation"] == name].iloc[0]), pred.numpy())
        # … which differ from corrupting batch by batch (else this test could not tell the two apart)
        per_batch = torch.cat([model(corrupt("shot_noise", x[i:i + 3], 3, seed=0)).argmax(1) for i in range(0, 20, 3)])
        assert not np.array_equal((per_batch == y).numpy(), _flags(whole.iloc[1]))


def test_write_and_read_back(table, tmp_path):
    # an all-digit flags string ("00…") must survive CSV as a string
    df = table.copy()
    df.loc[df.index[1], "flags"] = "0000"
    paths = write_table(df, tmp_path / "out" / "eval")
    assert sorted(p.name for p in paths) == ["eval.csv", "eval.parquet"]
    for p in paths:
        back = read_table(p)
        pd.testing.assert_frame_equal(back, df, check_exact=True)


def test_missing_weights_fail_before_anything_runs(zoo):
    with pytest.raises(BadInput, match="no trained weights for inresnet20__lam0.25"):
        robench.evaluate(models=["resnet20", "inresnet20"], lams=[0.25], attacks=["fgsm"], n=4, progress=False)


def test_real_cifar10c_files_are_read_when_given(zoo, tmp_path):
    # a miniature CIFAR-10-C: 5 severities × 4 images; severity s holds the images of samples s-1 … s+2
    # under the clean test labels of samples 0 … 3 (CIFAR-10-C repeats the test labels per severity)
    samples = load_samples()
    imgs = np.concatenate([samples.images[s:s + 4].numpy() for s in range(5)]).transpose(0, 2, 3, 1)
    labels = np.tile(samples.labels[:4].numpy(), 5)
    np.save(tmp_path / "fog.npy", np.ascontiguousarray(imgs))
    np.save(tmp_path / "labels.npy", labels)
    # the matching clean split: a CIFAR-10 folder whose test images are the samples
    s = (samples.images.numpy(), samples.labels.numpy())
    write_cifar10(tmp_path / "clean", [s] * 5, s)
    with pytest.raises(BadInput, match="matching clean CIFAR-10 test split"):
        robench.evaluate(models=["resnet20"], corruptions=["fog"], n=4, corruption_dir=tmp_path, progress=False)
    df = robench.evaluate(models=["resnet20"], corruptions=["fog"], severities=[1, 2], n=4, corruption_dir=tmp_path,
                          data_dir=tmp_path / "clean", progress=False)
    corr = df[df["kind"] == "corruption"]
    assert corr["dataset"].tolist() == ["cifar10c", "cifar10c"] and corr["severity"].tolist() == [1, 2]
    # the fitted model is right on even sample indices only; at severity 2 it sees samples 1 … 4
    np.testing.assert_array_equal(_flags(corr.iloc[0]), [True, False, True, False])
    from engine_helpers import fitted_model

    x2 = samples.images[1:5].float() / 255
    with torch.no_grad():
        want = (fitted_model("resnet20")(x2).argmax(1) == samples.labels[:4]).numpy()
    np.testing.assert_array_equal(_flags(corr.iloc[1]), want)
    assert corr["data_sha256"].iloc[0] != df["data_sha256"].iloc[0]
    with pytest.raises(BadInput, match="larger than CIFAR-10-C"):
        robench.evaluate(models=["resnet20"], corruptions=["fog"], n=5, corruption_dir=tmp_path,
                         data_dir=tmp_path / "clean", progress=False)


def test_cpu_evaluation_runs_in_channels_last(zoo):
    from robench.executors import Inputs
    from robench.models import ModelCache

    cache = ModelCache("cpu")
    net = cache.get("resnet20", None).module
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(not p.requires_grad for p in net.parameters()) and not net.training
    x, _ = Inputs(load_samples(), cache.device).clean(4)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_a_minimal_norm_attack_searches_once_and_is_scored_at_every_eps(zoo, monkeypatch):
    from robench.attacks import registry

    calls = []
    real = registry.BACKENDS["foolbox"]

    def counting(*args, **kw):
        calls.append(kw.get("eps"))
        return real(*args, **kw)

    monkeypatch.setitem(registry.BACKENDS, "foolbox", counting)  # the wrapper dispatches through the registry
    df = robench.evaluate(models=["resnet20"], attacks=["deepfool"], eps=[0.05, 0.2, 1.0], n=8, batch_size=8,
                          attack_params={"deepfool": {"steps": 5}}, progress=False)
    assert len(calls) == 1  # one search for the three ε (one batch)
    acc = df[df["perturbation"] == "deepfool"].set_index("eps")["accuracy"]
    assert list(acc.index) == [0.05, 0.2, 1.0]
    assert acc[0.05] >= acc[0.2] >= acc[1.0]  # the same search, projected into growing balls
    # a fixed-ε attack still searches once per ε
    calls.clear()
    robench.evaluate(models=["resnet20"], attacks=["fgsm"], eps=[0.01, 0.02], n=8, batch_size=8, backend="foolbox",
                     progress=False)
    assert calls == [0.01, 0.02]


def test_help_of_evaluate_lists_every_output_column():
    """Issue 24.7: help(robench.evaluate) did not say what the table holds."""
    doc = robench.evaluate.__doc__
    missing = [c for c in SCHEMA if f"``{c}``" not in doc]
    assert not missing, f"document these columns in robench.evaluate's docstring: {missing}"
