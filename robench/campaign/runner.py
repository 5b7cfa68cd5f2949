"""``robench campaign run``: everything one GPU window needs, in one command on the GPU machine.

In order, against one deadline (``deadline_s`` from the start of the process; ``estimates.margin_s`` of it
kept for the last files):

1. read the plan and the state the earlier windows returned (``CARRY/state/campaign.json``, put there by
   ``robench campaign ingest``); write ``campaign.json`` at once, so even an early kill returns a state;
2. install the carried wheels (``CARRY/wheels/*.whl`` with pip ``--no-index --no-deps --target``; the
   sources in ``CARRY/wheels/src``) for this process and the commands it starts;
3. unpack the carried data (``CARRY/tools/cifar10_from_jpeg.py`` on ``CARRY/data/cifar10-jpeg.tar.gz``; or
   the test split alone from ``cifar10-jpeg-test.tar.gz``, refused unless it is the test batch ``prepare``
   checked, and then train tasks wait), or use ``data_dir``; fingerprint it; a state made on other data is
   refused;
4. preflight: versions, code and data fingerprints, ceilings (CUDA only);
5. the ``cuda`` tests (``python -m pytest -m cuda``, bounded; skipped when an earlier window passed them
   with the same code and versions);
6. the probe (≤ its budget; reused likewise);
7. the plan's tasks in priority order: a finished task is kept; a task waits for the jobs it needs; a task
   starts only if its estimate fits the time left and its files fit the returned-file slots; a half-done
   task resumes from its returned run folder (same code and versions) or starts again. Train packs run
   ``robench train`` (:func:`robench.campaign.plan.train_argv`), eval jobs ``robench sweep``; each is
   stopped at the deadline, and what it wrote is kept as a half-done task.

Everything goes to ``out`` as it finishes (:mod:`robench.campaign.outdir`): ``campaign.json``,
``campaign.log`` (the log's tail), ``zoo-TASK.tar.gz`` (checkpoints: safetensors + card per member),
``eval-TASK.tar.gz`` (the sweep's tables), ``run-TASK.tar.gz`` (a half-done task's run folder).
"""
from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from robench.campaign import outdir, probe as probe_mod
from robench.campaign.carried_data import TARBALL, TEST_TARBALL, unpack_test_split
from robench.campaign.outdir import OutDir, extract_bundle, files_under, write_bundle
from robench.campaign.plan import TEST_SIZE, TRAIN_SIZE, Plan, Task, load_plan, train_argv
from robench.campaign.state import (code_fingerprint, data_fingerprint, load_state, new_state, now, repo_root,
                                    summarise, to_json, versions, versions_fingerprint)
from robench.errors import BadInput

LOG_TAIL_BYTES = 256 << 10
PYTEST_SUMMARY = ("passed", "failed", "skipped", "deselected", "error", "errors", "xfailed", "xpassed")


@dataclasses.dataclass
class RunOptions:
    plan: str | os.PathLike
    out: str | os.PathLike
    deadline_s: float = 540.0
    carry: str | os.PathLike = ".carry"
    work: str | os.PathLike | None = None
    device: str = "auto"
    data_dir: str | os.PathLike | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)


class Log:
    """Lines with the seconds since the start, printed at once, kept whole in the work folder and as a
    tail for ``campaign.log``."""

    def __init__(self, started: float, path: Path, echo: Callable[[str], None]) -> None:
        self.started, self.path, self.echo = started, path, echo
        self.lines: collections.deque[str] = collections.deque()
        self.size = 0
        self.lock = threading.Lock()

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {msg}"
        with self.lock:
            self.echo(line)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            self.lines.append(line)
            self.size += len(line) + 1
            while self.size > LOG_TAIL_BYTES and len(self.lines) > 1:
                self.size -= len(self.lines.popleft()) + 1

    def tail(self) -> str:
        with self.lock:
            return "\n".join(self.lines) + "\n"


