"""The GPU campaign (issue 22.6): a CPU dry run of the whole path at toy size, and its parts.

The dry run: prepare (fake JPEG tarball, a stand-in converter with the shared one's contract, a tiny wheel)
→ window 1 (wheels, data, preflight, the cuda-marked tests, probe, a train pack and a sweep; a job whose
estimate does not fit is skipped and listed as remaining) → ingest (verifies on the CPU, installs, keeps
the state) → window 2 (resumes: cuda tests and probe not repeated, finished tasks kept, the remaining one
runs) → ingest; then tampered returns are refused.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

import model_zoo
from campaign_helpers import CUDA_TESTS, converter, jpeg_tarball, tiny_wheel, toy_plan
from robench.campaign import outdir
from robench.campaign.ingest import ingest
from robench.campaign.outdir import OutDir, extract_bundle, out_problems, write_bundle
from robench.campaign.plan import TrainSettings, load_plan, train_argv
from robench.campaign.prepare import prepare
from robench.campaign.runner import RunOptions, pytest_summary, run_campaign, run_command, toml_text
from robench.campaign.state import load_state
from robench.errors import BadInput
from robench.packed import Member
from robench.packed import load_plan as load_pack_plan

ROOT = Path(__file__).resolve().parent.parent


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign")
    src = root / "src"
    tarball = jpeg_tarball(src / "cifar10-jpeg.tar.gz")
    conv = converter(src / "cifar10_from_jpeg.py")
    tiny_wheel(src / "wheels")
    (root / "test_gpu_smoke.py").write_text(CUDA_TESTS)
    plan = toy_plan(root / "plan.toml", root / "test_gpu_smoke.py")
    repo = root / "repo"
    repo.mkdir()
    carry = repo / ".carry"
    empty = root / "shipped"
    empty.mkdir()
    logs: dict[str, list[str]] = {k: [] for k in ("prepare", "run1", "ingest1", "run2", "ingest2")}
    path_before = list(sys.path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBENCH_HOME", str(root / "home"))
        mp.setenv("ROBENCH_THREADS", "1")
        mp.setenv("ROBENCH_PROGRESS", "0")
        mp.setattr(model_zoo.checkpoint, "SHIPPED_ZOO", empty)
        manifest = prepare(carry, tarball=tarball, converter=conv, wheels_dir=src / "wheels", root=repo,
                           log=logs["prepare"].append).manifest
        # the zoo already holds a resnet20 (today's CPU weights): fam says replaces = true
        stale = model_zoo.save(model_zoo.create_model("resnet20"), root / "zoo" / "resnet20",
                               {"training": {"trainer": "cpu"}})
        rc1 = run_campaign(RunOptions(plan=plan, out=root / "out1", deadline_s=600, carry=carry, work=root / "work1"),
                           echo=logs["run1"].append)
        state1 = load_state(root / "out1" / "campaign.json")
        data_dir = root / "work1" / "data"
        kw = dict(plan=plan, data_dir=data_dir, zoo=root / "zoo", root=repo, carry=carry, threads=1)
        ingest1 = ingest(root / "out1", log=logs["ingest1"].append, **kw)
        rc2 = run_campaign(RunOptions(plan=plan, out=root / "out2", deadline_s=10_000, carry=carry,
                                      work=root / "work2"), echo=logs["run2"].append)
        ingest2 = ingest(root / "out2", log=logs["ingest2"].append, **kw)
    assert sys.path == path_before  # the runner puts sys.path back
    return dict(root=root, repo=repo, carry=carry, plan=plan, manifest=manifest, rc1=rc1, rc2=rc2, state1=state1,
                stale=stale,
                state2=load_state(root / "out2" / "campaign.json"), ingest1=ingest1, ingest2=ingest2, logs=logs,
                data_dir=data_dir, kw=kw)


def test_window_1_runs_every_step_and_skips_what_does_not_fit(dry_run):
    """Window 1 installs the wheel, unpacks the data, runs the cuda-marked tests (only those), probes, trains the
    pack and runs the sweep; the job whose estimate exceeds the time left is not started and is listed as
    remaining with its reason; everything it returns is within the device's limits."""
    assert dry_run["rc1"] == 0, "\n".join(dry_run["logs"]["run1"][-20:])
    out = dry_run["root"] / "out1"
    assert sorted(p.name for p in out.iterdir()) == ["campaign.json", "campaign.log", "eval-study.tar.gz",
                                                    "zoo-fam.p1.tar.gz"]
    assert out_problems(out) == []
    s = dry_run["state1"]
    (w,) = s["windows"]
    assert w["status"] == "finished" and w["ended"] and w["elapsed_s"] < 600
    steps = w["steps"]
    assert steps["wheels"]["status"] == "ok" and steps["wheels"]["wheels"] == ["campaign_probe_pkg-0.1-py3-none-any.whl"]
    assert steps["data"]["how"] == "unpacked" and steps["data"]["n_train"] == 50
    assert steps["data"]["tarball_sha256"] == dry_run["manifest"]["files"]["data/cifar10-jpeg.tar.gz"]
    assert steps["cuda_tests"]["status"] == "passed" and steps["cuda_tests"]["counts"] == {"passed": 1, "deselected": 1}
    assert steps["preflight"]["ceilings"]["status"] == "skipped"
    probe = steps["probe"]["result"]
    assert set(probe["train"]["resnet20"]) == {"1", "2"} and probe["eval"]["pgd20_images_per_s"] > 0
    assert probe["how"].startswith("robench.train.time_pack_step")
    assert s["done"] == ["fam.p1", "study"]
    assert [r["task"] for r in s["remaining"]] == ["late.p1"]
    assert s["remaining"][0]["reason"].startswith("does not fit: estimated 5000 s (plan)")
    assert w["tasks_run"] == ["fam.p1", "study"]  # the job that does not fit was never started
    fam = s["tasks"]["fam.p1"]
    # a pack that is no product of models × λ × seeds (inresnet20 at λ 0.5, lambda_inresnet20 learned) is one
    # real `robench train --plan` call, its members in the plan file the campaign wrote
    assert fam["command"][:3] == ["robench", "train", "--plan"]
    pack = ["resnet20", "inresnet20__lam0.5", "lambda_inresnet20"]
    assert fam["members"] == pack and list(fam["outputs"]) == pack
    assert [m.id for m in load_pack_plan(fam["command"][3])["members"]] == pack
    assert all(o["n_test"] == 20 for o in fam["outputs"].values()) and fam["estimate"]["source"] == "probe"
    assert fam["estimate"]["k"] == 3
    assert "campaign toy: window 1" in (out / "campaign.log").read_text()


