"""The evaluation spec: one frozen, typed description of an evaluation grid and how to run it.

``robench eval`` (options), ``robench sweep`` / ``eval --config`` (TOML) and ``robench.evaluate``
(Python) all build an :class:`EvalSpec`; :meth:`EvalSpec.validate` owns every rule and every error
message (λ, ε, severities, names, sizes, data, device, threads) and returns the normalised spec.
Values may be given as text (``"8/255"``, ``"learned"``) or as numbers; the parsers below turn them
into numbers or raise :class:`~robench.errors.BadInput` with one line naming the valid choices.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping

from robench.errors import BadInput, did_you_mean

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport, when installed
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

DATASETS = ("samples", "cifar10", "cifar100")
SEED_MAX = 2 ** 63 - 1  # a table's seed column is int64
MAX_CONFIG_BYTES = 1 << 20
SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_EPS = 8 / 255
CONFIG_KEYS = ("models", "lams", "attacks", "eps", "attack_params", "corruptions", "severities", "seeds", "n",
               "dataset", "data_dir", "corruption_dir", "backend", "batch_size", "device", "tf32", "threads", "out")


# -- parsers (text or numbers → values) ------------------------------------------------------
def parse_number(text: Any, what: str) -> float:
    """``8/255``, ``0.031``, ``1e-2`` or a number → finite float; anything else names ``what``."""
    if isinstance(text, bool):
        raise BadInput(f"malformed {what} {text!r}; write a number such as 0.031 or a fraction such as 8/255")
    if isinstance(text, numbers.Real):
        v = float(text)
    else:
        t = str(text).strip()
        try:
            v = float(Fraction(t)) if "/" in t else float(t)
        except (ValueError, ZeroDivisionError, OverflowError):
            raise BadInput(f"malformed {what} {text!r}; write a number such as 0.031 or a fraction such as 8/255") \
                from None
    if not math.isfinite(v):
        raise BadInput(f"malformed {what} {text!r}; it must be finite")
    return v


def parse_lam(value: Any) -> float | None:
    """``learned`` / None → None (learned λ); a number or fraction in [0, 1] → float.

    A fixed λ names its checkpoint file with 6 significant digits (``__lam0.5``), so a value that
    those digits do not spell exactly (0.5000000001, a denormal) is refused instead of silently
    loading another λ's weights; −0 is 0."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "learned", "none")):
        return None
    v = parse_number(value, "λ (--lam)")
    if not 0.0 <= v <= 1.0:
        raise BadInput(f"λ (--lam) must be in [0, 1] or 'learned', got {value}")
    v = v + 0.0  # -0.0 → 0.0
    if 0.0 < v < 1e-6:
        raise BadInput(f"λ (--lam) {value} is a denormal-sized value no checkpoint is trained at; write 0 or a λ ≥ 1e-6")
    if float(f"{v:g}") != v:
        raise BadInput(f"λ (--lam) {value} has more digits than checkpoints are named with (6 significant digits, "
                       f"e.g. {v:g}); write λ with at most 6 significant digits")
    return v


def parse_eps(value: Any) -> float:
    """ε in pixel units, in (0, 1]: ``8/255`` or ``0.031``. ``8`` gets "did you mean 8/255?"."""
    v = parse_number(value, "ε (--eps)")
    if v > 1.0:
        hint = f"; did you mean {value}/255?" if float(v).is_integer() and v <= 255 else ""
        raise BadInput(f"ε (--eps) must be in (0, 1] in pixel units such as 8/255, got {value}{hint}")
    if v <= 0.0:
        raise BadInput(f"ε (--eps) must be in (0, 1] in pixel units such as 8/255, got {value}")
    return v


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A zoo model as the CLI and configs write it: ``NAME[@LAM][.TAG]`` (``resnet20``, ``resnet20.s1``,
    ``inresnet20@0.5``, ``inresnet20@0.5.s2``, ``inresnet20@learned.s2``).

    ``name``: the registered model; ``tag``: the trained variant in its one spelling (None for the
    untagged, seed-0 checkpoint; ``s0`` is its alias); ``lam``/``fixes_lam``: the λ written in the name
    (``@LAM``), which replaces the spec's ``lams`` for this model."""

    name: str
    tag: str | None = None
    lam: float | None = None
    fixes_lam: bool = False

    @property
    def model(self) -> str:
        """The table's ``model`` column: the registered name with its tag (``inresnet20.s2``)."""
        from model_zoo.registry import join_tag

        return join_tag(self.name, self.tag)

    def text(self) -> str:
        """The one spelling (what a validated spec holds): λ written so that it reads back exactly."""
        lam = ""
        if self.fixes_lam:
            lam = "@learned" if self.lam is None else "@" + (f"{self.lam:g}" if float(f"{self.lam:g}") == self.lam
                                                             else repr(self.lam))
        return self.name + lam + ("" if self.tag is None else f".{self.tag}")


