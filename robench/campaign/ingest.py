"""``robench campaign ingest RETURNED_DIR``: verify on the CPU what a GPU window returned, install what
passes, and keep the state for the next window.

A checkpoint is installed into the zoo folder only when all of these hold:
- its bundle is the file ``campaign.json`` lists (sha256), and holds exactly the pack's members;
- it loads (:func:`model_zoo.load_entry`: weights sha256, architecture header, finite tensors) and its
  weights and card are the ones the window recorded;
- its card is the packed trainer's, complete (:data:`CARD_FIELDS`) and the one the plan asked for:
  ``training.trainer == "packed"``, ``training.pack`` (the task's members, in order), ``training.precision``
  (the job's ``amp``), ``training.recipe`` (the job's recipe, epochs and batch size), ``training.seed`` (the
  member's), ``training.device`` (a GPU when the window ran on one), ``dataset.n_train`` (the job's
  ``n_train`` or the window's training split), ``dataset.test_batch_sha256`` (the local test split's),
  ``metrics.test_acc`` and ``metrics.n_test`` (the local split's size); the card's model, λ and tag are
  the member's, so a seed-0 member installs under the untagged name (replacing the shipped checkpoint
  only with ``replaces = true``) and seed s under ``NAME.s<s>``;
- its clean accuracy on the local test split, evaluated on the CPU with :func:`robench.evaluate`, equals
  the card's within one image in a thousand;
- the zoo has no other checkpoint of that name, unless the plan's job says ``replaces = true``.
An eval job's tables are installed (``OUT.parquet/.csv``, ``OUT_checks.*``) only when every row was made
on the local data and with the weights the zoo now holds. Files the state does not list are refused.
Refused or missing outputs put their task back to pending in ``CARRY/state/campaign.json`` (the next
window redoes it); a half-done task's returned run folder is kept there for the next window to resume.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from robench.campaign.outdir import extract_bundle
from robench.campaign.plan import Plan, Task, load_plan
from robench.campaign.state import load_state, summarise, to_json
from robench.errors import BadInput
from robench.fileio import atomic_write_group, atomic_write_text, sha256_file
from robench.packed import Member

TOLERANCE = 1 / 1000  # accuracy: within one image in a thousand of the card's
# what the packed trainer writes on every card (robench.train._export) and ingest requires
CARD_FIELDS = ("training.trainer", "training.pack", "training.precision", "training.recipe.name",
               "training.recipe.epochs", "training.recipe.batch_size", "training.seed", "training.device",
               "dataset.test_batch_sha256", "dataset.n_train", "metrics.test_acc", "metrics.n_test")


@dataclasses.dataclass
class IngestReport:
    installed: list[Path] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    state_path: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.refused


def _get(d: dict, dotted: str) -> Any:
    v: Any = d
    for part in dotted.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return None if v == "" else v


def expected_precision(amp: bool) -> str:
    """The card's ``training.precision`` for a job's ``amp`` (the packed trainer's spelling; bf16 autocast on
    the GPU, where the trainer refuses float16)."""
    return "bfloat16-autocast" if amp else "fp32"


def card_problems(card, member: Member, task: Task, *, test_sha: str, n_test: int, n_train: int | None,
                  gpu: bool) -> list[str]:
    """What makes a card incomplete or not the one the plan asked for (empty: complete): the packed
    trainer's card of ``member``, trained in ``task``'s pack with its job's recipe, epochs, batch size and
    precision, on the local data."""
    raw = dataclasses.asdict(card)
    missing = [f for f in CARD_FIELDS if _get(raw, f) is None]
    if missing:
        return [f"card lacks {', '.join(missing)}"]
    t, tr = raw["training"], task.job.train
    problems = []
    if (card.name, card.lam, card.tag) != (member.model, member.lam, member.tag):
        problems.append(f"card is {card.name} λ={card.lam} tag={card.tag}, not {member.id}")
    if t["trainer"] != "packed":
        problems.append(f"card says trainer {t['trainer']!r}, not the packed trainer's")
    pack = [m.id for m in task.members()]
    if t["pack"] != pack:
        problems.append(f"card says pack {t['pack']}, the plan {pack}")
    if t["seed"] != member.seed:
        problems.append(f"card says seed {t['seed']}, the plan {member.seed}")
    for key, want in (("name", tr.recipe), ("epochs", tr.epochs_()), ("batch_size", tr.batch())):
        if t["recipe"][key] != want:
            problems.append(f"card says recipe {key} {t['recipe'][key]!r}, the plan {want!r}")
    if t["precision"] != expected_precision(tr.amp):
        problems.append(f"card says precision {t['precision']!r}, the plan's amp = {str(tr.amp).lower()} is "
                        f"{expected_precision(tr.amp)!r}")
    if gpu and not str(t["device"]).startswith("cuda"):
        problems.append(f"the window ran on a GPU but the card says device {t['device']!r}")
    known = [x for x in (tr.n_train, n_train) if x is not None]
    if known and raw["dataset"]["n_train"] != min(known):
        problems.append(f"card says {raw['dataset']['n_train']} training images, the plan {min(known)}")
    if raw["dataset"]["test_batch_sha256"] != test_sha:
        problems.append(f"trained against test batch {raw['dataset']['test_batch_sha256'][:12]}…, the local split is "
                        f"{test_sha[:12]}… (other data)")
    if raw["metrics"]["n_test"] != n_test:
        problems.append(f"card's accuracy is on {raw['metrics']['n_test']} images, the local test split has {n_test}")
    return problems


def cpu_accuracy(model, name: str, data_dir, n: int, threads: int | None) -> int:
    """Correct predictions on the first ``n`` local test images, on the CPU through robench.evaluate."""
    import robench

    df = robench.evaluate(model=model, name=name, dataset="cifar10", data_dir=data_dir, n=n, batch_size=1000,
                          device="cpu", threads=threads, progress=False)
    return int(df.loc[df["kind"] == "clean", "correct"].iloc[0])


def _copy_together(pairs: list[tuple[Path, Path]], what: str) -> None:
    """Copy each (source, destination) pair, the destinations of one folder changing as one
    (:func:`robench.fileio.atomic_write_group`, as the zoo and the table writer write them)."""
    atomic_write_group([(dst, lambda tmp, src=src: shutil.copyfile(src, tmp)) for src, dst in pairs], what=what)


def _install(src_stem: Path, zoo: Path, stem: str) -> None:
    _copy_together([(src_stem.parent / (src_stem.name + ext), zoo / f"{stem}{ext}")
                    for ext in (".safetensors", ".json")], "checkpoint")


class Ingest:
    def __init__(self, returned: Path, plan: Plan, *, data_dir, zoo: Path, root: Path, carry: Path,
                 threads: int | None, force: bool, log: Callable[[str], None]) -> None:
        from robench.data import load_dataset

        self.returned, self.plan, self.zoo, self.root, self.carry = returned, plan, zoo, root, carry
        self.threads, self.force, self.log = threads, force, log
        self.state = load_state(returned / "campaign.json", plan)
        self.test = load_dataset("cifar10", data_dir)
        self.data_dir = data_dir
        self.report = IngestReport()
        self.scratch = Path(tempfile.mkdtemp(prefix="robench-ingest-"))

    def refuse(self, task_id: str, what: str, why: str) -> None:
        self.report.refused.append((what, why))
        self.log(f"REFUSED {what}: {why}")
        rec = self.state["tasks"].get(task_id)
        if rec is not None and rec.get("status") == "done":
            rec.update(status="pending", reason=f"refused at ingest ({why}); runs again", files=[], outputs={})

    def _bundle(self, task_id: str, rec: dict, key: str = "files") -> list[Path] | None:
        """The task's returned files when all are here and intact; None when none is here."""
        files = rec.get(key) or []
        paths = [self.returned / f["name"] for f in files]
        present = [p.is_file() for p in paths]
        if not files or not any(present):
            return None
        if not all(present):
            self.refuse(task_id, task_id, f"only some of its files came back ({', '.join(f['name'] for f in files)})")
            return []
        for p, f in zip(paths, files):
            if sha256_file(p) != f["sha256"]:
                self.refuse(task_id, p.name, "its sha256 is not the one campaign.json recorded (damaged or replaced)")
                return []
        return paths

    def _window(self, rec: dict) -> dict:
        return next((x for x in self.state["windows"] if x.get("window") == rec.get("window")), {})

    def window_on_gpu(self, rec: dict) -> bool:
        return str(self._window(rec).get("device", "cpu")) != "cpu"

    def window_n_train(self, rec: dict) -> int | None:
        """The training images the window had (its data step), or None when it did not say."""
        n = ((self._window(rec).get("steps") or {}).get("data") or {}).get("n_train")
        return n if isinstance(n, int) and not isinstance(n, bool) else None

    def train(self, task: Task, rec: dict) -> None:
        import model_zoo

        paths = self._bundle(task.id, rec)
        if paths is None:
            missing = [s for s, o in (rec.get("outputs") or {}).items()
                       if not ((self.zoo / f"{s}.json").is_file()
                               and model_zoo.ModelCard.from_file(self.zoo / f"{s}.json").weights_sha256
                               == o.get("weights_sha256"))]
            if missing:
                self.report.notes.append(f"{task.id} (window {rec.get('window')}): its checkpoints are not in this "
                                         f"folder nor installed ({', '.join(missing)}); ingest that window's folder")
            return
        if not paths:
            return
        dest = self.scratch / task.id
        names = extract_bundle(paths, dest)
        members = task.members()
        expected = {f"{m.id}{ext}" for m in members for ext in (".safetensors", ".json")}
        if set(names) != expected:
            extra, lack = sorted(set(names) - expected), sorted(expected - set(names))
            self.refuse(task.id, task.id, f"bundle holds {', '.join(extra) or 'nothing extra'} beyond the pack and "
                                          f"lacks {', '.join(lack) or 'nothing'}")
            return
        gpu = self.window_on_gpu(rec)
        for m in members:
            self.member(task, rec, m, dest / m.id, gpu)

    def member(self, task: Task, rec: dict, m: Member, stem_path: Path, gpu: bool) -> None:
        import model_zoo

        what = f"{m.id} ({task.id})"
        out = (rec.get("outputs") or {}).get(m.id) or {}
        try:
            entry = model_zoo.load_entry(stem_path)
        except BadInput as e:
            return self.refuse(task.id, what, str(e))
        card = entry.card
        if card.weights_sha256 != out.get("weights_sha256") or entry.card_sha256 != out.get("card_sha256"):
            return self.refuse(task.id, what, "weights or card differ from what the window recorded")
        problems = card_problems(card, m, task, test_sha=self.test.sha256, n_test=len(self.test),
                                 n_train=self.window_n_train(rec), gpu=gpu)
        if problems:
            return self.refuse(task.id, what, "; ".join(problems))
        n = len(self.test)
        correct = cpu_accuracy(entry.model, m.id, self.data_dir, n, self.threads)
        acc = float(card.metrics["test_acc"])
        if abs(correct - acc * n) > TOLERANCE * n + 1e-6:
            return self.refuse(task.id, what, f"CPU accuracy {correct}/{n} = {correct / n:.4f}, the card says "
                                              f"{acc:.4f} (more than one image in a thousand apart)")
        target = self.zoo / f"{m.id}.json"
        if target.is_file():
            old = model_zoo.ModelCard.from_file(target)
            if old.weights_sha256 == card.weights_sha256:
                self.report.kept.append(m.id)
                self.log(f"kept {m.id}: already installed")
                return
            if not task.job.replaces:
                return self.refuse(task.id, what, f"{target} holds other weights and job {task.job.name} does not "
                                                  "replace (replaces = true in the plan)")
        _install(stem_path, self.zoo, m.id)
        model_zoo.load_entry(self.zoo / m.id)  # the installed copy verifies too
        self.report.installed += [self.zoo / f"{m.id}.safetensors", self.zoo / f"{m.id}.json"]
        self.log(f"installed {m.id}: CPU accuracy {correct}/{n}, card {acc:.4f}, trainer "
                 f"{card.training.get('trainer')}, {card.training.get('device')}")

    def expected_sha(self, model: str, lam) -> str | None:
        import math

        import model_zoo

        lam = None if lam is None or (isinstance(lam, float) and math.isnan(lam)) or \
            not model_zoo.model_info(model).takes_lam else float(lam)
        card = self.zoo / f"{model_zoo.zoo_stem(model, lam)}.json"
        return model_zoo.ModelCard.from_file(card).weights_sha256 if card.is_file() else None

    def eval(self, task: Task, rec: dict) -> None:
        from robench.results import read_table, table_paths

        paths = self._bundle(task.id, rec)
        if paths is None:
            self.report.notes.append(f"{task.id} (window {rec.get('window')}): its tables are not in this folder")
            return
        if not paths:
            return
        dest = self.scratch / task.id
        names = set(extract_bundle(paths, dest))
        allowed = {"results.parquet", "results.csv", "checks.parquet", "checks.csv"}
        if "results.parquet" not in names or names - allowed:
            return self.refuse(task.id, task.id, f"bundle holds {', '.join(sorted(names))}; expected results.* and "
                                                 "checks.*")
        try:
            df = read_table(dest / "results.parquet")
        except BadInput as e:
            return self.refuse(task.id, task.id, str(e))
        for (model, lam), rows in df[df["kind"] != "worst_case"].groupby(["model", "lam"], dropna=False):
            want = self.expected_sha(str(model), lam)
            got = set(rows["weights_sha256"].dropna().astype(str))
            if want is None or got != {want}:
                return self.refuse(task.id, task.id, f"rows of {model} were made with weights {', '.join(sorted(got))[:40]}…, "
                                                     f"the zoo holds {want or 'nothing'}; install its checkpoints first")
        data = set(df.loc[df["dataset"] == "cifar10", "data_sha256"].dropna().astype(str))
        if data != {self.test.sha256}:
            return self.refuse(task.id, task.id, "rows were made on other data than the local test split")
        out = self.root / task.out
        pairs = [("results", out)] + ([("checks", out.with_name(out.name + "_checks"))] if "checks.parquet" in names
                                      else [])
        for src, stem in pairs:
            for s, d in zip(table_paths(dest / src), table_paths(stem)):
                if not s.is_file():
                    continue
                if d.is_file() and sha256_file(d) != sha256_file(s) and not self.force:
                    return self.refuse(task.id, str(d), "exists with other content; pass --force to replace it")
        for src, stem in pairs:
            copies = [(s, d) for s, d in zip(table_paths(dest / src), table_paths(stem)) if s.is_file()]
            _copy_together(copies, "results table")
            self.report.installed += [d for _, d in copies]
        self.log(f"installed {task.id}'s tables: {out}.parquet/.csv ({len(df)} rows)")

    def keep_run_files(self, task: Task, rec: dict) -> None:
        paths = self._bundle(task.id, rec, "run_files")
        if not paths:
            return
        (self.carry / "state").mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copyfile(p, self.carry / "state" / p.name)
        self.report.notes.append(f"{task.id} is half done: its run folder is kept in {self.carry / 'state'} for the "
                                 "next window")

    def run(self) -> IngestReport:
        listed = {"campaign.json", "campaign.log"} | {f["name"] for r in self.state["tasks"].values()
                                                      for k in ("files", "run_files") for f in r.get(k) or []}
        for p in sorted(self.returned.iterdir()):
            if p.name not in listed:
                self.report.refused.append((p.name, "not listed in campaign.json"))
                self.log(f"REFUSED {p.name}: not listed in campaign.json")
        for w in self.state["windows"]:
            if w.get("ended") is None:
                self.report.notes.append(f"window {w.get('window')} did not finish (stopped or killed); what it "
                                         "wrote before is complete")
            elif w.get("status") != "finished":
                self.report.notes.append(f"window {w.get('window')}: {w.get('status')}: {w.get('reason')}")
            tests = (w.get("steps") or {}).get("cuda_tests") or {}
            if tests.get("status") not in (None, "passed", "skipped"):
                self.report.notes.append(f"window {w.get('window')}: cuda tests {tests.get('status')} "
                                         f"{tests.get('failed') or ''}")
        try:
            for task in self.plan.tasks():
                rec = self.state["tasks"].get(task.id)
                if rec is None:
                    continue
                if rec.get("fingerprint") != task.fingerprint:
                    self.report.notes.append(f"{task.id}: made by another version of job {task.job.name}; ignored")
                    continue
                if rec.get("status") == "done":
                    (self.train if task.job.kind == "train" else self.eval)(task, rec)
                elif rec.get("status") == "partial":
                    self.keep_run_files(task, rec)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        summarise(self.state, self.plan)
        state_dir = self.carry / "state"
        state_dir.mkdir(parents=True, exist_ok=True)
        keep = {f["name"] for r in self.state["tasks"].values() if r.get("status") == "partial"
                for f in r.get("run_files") or []}
        for p in state_dir.glob("run-*"):
            if p.name not in keep:
                p.unlink()
        self.report.state_path = state_dir / "campaign.json"
        atomic_write_text(self.report.state_path, to_json(self.state))
        return self.report