def test_window_2_resumes_and_keeps_finished_tasks(dry_run):
    """The next window reads the state ingest kept: the cuda tests and the probe are not repeated (same code and
    versions), finished tasks are not redone, and the task left over runs."""
    assert dry_run["rc2"] == 0, "\n".join(dry_run["logs"]["run2"][-20:])
    s = dry_run["state2"]
    w1, w2 = s["windows"]
    assert w2["window"] == 2 and w2["tasks_run"] == ["late.p1"]
    assert w2["steps"]["cuda_tests"]["status"] == "skipped" and w2["steps"]["probe"]["status"] == "reused"
    assert s["tasks"]["fam.p1"]["window"] == 1 and s["tasks"]["study"]["window"] == 1
    assert s["tasks"]["late.p1"]["status"] == "done" and s["remaining"] == []
    out = dry_run["root"] / "out2"
    assert sorted(p.name for p in out.iterdir()) == ["campaign.json", "campaign.log", "zoo-late.p1.tar.gz"]
    assert out_problems(out) == []
    assert any("fam.p1: done in window 1; kept" in ln for ln in dry_run["logs"]["run2"])


def test_ingest_verifies_and_installs_both_windows(dry_run):
    r1, r2 = dry_run["ingest1"], dry_run["ingest2"]
    assert r1.ok and r2.ok, (r1.refused, r2.refused)
    zoo = dry_run["root"] / "zoo"
    stems = ["inresnet20__lam0.5", "inresnet20__lam0.5.s1", "lambda_inresnet20", "resnet20"]
    assert sorted(p.name for p in zoo.iterdir()) == sorted(f"{s}{e}" for s in stems for e in (".json", ".safetensors"))
    entry = model_zoo.load_entry(zoo / "inresnet20__lam0.5.s1")
    assert entry.card.tag == "s1" and entry.card.lam == 0.5 and entry.card.training["trainer"] == "packed"
    # seed 0 installs under the untagged name: the stale resnet20 was replaced (fam says replaces = true)
    new = model_zoo.load_entry(zoo / "resnet20").card
    assert new.tag is None and new.training["seed"] == 0 and new.training["pack"] == ["resnet20", "inresnet20__lam0.5",
                                                                                      "lambda_inresnet20"]
    assert new.weights_sha256 != dry_run["stale"].weights_sha256
    from robench.results import read_table

    table = read_table(dry_run["repo"] / "results" / "toy_study.parquet")
    assert sorted(table["perturbation"]) == ["gaussian_noise", "none"] and set(table["n"]) == {20}
    kept = load_state(dry_run["carry"] / "state" / "campaign.json")
    assert kept["done"] == ["fam.p1", "study", "late.p1"]
    assert any(ln.startswith("installed resnet20: CPU accuracy") for ln in dry_run["logs"]["ingest1"])


def test_ingest_requires_exactly_the_card_the_packed_trainer_writes(dry_run):
    """Every field ingest requires is on the card a real packed `robench train` wrote, with the values the plan
    asked for (trainer packed, the pack's members in order, precision from amp, recipe/epochs/batch, seed, device,
    data); a card lacking any one of them, or saying another pack, trainer or precision, is refused."""
    from robench.campaign.ingest import CARD_FIELDS, card_problems

    plan = load_plan(dry_run["plan"])
    task = next(t for t in plan.tasks() if t.id == "fam.p1")
    zoo = dry_run["root"] / "zoo"
    test_sha = model_zoo.load_entry(zoo / "resnet20").card.dataset["test_batch_sha256"]
    kw = dict(test_sha=test_sha, n_test=20, n_train=50, gpu=False)
    for m in task.members():
        card = model_zoo.load_entry(zoo / m.id).card
        assert card_problems(card, m, task, **kw) == [], m.id
    m = task.members()[1]
    card = model_zoo.load_entry(zoo / m.id).card
    assert card.training["pack"] == [x.id for x in task.members()] and card.training["precision"] == "fp32"
    for field in CARD_FIELDS:
        bad = copy.deepcopy(card)
        *path, last = field.split(".")
        d = getattr(bad, path[0])
        for part in path[1:]:
            d = d[part]
        del d[last]
        assert card_problems(bad, m, task, **kw) == [f"card lacks {field}"], field
    for edit, problem in ((lambda t: t.update(trainer="single"), "trainer 'single'"),
                          (lambda t: t.update(pack=t["pack"][:2]), "card says pack"),
                          (lambda t: t.update(precision="bfloat16-autocast"), "precision 'bfloat16-autocast'"),
                          (lambda t: t["recipe"].update(epochs=2), "recipe epochs 2"),
                          (lambda t: t.update(seed=1), "seed 1")):
        bad = copy.deepcopy(card)
        edit(bad.training)
        (got,) = card_problems(bad, m, task, **kw)
        assert problem in got
    assert "the card says device 'cpu:" in card_problems(card, m, task, **{**kw, "gpu": True})[0]
    # the job trains on n_train = 20 of the window's 50; a window with only 10 could not have
    assert card.dataset["n_train"] == 20
    assert card_problems(card, m, task, **{**kw, "n_train": 10}) == ["card says 20 training images, the plan 10"]


def _returned_copy(dry_run, tmp_path) -> Path:
    copy = tmp_path / "returned"
    shutil.copytree(dry_run["root"] / "out2", copy)
    return copy