def parse_model_ref(text: Any) -> ModelRef:
    """``NAME[@LAM][.TAG]`` → :class:`ModelRef`, the name checked against the registry, the tag and λ
    validated; one line naming the problem otherwise."""
    from model_zoo.registry import check_model_name, check_tag, parse_model_name, split_tag

    if not isinstance(text, str) or not text.strip():
        raise BadInput(f"models must be names, got {text!r}")
    t = text.strip()
    base, tag = split_tag(t)
    name, at, lam_text = base.partition("@")
    if not at:
        name, tag = parse_model_name(t)
        return ModelRef(name, tag)
    if "@" in lam_text or not name:
        raise BadInput(f"malformed model {t!r}; write NAME, NAME.TAG, NAME@LAM or NAME@LAM.TAG such as "
                       "inresnet20@0.5.s2")
    if "." in name and split_tag(name)[1] is not None:
        raise BadInput(f"malformed model {t!r}: write the λ before the tag, {split_tag(name)[0]}@{lam_text}."
                       f"{split_tag(name)[1]}")
    check_model_name(name)
    tag = check_tag(tag)
    if lam_text.strip().lower() in ("", "learned", "none"):
        return ModelRef(name, tag, None, True)
    head, dot, tail = lam_text.rpartition(".")
    if tag is None and dot and tail and not tail[0].isdigit():
        check_tag(tail)  # NAME@LAM.TAG with a malformed tag: say so (raises)
    try:
        lam = parse_number(lam_text, "λ")
    except BadInput as e:
        raise BadInput(f"{e} (in the model {t!r})") from None
    if not 0.0 <= lam <= 1.0:
        raise BadInput(f"λ in the model {t!r} must be in [0, 1] or 'learned', e.g. inresnet20@0.5.s2")
    if not _takes_lam(name):
        raise BadInput(f"λ={lam:g} in {t!r} does not apply to {name} (scheme {_scheme(name)}); a fixed λ applies "
                       "to damped and lambda_damped models such as inresnet20@0.5")
    return ModelRef(name, tag, lam, True)


def parse_int(value: Any, what: str, lo: int, hi: int | None = None) -> int:
    """A whole number in [``lo``, ``hi``] (text such as ``"3"`` or an int; never a bool or a fraction)."""
    if isinstance(value, bool):
        v = None
    elif isinstance(value, numbers.Integral):
        v = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit() and value.strip().isascii():
        v = int(value.strip())
    else:
        v = None
    if v is None:
        raise BadInput(f"malformed {what} {value!r}; write a whole number ≥ {lo}")
    if v < lo:
        raise BadInput(f"{what} must be a {'positive ' if lo == 1 else ''}whole number ≥ {lo}, got {value}")
    if hi is not None and v > hi:
        raise BadInput(f"{what} must be a whole number in [{lo}, {hi}], got {value}")
    return v


def parse_severity(value: Any) -> int:
    v = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        v = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        v = int(value.strip())
    if v not in SEVERITIES:
        raise BadInput(f"severity must be one of {', '.join(map(str, SEVERITIES))}, got {value!r}")
    return v


def parse_param(text: str) -> tuple[str, str, Any]:
    """``pgd.steps=50`` → ("pgd", "steps", 50); the value is read as TOML (number, bool, string)."""
    attack, dot, rest = str(text).partition(".")
    key, eq, raw = rest.partition("=")
    if not dot or not eq or not attack.strip() or not key.strip():
        raise BadInput(f"malformed --param {text!r}; write ATTACK.NAME=VALUE such as pgd.steps=50")
    value = raw.strip()  # text unless it reads as a TOML value (a number, true/false, a quoted string)
    if tomllib is not None:
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            pass
    if isinstance(value, str) and "/" in value:
        value = parse_number(value, f"--param {attack}.{key}")  # a fraction such as 2/255
    return attack.strip(), key.strip(), value


def _tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return (value,)
    return tuple(value)


def _freeze_params(params: Any) -> tuple:
    """attack_params as a sorted tuple of (attack, ((name, value), ...)), so the spec is hashable."""
    if not params:
        return ()
    if isinstance(params, tuple):
        params = {a: dict(p) for a, p in params}
    if not isinstance(params, Mapping) or not all(isinstance(v, Mapping) for v in params.values()):
        raise BadInput("attack_params must be a table of tables, e.g. [attack_params.pgd] steps = 20")
    return tuple(sorted((str(a), tuple(sorted((str(k), v) for k, v in p.items()))) for a, p in params.items()))


