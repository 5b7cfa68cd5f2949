"""Name → model registry (timm-style) whose entries carry their metadata. Names are robench's API.

A registered entry knows its scheme, whether λ applies, whether it learns coefficients, its
classes, data set and parameter count without being built: :func:`model_info` reads the record,
so planning and ``robench zoo list`` never import torch. Two ways to register:

- ``register_cifar_resnet(name, scheme, arch)``: one line per member of the CIFAR ResNet family
  (arch = :class:`model_zoo.resnet.CifarResNet` keywords, see :mod:`model_zoo.arch`);
- ``@register_model`` on any constructor ``fn(*, num_classes, lam, **kw) -> nn.Module`` (a user
  package); pass ``scheme=`` and friends for metadata, or its metadata is read once from a build
  on the meta device.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping

from model_zoo.arch import check_arch, count_parameters
from model_zoo.errors import BadInput, did_you_mean
from model_zoo.schemes import get_scheme

if TYPE_CHECKING:
    import torch.nn as nn


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registered model: its constructor and what is known about it without building it."""

    name: str
    build: Callable[..., "nn.Module"] = dataclasses.field(repr=False)
    scheme: str | None = None          # None: not declared (read from a meta-device build)
    arch: Mapping[str, Any] | None = None  # CifarResNet keywords (family members only)
    num_classes: int = 10
    dataset: str = "cifar10"


_MODELS: dict[str, ModelEntry] = {}


def _add(entry: ModelEntry) -> None:
    if entry.name in _MODELS:
        raise ValueError(f"model {entry.name!r} is already registered")
    if not isinstance(entry.name, str) or not entry.name or "." in entry.name or "@" in entry.name:
        raise ValueError(f"model name {entry.name!r} must be non-empty without '.' or '@' "
                         "(they write a tag and a λ: inresnet20@0.5.s2)")
    if entry.scheme is not None:
        get_scheme(entry.scheme)
    _MODELS[entry.name] = entry


def register_model(fn: Callable[..., "nn.Module"] | None = None, *, scheme: str | None = None,
                   num_classes: int = 10, dataset: str = "cifar10"):
    """Register ``fn`` under its own name (usable bare, ``@register_model``, or with metadata)."""
    def deco(f):
        _add(ModelEntry(name=f.__name__, build=f, scheme=scheme, num_classes=num_classes, dataset=dataset))
        return f
    return deco if fn is None else deco(fn)