def _ingest(dry_run, returned: Path, tmp_path) -> tuple:
    kw = {**dry_run["kw"], "zoo": tmp_path / "zoo", "carry": tmp_path / "carry", "root": tmp_path}
    lines: list[str] = []
    return ingest(returned, log=lines.append, **kw), lines


def test_ingest_refuses_a_damaged_bundle(dry_run, tmp_path):
    """A returned bundle whose bytes are not the ones campaign.json recorded is refused, nothing of it is
    installed, and its task goes back to pending for the next window."""
    returned = _returned_copy(dry_run, tmp_path)
    bundle = returned / "zoo-late.p1.tar.gz"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bundle.write_bytes(bytes(data))
    report, _ = _ingest(dry_run, returned, tmp_path)
    assert not report.ok and report.refused == [("zoo-late.p1.tar.gz", "its sha256 is not the one campaign.json "
                                                                       "recorded (damaged or replaced)")]
    assert not (tmp_path / "zoo").exists() or not list((tmp_path / "zoo").iterdir())
    kept = load_state(tmp_path / "carry" / "state" / "campaign.json")
    assert kept["tasks"]["late.p1"]["status"] == "pending" and "refused at ingest" in kept["tasks"]["late.p1"]["reason"]


def _rebuild(bundle: Path, edit) -> None:
    with tarfile.open(bundle, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    members = edit(members)
    with tarfile.open(bundle, "w:gz") as tar:
        for name, b in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(b)
            tar.addfile(info, io.BytesIO(b))


def test_ingest_refuses_a_checkpoint_whose_card_accuracy_is_not_what_the_cpu_measures(dry_run, tmp_path):
    """The deepest check: bundle and campaign.json made consistent with an edited card (test accuracy one image
    higher), so only the CPU evaluation on the local test split can tell; it refuses the checkpoint."""
    import hashlib

    from robench.fileio import sha256_file

    returned = _returned_copy(dry_run, tmp_path)
    bundle = returned / "zoo-late.p1.tar.gz"
    stem = "inresnet20__lam0.5.s1"

    def edit(members):
        card = json.loads(members[f"{stem}.json"])
        card["metrics"]["test_acc"] = round(card["metrics"]["test_acc"] + 0.05, 5)
        members[f"{stem}.json"] = json.dumps(card).encode()
        return members

    _rebuild(bundle, edit)
    state = json.loads((returned / "campaign.json").read_text())
    with tarfile.open(bundle, "r:gz") as tar:
        card_bytes = tar.extractfile(f"{stem}.json").read()
    rec = state["tasks"]["late.p1"]
    rec["outputs"][stem]["card_sha256"] = hashlib.sha256(card_bytes).hexdigest()
    rec["files"][0]["sha256"] = sha256_file(bundle)
    (returned / "campaign.json").write_text(json.dumps(state))
    report, _ = _ingest(dry_run, returned, tmp_path)
    (what, why), = report.refused
    assert what == f"{stem} (late.p1)" and why.startswith("CPU accuracy") and "more than one image in a thousand" in why
    assert not (tmp_path / "zoo" / f"{stem}.safetensors").exists()


def test_ingest_refuses_a_tampered_checkpoint(dry_run, tmp_path):
    """Weights changed inside the bundle, with the bundle's sha256 in campaign.json made to match: the checkpoint no
    longer is the one its card names, so it does not load and is not installed."""
    from robench.fileio import sha256_file

    returned = _returned_copy(dry_run, tmp_path)
    bundle = returned / "zoo-late.p1.tar.gz"
    stem = "inresnet20__lam0.5.s1"

    def edit(members):
        w = bytearray(members[f"{stem}.safetensors"])
        w[-3] ^= 0x40  # a bit of the last weight
        members[f"{stem}.safetensors"] = bytes(w)
        return members

    _rebuild(bundle, edit)
    state = json.loads((returned / "campaign.json").read_text())
    state["tasks"]["late.p1"]["files"][0]["sha256"] = sha256_file(bundle)
    (returned / "campaign.json").write_text(json.dumps(state))
    report, _ = _ingest(dry_run, returned, tmp_path)
    (what, why), = report.refused
    assert what == f"{stem} (late.p1)" and "sha256" in why
    assert not (tmp_path / "zoo" / f"{stem}.safetensors").exists()


def test_ingest_replaces_an_installed_checkpoint_only_where_the_job_says_so(dry_run, tmp_path):
    """late (seed 1, no replaces) finds other weights under its name in the zoo: refused, the zoo's copy untouched."""
    returned = _returned_copy(dry_run, tmp_path)
    other = model_zoo.save(model_zoo.create_model("inresnet20", lam=0.5), tmp_path / "zoo" / "inresnet20__lam0.5.s1",
                           {"training": {"seed": 1}}, tag="s1")
    report, _ = _ingest(dry_run, returned, tmp_path)
    (what, why), = report.refused
    assert what == "inresnet20__lam0.5.s1 (late.p1)" and "does not replace (replaces = true in the plan)" in why
    assert model_zoo.load_entry(tmp_path / "zoo" / "inresnet20__lam0.5.s1").card.weights_sha256 == other.weights_sha256


def test_ingest_refuses_files_campaign_json_does_not_list(dry_run, tmp_path):
    returned = _returned_copy(dry_run, tmp_path)
    shutil.copy(dry_run["root"] / "out1" / "zoo-fam.p1.tar.gz", returned / "zoo-fam.p2.tar.gz")
    report, _ = _ingest(dry_run, returned, tmp_path)
    assert ("zoo-fam.p2.tar.gz", "not listed in campaign.json") in report.refused


def test_a_stopped_task_returns_its_run_folder_and_the_next_window_resumes_it(tmp_path, monkeypatch):
    """A task stopped at the deadline is half done: its run folder comes back as run-TASK.tar.gz; once ingest
    has kept it in the carried state, the next window unpacks it and calls robench train with --resume."""
    import robench.campaign.runner as runner
    from synthetic_cifar import colour_images, write_cifar10

    x, y = colour_images(60, seed=0)
    write_cifar10(tmp_path / "data", [(x[i * 10:(i + 1) * 10], y[i * 10:(i + 1) * 10]) for i in range(5)],
                  (x[50:], y[50:]))
    plan = toy_plan(tmp_path / "plan.toml", tmp_path / "none.py", late_estimate=1)
    text = plan.read_text().replace("[cuda_tests]", "[cuda_tests]\nenabled = false").replace(
        "[probe]", "[probe]\nenabled = false")
    plan.write_text(text[:text.index("[[jobs]]")] + text[text.index("[[jobs]]\nname = \"late\""):])
    calls: list[list[str]] = []

    def fake(argv, *, cwd, env, timeout_s, log, prefix=""):
        calls.append(argv)
        run_dir = Path(argv[argv.index("--run-dir") + 1])
        if "--resume" in argv:
            return 0, 0.1, []  # then fails: no checkpoint was made, which the runner must say
        run_dir.mkdir(parents=True)
        (run_dir / "state.json").write_text('{"epoch": 1}')
        return None, 5.0, ["stopped"]

    monkeypatch.setattr(runner, "run_command", fake)
    carry = tmp_path / "carry"
    opts = dict(plan=plan, carry=carry, data_dir=tmp_path / "data", deadline_s=600)
    assert run_campaign(RunOptions(out=tmp_path / "out1", work=tmp_path / "w1", **opts), echo=_quiet) == 0
    s1 = load_state(tmp_path / "out1" / "campaign.json")
    rec = s1["tasks"]["late.p1"]
    assert rec["status"] == "partial" and rec["run_files"][0]["name"] == "run-late.p1.tar.gz"
    assert "--resume" not in calls[0]
    report = ingest(tmp_path / "out1", plan=plan, data_dir=tmp_path / "data", zoo=tmp_path / "zoo", root=tmp_path,
                    carry=carry, threads=1, log=_quiet)
    assert report.ok and (carry / "state" / "run-late.p1.tar.gz").is_file()
    assert run_campaign(RunOptions(out=tmp_path / "out2", work=tmp_path / "w2", **opts), echo=_quiet) == 1
    assert "--resume" in calls[1]
    assert (tmp_path / "w2" / "runs" / "late.p1" / "state.json").read_text() == '{"epoch": 1}'
    s2 = load_state(tmp_path / "out2" / "campaign.json")
    assert s2["tasks"]["late.p1"]["status"] == "failed" and "without a usable checkpoint" in s2["tasks"]["late.p1"]["reason"]


def test_run_command_stops_a_command_at_its_deadline(tmp_path):
    lines: list[str] = []
    rc, wall, tail = run_command([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                                 cwd=tmp_path, env=dict(os.environ), timeout_s=1.5, log=lines.append)
    assert rc is None and wall < 20 and lines == ["started"]


# -- the plan ----------------------------------------------------------------------------------------------
def _settings():
    return TrainSettings(recipe="paper", amp=True, data_label="CIFAR-10 (JPEG copy)")


def test_train_argv_is_one_call_for_any_member_set(tmp_path):
    """One pack → one `robench train --plan` call: the members go into the pack's plan file in the trainer's own
    format (read back by robench.packed.load_plan as exactly those members, in order), the settings on the command
    line. A set that is no product of models × λ × seeds (the depth-20 family of 8: resnet20, inresnet20 learned and
    at four λ, lambda_inresnet20 learned, lmresnet20) is one call too."""
    members = [Member("resnet20", None, 0)] + [Member("inresnet20", lam, 0) for lam in (None, 0.25, 0.5, 0.75, 1.0)] \
        + [Member("lambda_inresnet20", None, 0), Member("lmresnet20", None, 0)]
    plan = tmp_path / "packs" / "d20.toml"
    plan.parent.mkdir()
    argv = train_argv(members, _settings(), plan_file=plan, device="cuda", data_dir="D", out="Z", run_dir="R")
    assert argv == ["train", "--plan", str(plan), "--recipe", "paper", "--amp", "--device", "cuda", "--data-dir", "D",
                    "--out", "Z", "--run-dir", "R", "--data-label", "CIFAR-10 (JPEG copy)"]
    back = load_pack_plan(plan)
    assert back == {"members": members}
    assert [m.ref for m in back["members"]][:3] == ["resnet20", "inresnet20", "inresnet20@0.25"]
    seeds = [Member("inresnet20", 0.5, s) for s in (1, 2)] + [Member("lmresnet20", None, 2)]
    one = train_argv(seeds, dataclasses.replace(_settings(), amp=False, epochs=3, n_train=100), plan_file=plan,
                     device="cpu", data_dir="D", out="Z", run_dir="R", resume=True)
    assert one[-7:] == ["--epochs", "3", "--n", "100", "--data-label", "CIFAR-10 (JPEG copy)", "--resume"]
    assert "--no-amp" in one and [m.id for m in load_pack_plan(plan)["members"]] == ["inresnet20__lam0.5.s1",
                                                                                     "inresnet20__lam0.5.s2",
                                                                                     "lmresnet20.s2"]
    shown = train_argv(members, _settings(), plan_file=None, device="cuda", data_dir="D", out="Z", run_dir="R")
    assert shown[:3] == ["train", "--plan", "PACK.toml"]
    with pytest.raises(BadInput, match="one architecture"):
        train_argv([Member("resnet20", None, 0), Member("resnet110", None, 0)], _settings(), plan_file=None,
                   device="cpu", data_dir="D", out="Z", run_dir="R")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('name = "toy"', 'name = "toy"\nextra = 1'), "unknown key extra"),
    (lambda t: t.replace('needs = ["fam"]', 'needs = ["nope"]'), "needs 'nope', which is not a job defined above it"),
    (lambda t: t.replace('{model = "inresnet20", lam = 0.5, seed = 1}', '{model = "resnet20", lam = 0.5, seed = 1}'),
     r"λ \(--lam\) does not apply to resnet20"),
    (lambda t: t.replace('{model = "lambda_inresnet20", seed = 0}', '{model = "resnet110", seed = 0}'),
     "a pack trains models of one architecture"),
    (lambda t: t.replace('{model = "lambda_inresnet20", seed = 0}', '{model = "lambda_inresnet20", seeds = 0}'),
     r"members table 2 needs model and may have lam and seed \(unknown: seeds\)"),
    (lambda t: t.replace('members = [{model = "inresnet20", lam = 0.5, seed = 1}]', 'models = ["inresnet20"]'),
     "unknown key models; valid keys: members"),
    (lambda t: t.replace("batch_size = 20\n", 'batch_size = 20\nout = "x"\n'), "out is set by the campaign"),
    (lambda t: t.replace('checks = false', 'checks = false\nsplit = ["layers"]'), "unknown axis layers"),
    (lambda t: t.replace('recipe = "fast"', 'recipe = "slow"', 1), "unknown recipe 'slow'"),
    (lambda t: t.replace('{model = "inresnet20", lam = 0.5, seed = 1}', '{model = "resnet20"}'),
     "resnet20 is trained by job fam and job late"),
    (lambda t: t.replace("[probe]\n", '[probe]\nrecipe = "slow"\n'), r"\[probe\].recipe: unknown recipe 'slow'"),
])
def test_plan_errors_are_one_line(tmp_path, edit, message):
    plan = toy_plan(tmp_path / "plan.toml", tmp_path / "t.py")
    plan.write_text(edit(plan.read_text()))
    with pytest.raises(BadInput, match=message):
        load_plan(plan)


