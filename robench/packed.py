"""The packed trainer's parts: the members of a pack, and the step that trains them together.

A *member* is one model to train: a registered name, a fixed λ or None (learned), and a seed. A pack
trains members of one architecture in one process; each member ends exactly as if trained alone
(``robench train --seed s``): it is built from the same registered module after
``torch.manual_seed(seed)``, draws its epochs from its own generator, and follows the same schedule.

Packing is one module per member, stepped in a loop (no second architecture: the registered modules
train as they are). Measured on one CPU thread, this loop is 2–2.5× faster than ``torch.func`` vmap
over stacked members (grouped convolutions are slow there; ``benchmarks/packed_throughput.py``
times both); on CPU each member runs its whole epoch in turn. On CUDA each member runs on its own
stream, and the whole pack's step
(data gather, crop and flip, forward, backward, fused SGD with the learning rate read from a
device table, metric sums) is captured as one CUDA graph after eager warm-up steps and replayed:
one launch a step, the members' kernels overlapping on the device. The step does the same tensor
operations on every device, so the CPU tests exercise what the graph replays.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import tomllib
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_zoo.checkpoint import zoo_stem
from model_zoo.registry import check_model_name, join_tag, model_entry, model_info, seed_tag, split_tag, train_tag
from robench.data import EpochDraws, crop_flip
from robench.errors import BadInput
from robench.spec import parse_int, parse_lam

MAX_SEED = 2**32 - 1


# -- members --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Member:
    """One model of a pack: ``model`` (registered name), ``lam`` (fixed λ, or None: learned/none) and
    ``seed``. Seed 0 is the untagged zoo entry; seed s ≠ 0 is tagged ``s<s>`` (``resnet20.s1``)."""

    model: str
    lam: float | None = None
    seed: int = 0
    tag: str | None = None  # given: that tag (``paper``); None: the seed's (:func:`model_zoo.train_tag`)

    def __post_init__(self) -> None:
        # frozen: the resolved tag is stored, so equal members compare and hash equal
        object.__setattr__(self, "tag", train_tag(self.seed, self.tag))

    @property
    def id(self) -> str:
        """The member's zoo stem, unique in a pack: ``inresnet20__lam0.5.s2``."""
        return zoo_stem(self.model, self.lam, tag=self.tag)

    @property
    def ref(self) -> str:
        """How evaluation names it (``robench eval --model``, sweep configs): ``NAME[@λ][.TAG]``, e.g.
        ``inresnet20@0.5.s1`` for the checkpoint ``inresnet20__lam0.5.s1``."""
        return join_tag(self.model if self.lam is None else f"{self.model}@{self.lam:g}", self.tag)

    def as_dict(self) -> dict:
        return {"model": self.model, "lam": self.lam, "seed": self.seed, "tag": self.tag}


def parse_seed(value: Any) -> int:
    s = parse_int(value, "seed (--seed)", 0)
    if s > MAX_SEED:
        raise BadInput(f"seed (--seed) must be a whole number in [0, {MAX_SEED}], got {value}")
    return s


def check_pack(members: Sequence[Member]) -> list[Member]:
    """The members, validated: registered names, λ where it applies, distinct, one architecture."""
    members = list(members)
    if not members:
        raise BadInput("a pack needs at least one member (--model)")
    seen: set[str] = set()
    for m in members:
        check_model_name(m.model)
        if m.lam is not None and not model_info(m.model).takes_lam:
            from model_zoo.schemes import lam_schemes

            raise BadInput(f"λ (lam) does not apply to {m.model} (scheme {model_info(m.model).scheme!r}); it applies to "
                           f"{' and '.join(lam_schemes())} models")
        parse_seed(m.seed)
        if m.id in seen:
            raise BadInput(f"member {m.id} is listed twice")
        seen.add(m.id)
    archs = {}
    for m in members:
        arch = model_entry(m.model).arch
        key = repr(sorted(arch.items())) if arch is not None else f"model {m.model}"
        archs.setdefault(key, m.model)
    if len(archs) > 1:
        raise BadInput(f"a pack trains models of one architecture (depth); {' and '.join(archs.values())} differ: "
                       "run one pack per depth")
    return members


def members_from_lists(models: Sequence[str], lams: Sequence[Any] | None = None,
                       seeds: Sequence[Any] | None = None) -> list[Member]:
    """Every model × λ × seed. λ values (``"learned"`` or a number) apply to the models that take λ;
    the others train once per seed. ``None`` lists mean learned λ and seed 0."""
    lam_values = [parse_lam(v) for v in (lams if lams else [None])]
    seed_values = [parse_seed(v) for v in (seeds if seeds else [0])]
    for name in models:
        if split_tag(name)[1] is not None:
            raise BadInput(f"--model takes the registered name ({split_tag(name)[0]}); the checkpoint's tag comes "
                           f"from --seed (s1: --seed 1) or --tag")
        check_model_name(name)
    if any(v is not None for v in lam_values) and not any(model_info(n).takes_lam for n in models):
        from model_zoo.schemes import lam_schemes

        raise BadInput(f"λ (--lam) does not apply to {', '.join(models)}; it applies to "
                       f"{' and '.join(lam_schemes())} models")
    out = []
    for name in models:
        lams_here = lam_values if model_info(name).takes_lam else [None]
        out += [Member(name, lam, seed) for lam, seed in itertools.product(dict.fromkeys(lams_here), seed_values)]
    return check_pack(out)


