"""The GPU campaign (issue 22.6): a CPU dry run of the whole path at toy size, and its parts.

The dry run: prepare (fake JPEG tarball, a stand-in converter with the shared one's contract, a tiny wheel)
→ window 1 (wheels, data, preflight, the cuda-marked tests, probe, a train pack and a sweep; a job whose
estimate does not fit is skipped and listed as remaining) → ingest (verifies on the CPU, installs, keeps
the state) → window 2 (resumes: cuda tests and probe not repeated, finished tasks kept, the remaining one
runs) → ingest; then tampered returns are refused.
"""
from __future__ import annotations

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
from robench.campaign.plan import Member, TrainSettings, load_plan, train_argv
from robench.campaign.prepare import prepare
from robench.campaign.runner import RunOptions, pytest_summary, run_campaign, run_command, toml_text
from robench.campaign.state import load_state
from robench.errors import BadInput

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
                           log=logs["prepare"].append)
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
    assert s["done"] == ["fam.p1", "study"]
    assert [r["task"] for r in s["remaining"]] == ["late.p1"]
    assert s["remaining"][0]["reason"].startswith("does not fit: estimated 5000 s (plan)")
    fam = s["tasks"]["fam.p1"]
    assert fam["command"][:6] == ["robench", "train", "--model", "resnet20", "--seed", "0"]
    assert fam["outputs"]["resnet20"]["n_test"] == 20 and fam["estimate"]["source"] == "probe"
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
    assert sorted(p.name for p in zoo.iterdir()) == ["inresnet20__lam0.5.s1.json", "inresnet20__lam0.5.s1.safetensors",
                                                    "resnet20.json", "resnet20.safetensors"]
    entry = model_zoo.load_entry(zoo / "inresnet20__lam0.5.s1")
    assert entry.card.tag == "s1" and entry.card.lam == 0.5 and entry.card.training["trainer"] == "packed"
    from robench.results import read_table

    table = read_table(dry_run["repo"] / "results" / "toy_study.parquet")
    assert sorted(table["perturbation"]) == ["gaussian_noise", "none"] and set(table["n"]) == {20}
    kept = load_state(dry_run["carry"] / "state" / "campaign.json")
    assert kept["done"] == ["fam.p1", "study", "late.p1"]
    assert any(ln.startswith("installed resnet20: CPU accuracy") for ln in dry_run["logs"]["ingest1"])


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


def test_train_argv_is_the_packed_trainers_contract():
    """One pack → one command: repeated --model, λ and seeds as comma lists (λ only for damped models); a set of
    members that is not such a product is refused rather than trained differently."""
    members = [Member("resnet20", None, s) for s in (1, 2)] + \
        [Member("inresnet20", lam, s) for lam in (None, 0.5) for s in (1, 2)]
    argv = train_argv(members, _settings(), device="cuda", data_dir="D", out="Z", run_dir="R")
    assert argv[:10] == ["train", "--model", "resnet20", "--model", "inresnet20", "--lam", "learned,0.5", "--seed",
                         "1,2", "--recipe"]
    assert argv[10:] == ["paper", "--amp", "--device", "cuda", "--data-dir", "D", "--out", "Z", "--run-dir", "R",
                         "--data-label", "CIFAR-10 (JPEG copy)"]
    one = train_argv([Member("inresnet20", 0.5, 1)], _settings(), device="cpu", data_dir="D", out="Z", run_dir="R",
                     resume=True)
    assert one[:7] == ["train", "--model", "inresnet20", "--lam", "0.5", "--seed", "1"] and one[-1] == "--resume"
    with pytest.raises(BadInput, match="not one product"):
        train_argv([Member("inresnet20", 0.5, 1), Member("lambda_inresnet20", None, 1)], _settings(), device="cpu",
                   data_dir="D", out="Z", run_dir="R")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('name = "toy"', 'name = "toy"\nextra = 1'), "unknown key extra"),
    (lambda t: t.replace('needs = ["fam"]', 'needs = ["nope"]'), "needs 'nope', which is not a job defined above it"),
    (lambda t: t.replace('models = ["inresnet20"]', 'models = ["resnet20"]'), "a fixed λ applies to damped models"),
    (lambda t: t.replace("batch_size = 20\n", 'batch_size = 20\nout = "x"\n'), "out is set by the campaign"),
    (lambda t: t.replace('checks = false', 'checks = false\nsplit = ["layers"]'), "unknown axis layers"),
    (lambda t: t.replace('recipe = "fast"', 'recipe = "slow"', 1), "unknown recipe 'slow'"),
    (lambda t: t.replace('lams = [0.5]\nseeds = [1]', 'seeds = [0]').replace('models = ["inresnet20"]',
                                                                            'models = ["resnet20"]'),
     "resnet20 is trained by job fam and job late"),
])
def test_plan_errors_are_one_line(tmp_path, edit, message):
    plan = toy_plan(tmp_path / "plan.toml", tmp_path / "t.py")
    plan.write_text(edit(plan.read_text()))
    with pytest.raises(BadInput, match=message):
        load_plan(plan)


def test_committed_plan_follows_issue_23():
    """configs/campaign_gpu.toml keeps issue 23's order: depth-20 family seed 0 (replacing the CPU weights) and its
    λ study on 10k images, then seeds 1 and 2, depth 110, the AutoAttack cross-check, depth 56 × 3 seeds."""
    from robench.attacks import list_attacks

    if "autoattack_art" not in list_attacks():
        pytest.skip("autoattack_art (the ART composition's own name) comes with the engine branch")
    plan = load_plan(ROOT / "configs" / "campaign_gpu.toml").validate_specs()
    jobs = plan.ordered()
    assert [j.name for j in jobs if j.kind == "train"] == ["d20-s0", "d20-s1", "d20-s2", "d110", "d56-s0", "d56-s1",
                                                           "d56-s2"]
    d20 = plan.job("d20-s0")
    assert sorted(m.stem for m in d20.members()) == sorted(
        ["resnet20", "inresnet20", "inresnet20__lam0.25", "inresnet20__lam0.5", "inresnet20__lam0.75",
         "inresnet20__lam1", "lambda_inresnet20", "lmresnet20"])
    assert d20.replaces and plan.job("d110").replaces and not plan.job("d20-s1").replaces
    assert {m.tag for m in plan.job("d20-s2").members()} == {"s2"}
    assert all(j.train.recipe == "paper" for j in jobs if j.kind == "train")
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
    assert step_ms(None, p, est, 12, 1.0, 128) == (3.0, "default")
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


def test_campaign_commands_show_the_plan_and_refuse_bad_input_in_one_line(tmp_path, capsys):
    from robench.cli import main

    plan = toy_plan(tmp_path / "plan.toml", tmp_path / "t.py")
    with pytest.raises(SystemExit) as e:
        main(["campaign", "show", str(plan)])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "[p1] fam.p1 (pending): 1 members: robench train --model resnet20 --seed 0" in out
    assert "[p2] late.p1 (pending): 1 members: robench train --model inresnet20 --lam 0.5 --seed 1" in out
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
