"""A campaign plan (``configs/campaign_gpu.toml``): the jobs one or more GPU windows run, in priority order.

The TOML file::

    name = "gpu-zoo"                      # a campaign's identity: returned state of another name is refused
    [data]        label = "CIFAR-10 (JPEG copy)"   # the cards' data label
    [cuda_tests]  enabled, args = ["-m", "cuda", "-q", "tests"], timeout_s = 150
    [probe]       model, train_batch, steps, warmup, ks, deep_model, deep_ks, amp, eval_n, eval_batch, budget_s
    [estimates]   train_overhead_s, eval_overhead_s, step_ms, pass_us, margin_s (used where the probe is missing)
    [[jobs]]      name, kind = "train" | "eval", priority (1 first), needs = [job names], estimate_s (optional)
      train:      recipe, amp, epochs, batch_size, n_train, replaces, and [[jobs.packs]] with
                  members = [{model, lam, seed}, …]: the packed trainer's [[members]] tables
                  (robench.packed.members_from_tables: each key a value or a list, λ only for damped models)
      eval:       out (the table's path in the repository), checks, split (a list of "models", "attacks",
                  "eps": one task per model / attack / ε, for grids too long for one window), and
                  [jobs.spec]: the keys of a sweep config except out, data_dir and device (the campaign's)

A train job is a list of *packs*; a pack is one ``robench train --plan`` call training its members
at once, any set of members of one depth (a member is :class:`robench.packed.Member`: model, λ, seed; its
``id`` is the zoo stem it is saved and installed under, its ``ref`` the name evaluation uses).
:func:`train_argv` is the one place that turns a pack's members into that command line and its plan
file. An eval job is one ``robench sweep``, or one per model / attack / ε with ``split``. The unit the campaign schedules, records and returns is a *task*: one pack
(``JOB.p1``, ``JOB.p2``…), one eval job (``JOB``) or one part of a split one (``JOB.resnet20.autoattack``);
a task's table goes to the job's ``out`` (``OUT.parquet``), a split task's to ``OUT/PART.parquet``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

from robench.errors import BadInput
from robench.fileio import atomic_write_text
from robench.packed import Member, members_from_tables, plan_text

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport
    import tomli as tomllib  # type: ignore[no-redef]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
PLAN_KEYS = ("name", "description", "data", "cuda_tests", "probe", "estimates", "jobs")
JOB_KEYS = {"train": ("name", "kind", "priority", "needs", "estimate_s", "recipe", "amp", "epochs", "batch_size",
                      "n_train", "replaces", "packs"),
            "eval": ("name", "kind", "priority", "needs", "estimate_s", "out", "checks", "split", "spec")}
SPLIT_AXES = ("models", "attacks", "eps")
PACK_KEYS = ("members",)
SPEC_KEYS_SET_BY_CAMPAIGN = ("out", "data_dir", "device")
TRAIN_SIZE = 50_000  # CIFAR-10's training split, for estimates before the data is unpacked
TEST_SIZE = 10_000


@dataclasses.dataclass(frozen=True)
class CudaTests:
    enabled: bool = True
    args: tuple[str, ...] = ("-m", "cuda", "-q", "-p", "no:cacheprovider", "tests")
    timeout_s: float = 150.0


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """What the probe times (≤ ``budget_s``): ms per model-step of the packed trainer
    (:func:`robench.train.time_pack_step` with ``recipe``) for K = ``ks`` members of ``model`` and ``deep_ks``
    of ``deep_model``; PGD-20 through ``robench.evaluate`` against its floor."""

    enabled: bool = True
    recipe: str = "paper"
    model: str = "resnet20"
    train_batch: int = 128
    steps: int = 10
    warmup: int = 3
    ks: tuple[int, ...] = (1, 8, 16)
    deep_model: str = "resnet110"
    deep_ks: tuple[int, ...] = (2,)
    amp: bool = True
    eval_n: int = 2000
    eval_batch: int = 500
    budget_s: float = 120.0


@dataclasses.dataclass(frozen=True)
class Estimates:
    """Defaults of the time estimates where the probe has no number (conservative for one H200), and the
    margin kept at the deadline for writing the last files."""

    train_overhead_s: float = 30.0   # per pack: process start, data to the device, warm-up / graph capture
    eval_overhead_s: float = 20.0    # per eval job: process start, weights, data
    step_ms: float = 1.0             # ms per model-step of ResNet-20 at the probe's batch (packed, CUDA graph;
                                     # issue 22's arithmetic says ≈ 0.5, eager unpacked steps ≈ 3)
    pass_us: float = 30.0            # µs per image forward+backward pass of ResNet-20 in evaluation
    margin_s: float = 15.0


@dataclasses.dataclass(frozen=True)
class Pack:
    """One ``robench train`` call: its members, in the order the trainer packs them."""

    members: tuple[Member, ...]


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How a train job's packs are trained (the recipe's own values where None)."""

    recipe: str = "paper"
    amp: bool = True
    epochs: int | None = None
    batch_size: int | None = None
    n_train: int | None = None
    data_label: str | None = None

    def steps(self, n_train: int) -> int:
        """Optimizer steps of one member: epochs × ⌈n / batch⌉ (the last short batch counted: conservative)."""
        from robench.train import RECIPES

        r = RECIPES[self.recipe]
        n = min(self.n_train or n_train, n_train)
        return (self.epochs or r.epochs) * math.ceil(n / (self.batch_size or r.batch_size))

    def epochs_(self) -> int:
        from robench.train import RECIPES

        return self.epochs or RECIPES[self.recipe].epochs

    def batch(self) -> int:
        from robench.train import RECIPES

        return self.batch_size or RECIPES[self.recipe].batch_size