def _committed_plan(validate: bool = True):
    from robench.attacks import list_attacks

    if validate and "autoattack_art" not in list_attacks():
        pytest.skip("autoattack_art (the ART composition's own name) comes with the engine branch")
    plan = load_plan(ROOT / "configs" / "campaign_gpu.toml")
    return plan.validate_specs() if validate else plan


D20 = ["resnet20", "inresnet20", "inresnet20__lam0.25", "inresnet20__lam0.5", "inresnet20__lam0.75", "inresnet20__lam1",
       "lambda_inresnet20", "lmresnet20"]


def test_committed_plan_packs_each_depth_and_seed_as_issue_23_orders():
    """configs/campaign_gpu.toml (structure only: no attack registry needed): the depth-20 family of 8 at seed 0 is
    one pack (one call), seeds 1 and 2 one pack of 8 each, depth 110 one pack of 3, depth 56 one pack per seed."""
    plan = _committed_plan(validate=False)
    packs = {t.id: [m.id for m in t.members()] for t in plan.tasks() if t.job.kind == "train"}
    assert packs == {"d20-s0.p1": D20, "d20-s1.p1": [f"{s}.s1" for s in D20], "d20-s2.p1": [f"{s}.s2" for s in D20],
                     "d110.p1": ["resnet110", "inresnet110", "lmresnet110"],
                     **{f"d56-s{k}.p1": [f"resnet56{t}", f"inresnet56{t}"] for k, t in ((0, ""), (1, ".s1"), (2, ".s2"))}}
    assert [t.id for t in plan.tasks() if t.job.kind == "train"] == list(packs)  # priority order
    # depth 56 never trains before priorities 1-3 have (its checkpoints would travel in every later call)
    assert all(set(plan.job(f"d56-s{k}").needs) == {"d20-s0", "d20-s1", "d20-s2", "d110"} for k in range(3))
    assert all(t.job.train.recipe == "paper" and t.job.train.amp for t in plan.tasks() if t.job.kind == "train")