PLAN_KEYS = ("recipe", "epochs", "batch_size", "lr", "members")


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, list) else [v]


def members_from_tables(tables: Any, where: str) -> list[Member]:
    """Members from ``[[members]]`` tables (``model``, optional ``lam`` and ``seed``, each a value or a
    list, expanded like the command-line lists by :func:`members_from_lists`), validated as one pack.
    ``where`` starts every error line (``plan FILE``)."""
    if not (isinstance(tables, list) and tables and all(isinstance(t, dict) for t in tables)):
        raise BadInput(f"{where} needs [[members]] tables, each with a model (e.g. model = \"resnet20\")")
    members: list[Member] = []
    for i, t in enumerate(tables, 1):
        extra = sorted(set(t) - {"model", "lam", "seed"})
        if extra or "model" not in t:
            raise BadInput(f"{where}: members table {i} needs model and may have lam and seed"
                           + (f" (unknown: {', '.join(extra)})" if extra else ""))
        models = _as_list(t["model"])
        if not all(isinstance(m, str) for m in models):
            raise BadInput(f"{where}: members table {i}: model must be a name or a list of names")
        members += members_from_lists(models, _as_list(t["lam"]) if "lam" in t else None,
                                      _as_list(t["seed"]) if "seed" in t else None)
    return check_pack(members)


def load_plan(path: str | Path) -> dict:
    """A TOML plan: ``[[members]]`` tables (:func:`members_from_tables`) and optional ``recipe``, ``epochs``,
    ``batch_size``, ``lr``. Returns ``{"members": [Member, ...], **settings}``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read the plan {path}: {getattr(e, 'strerror', None) or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"plan {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(PLAN_KEYS))
    if unknown:
        raise BadInput(f"plan {path}: unknown key(s) {', '.join(unknown)}; valid choices: {', '.join(PLAN_KEYS)}")
    members = members_from_tables(data.get("members"), f"plan {path}")
    settings = {k: data[k] for k in ("recipe", "epochs", "batch_size", "lr") if k in data}
    for k in ("epochs", "batch_size"):
        if k in settings:
            settings[k] = parse_int(settings[k], f"plan {k}", 1)
    if "lr" in settings and (isinstance(settings["lr"], bool) or not isinstance(settings["lr"], (int, float))):
        raise BadInput(f"plan {path}: lr must be a number, got {settings['lr']!r}")
    if "recipe" in settings and not isinstance(settings["recipe"], str):
        raise BadInput(f"plan {path}: recipe must be a name, got {settings['recipe']!r}")
    return {"members": members, **settings}


def plan_text(members: Sequence[Member]) -> str:
    """The plan :func:`load_plan` reads back as exactly ``members``, in order: one ``[[members]]`` table
    each. A plan names members by model, λ and seed, so each tag must be its seed's (``s1`` for seed 1)."""
    lines = []
    for m in check_pack(members):
        if m.tag != seed_tag(m.seed):
            raise BadInput(f"member {m.id}: a plan names members by model, λ and seed, and tag {m.tag!r} is not "
                           f"seed {m.seed}'s")
        lines += ["[[members]]", f'model = "{m.model}"'] + ([] if m.lam is None else [f"lam = {float(m.lam)!r}"]) \
            + [f"seed = {m.seed}", ""]
    return "\n".join(lines)


def pack_digest(members: Sequence[Member]) -> str:
    return hashlib.sha256(",".join(m.id for m in members).encode()).hexdigest()[:10]


# -- one member's training state -------------------------------------------------------------------
@dataclasses.dataclass
class TrainData:
    """The training set on the device: padded uint8 images (crops are gathered from them) and labels."""

    xpad: torch.Tensor
    labels: torch.Tensor
    size: tuple[int, int]