def train_argv(members: list[Member], settings: TrainSettings, *, plan_file: str | os.PathLike | None, device: str,
               data_dir: str | os.PathLike, out: str | os.PathLike, run_dir: str | os.PathLike,
               resume: bool = False) -> list[str]:
    """The one ``robench train`` command line that trains exactly ``members`` together (arguments after
    ``robench``): the members go into the pack's plan file ``plan_file`` (written here, the packed
    trainer's ``[[members]]`` format: :func:`robench.packed.plan_text`), so any set of members of one
    depth is one call; the training settings go on the command line. ``plan_file=None`` writes nothing and
    shows ``PACK.toml`` in its place (for ``robench campaign show``)."""
    if not members:
        raise BadInput("a pack needs at least one member")
    text = plan_text(members)
    if plan_file is not None:
        atomic_write_text(Path(plan_file), text)
    argv = ["train", "--plan", "PACK.toml" if plan_file is None else os.fspath(plan_file), "--recipe",
            settings.recipe, "--amp" if settings.amp else "--no-amp", "--device", device, "--data-dir",
            os.fspath(data_dir), "--out", os.fspath(out), "--run-dir", os.fspath(run_dir)]
    for flag, v in (("--epochs", settings.epochs), ("--batch-size", settings.batch_size), ("--n", settings.n_train),
                    ("--data-label", settings.data_label)):
        if v is not None:
            argv += [flag, str(v)]
    return argv + (["--resume"] if resume else [])


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    kind: str  # "train" | "eval"
    priority: int
    index: int  # position in the plan file (ties of priority keep the file's order)
    needs: tuple[str, ...] = ()
    estimate_s: float | None = None
    # train
    train: TrainSettings | None = None
    packs: tuple[Pack, ...] = ()
    replaces: bool = False
    # eval
    spec: Any = None  # robench.spec.EvalSpec, unvalidated until Plan.validate_specs()
    out: str | None = None
    checks: bool = True
    split: tuple[str, ...] = ()
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def fingerprint(self) -> str:
        """sha256 of the job as the plan states it (a changed job is redone, an unchanged one is kept)."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()

    def members(self) -> list[Member]:
        return [m for p in self.packs for m in p.members]


@dataclasses.dataclass(frozen=True)
class Task:
    """What the campaign schedules: one pack of a train job, or one eval job (or one part of a split one)."""

    id: str
    job: Job
    pack: Pack | None = None
    spec: Any = None  # an eval task's grid (the job's, or its part)
    part: str | None = None  # a split eval task's name inside its job

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.job.fingerprint()}:{self.id}".encode()).hexdigest()

    def members(self) -> list[Member]:
        return list(self.pack.members) if self.pack is not None else []

    @property
    def out(self) -> str | None:
        """Where ingest puts this task's table (a stem: .parquet and .csv are added)."""
        if self.job.out is None:
            return None
        return self.job.out if self.part is None else f"{self.job.out}/{self.part}"