def test_committed_plan_installs_seed_0_over_the_shipped_weights_and_seeds_under_their_tags():
    """What ingest installs is each member's id (the zoo stem of model, λ and seed's tag): the seed-0 members are the
    untagged names of the shipped CPU checkpoints, so their jobs say replaces = true; seeds 1 and 2 are new tagged
    entries (nothing shipped under those names) and do not replace."""
    plan = _committed_plan(validate=False)
    shipped = {p.stem for p in (ROOT / "model_zoo" / "weights").glob("*.json")}  # the repository's, as committed
    for job in plan.jobs:
        if job.kind != "train":
            continue
        ids = {m.id for m in job.members()}
        if job.name in ("d20-s0", "d110"):
            assert job.replaces and all(m.seed == 0 and m.tag is None for m in job.members())
        if ids & shipped:
            assert job.replaces, f"{job.name} would be refused at ingest: {sorted(ids & shipped)} are shipped"
        if any(m.seed for m in job.members()):
            assert not job.replaces and not ids & shipped
            assert all(m.id.endswith(f".s{m.seed}") and m.ref.endswith(f".s{m.seed}") for m in job.members())
    assert set(D20) <= shipped and {"resnet110", "inresnet110"} <= shipped


def test_committed_plan_follows_issue_23():
    """configs/campaign_gpu.toml keeps issue 23's order: depth-20 family seed 0 (replacing the CPU weights) and its
    λ study on 10k images, then seeds 1 and 2, depth 110, the AutoAttack cross-check, depth 56 × 3 seeds; each eval
    job evaluates exactly the members its train job makes (by their eval names)."""
    plan = _committed_plan()
    jobs = plan.ordered()
    assert [j.name for j in jobs if j.kind == "train"] == ["d20-s0", "d20-s1", "d20-s2", "d110", "d56-s0", "d56-s1",
                                                           "d56-s2"]
    for job in jobs:
        if job.kind == "eval" and job.name.startswith(("study", "aa-d")):
            made = [m.ref for n in job.needs for m in plan.job(n).members()]
            assert list(job.spec.models) == made, job.name
    study = plan.job("study-d20-s0").spec.validate(check_device=False)
    assert study.n == 10000 and study.attacks == ("fgsm", "ifgsm", "pgd") and len(study.corruptions) == 4
    assert [f"{e * 255:.0f}" for e in study.eps] == ["1", "2", "4", "8"] and len(study.pairs()) == 8
    aa = plan.job("aa-d20-s0").spec.validate(check_device=False)
    assert aa.attacks == ("autoattack",) and [round(e * 255) for e in aa.eps] == [2, 8]
    cross = plan.job("aa-crosscheck").spec.validate(check_device=False)
    assert set(cross.attacks) == {"autoattack", "autoattack_art", "apgd_ce"} and [round(e * 255) for e in cross.eps] == [1, 2]
    assert [j.priority for j in jobs] == sorted(j.priority for j in jobs)