def run_command(argv: list[str], *, cwd: Path, env: dict, timeout_s: float, log: Callable[[str], None],
                prefix: str = "") -> tuple[int | None, float, list[str]]:
    """Run ``argv`` in its own process group, its output lines into ``log``; stopped (TERM, then KILL)
    after ``timeout_s``. → (exit code, or None when stopped; seconds; the last 40 lines)."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    t0 = time.monotonic()
    if timeout_s <= 0:
        return None, 0.0, ["not started: no time left"]
    # its own process group (so a stop reaches its children), but not a new session: if this command is
    # killed, the GPU machine ends what it started too
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", **group)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log(prefix + line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        rc = None
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5)
    return rc, time.monotonic() - t0, list(tail)


def pytest_summary(lines: list[str]) -> dict[str, int]:
    """Counts from pytest's last summary line (``3 passed, 1 skipped in 2.1s``)."""
    import re

    for line in reversed(lines):
        found = re.findall(r"(\d+) (" + "|".join(PYTEST_SUMMARY) + r")\b", line)
        if found:
            return {k: int(v) for v, k in found}
    return {}


def toml_text(values: dict[str, Any]) -> str:
    """A sweep config as TOML (strings, numbers, booleans, lists of them, and attack_params tables)."""
    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v) if not isinstance(v, float) or math.isfinite(v) else json.dumps(str(v))
        return json.dumps(str(v), ensure_ascii=False)

    lines, tables = [], []
    for k, v in values.items():
        if v is None or k == "attack_params":
            continue
        if k == "lams":
            v = ["learned" if x is None else x for x in v]
        lines.append(f"{k} = [{', '.join(scalar(x) for x in v)}]" if isinstance(v, (list, tuple)) else
                     f"{k} = {scalar(v)}")
    for attack, params in (values.get("attack_params") or {}).items():
        tables.append(f"\n[attack_params.{attack}]\n" + "\n".join(f"{k} = {scalar(v)}" for k, v in params.items()))
    return "\n".join(lines) + "\n" + "".join(tables) + ("\n" if tables else "")