def _model_ref(model: str, lam: float | None) -> str:
    """A (table model column, λ) pair → the spelling that names exactly it (``inresnet20@0.5.s1``:
    :attr:`robench.packed.Member.ref`)."""
    from model_zoo import split_tag, tag_seed

    base, tag = split_tag(model)
    return Member(base, lam, tag_seed(tag) or 0, tag).ref


def split_eval(job: Job) -> list[Task]:
    """An eval job as tasks: itself, or one per model / attack / ε of its ``split`` axes."""
    from model_zoo import zoo_stem
    from robench.plan import fmt_eps
    from robench.spec import parse_eps

    if not job.split:
        return [Task(job.name, job, spec=job.spec)]
    spec = job.spec
    models = [(zoo_stem(m, lam), {"models": (_model_ref(m, lam),), "lams": (None,)}) for m, lam in spec.pairs()] \
        if "models" in job.split else [(None, {})]
    attacks = [(a, {"attacks": (a,), "attack_params": {a: spec.params_of(a)} if spec.params_of(a) else {}})
               for a in spec.attacks] if "attacks" in job.split else [(None, {})]
    eps = [("e" + fmt_eps(parse_eps(e)).replace("/", "-"), {"eps": (e,)}) for e in (spec.eps or ())] \
        if "eps" in job.split else [(None, {})]
    tasks = []
    for m_name, m_kw in models:
        for a_name, a_kw in attacks:
            for e_name, e_kw in eps:
                part = ".".join(x for x in (m_name, a_name, e_name) if x)
                tasks.append(Task(f"{job.name}.{part}", job, spec=spec.replace(**m_kw, **a_kw, **e_kw), part=part))
    return tasks


@dataclasses.dataclass(frozen=True)
class Plan:
    path: Path
    sha256: str
    name: str
    description: str
    data_label: str | None
    cuda_tests: CudaTests
    probe: ProbeSettings
    estimates: Estimates
    jobs: tuple[Job, ...]

    def ordered(self) -> list[Job]:
        """Jobs in priority order (1 first), the file's order within a priority."""
        return sorted(self.jobs, key=lambda j: (j.priority, j.index))

    def tasks(self) -> list[Task]:
        out = []
        for job in self.ordered():
            if job.kind == "train":
                out += [Task(f"{job.name}.p{i}", job, p) for i, p in enumerate(job.packs, start=1)]
            else:
                out += split_eval(job)
        return out

    def job(self, name: str) -> Job:
        return next(j for j in self.jobs if j.name == name)

    def validate_specs(self) -> "Plan":
        """Validate every eval job's spec against the registries (attacks, corruptions, models); needs the
        attack libraries importable, so the campaign calls it after installing the carried wheels."""
        for job in self.jobs:
            if job.kind == "eval":
                try:
                    job.spec.replace(data_dir="data").validate(check_device=False)
                except BadInput as e:
                    raise BadInput(f"{self.path}: job {job.name}: {e}") from None
        return self