class MemberRun:
    """One member's module, fused SGD with a device-tensor learning rate, step counters, the epoch's
    draws and metric sums, all on the device. :meth:`step` is the training step: tensor operations
    only (no host synchronisation), so it can be captured in a CUDA graph and replayed."""

    def __init__(self, member: Member, *, model: nn.Module, param_groups: Callable[[nn.Module], list[dict]],
                 lr_table: torch.Tensor, momentum: float, nesterov: bool, label_smoothing: float,
                 batch_size: int, n_used: int, data: TrainData, device: torch.device, dtype: torch.dtype,
                 amp_dtype: torch.dtype | None, channels_last: bool, forward: Callable | None = None) -> None:
        self.member, self.model, self.device, self.dtype = member, model, device, dtype
        self.amp_dtype, self.channels_last, self.label_smoothing = amp_dtype, channels_last, label_smoothing
        self.bs, self.data, self.lr_table = batch_size, data, lr_table
        self.forward = forward or model
        # the learning rate lives on the device; each step copies its own entry of the schedule table into
        # it, so a replayed graph follows the schedule (milestones included) with no host involvement
        self.lr = lr_table[:1].clone().view(())
        self.opt = torch.optim.SGD(param_groups(model), lr=self.lr, momentum=momentum, nesterov=nesterov, fused=True)
        self.step_t = torch.zeros((), dtype=torch.int64, device=device)  # global step: index into lr_table
        self.pos_t = torch.zeros((), dtype=torch.int64, device=device)   # batch index within the epoch
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        z = torch.zeros(n_used, dtype=torch.int64, device=device)
        self.draws = EpochDraws(z.clone(), z.clone(), z.clone(), torch.zeros(n_used, dtype=torch.bool, device=device))
        self._arange: dict[int, torch.Tensor] = {}
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def set_epoch(self, draws: EpochDraws, step: int) -> None:
        """Copy an epoch's draws into the static device buffers and reset the counters (once an epoch)."""
        for dst, src in zip((self.draws.order, self.draws.oy, self.draws.ox, self.draws.flip),
                            (draws.order, draws.oy, draws.ox, draws.flip)):
            dst.copy_(src)
        self.pos_t.zero_()
        self.step_t.fill_(step)
        self.loss_sum.zero_()
        self.correct.zero_()

    def step(self, b: int) -> None:
        """Train on the next batch of ``b`` images (``b`` < batch size only for a kept short last batch)."""
        if b not in self._arange:
            self._arange[b] = torch.arange(b, device=self.device)
        pos = self._arange[b] + self.pos_t * self.bs
        idx = self.draws.order[pos]
        x = crop_flip(self.data.xpad, idx, self.draws.oy[pos], self.draws.ox[pos], self.draws.flip[pos], self.data.size)
        x = x.to(self.dtype).div_(255.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.data.labels[idx]
        self.lr.copy_(torch.index_select(self.lr_table, 0, self.step_t.view(1)).view(()))
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None,
                            cache_enabled=False):
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.loss_sum.add_(loss.detach().to(torch.float64) * b)
        self.correct.add_((logits.detach().argmax(1) == y).sum())
        self.pos_t.add_(1)
        self.step_t.add_(1)


class PackStepper:
    """Steps every live member once per call. CPU: a loop. CUDA: each member on its own stream, and with
    ``graphs`` the full-batch step of the whole pack captured as one CUDA graph after ``warmup`` eager
    steps, then replayed (a kept short last batch runs eagerly: one step an epoch)."""

    def __init__(self, runs: list[MemberRun], device: torch.device, *, graphs: bool, warmup: int = 3) -> None:
        if graphs and device.type != "cuda":
            raise BadInput("CUDA graphs need a CUDA device")
        self.runs, self.device, self.graphs, self.warmup = list(runs), device, graphs, warmup
        self.eager_full_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.replays = 0

    def drop(self, run: MemberRun) -> None:
        """Stop stepping a member (it diverged); a captured graph is recaptured without it."""
        self.runs.remove(run)
        self.graph = None

    def _eager(self, b: int) -> None:
        if self.device.type != "cuda":
            for r in self.runs:
                r.step(b)
            return
        self._fan_out(torch.cuda.current_stream(self.device), b)

    def _fan_out(self, origin: torch.cuda.Stream, b: int) -> None:
        """Each member steps on its own stream after the work queued on ``origin``; ``origin`` then waits for all."""
        for r in self.runs:
            r.stream.wait_stream(origin)
            with torch.cuda.stream(r.stream):
                r.step(b)
        for r in self.runs:
            origin.wait_stream(r.stream)

    def _capture(self, b: int) -> None:
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.graph(g, stream=side):
            self._fan_out(side, b)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = g

    def epoch(self, sizes: Sequence[int], progress: Callable[[int], None] | None = None) -> None:
        """One epoch of batches of ``sizes`` for every member. On CPU member after member (the members are
        independent, so the order changes no number; a member's whole epoch in a row allocates and frees
        like a single run, where interleaving members cost ~10% more CPU time in allocator page faults);
        on CUDA step by step, all members at once. ``progress(steps)`` is called as steps finish."""
        if self.device.type != "cuda":
            for r in self.runs:
                for b in sizes:
                    r.step(b)
                    if progress:
                        progress(1)
            return
        for b in sizes:
            self.step(b)
            if progress:
                progress(len(self.runs))

    def step(self, b: int) -> None:
        if not self.runs:
            return
        full = b == self.runs[0].bs
        if not (self.graphs and full):
            self._eager(b)
            if full:
                self.eager_full_steps += 1
            return
        if self.graph is None and self.eager_full_steps < self.warmup:
            self._eager(b)
            self.eager_full_steps += 1
            return
        if self.graph is None:
            # capture records the step without running it; replay it for this step
            self._capture(b)
        self.graph.replay()
        self.replays += 1


def lr_table(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """The schedule as a device tensor (float32 on CUDA, which fused SGD reads; float64 elsewhere)."""
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    return torch.tensor(list(values), dtype=dtype, device=device)