# -- the returned folder ------------------------------------------------------------------------------------
def test_out_problems_names_what_would_not_come_back(tmp_path):
    for i in range(9):
        (tmp_path / f"f{i}.txt").write_text("x")
    (tmp_path / "bad name.txt").write_text("x")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("x")
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(outdir.MAX_FILE_BYTES + 1)
    problems = out_problems(tmp_path)
    assert "bad name.txt: name outside [A-Za-z0-9._-]" in problems
    assert "a/b/c/f.txt: more than 2 folders down" in problems
    assert f"big.bin: {outdir.MAX_FILE_BYTES + 1} bytes (at most {outdir.MAX_FILE_BYTES})" in problems
    assert "12 files (at most 8 come back)" in problems


def test_bundles_split_below_the_file_limit_and_unpack_safely(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"w{i}.bin").write_bytes(os.urandom(3000))
    monkeypatch.setattr(outdir, "PART_BYTES", 8500)
    out = OutDir(tmp_path / "out")
    records = write_bundle(out, "zoo-x", [(p.name, p) for p in sorted(src.iterdir())])
    assert [r["name"] for r in records] == ["zoo-x.1.tar.gz", "zoo-x.2.tar.gz", "zoo-x.3.tar.gz"]
    names = extract_bundle([out.path / r["name"] for r in records], tmp_path / "back")
    assert sorted(names) == [f"w{i}.bin" for i in range(5)]
    assert all((tmp_path / "back" / n).read_bytes() == (src / n).read_bytes() for n in names)
    assert out.free_slots() == outdir.MAX_FILES - 2 - 3
    with pytest.raises(BadInput, match="needs 5 returned files"):
        write_bundle(out, "zoo-y", [(f"{i}.bin", src / f"w{i}.bin") for i in range(5)] +
                     [(f"{i}.b", src / f"w{i}.bin") for i in range(5)])
    for name, kind in (("../evil", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
        bad = tmp_path / f"bad{kind!r}.tar.gz"
        with tarfile.open(bad, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b""))
        with pytest.raises(BadInput, match="not a plain file with a safe relative name"):
            extract_bundle([bad], tmp_path / "evil")
    assert not (tmp_path / "evil" / "link").exists() and not (tmp_path / "evil").parent.joinpath("evil").is_file()


def test_a_file_interrupted_while_written_never_appears_in_out(tmp_path):
    """Whole files only: a write that breaks off leaves nothing in OUT (not even the temporary), so a command
    killed mid-write returns only the files finished before."""
    out = OutDir(tmp_path / "out")
    out.write_text("campaign.json", "{}")

    def half(p: Path) -> None:
        p.write_bytes(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        out.write("zoo-a.tar.gz", half)
    assert [p.name for p in out.path.iterdir()] == ["campaign.json"] and out_problems(out.path) == []


def test_out_dir_must_start_empty(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(BadInput, match="is not empty"):
        OutDir(tmp_path)


# -- small parts ----------------------------------------------------------------------------------------------
def test_pytest_summary_and_sweep_config_text(tmp_path):
    assert pytest_summary(["x", "3 passed, 2 skipped, 1 deselected in 4.2s"]) == {"passed": 3, "skipped": 2,
                                                                                 "deselected": 1}
    from robench.spec import load_spec

    values = {"models": ["inresnet20@0.5.s1"], "lams": [None], "attacks": ["pgd"], "eps": ["2/255"],
              "attack_params": {"pgd": {"steps": 10}}, "n": 100, "data_dir": 'we"ird', "device": "cuda"}
    (tmp_path / "c.toml").write_text(toml_text(values))
    spec = load_spec(tmp_path / "c.toml")
    assert spec.models == ("inresnet20@0.5.s1",) and spec.params_of("pgd") == {"steps": 10}
    assert spec.data_dir == 'we"ird' and spec.n == 100 and spec.lams == ("learned",)


def test_estimates_use_the_probe_and_fall_back_to_the_plan():
    from robench.campaign.plan import Estimates, ProbeSettings
    from robench.campaign.probe import estimate_eval, estimate_train, step_ms
    from robench.spec import EvalSpec

    p, est = ProbeSettings(), Estimates()
    probe = {"train": {"resnet20": {"1": 2.0, "8": 1.0, "16": 0.5}, "resnet110": {"2": 9.0}}, "eval": {"pass_us": 10.0}}
    assert step_ms(probe, p, est, 12, 1.0, 128) == (0.75, "probe")  # between K=8 and K=16
    assert step_ms(None, p, est, 12, 1.0, 128) == (est.step_ms, "default")
    ms110, _ = step_ms(probe, p, est, 2, model_zoo.model_info("resnet110").params
                       / model_zoo.model_info("resnet20").params, 128)
    assert ms110 == pytest.approx(9.0)  # the measured depth-110 point is reproduced
    job = type("J", (), {"train": TrainSettings(recipe="paper")})()
    e = estimate_train([Member("resnet20", None, 0)] * 8, job, probe=probe, settings=p, est=est, n_train=50_000)
    assert e["steps"] == 160 * 391 and e["seconds"] == pytest.approx(30 + 160 * 391 * 8 * 1.0 / 1000
                                                                      + 160 * 8 * 10_000 / 3 * 10 / 1e6, abs=0.1)
    cheap = estimate_eval(EvalSpec(models=("resnet20",), attacks=("pgd",), eps=(8 / 255,)), n=10_000, checks=False,
                          probe=probe, settings=p, est=est)
    strong = estimate_eval(EvalSpec(models=("resnet20",), attacks=("autoattack",), eps=(8 / 255,)), n=10_000,
                           checks=False, probe=probe, settings=p, est=est)
    assert cheap["seconds"] == pytest.approx(20 + 10_000 * (1 / 3 + 20 + 1 / 3) * 10 / 1e6, abs=0.1)
    assert strong["image_passes"] > 10 * cheap["image_passes"]  # AutoAttack's 4 components against PGD-20


def test_probe_times_the_packed_trainers_own_step(monkeypatch, tmp_path):
    """The probe's ms per model-step are robench.train.time_pack_step's (what `robench train` runs: the plan's recipe,
    batch, steps, warm-up and amp; CUDA graphs by the trainer's default), for each K of both depths."""
    import torch

    import robench.train
    from robench.campaign import probe as probe_mod
    from robench.campaign.plan import ProbeSettings

    calls = []

    def fake(model, k, **kw):
        calls.append((model, k, kw))
        return 0.5 * k

    monkeypatch.setattr(robench.train, "time_pack_step", fake)
    monkeypatch.setattr(probe_mod, "_probe_eval", lambda *a, **kw: None)
    settings = ProbeSettings(recipe="fast", train_batch=64, steps=4, warmup=2, ks=(1, 8), deep_ks=(2,), amp=False)
    out = probe_mod.run_probe(settings, device=torch.device("cpu"), data_dir=tmp_path, log=_quiet)
    kw = dict(recipe="fast", batch_size=64, steps=4, warmup=2, device=torch.device("cpu"), amp=False, cuda_graphs=None)
    assert calls == [("resnet20", 1, kw), ("resnet20", 8, kw), ("resnet110", 2, kw)]
    assert out["train"] == {"resnet20": {"1": 0.5, "8": 4.0}, "resnet110": {"2": 1.0}} and out["recipe"] == "fast"


def test_campaign_commands_show_the_plan_and_refuse_bad_input_in_one_line(tmp_path, capsys):
    from robench.cli import main

    plan = toy_plan(tmp_path / "plan.toml", tmp_path / "t.py")
    with pytest.raises(SystemExit) as e:
        main(["campaign", "show", str(plan)])
    out = capsys.readouterr().out
    assert e.value.code == 0 and ("[p1] fam.p1 (pending): 3 members (resnet20, inresnet20@0.5, lambda_inresnet20): "
                                  "robench train --plan PACK.toml --recipe fast --no-amp --device cuda") in out
    assert "[p2] late.p1 (pending): 1 members (inresnet20@0.5.s1): robench train --plan PACK.toml" in out
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    for argv, message in ((["campaign", "run", str(plan), "--out", str(tmp_path / "out")], "is not empty"),
                          (["campaign", "run", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")],
                           "does not exist"),
                          (["campaign", "ingest", str(tmp_path), "--plan", str(plan)], "holds no campaign.json")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1


# -- what a device call sends -----------------------------------------------------------------------------------
def test_a_window_carrying_the_test_split_only_evaluates_and_leaves_training_for_later(dry_run, tmp_path,
                                                                                      monkeypatch):
    """When the whole tarball would take the call over the limit, prepare carries the tarball's test split (checked
    byte for byte against the CPU copy's test batch) instead; the window unpacks it to that same test batch, runs the
    evaluation (its rows verify at ingest), and leaves the train task pending with the reason, though it fits."""
    from robench.campaign import travel
    from robench.fileio import sha256_file

    root = dry_run["root"]
    plan = toy_plan(tmp_path / "plan.toml", tmp_path / "none.py", late_estimate=1)
    text = plan.read_text().replace("[cuda_tests]", "[cuda_tests]\nenabled = false").replace(
        "[probe]", "[probe]\nenabled = false").replace('needs = ["fam"]\n', "")
    plan.write_text(text[:text.index("[[jobs]]")] + text[text.index('[[jobs]]\nname = "study"'):])
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".gitignore").write_text("/.carry/\n")
    _git(repo, "init", "-q")
    carry = repo / ".carry"
    cpu_test = dry_run["data_dir"] / "cifar-10-batches-py" / "test_batch"
    kw = dict(tarball=root / "src" / "cifar10-jpeg.tar.gz", converter=root / "src" / "cifar10_from_jpeg.py",
              root=repo, plan=plan, data_dir=dry_run["data_dir"])
    full = prepare(carry, log=_quiet, **kw)
    assert full.manifest["data"]["carried"] == "full" and not full.over  # auto: late.p1 can train
    monkeypatch.setattr(travel, "LIMIT", full.travel["total"] - 1)  # now the whole tarball does not fit
    said: list[str] = []
    done = prepare(carry, log=said.append, **kw)
    assert "data: the whole tarball makes the call " in said[1] and "late.p1 wait for a call with room" in said[1]
    assert done.travel["total"] < full.travel["total"] and not done.over
    assert done.manifest["data"] == {"test_batch_sha256": sha256_file(cpu_test), "from": str(dry_run["data_dir"]),
                                     "carried": "test", "n_train": 50}
    assert sorted(p.name for p in (carry / "data").iterdir()) == ["cifar10-jpeg-test.tar.gz"]
    assert (carry / "data" / "cifar10-jpeg-test.tar.gz").stat().st_size < (root / "src" / "cifar10-jpeg.tar.gz").stat().st_size / 2
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBENCH_HOME", str(tmp_path / "home"))
        mp.setenv("ROBENCH_THREADS", "1")
        rc = run_campaign(RunOptions(plan=plan, out=tmp_path / "out", deadline_s=600, carry=carry,
                                     work=tmp_path / "work"), echo=lines.append)
    assert rc == 0, "\n".join(lines[-20:])
    s = load_state(tmp_path / "out" / "campaign.json")
    (w,) = s["windows"]
    assert w["steps"]["data"]["how"] == "unpacked (test split only)" and w["steps"]["data"]["n_train"] == 0
    assert w["steps"]["data"]["test_batch_sha256"] == sha256_file(cpu_test)
    assert w["tasks_run"] == ["study"] and s["tasks"]["study"]["status"] == "done"
    assert s["tasks"]["late.p1"]["status"] == "pending"
    assert s["tasks"]["late.p1"]["reason"].startswith("needs the training data, which this window did not carry")
    # the study evaluated the repository's resnet20 (the sweep's zoo) on the test split: its rows verify
    report = ingest(tmp_path / "out", plan=plan, data_dir=dry_run["data_dir"], zoo=ROOT / "model_zoo" / "weights",
                    root=tmp_path, carry=tmp_path / "carry2", threads=1, log=_quiet)
    assert report.ok and report.installed == [tmp_path / "results" / "toy_study.parquet",
                                              tmp_path / "results" / "toy_study.csv"]


def test_prepare_refuses_a_test_split_that_is_not_the_cpu_copys(dry_run, tmp_path):
    root = dry_run["root"]
    other = tmp_path / "other" / "cifar-10-batches-py"
    other.mkdir(parents=True)
    (other / "test_batch").write_bytes(b"another copy")
    carry = tmp_path / "repo" / ".carry"
    with pytest.raises(BadInput, match="is not .* test batch .*carry the whole tarball"):
        prepare(carry, tarball=root / "src" / "cifar10-jpeg.tar.gz", converter=root / "src" / "cifar10_from_jpeg.py",
                root=tmp_path / "repo", data="test", data_dir=other.parent, log=_quiet)
    assert not (carry / "data" / "cifar10-jpeg-test.tar.gz").exists()
    with pytest.raises(BadInput, match="--data test needs --data-dir"):
        prepare(carry, tarball=root / "src" / "cifar10-jpeg.tar.gz", converter=root / "src" / "cifar10_from_jpeg.py",
                root=tmp_path / "repo", data="test", log=_quiet)


def _git(repo: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def test_travel_report_counts_what_a_call_sends_and_projects_the_zoo_growth(tmp_path, monkeypatch, capsys):
    """The exact bytes of a call (tracked and untracked-not-ignored files, the carried folder by part, nothing
    ignored), which remaining task needs the training data, what each train task's checkpoints add once installed
    (a replaced checkpoint adds nothing), the sizes of later calls, and a call over the limit said loudly."""
    from robench.campaign import travel
    from robench.cli import main

    repo = tmp_path / "repo"
    weights = repo / "model_zoo" / "weights"
    weights.mkdir(parents=True)
    (weights / "resnet20.safetensors").write_bytes(b"w" * 1_000_000)
    (weights / "resnet20.json").write_bytes(b"{}" * 500)
    (repo / ".gitignore").write_text("/.carry/\n/ignored.bin\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "zoo")
    (repo / "untracked.txt").write_bytes(b"u" * 3000)
    (repo / "ignored.bin").write_bytes(b"i" * 10_000_000)
    carry = repo / ".carry"
    for name, size in (("data/cifar10-jpeg.tar.gz", 2_000_000), ("wheels/a.whl", 300_000), ("tools/c.py", 100),
                       ("state/run-x.1.tar.gz", 50_000), ("manifest.json", 700)):
        (carry / name).parent.mkdir(parents=True, exist_ok=True)
        (carry / name).write_bytes(b"c" * size)
    plan = toy_plan(tmp_path / "plan.toml", tmp_path / "t.py")
    r = travel.report(repo, carry, load_plan(plan), None)
    checkout = 1_000_000 + 1000 + len("/.carry/\n/ignored.bin\n") + 3000
    assert r["checkout"] == checkout and r["zoo_weights"] == 1_001_000
    assert r["carry"] == {"data": 2_000_000, "wheels": 300_000, "state": 50_000, "other": 800}
    assert r["total"] == checkout + 2_350_800 and not r["over"] and r["data"] == "full"
    assert [(n["task"], n["train_data"]) for n in r["remaining"]] == [("fam.p1", True), ("study", False),
                                                                       ("late.p1", True)]
    assert [n["waits"] for n in r["remaining"]] == [(), ("fam",), ()]
    fam, late = r["remaining"][0]["adds"], r["remaining"][2]["adds"]
    # resnet20 is there (replaced: +0); inresnet20 at λ 0.5 and lambda_inresnet20 are new: the size of resnet20's
    # checkpoint file each (same architecture) plus a card
    assert fam == 2 * (travel.checkpoint_bytes("inresnet20", weights)) and late == fam // 2
    assert travel.checkpoint_bytes("inresnet20", weights) == int(model_zoo.model_info("inresnet20").params * 4 * 1.016) \
        + (16 << 10) + travel.CARD_BYTES
    (p1, p2) = r["projection"]
    base = r["total"] - 2_000_000
    assert p1 == {"after": "fam.p1", "adds": fam, "with_training_data": base + fam + travel.FULL_DATA_BYTES,
                  "test_split_only": base + fam + travel.TEST_DATA_BYTES, "trains_left": True}
    assert p2["with_training_data"] == base + fam + late + travel.FULL_DATA_BYTES and not p2["trains_left"]
    text = "\n".join(travel.describe(r))
    assert "late.p1 (pending): trains; needs the training data" in text and "OVER" not in text
    assert "the training data is needed next by fam.p1, late.p1" in text and "needs the test split and the wheels; " \
        "waits for fam" in text
    monkeypatch.setattr(travel, "LIMIT", r["total"] - 200_000)
    text = "\n".join(travel.describe(travel.report(repo, carry, load_plan(plan), None)))
    assert "WARNING: 0.2 MiB over the limit: the device tool will refuse the call" in text and "(OVER)" in text
    # the command says it and exits 1 (after writing the carried folder)
    import robench.campaign.prepare as prepare_mod

    monkeypatch.setattr(prepare_mod, "repo_root", lambda: repo)
    (tmp_path / "conv.py").write_text("")
    (tmp_path / "d.tar.gz").write_bytes(b"d" * 2_000_000)
    with pytest.raises(SystemExit) as e:
        main(["campaign", "prepare", str(carry), "--tarball", str(tmp_path / "d.tar.gz"), "--converter",
              str(tmp_path / "conv.py"), "--no-wheels", "--plan", str(plan), "--data", "full"])
    out = capsys.readouterr().out
    assert e.value.code == 1 and "WARNING:" in out and "over the limit" in out