def ingest(returned: str | os.PathLike, *, plan: str | os.PathLike, data_dir=None, zoo: str | os.PathLike | None = None,
           root: str | os.PathLike = ".", carry: str | os.PathLike = ".carry", threads: int | None = None,
           force: bool = False, log: Callable[[str], None] = print) -> IngestReport:
    """Verify and install what one window returned (see the module docstring)."""
    from model_zoo.checkpoint import SHIPPED_ZOO

    returned = Path(returned)
    if not (returned / "campaign.json").is_file():
        raise BadInput(f"{returned} holds no campaign.json; give the folder a `robench campaign run` returned")
    p = load_plan(plan)
    p.validate_specs()
    return Ingest(returned, p, data_dir=data_dir, zoo=Path(zoo) if zoo is not None else SHIPPED_ZOO,
                  root=Path(root), carry=Path(carry), threads=threads, force=force, log=log).run()


def commit_advice(report: IngestReport, root: Path) -> list[str]:
    """What to commit after an ingest, and what follows."""
    if not report.installed:
        return ["nothing new to commit"]
    rel = sorted({os.path.relpath(p, root) for p in report.installed})
    return [f"commit: git add {' '.join(rel)}",
            "then refresh the CI baselines for the new weights: bash .ci/regression --update (and commit "
            "results/baseline_* with a message that says why the numbers moved)"]