class Campaign:
    """One window's run (see the module docstring)."""

    def __init__(self, opts: RunOptions, echo: Callable[[str], None] = print) -> None:
        self.opts = opts
        self.root = repo_root()
        self.plan: Plan = load_plan(opts.plan)
        self.carry = Path(opts.carry)
        self.out = OutDir(opts.out)
        work = Path(opts.work) if opts.work is not None else Path(tempfile.mkdtemp(prefix="robench-campaign-"))
        if work.exists() and any(work.iterdir()):
            raise BadInput(f"--work {work} is not empty; a window starts from an empty work folder")
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.log = Log(opts.started, work / "campaign.log", echo)
        state_path = self.carry / "state" / "campaign.json"
        self.state = load_state(state_path, self.plan) if state_path.is_file() else new_state(self.plan)
        self.state["plan"] = {"name": self.plan.name, "sha256": self.plan.sha256, "path": str(self.plan.path)}
        self.previous = list(self.state["windows"])
        self.window: dict[str, Any] = {"window": len(self.previous) + 1, "started": now(), "ended": None,
                                       "status": "running", "deadline_s": opts.deadline_s, "steps": {},
                                       "tasks_run": []}
        self.state["windows"].append(self.window)
        self.device = None
        self.data_dir: Path | None = None
        self.n_train, self.n_test = TRAIN_SIZE, TEST_SIZE
        self.train_data = True  # False when only the test split was carried (train tasks then wait)
        self.probe: dict | None = None
        self.site = work / "site"
        self.env = dict(os.environ)
        home = work / "home"
        home.mkdir()
        # this process and the commands it starts share one zoo: the window's own checkpoints (user zoo),
        # then the repository's (the shipped zoo, where ingest installs what earlier windows made);
        # run() puts ROBENCH_HOME and sys.path back as they were when it ends
        self._restore = (os.environ.get("ROBENCH_HOME"), list(sys.path))
        os.environ["ROBENCH_HOME"] = str(home)
        self.env.update(ROBENCH_HOME=str(home), ROBENCH_PROGRESS="0", TQDM_DISABLE="1", PYTHONUNBUFFERED="1",
                        GIT_PYTHON_REFRESH="quiet")
        self._set_pythonpath([])

    # -- bookkeeping -----------------------------------------------------------------------------------
    def remaining(self) -> float:
        return self.opts.deadline_s - (time.monotonic() - self.opts.started) - self.plan.estimates.margin_s

    def save(self) -> None:
        self.window["elapsed_s"] = round(time.monotonic() - self.opts.started, 1)
        summarise(self.state, self.plan)
        self.out.write_text("campaign.json", to_json(self.state))
        self.out.write_text("campaign.log", self.log.tail())

    def step(self, name: str, record: dict) -> None:
        self.window["steps"][name] = record
        self.save()

    def _set_pythonpath(self, extra: list[Path]) -> None:
        parts = [str(p) for p in extra] + [str(self.root)]
        old = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = os.pathsep.join(parts + ([old] if old else []))

    def _earlier(self, step: str, ok: Callable[[dict], bool]) -> dict | None:
        """The latest earlier window whose ``step`` record passes ``ok`` with this window's fingerprints."""
        fp = self.window.get("fingerprints", {})
        for w in reversed(self.previous):
            wfp = w.get("fingerprints", {})
            rec = (w.get("steps") or {}).get(step)
            if rec and ok(rec) and wfp.get("code") == fp.get("code") and wfp.get("versions") == fp.get("versions"):
                return {"window": w.get("window"), **rec}
        return None

    # -- steps -----------------------------------------------------------------------------------------
    def install_wheels(self) -> None:
        wheels = self.carry / "wheels"
        found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        src = wheels / "src"
        if not found:
            self.step("wheels", {"status": "skipped", "reason": f"no wheels in {wheels}"})
        else:
            argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(self.site), *map(str, found)]
            rc, wall, tail = run_command(argv, cwd=self.root, env=self.env, timeout_s=min(180.0, self.remaining()),
                                         log=self.log, prefix="pip: ")
            if rc != 0:
                raise BadInput(f"installing the carried wheels failed (exit {rc}): {' | '.join(tail[-3:])}")
            self.step("wheels", {"status": "ok", "wheels": [p.name for p in found], "seconds": round(wall, 1)})
        extra = [p for p in (self.site, src) if p.is_dir()]
        for p in reversed(extra):
            sys.path.insert(0, str(p))
        importlib.invalidate_caches()
        self._set_pythonpath(extra)

    def unpack_data(self) -> None:
        t0 = time.monotonic()
        tarball = self.carry / "data" / TARBALL
        test_only = self.carry / "data" / TEST_TARBALL
        manifest = self._manifest()
        expected = (manifest.get("data") or {}).get("test_batch_sha256")
        if self.opts.data_dir is not None:
            self.data_dir = Path(self.opts.data_dir).resolve()
            how, tarball = "given", None
        else:
            converter = self.carry / "tools" / "cifar10_from_jpeg.py"
            if not (tarball.is_file() or test_only.is_file()) or not converter.is_file():
                raise BadInput(f"no carried data: {tarball} (or {test_only.name}) and {converter} are made by "
                               f"`robench campaign prepare {self.carry}` (or pass --data-dir)")
            self.data_dir = self.work / "data"
            if tarball.is_file():
                rc, wall, tail = run_command([sys.executable, str(converter), str(self.data_dir)], cwd=self.root,
                                             env=self.env, timeout_s=min(300.0, self.remaining()), log=self.log,
                                             prefix="data: ")
                if rc != 0:
                    raise BadInput(f"unpacking {tarball} failed (exit {rc}): {' | '.join(tail[-3:])}")
                how = "unpacked"
            else:
                # the test split alone: written byte for byte as the converter writes it, which prepare checked;
                # a test batch other than the one prepare recorded is refused (nothing could be verified)
                n_train = (manifest.get("data") or {}).get("n_train")
                if not expected or not isinstance(n_train, int):
                    raise BadInput(f"{test_only} needs the manifest prepare writes with it (the test batch's sha256 "
                                   "and the tarball's training image count); run `robench campaign prepare` again")
                unpack_test_split(test_only, converter, self.data_dir, n_train=n_train)
                how, tarball = "unpacked (test split only)", test_only
        from robench.data import load_cifar

        self.train_data = how != "unpacked (test split only)"
        self.n_train = len(load_cifar("cifar10", self.data_dir, "train")) if self.train_data else 0
        self.n_test = len(load_cifar("cifar10", self.data_dir, "test"))
        fp = data_fingerprint(self.data_dir, tarball)
        rec = {"status": "ok", "how": how, "n_train": self.n_train, **fp, "seconds": round(time.monotonic() - t0, 1),
               "matches_prepared_copy": None if expected is None else expected == fp["test_batch_sha256"]}
        self.window["fingerprints"] = {**self.window.get("fingerprints", {}), "data": fp}
        if expected is not None and expected != fp["test_batch_sha256"] and not self.train_data:
            self.step("data", {**rec, "status": "refused"})
            raise BadInput(f"the test split unpacked from {test_only.name} (sha256 {fp['test_batch_sha256'][:12]}…) "
                           f"is not the test batch prepare checked ({expected[:12]}…); carry the whole tarball")
        if expected is not None and expected != fp["test_batch_sha256"]:
            self.log(f"WARNING: the unpacked test batch (sha256 {fp['test_batch_sha256'][:12]}…) differs from the "
                     f"copy prepare recorded ({expected[:12]}…): checkpoints made here will not verify against it")
        for w in self.previous:
            old = (w.get("fingerprints") or {}).get("data") or {}
            for k in ("test_batch_sha256", "train_sha256"):
                if old.get(k) and fp[k] and old[k] != fp[k]:
                    self.step("data", {**rec, "status": "refused"})
                    raise BadInput(f"the data differs from window {w.get('window')}'s ({k} {old[k][:12]}… → "
                                   f"{fp[k][:12]}…); the campaign would mix data sets. Carry the same tarball, or "
                                   "start a new campaign state")
        self.step("data", rec)

    def _manifest(self) -> dict:
        p = self.carry / "manifest.json"
        try:
            return json.loads(p.read_text()) if p.is_file() else {}
        except (OSError, ValueError):
            return {}

    def preflight(self) -> None:
        import torch

        from robench.devices import resolve_device

        self.device = resolve_device("cuda" if self.opts.device == "auto" and torch.cuda.is_available()
                                     else "cpu" if self.opts.device == "auto" else self.opts.device)
        from robench.machine import resolve_threads

        threads = resolve_threads(None)
        torch.set_num_threads(threads)  # the probe's threads; the commands it starts choose their own
        v = versions(self.device)
        v["threads"] = threads
        manifest = self._manifest()
        code = code_fingerprint(self.root)
        self.window["device"] = v["device"]
        self.window["fingerprints"] = {**self.window.get("fingerprints", {}), "code": code,
                                       "versions": versions_fingerprint(v)}
        rec: dict[str, Any] = {"versions": v, "code_fingerprint": code,
                               "prepared": {k: manifest.get(k) for k in ("git_sha", "code_fingerprint", "created")}}
        if manifest.get("code_fingerprint") and manifest["code_fingerprint"] != code:
            self.log("note: the code differs from the checkout `prepare` recorded (uncommitted or newer files)")
        for w in self.previous:
            for k in ("code", "versions"):
                if (w.get("fingerprints") or {}).get(k) not in (None, self.window["fingerprints"][k]):
                    self.log(f"note: {k} changed since window {w.get('window')}: its finished tasks are kept, its "
                             "half-done tasks start again")
        try:
            rec["ceilings"] = probe_mod.ceilings(self.device)
        except Exception as e:  # a ceiling is information, never a reason to lose the window
            rec["ceilings"] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        self.log(f"preflight: {v['device']}, torch {v['torch']}, CUDA {v['cuda']}, cuDNN {v['cudnn']}; ceilings "
                 f"{json.dumps(rec['ceilings'])}")
        self.step("preflight", rec)

    def cuda_tests(self) -> None:
        if not self.plan.cuda_tests.enabled:
            self.step("cuda_tests", {"status": "skipped", "reason": "disabled in the plan"})
            return
        earlier = self._earlier("cuda_tests", lambda r: r.get("status") == "passed")
        if earlier is not None:
            self.log(f"cuda tests: passed in window {earlier['window']} with this code and these versions; skipped")
            self.step("cuda_tests", {"status": "skipped", "reason": f"passed in window {earlier['window']}"})
            return
        argv = [sys.executable, "-m", "pytest", *self.plan.cuda_tests.args]
        timeout = min(self.plan.cuda_tests.timeout_s, self.remaining())
        rc, wall, tail = run_command(argv, cwd=self.root, env=self.env, timeout_s=timeout, log=self.log,
                                     prefix="pytest: ")
        counts = pytest_summary(tail)
        status = {None: "timeout", 0: "passed", 1: "failed", 5: "none collected"}.get(rc, "error")
        failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in tail if ln.startswith(("FAILED ", "ERROR "))]
        self.log(f"cuda tests: {status} {counts} in {wall:.0f} s")
        self.step("cuda_tests", {"status": status, "exit_code": rc, "counts": counts, "failed": failed,
                                 "seconds": round(wall, 1), "command": argv[1:]})

    def run_probe(self) -> None:
        if not self.plan.probe.enabled:
            self.step("probe", {"status": "skipped", "reason": "disabled in the plan"})
            return
        earlier = self._earlier("probe", lambda r: r.get("status") == "ok")
        if earlier is not None:
            self.probe = earlier.get("result")
            self.log(f"probe: reusing window {earlier['window']}'s numbers (same code and versions)")
            self.step("probe", {"status": "reused", "window": earlier["window"], "result": self.probe})
            return
        try:
            self.probe = probe_mod.run_probe(self.plan.probe, device=self.device, data_dir=self.data_dir,
                                             log=self.log)
            self.step("probe", {"status": "ok", "result": self.probe})
        except Exception as e:  # estimates fall back to the plan's defaults
            self.log(f"probe failed ({type(e).__name__}: {e}); the plan's default estimates apply")
            self.step("probe", {"status": "error", "error": f"{type(e).__name__}: {e}"})

    # -- tasks -----------------------------------------------------------------------------------------
    def estimate(self, task: Task) -> dict:
        job, p, est = task.job, self.plan.probe, self.plan.estimates
        if job.kind == "train":
            e = probe_mod.estimate_train(task.members(), job, probe=self.probe, settings=p, est=est,
                                         n_train=self.n_train, n_test=self.n_test)
        else:
            n = min(task.spec.n or self.n_test, self.n_test)
            e = probe_mod.estimate_eval(task.spec.validate(check_device=False), n=n, checks=job.checks,
                                        probe=self.probe, settings=p, est=est)
        if job.estimate_s is not None:
            e = {**e, "seconds": job.estimate_s, "source": "plan"}
        return e

    def slots_needed(self, task: Task) -> int:
        if task.job.kind != "train":
            return 1
        import model_zoo

        size = sum(model_zoo.model_info(m.model).params * 4.2 + (64 << 10) for m in task.members())
        return max(1, math.ceil(size / outdir.PART_BYTES))

    def record(self, task: Task) -> dict:
        rec = self.state["tasks"].get(task.id)
        if rec is not None and rec.get("fingerprint") != task.fingerprint:
            self.log(f"{task.id}: the plan's job changed since window {rec.get('window')}; it runs again")
            rec = None
        if rec is None:
            rec = {"job": task.job.name, "kind": task.job.kind, "fingerprint": task.fingerprint, "status": "pending",
                   "reason": "not started"}
            self.state["tasks"][task.id] = rec
        return rec

    def run_tasks(self) -> None:
        tasks = self.plan.tasks()
        for task in tasks:
            rec = self.record(task)
            if rec["status"] == "done":
                self.log(f"{task.id}: done in window {rec.get('window')}; kept")
                continue
            waiting = [n for n in task.job.needs
                       if any(self.state["tasks"].get(t.id, {}).get("status") != "done"
                              for t in tasks if t.job.name == n)]
            if waiting:
                rec["reason"] = f"waits for {', '.join(waiting)}"
                self.log(f"{task.id}: {rec['reason']}")
                continue
            if task.job.kind == "train" and not self.train_data:
                rec["reason"] = "needs the training data, which this window did not carry (prepare carried the test split)"
                self.log(f"{task.id}: {rec['reason']}")
                continue
            est = self.estimate(task)
            rec["estimate"] = est
            left = self.remaining()
            if not probe_mod.fits(est["seconds"], left):
                rec["reason"] = f"does not fit: estimated {est['seconds']:.0f} s ({est['source']}), {max(left, 0):.0f} s left"
                self.log(f"{task.id}: {rec['reason']}")
                continue
            need = self.slots_needed(task)
            if need > self.out.free_slots():
                rec["reason"] = f"no returned-file slot left (needs {need}, {self.out.free_slots()} free)"
                self.log(f"{task.id}: {rec['reason']}")
                continue
            self.log(f"{task.id}: starting (estimated {est['seconds']:.0f} s from the {est['source']}, {left:.0f} s left)")
            self.window["tasks_run"].append(task.id)
            try:
                (self.run_train if task.job.kind == "train" else self.run_eval)(task, rec)
            except BadInput as e:
                rec.update(status="failed", reason=str(e), window=self.window["window"])
                self.log(f"{task.id}: failed: {e}")
            except Exception as e:  # one task's bug must not cost the rest of the window
                rec.update(status="failed", reason=f"internal error: {type(e).__name__}: {e}",
                           window=self.window["window"])
                self.log(f"{task.id}: failed: {traceback.format_exc()}")
            self.save()

    def _resume_from(self, rec: dict, dest: Path) -> bool:
        """Unpack a half-done task's returned run folder into ``dest`` when it is there intact and was made
        with this code and these versions; → whether to resume."""
        files = rec.get("run_files") or []
        if rec.get("status") != "partial" or not files:
            return False
        fp = self.window["fingerprints"]
        if rec.get("code") != fp.get("code") or rec.get("versions") != fp.get("versions"):
            self.log("  its run folder was made with other code or versions: starting again")
            return False
        paths = [self.carry / "state" / f["name"] for f in files]
        from robench.fileio import sha256_file

        if not all(p.is_file() and sha256_file(p) == f["sha256"] for p, f in zip(paths, files)):
            self.log(f"  its run folder ({', '.join(f['name'] for f in files)}) is not in {self.carry / 'state'}: "
                     "starting again")
            return False
        extract_bundle(paths, dest)
        self.log(f"  resuming from {', '.join(f['name'] for f in files)}")
        return True

    def _finish(self, task: Task, rec: dict, rc: int | None, wall: float, tail: list[str], what: str,
                run_dir: Path) -> bool:
        """Common ending: → True when the command succeeded; otherwise records a half-done (stopped at the
        deadline, its run folder returned when it fits) or failed task."""
        fp = self.window["fingerprints"]
        rec.update(window=self.window["window"], wall_s=round(wall, 1), code=fp.get("code"),
                   versions=fp.get("versions"))
        if rc == 0:
            return True
        if rc is None:
            rec.update(status="partial", reason=f"stopped at the deadline after {wall:.0f} s", run_files=[])
            run_files = [(n, p) for n, p in files_under(run_dir) if not Path(n).name.startswith(".tmp")] \
                if run_dir.is_dir() else []
            if run_files:
                try:
                    rec["run_files"] = write_bundle(self.out, f"run-{task.id}", run_files)
                    rec["reason"] += "; run folder returned"
                except BadInput as e:
                    rec["reason"] += f"; run folder not returned ({e})"
            self.log(f"{task.id}: {rec['reason']}")
            return False
        last = next((ln for ln in reversed(tail) if ln.strip()), "")
        rec.update(status="failed", reason=f"{what} exited {rc}: {last.strip()[:300]}")
        self.log(f"{task.id}: {rec['reason']}")
        return False

    def run_train(self, task: Task, rec: dict) -> None:
        import model_zoo

        members = task.members()
        run_dir = self.work / "runs" / task.id
        zoo = self.work / "home" / "zoo"
        resume = self._resume_from(rec, run_dir)
        plan_file = self.work / "packs" / f"{task.id}.toml"
        plan_file.parent.mkdir(parents=True, exist_ok=True)
        argv = train_argv(members, task.job.train, plan_file=plan_file, device=self.device.type,
                          data_dir=self.data_dir, out=zoo, run_dir=run_dir, resume=resume)
        rec["command"] = ["robench", *argv]
        rec["members"] = [m.id for m in members]
        rc, wall, tail = run_command([sys.executable, "-m", "robench", *argv], cwd=self.root, env=self.env,
                                     timeout_s=self.remaining(), log=self.log, prefix=f"{task.id}: ")
        if not self._finish(task, rec, rc, wall, tail, "robench train", run_dir):
            return
        outputs, files = {}, []
        for m in members:
            stem = zoo / m.id
            try:
                entry = model_zoo.load_entry(stem)
            except BadInput as e:
                raise BadInput(f"robench train ended without a usable checkpoint of {m.id}: {e}") from None
            card = entry.card
            outputs[m.id] = {"model": m.model, "lam": m.lam, "seed": m.seed, "tag": m.tag,
                               "weights_sha256": card.weights_sha256, "card_sha256": entry.card_sha256,
                               "test_acc": card.metrics.get("test_acc"), "n_test": card.metrics.get("n_test")}
            files += [(f"{m.id}.safetensors", entry.path), (f"{m.id}.json", stem.parent / f"{m.id}.json")]
        rec["files"] = write_bundle(self.out, f"zoo-{task.id}", files)
        rec.update(status="done", reason="", outputs=outputs, run_files=[])
        accs = ", ".join(f"{s} {o['test_acc']}" for s, o in outputs.items())
        self.log(f"{task.id}: done in {wall:.0f} s ({accs}); returned {', '.join(f['name'] for f in rec['files'])}")

    def _check_dependencies(self, task: Task) -> None:
        """The checkpoints an eval job uses that the campaign trained must be the ones it recorded."""
        import model_zoo

        pairs = set(task.spec.validate(check_device=False).pairs())
        for need in task.job.needs:
            for tid, t in self.state["tasks"].items():
                if t.get("job") != need:
                    continue
                for stem, o in (t.get("outputs") or {}).items():
                    name = model_zoo.join_tag(o["model"], o.get("tag"))
                    if (name, o.get("lam")) not in pairs:
                        continue
                    card = model_zoo.load_card(name, lam=o.get("lam"))
                    if card is None or card.weights_sha256 != o["weights_sha256"]:
                        have = "nothing" if card is None else f"sha256 {card.weights_sha256[:12]}…"
                        raise BadInput(f"needs {stem} as {tid} made it (sha256 {o['weights_sha256'][:12]}…) but the "
                                       f"zoo has {have}; ingest window {t.get('window')}'s files first")

    def run_eval(self, task: Task, rec: dict) -> None:
        self._check_dependencies(task)
        store = self.work / "sweeps" / task.id
        resume = self._resume_from(rec, store)
        spec = task.spec.replace(data_dir=str(self.data_dir), device=self.device.type, out=str(store))
        config = self.work / "sweeps" / f"{task.id}.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(toml_text({k: v for k, v in spec.to_dict().items() if v is not None}), encoding="utf-8")
        argv = ["sweep", str(config)] + ([] if task.job.checks else ["--no-checks"])
        rec["command"] = ["robench", *argv]
        rec["resumed"] = resume
        rc, wall, tail = run_command([sys.executable, "-m", "robench", *argv], cwd=self.root, env=self.env,
                                     timeout_s=self.remaining(), log=self.log, prefix=f"{task.id}: ")
        if not self._finish(task, rec, rc, wall, tail, "robench sweep", store):
            return
        tables = [(n, store / n) for n in ("results.parquet", "results.csv", "checks.parquet", "checks.csv")
                  if (store / n).is_file()]
        rec["files"] = write_bundle(self.out, f"eval-{task.id}", tables)
        rec.update(status="done", reason="", run_files=[])
        self.log(f"{task.id}: done in {wall:.0f} s; returned {', '.join(f['name'] for f in rec['files'])}")

    # -- the whole window ------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            return self._run()
        finally:
            home, path = self._restore
            if home is None:
                os.environ.pop("ROBENCH_HOME", None)
            else:
                os.environ["ROBENCH_HOME"] = home
            sys.path[:] = path

    def _run(self) -> int:
        self.log(f"campaign {self.plan.name}: window {self.window['window']}, deadline {self.opts.deadline_s:.0f} s, "
                 f"out {self.out.path}, work {self.work}")
        self.save()
        status = 0
        try:
            self.install_wheels()
            self.plan.validate_specs()
            self.unpack_data()
            self.preflight()
            self.cuda_tests()
            self.run_probe()
            self.run_tasks()
            self.window["status"] = "finished"
        except BadInput as e:
            self.window.update(status="refused", reason=str(e))
            self.log(f"error: {e}")
            status = 1
        except Exception as e:  # recorded in campaign.json and the log tail that come back
            self.window.update(status="error", reason=f"{type(e).__name__}: {e}")
            self.log(f"error: {traceback.format_exc()}")
            status = 1
        self.window["ended"] = now()
        failed = [t for t, r in self.state["tasks"].items() if r.get("status") == "failed"]
        self.save()
        summarise(self.state, self.plan)
        problems = outdir.out_problems(self.out.path)
        for p in problems:
            self.log(f"WARNING: {self.out.path}: {p}")
        self.log(f"window {self.window['window']}: {len(self.state['done'])} of {len(self.plan.tasks())} tasks done, "
                 f"{len(self.state['remaining'])} remaining; returned {', '.join(self.out.files())}")
        for r in self.state["remaining"]:
            self.log(f"  remaining {r['task']}: {r['reason']}")
        self.save()
        return status or (1 if failed or problems else 0)


def run_campaign(opts: RunOptions, echo: Callable[[str], None] = print) -> int:
    """Run one window; → 0 when nothing failed (tasks may remain), 1 otherwise."""
    return Campaign(opts, echo).run()