# -- the spec --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """An evaluation grid and its run settings. ``None`` means "the default":
    eps → 8/255 (with attacks), severities → 1..5 (with corruptions), dataset → samples (or cifar10
    with ``data_dir``), n → the whole split, threads → ``robench.machine.resolve_threads(None)``,
    batch_size → the device kind's (``robench.devices.default_batch_size``: 256 on CPU, 1000 on CUDA).
    ``tf32`` allows TensorFloat-32 convolutions and matmuls on CUDA (off: IEEE float32, deterministic).

    ``modules`` names models given as ``nn.Module`` objects (``robench.evaluate(model=...)``): they
    are not looked up in the zoo and a fixed λ does not apply to them.
    """

    models: tuple = ()
    lams: tuple = (None,)
    attacks: tuple = ()
    eps: tuple | None = None
    attack_params: tuple = ()
    corruptions: tuple = ()
    severities: tuple | None = None
    seeds: tuple = (0,)
    dataset: str | None = None
    data_dir: str | None = None
    corruption_dir: str | None = None
    n: int | None = None
    batch_size: int | None = None
    device: str = "cpu"
    tf32: bool = False
    backend: str | None = None
    threads: int | None = None
    out: str | None = None
    modules: tuple = ()

    def __post_init__(self) -> None:
        for f in ("models", "lams", "attacks", "corruptions", "seeds", "modules"):
            object.__setattr__(self, f, _tuple(getattr(self, f)))
        for f in ("eps", "severities"):
            if getattr(self, f) is not None:
                object.__setattr__(self, f, _tuple(getattr(self, f)))
        object.__setattr__(self, "attack_params", _freeze_params(self.attack_params))
        for f in ("data_dir", "corruption_dir", "out"):
            v = getattr(self, f)
            if isinstance(v, os.PathLike):
                object.__setattr__(self, f, os.fspath(v))

    def replace(self, **changes: Any) -> "EvalSpec":
        return dataclasses.replace(self, **changes)

    def params_of(self, attack: str) -> dict:
        return dict(dict(self.attack_params).get(attack, ()))

    @property
    def dataset_name(self) -> str:
        return self.dataset or ("cifar10" if self.data_dir is not None else "samples")

    def validate(self, *, check_device: bool = True) -> "EvalSpec":
        """Every rule in one place; → the normalised spec (numbers parsed, duplicates dropped,
        defaults filled). Cheap: no data read, no weights loaded (the plan and the model source do that)."""
        def texts(values: tuple, what: str) -> list[str]:
            for v in values:
                if not isinstance(v, str) or not v.strip():
                    raise BadInput(f"{what} must be names, got {v!r}")
            return list(dict.fromkeys(v.strip() for v in values))

        models = texts(self.models, "models")
        if not models:
            raise BadInput("no model given; name at least one (see `robench zoo list`)")
        modules = set(texts(self.modules, "module names"))
        refs: dict[str, ModelRef] = {}
        if any(m not in modules for m in models):
            from robench.plugins import load_plugins

            load_plugins()
            refs = {m: parse_model_ref(m) for m in models if m not in modules}
        models = list(dict.fromkeys(m if m in modules else refs[m].text() for m in models))
        refs = {r.text(): r for r in refs.values()}

        lams = list(dict.fromkeys(parse_lam(v) for v in (self.lams or (None,))))
        fixed = [v for v in lams if v is not None]
        if fixed:
            takes = [r for r in refs.values() if not r.fixes_lam and _takes_lam(r.name)]
            if not takes:
                own = [m for m, r in refs.items() if r.fixes_lam and _takes_lam(r.name)]
                if own:
                    raise BadInput(f"λ={fixed[0]:g} (--lam / lams) conflicts with {', '.join(own)}, which "
                                   f"{'fixes its own' if len(own) == 1 else 'fix their own'} λ; drop --lam, or name "
                                   "the model without @LAM to evaluate it at the --lam values")
                schemes = sorted({_scheme(r.name) for r in refs.values()}) or ["a module"]
                raise BadInput(f"λ={fixed[0]:g} does not apply to {', '.join(models)} (scheme {', '.join(schemes)}); "
                               "a fixed λ applies to damped and lambda_damped models such as inresnet20 or "
                               "lambda_inresnet20")

        attacks = texts(self.attacks, "attacks")
        if self.eps is not None and not attacks:
            from robench.attacks import list_attacks

            raise BadInput(f"ε (--eps) applies to attacks; add --attack (valid choices: {', '.join(list_attacks())})")
        eps = list(dict.fromkeys(parse_eps(e) for e in (self.eps if self.eps is not None else (DEFAULT_EPS,))))
        if not eps:
            raise BadInput("no ε given for the attacks; e.g. --eps 8/255")
        params = dict(self.attack_params)
        if attacks:
            from robench.attacks import backends_for, list_attacks, make_attack

            valid = list_attacks()
            for a in attacks:
                if a not in valid:
                    raise BadInput(f"unknown attack {a!r}{did_you_mean(a, valid)}; valid choices: {', '.join(valid)}")
            stray = sorted(set(params) - set(attacks))
            if stray:
                raise BadInput(f"attack parameters (--param / attack_params) for {', '.join(stray)}, which is not "
                               f"among the attacks ({', '.join(attacks)})")
            for a in attacks:
                if self.backend is not None and self.backend not in backends_for(a):
                    raise BadInput(f"unknown backend {self.backend!r} for attack {a}; valid choices: "
                                   f"{', '.join(backends_for(a))}")
                make_attack(a, eps=eps[0], backend=self.backend, seed=0, **dict(params.get(a, ())))  # checks params
        else:
            if self.backend is not None:
                raise BadInput(f"backend {self.backend!r} given without an attack; add --attack")
            if params:
                raise BadInput(f"attack parameters (--param / attack_params) for {', '.join(sorted(params))} "
                               "given without an attack; add --attack")

        corruptions = texts(self.corruptions, "corruptions")
        if self.severities is not None and not corruptions:
            raise BadInput("severity (--severity) applies to corruptions; add --corruption")
        if self.corruption_dir is not None and not corruptions:
            raise BadInput("--corruption-dir (corruption_dir) needs --corruption naming the corruptions to read")
        severities = list(dict.fromkeys(parse_severity(s) for s in (self.severities or SEVERITIES)))
        if corruptions:
            from robench.corruptions import CIFAR10C_NAMES, MISSING, list_corruptions

            # the published files hold every corruption; on-the-fly generation lacks a few (MISSING)
            valid = list(CIFAR10C_NAMES) if self.corruption_dir is not None else list_corruptions()
            for c in corruptions:
                if c not in valid:
                    why = (f"corruption {c!r} cannot be generated: {MISSING[c]} (read it from CIFAR-10-C with "
                           f"--corruption-dir)") if c in MISSING and self.corruption_dir is None \
                        else f"unknown corruption {c!r}{did_you_mean(c, valid)}"
                    raise BadInput(f"{why}; valid choices: {', '.join(valid)}")

        seeds = list(dict.fromkeys(parse_int(s, "seed (--seed)", 0, SEED_MAX) for s in (self.seeds or (0,))))
        if self.dataset is not None and self.dataset not in DATASETS:
            raise BadInput(f"unknown dataset {self.dataset!r}; valid choices: {', '.join(DATASETS)}")
        for f in ("data_dir", "corruption_dir", "out"):
            v = getattr(self, f)
            if v is not None:
                _check_path(v, f)
        if self.corruption_dir is not None:
            if self.dataset_name == "cifar100":
                raise BadInput("CIFAR-10-C (--corruption-dir) goes with cifar10 models and data, not cifar100")
            from robench.datahome import resolve_data_dir

            if self.dataset_name != "cifar10" or resolve_data_dir("cifar10", self.data_dir) is None:
                raise BadInput("--corruption-dir needs the matching clean CIFAR-10 test split (--data-dir DIR "
                               "holding cifar-10-batches-py/, or --dataset cifar10 after `robench data fetch "
                               "cifar10`), not the 20 bundled samples")
        n = None if self.n is None else parse_int(self.n, "n (--n)", 1)
        if not isinstance(self.device, str) or not self.device:
            raise BadInput(f"device must be a name such as cpu or cuda, got {self.device!r}")
        from robench.devices import default_batch_size, device_kind, resolve_device

        if check_device:
            resolve_device(self.device)
        kind = device_kind(self.device)
        batch_size = default_batch_size(kind) if self.batch_size is None else \
            parse_int(self.batch_size, "batch size (--batch-size)", 1)
        if not isinstance(self.tf32, bool):
            raise BadInput(f"tf32 must be true or false, got {self.tf32!r}")
        if self.tf32 and kind != "cuda":
            raise BadInput(f"--tf32 (tf32) applies to CUDA devices, not {self.device}; drop it or use --device cuda")
        if self.backend is not None and not isinstance(self.backend, str):
            raise BadInput(f"backend must be a name such as art or foolbox, got {self.backend!r}")
        from robench.machine import resolve_threads

        threads = resolve_threads(self.threads)
        return dataclasses.replace(self, models=tuple(models), lams=tuple(lams), attacks=tuple(attacks),
                                   eps=tuple(eps) if attacks else None, attack_params=self.attack_params,
                                   corruptions=tuple(corruptions),
                                   severities=tuple(severities) if corruptions else None, seeds=tuple(seeds),
                                   n=n, batch_size=batch_size, threads=threads)

    def pairs(self) -> list[tuple[str, float | None]]:
        """The (model column, λ) pairs the grid evaluates, in order, each once: a model written
        ``NAME@LAM`` at its own λ; one whose scheme takes λ at each of ``lams``; any other at None."""
        from robench.plugins import load_plugins

        if any(m not in self.modules for m in self.models):
            load_plugins()
        lams = list(dict.fromkeys(parse_lam(v) for v in (self.lams or (None,))))
        fixed = any(v is not None for v in lams)
        out = []
        for m in self.models:
            if m in self.modules:
                out.append((m, None))
                continue
            ref = parse_model_ref(m)
            for lam in ([ref.lam] if ref.fixes_lam else lams if fixed and _takes_lam(ref.name) else [None]):
                out.append((ref.model, lam))
        return list(dict.fromkeys(out))

    def model_columns(self) -> list[str]:
        """The ``model`` column values of the grid, in order (row order of its table)."""
        return list(dict.fromkeys(m for m, _ in self.pairs()))

    def to_dict(self) -> dict:
        """JSON-able form (the config a sweep records in its sweep.json)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "modules"}
        d["attack_params"] = {a: dict(p) for a, p in self.attack_params}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _check_path(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise BadInput(f"{what} must be a non-empty path, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{what} {value.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8; "
                       "use a path of valid UTF-8 characters") from None


def _takes_lam(model: str) -> bool:
    import model_zoo

    return model_zoo.model_info(model).takes_lam


def _scheme(model: str) -> str:
    import model_zoo

    return model_zoo.model_info(model).scheme


# -- TOML ------------------------------------------------------------------------------------
def spec_from_dict(raw: Mapping, source: str = "config") -> EvalSpec:
    """A parsed TOML config → an (unvalidated) spec; only the shape is checked here. Every error
    names ``source``."""
    if not isinstance(raw, Mapping):
        raise BadInput(f"{source}: a config is a TOML table of keys such as models = [\"resnet20\"]")
    unknown = sorted(set(map(str, raw)) - set(CONFIG_KEYS))
    if unknown:
        raise BadInput(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                       f"valid keys: {', '.join(CONFIG_KEYS)}")
    if "models" not in raw:
        raise BadInput(f"{source}: missing key 'models' (a list of registered model names)")
    kw: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("models", "lams", "attacks", "eps", "corruptions", "severities", "seeds"):
            if isinstance(value, Mapping):
                raise BadInput(f"{source}: {key} must be a list, got a table")
            kw[key] = _tuple(value)
        elif key == "attack_params":
            if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
                raise BadInput(f"{source}: attack_params must be a table of tables, e.g. [attack_params.pgd] steps = 20")
            kw[key] = {k: dict(v) for k, v in value.items()}
        elif key in ("dataset", "data_dir", "corruption_dir", "backend", "device", "out"):
            if not isinstance(value, str) or not value:
                raise BadInput(f"{source}: {key} must be a non-empty string, got {value!r}")
            kw[key] = value
        elif key == "tf32":
            if not isinstance(value, bool):
                raise BadInput(f"{source}: tf32 must be true or false, got {value!r}")
            kw[key] = value
        else:  # n, batch_size, threads: whole numbers (validate() says which)
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadInput(f"{source}: {key} must be a whole number, got {value!r}")
            kw[key] = value
    return EvalSpec(**kw)


def load_spec(path: str | os.PathLike) -> EvalSpec:
    """Read a TOML config (``configs/*.toml``) into an unvalidated :class:`EvalSpec`."""
    p = Path(path)
    if not os.path.lexists(p):
        raise BadInput(f"config {p} does not exist")
    if tomllib is None:
        raise BadInput("reading a config needs Python ≥ 3.11 (tomllib) or the tomli package")
    from robench.fileio import read_regular

    text = read_regular(p, limit=MAX_CONFIG_BYTES, what="config")
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"config {p} is not valid TOML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise BadInput(f"config {p} nests arrays or tables too deeply to be a robench config") from None
    return spec_from_dict(raw, source=str(p))