# -- reading ---------------------------------------------------------------------------------------------
def _table(raw: Any, where: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise BadInput(f"{where} must be a TOML table")
    return dict(raw)


def _unknown(raw: Mapping, valid: tuple[str, ...], where: str) -> None:
    extra = sorted(set(raw) - set(valid))
    if extra:
        raise BadInput(f"{where}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(extra)}; valid keys: "
                       f"{', '.join(valid)}")


def _int(v: Any, what: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise BadInput(f"{what} must be a whole number ≥ {lo}, got {v!r}")
    return v


def _num(v: Any, what: str, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:
        raise BadInput(f"{what} must be a number ≥ {lo:g}, got {v!r}")
    return float(v)


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise BadInput(f"{what} must be true or false, got {v!r}")
    return v


def _list(v: Any, what: str) -> list:
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
        raise BadInput(f"{what} must be a list, got {v!r}")
    return list(v)


def _dataclass_from(cls, raw: Mapping, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _unknown(raw, tuple(fields), where)
    kw = {}
    for k, v in raw.items():
        default = fields[k].default
        what = f"{where}.{k}"
        if isinstance(default, bool):
            kw[k] = _bool(v, what)
        elif isinstance(default, int):
            kw[k] = _int(v, what, 1)
        elif isinstance(default, float):
            kw[k] = _num(v, what)
        elif isinstance(default, tuple):
            items = _list(v, what)
            kw[k] = tuple(str(x) for x in items) if k == "args" else tuple(_int(x, what, 1) for x in items)
        else:
            if not isinstance(v, str) or not v:
                raise BadInput(f"{what} must be a non-empty string, got {v!r}")
            kw[k] = v
    return cls(**kw)


def _pack(raw: Any, where: str) -> Pack:
    raw = _table(raw, where)
    _unknown(raw, PACK_KEYS, where)
    return Pack(tuple(members_from_tables(raw.get("members"), where)))


def _job(raw: Any, index: int, names: set[str], where: str, data_label: str | None) -> Job:
    from robench.spec import spec_from_dict
    from robench.train import RECIPES

    raw = _table(raw, where)
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise BadInput(f"{where}: name must be letters, digits, _ and - (a file name part), got {name!r}")
    where = f"{where} ({name})"
    if name in names:
        raise BadInput(f"{where}: the job name {name} is used twice")
    kind = raw.get("kind")
    if kind not in JOB_KEYS:
        raise BadInput(f"{where}: kind must be one of {', '.join(JOB_KEYS)}, got {kind!r}")
    _unknown(raw, JOB_KEYS[kind], where)
    needs = tuple(str(n) for n in _list(raw.get("needs", []), f"{where}.needs"))
    for n in needs:
        if n not in names:
            raise BadInput(f"{where}: needs {n!r}, which is not a job defined above it; valid choices: "
                           f"{', '.join(sorted(names)) or 'none'}")
    common = dict(name=name, kind=kind, priority=_int(raw.get("priority", 1), f"{where}.priority", 1), index=index,
                  needs=needs, estimate_s=None if raw.get("estimate_s") is None
                  else _num(raw["estimate_s"], f"{where}.estimate_s"), raw=raw)
    if kind == "train":
        recipe = raw.get("recipe", "paper")
        if recipe not in RECIPES:
            raise BadInput(f"{where}: unknown recipe {recipe!r}; valid choices: {', '.join(RECIPES)}")
        settings = TrainSettings(
            recipe=recipe, amp=_bool(raw.get("amp", True), f"{where}.amp"),
            epochs=None if raw.get("epochs") is None else _int(raw["epochs"], f"{where}.epochs", 1),
            batch_size=None if raw.get("batch_size") is None else _int(raw["batch_size"], f"{where}.batch_size", 1),
            n_train=None if raw.get("n_train") is None else _int(raw["n_train"], f"{where}.n_train", 1),
            data_label=data_label)
        packs = tuple(_pack(p, f"{where}.packs[{i}]") for i, p in enumerate(_list(raw.get("packs", []),
                                                                                       f"{where}.packs"), start=1))
        if not packs:
            raise BadInput(f"{where}: a train job needs [[jobs.packs]] (members = [{{model, lam, seed}}, …])")
        members = [m for p in packs for m in p.members]
        dup = sorted({m.id for m in members if members.count(m) > 1})
        if dup:
            raise BadInput(f"{where}: {', '.join(dup)} is trained by two packs")
        return Job(**common, train=settings, packs=packs, replaces=_bool(raw.get("replaces", False),
                                                                          f"{where}.replaces"))
    spec_raw = _table(raw.get("spec"), f"{where}.spec")
    bad = sorted(set(spec_raw) & set(SPEC_KEYS_SET_BY_CAMPAIGN))
    if bad:
        raise BadInput(f"{where}.spec: {', '.join(bad)} is set by the campaign (the unpacked data, the run's "
                       "device, its work folder); leave it out")
    spec = spec_from_dict({"dataset": "cifar10", **spec_raw}, source=f"{where}.spec")
    out = raw.get("out")
    if not isinstance(out, str) or not out or os.path.isabs(out) or ".." in Path(out).parts:
        raise BadInput(f"{where}: out must be a relative path inside the repository (where ingest puts the table, "
                       f"e.g. results/gpu/study_d20_s0), got {out!r}")
    split = tuple(dict.fromkeys(str(x) for x in _list(raw.get("split", []), f"{where}.split")))
    bad = sorted(set(split) - set(SPLIT_AXES))
    if bad:
        raise BadInput(f"{where}.split: unknown axis {', '.join(bad)}; valid choices: {', '.join(SPLIT_AXES)}")
    if ("attacks" in split or "eps" in split) and not spec.attacks:
        raise BadInput(f"{where}.split: the spec has no attacks to split")
    if ("attacks" in split or "eps" in split) and spec.corruptions:
        raise BadInput(f"{where}.split by attacks or ε repeats the corruption cells in every part; split the "
                       "corruptions into a job of their own")
    return Job(**common, spec=spec, out=out, checks=_bool(raw.get("checks", True), f"{where}.checks"), split=split)


def load_plan(path: str | os.PathLike) -> Plan:
    """Read and check a plan's structure (names, recipes, models, packs, dependencies). Eval specs are
    checked against the attack and corruption registries by :meth:`Plan.validate_specs`."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"campaign plan {p} does not exist")
    data = p.read_bytes()
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"campaign plan {p} is not valid TOML: {' '.join(str(e).split())}") from None
    _unknown(raw, PLAN_KEYS, str(p))
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise BadInput(f"{p}: name must be letters, digits, _ and -, got {name!r}")
    data_raw = _table(raw.get("data"), f"{p}: [data]")
    _unknown(data_raw, ("label",), f"{p}: [data]")
    label = data_raw.get("label")
    if label is not None and (not isinstance(label, str) or not label):
        raise BadInput(f"{p}: [data].label must be a non-empty string")
    jobs: list[Job] = []
    names: set[str] = set()
    for i, j in enumerate(_list(raw.get("jobs", []), f"{p}: jobs")):
        job = _job(j, i, names, f"{p}: jobs[{i + 1}]", label)
        names.add(job.name)
        jobs.append(job)
    if not jobs:
        raise BadInput(f"{p}: the plan has no [[jobs]]")
    stems: dict[str, str] = {}
    for job in jobs:
        for m in job.members():
            if m.id in stems:
                raise BadInput(f"{p}: {m.id} is trained by job {stems[m.id]} and job {job.name}")
            stems[m.id] = job.name
    desc = raw.get("description", "")
    probe = _dataclass_from(ProbeSettings, _table(raw.get("probe"), f"{p}: [probe]"), "probe")
    from robench.train import RECIPES

    if probe.recipe not in RECIPES:
        raise BadInput(f"{p}: [probe].recipe: unknown recipe {probe.recipe!r}; valid choices: {', '.join(RECIPES)}")
    return Plan(path=p, sha256=hashlib.sha256(data).hexdigest(), name=name, description=str(desc), data_label=label,
                cuda_tests=_dataclass_from(CudaTests, _table(raw.get("cuda_tests"), f"{p}: [cuda_tests]"),
                                           "cuda_tests"),
                probe=probe,
                estimates=_dataclass_from(Estimates, _table(raw.get("estimates"), f"{p}: [estimates]"), "estimates"),
                jobs=tuple(jobs))