def register_cifar_resnet(name: str, scheme: str, arch: Mapping[str, Any], *, num_classes: int = 10,
                          dataset: str = "cifar10") -> None:
    """Register a member of the CIFAR ResNet family: a name, a skip rule and architecture keywords."""
    arch = dict(arch)
    check_arch(arch)

    def build(*, num_classes: int = 10, lam: float | None = None, **kw: Any):
        from model_zoo.resnet import CifarResNet

        return CifarResNet(**{**arch, **kw}, scheme=scheme, lam=lam, num_classes=num_classes)

    build.__name__ = build.__qualname__ = name
    _add(ModelEntry(name=name, build=build, scheme=scheme, arch=arch, num_classes=num_classes, dataset=dataset))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching an fnmatch ``pattern``, sorted naturally (resnet20 < resnet110)."""
    names = [n for n in _MODELS if fnmatch.fnmatchcase(n, pattern)]
    return sorted(names, key=natural_key)


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value (resnet20 < resnet110); digits before letters."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(name)) if t)


_TAG = re.compile(r"^(?P<base>.+)\.(?P<tag>[A-Za-z][A-Za-z0-9_]*)$")
_TAG_ONLY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SEED_TAG = re.compile(r"s(\d+)")
MAX_TAG_LENGTH = 64


def split_tag(name: str) -> tuple[str, str | None]:
    """``"resnet20.s1"`` → ``("resnet20", "s1")``; ``"resnet20"`` → ``("resnet20", None)`` (timm's
    ``name.tag``: the tag names one trained variant, e.g. a training seed). A tail that starts with a
    digit is not a tag, so a number inside a name (``"x@0.5"``) is never split."""
    m = _TAG.match(str(name))
    return (m.group("base"), m.group("tag")) if m else (str(name), None)


def check_tag(tag: str | None) -> str | None:
    """A valid tag in its one spelling, or None for the untagged (seed-0) checkpoint.

    A tag is letters, digits and ``_``, starting with a letter, at most :data:`MAX_TAG_LENGTH`
    characters (a safe part of a file name). ``sN`` is the seed tag of training seed N (no leading
    zeros); ``s0`` is an alias of the untagged name, so it is normalised to None and tables have one
    spelling. Anything else is :class:`BadInput` with one line."""
    if tag is None:
        return None
    if not isinstance(tag, str) or not _TAG_ONLY.fullmatch(tag) or len(tag) > MAX_TAG_LENGTH:
        raise BadInput(f"malformed tag {tag!r}; a tag is letters, digits and _, starting with a letter, at most "
                       f"{MAX_TAG_LENGTH} characters, e.g. s1 (training seed 1) as in resnet20.s1")
    m = _SEED_TAG.fullmatch(tag)
    if m and str(int(m.group(1))) != m.group(1):
        raise BadInput(f"malformed seed tag {tag!r}; write the seed without leading zeros: s{int(m.group(1))}")
    return None if tag == "s0" else tag


def seed_tag(seed: int) -> str | None:
    """The tag of a checkpoint trained with ``seed``: None for seed 0 (the untagged name), else ``s<seed>``."""
    return None if int(seed) == 0 else f"s{int(seed)}"


def tag_seed(tag: str | None) -> int | None:
    """The training seed a tag names: 0 for the untagged name, N for ``sN``, None for other tags."""
    if tag is None:
        return 0
    m = _SEED_TAG.fullmatch(tag)
    return int(m.group(1)) if m else None


def train_tag(seed: int, tag: str | None = None) -> str | None:
    """The tag a training run with ``seed`` exports under: ``tag`` when given (checked), else the seed's
    own (:func:`seed_tag`: none for seed 0, ``s<seed>`` otherwise). A seed tag must name that seed, so
    ``resnet20.s1`` is always training seed 1 and the untagged name always seed 0."""
    if tag is None:
        return seed_tag(seed)
    t = check_tag(tag)
    named = tag_seed(t)
    if named is not None and named != int(seed):
        own = seed_tag(seed)
        raise BadInput(f"tag {tag} names training seed {named} but the seed is {seed}; drop --tag (seed {seed} is "
                       + (f"tagged {own})" if own else "the untagged name)") + f" or train with --seed {named}")
    return t


def join_tag(name: str, tag: str | None) -> str:
    """``("resnet20", "s1")`` → ``"resnet20.s1"``; an untagged (or ``s0``) name stays as it is."""
    tag = check_tag(tag)
    return name if tag is None else f"{name}.{tag}"


def parse_model_name(name: str) -> tuple[str, str | None]:
    """A model name with an optional tag → (registered name, tag in its one spelling, None when
    untagged or ``s0``); :class:`BadInput` for an unknown model or a malformed tag."""
    if not isinstance(name, str) or not name:
        raise BadInput(f"model names must be non-empty text, got {name!r}")
    base, tag = split_tag(name)
    if tag is None and "." in name:
        head, _, tail = name.rpartition(".")
        if is_model(head):
            check_tag(tail)  # raises: the tail is not a tag
    check_model_name(base)
    return base, check_tag(tag)


def canonical_name(name: str) -> str:
    """A tagged model name in its one spelling (``resnet20.s0`` → ``resnet20``), checked."""
    return join_tag(*parse_model_name(name))


def is_model(name: str) -> bool:
    return name in _MODELS


def check_model_name(name: str) -> None:
    if not isinstance(name, str) or name not in _MODELS:
        raise BadInput(f"unknown model {name!r}{did_you_mean(name, list_models())}; "
                       f"valid choices: {', '.join(list_models())}")


def model_entry(name: str) -> ModelEntry:
    check_model_name(name)
    return _MODELS[name]


def create_model(name: str, *, num_classes: int = 10, lam: float | None = None, **kwargs: Any) -> "nn.Module":
    """Build a registered model. ``lam`` fixes λ for every block of a damped model (None: learned)."""
    return model_entry(name).build(num_classes=num_classes, lam=lam, **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know about a registered architecture, without its weights.

    ``scheme``: "euler", "damped", "lambda_damped" or "lm"; ``takes_lam``: a fixed λ applies (damped
    schemes); ``learned``: with lam=None the model learns per-block coefficients; ``num_classes`` and
    ``dataset``: what the registered default is built for; ``params``: trainable parameters of the
    default (lam=None) build; ``update``: the scheme's update rule as text.
    """

    name: str
    scheme: str
    takes_lam: bool
    learned: bool
    num_classes: int
    dataset: str
    params: int
    update: str


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model, from its registry entry (no build, no torch) where declared.
    A tagged name (``resnet20.s1``, a table's ``model`` column) gives its architecture's metadata."""
    base, tag = split_tag(name)
    if tag is not None and not is_model(name):
        check_tag(tag)
        name = base
    return _model_info(name)


@functools.lru_cache(maxsize=None)
def _model_info(name: str) -> ModelInfo:
    e = model_entry(name)
    if e.scheme is not None and e.arch is not None:
        scheme, params = e.scheme, count_parameters(e.arch, scheme=e.scheme, num_classes=e.num_classes)
    else:  # a user model: build it once on the meta device (no allocation)
        import torch

        with torch.device("meta"):
            m = e.build(num_classes=e.num_classes, lam=None)
        scheme = e.scheme or str(getattr(m, "scheme", "euler"))
        params = sum(p.numel() for p in m.parameters())
    s = get_scheme(scheme)
    return ModelInfo(name=name, scheme=s.value, takes_lam=s.takes_lam, learned=s.learned, num_classes=e.num_classes,
                     dataset=e.dataset, params=params, update=s.update)


def _compact(names: list[str]) -> list[str]:
    """``resnet20, resnet32, …, resnet164`` → ``resnet20…164``; names without a trailing depth stay."""
    groups: dict[str, list[str]] = {}
    for n in names:
        m = re.fullmatch(r"(.*?\D)(\d+)", n)
        groups.setdefault(m.group(1) if m else n, []).append(n)
    out = []
    for prefix, members in groups.items():
        if len(members) > 1:
            out.append(f"{members[0]}…{members[-1][len(prefix):]}")
        else:
            out.extend(members)
    return out


def models_markdown() -> str:
    """The README's "Model zoo" scheme table (scheme | update | names), generated from the registries."""
    from model_zoo.schemes import list_schemes

    lines = ["| scheme | update | names |", "| --- | --- | --- |"]
    for s in list_schemes():
        names = [n for n in list_models() if model_info(n).scheme == s.value]
        if names:
            lines.append(f"| `{s.value}` | {s.update} | {', '.join(f'`{n}`' for n in _compact(names))} |")
    return "\n".join(lines) + "\n"
