"""Checkpoints: weights as safetensors, metadata as a JSON model card. Nothing is ever unpickled.

A checkpoint is two files side by side, ``<stem>.safetensors`` and ``<stem>.json``; the stem of a
zoo entry is the model name, plus ``__lam<λ>`` for a fixed-λ model, plus ``.<tag>`` for a tagged
trained variant (timm's ``name.tag``: ``resnet20.s1``, ``inresnet20__lam0.5.s2``; ``sN`` is training
seed N, the untagged name is the seed-0 checkpoint and ``.s0`` is its alias). Its identity covers
everything that changes the function it computes, and which trained variant it is:

- the card records the sha256 of the weights file, recomputed at load;
- the weights file's safetensors header stores the card's architectural fields (name, scheme, λ,
  num_classes, kwargs, normalisation, and the tag when there is one) under ``robench.arch``; they
  must equal the card's, so an edited card no longer passes with the same weights;
- a zoo entry's file name must be the stem of its card's name, λ and tag (a renamed file is
  refused); a seed tag ``sN`` must agree with the card's ``training.seed``;
- the card's scheme must be the registered scheme of its name, the architecture must be within
  :data:`model_zoo.arch.MAX_PARAMETERS` (checked by formula, before anything is allocated), the
  tensors must fit it, and every weight and BatchNorm statistic must be finite (variances ≥ 0);
- both files must be regular files inside their zoo directory after resolving symlinks (a FIFO,
  a device, a directory or a link out of the zoo is refused without being read).

Every card field is validated with a one-line :class:`BadInput`. This module imports torch and
safetensors only inside :func:`save` and :func:`load_entry`: listing the zoo needs neither.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_zoo.arch import check_arch, check_num_classes, check_size
from model_zoo.errors import BadInput
from model_zoo.fileio import (atomic_write_group, read_json, recover_group, regular_file_inside,
                              robench_home, sha256_file)
from model_zoo.registry import (check_model_name, check_tag, create_model, is_model, join_tag, model_entry, model_info,
                                natural_key, parse_model_name, split_tag, tag_seed)
from model_zoo.schemes import get_scheme

if TYPE_CHECKING:
    import torch.nn as nn

SHIPPED_ZOO = Path(__file__).resolve().parent / "weights"
ORIGINS = ("shipped", "user", "file")
ARCH_HEADER_KEY = "robench.arch"
ARCH_FIELDS = ("name", "scheme", "lam", "num_classes", "kwargs", "normalisation", "tag")
_SAFE_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_HEADER = 100 << 20
MAX_CARD_BYTES = 16 << 20


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass
class ModelCard:
    """Flat metadata of one trained model (stored as JSON next to its weights)."""

    name: str
    scheme: str
    lam: float | None
    num_classes: int = 10
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    normalisation: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    damping: list[dict] = dataclasses.field(default_factory=list)
    weights_sha256: str = ""
    robench_version: str = ""
    notes: str = ""
    tag: str | None = None  # the trained variant (``s1``: training seed 1); None: the untagged, seed-0 checkpoint

    @property
    def model(self) -> str:
        """The name a table's ``model`` column carries: ``resnet20`` or ``resnet20.s1``."""
        return join_tag(self.name, self.tag)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def arch(self) -> dict[str, Any]:
        """The fields that decide the function the weights compute, and the tag (stored in the weights'
        header; an untagged card leaves the tag out, so untagged headers are what they were before tags)."""
        return {k: getattr(self, k) for k in ARCH_FIELDS if not (k == "tag" and self.tag is None)}

    def validate(self, where: str = "model card") -> "ModelCard":
        """Check every field's type and range; :class:`BadInput` names the first bad one."""
        def bad(field: str, want: str) -> BadInput:
            return BadInput(f"{where}: {field} must be {want}, got {getattr(self, field)!r}")

        if not isinstance(self.name, str) or not self.name:
            raise bad("name", "a registered model name")
        if not isinstance(self.scheme, str):
            raise bad("scheme", "a scheme name")
        try:
            get_scheme(self.scheme)
        except BadInput as e:
            raise BadInput(f"{where}: {e}") from None
        if self.lam is not None and not (_number(self.lam) and 0 <= self.lam <= 1):
            raise bad("lam", "null (learned) or a number in [0, 1]")
        if not (isinstance(self.num_classes, int) and not isinstance(self.num_classes, bool)):
            raise bad("num_classes", "an integer")
        try:
            check_num_classes(self.num_classes)
        except BadInput as e:
            raise BadInput(f"{where}: {e}") from None
        for field in ("kwargs", "dataset", "normalisation", "training", "metrics"):
            v = getattr(self, field)
            if not (isinstance(v, dict) and all(isinstance(k, str) for k in v)):
                raise bad(field, "a JSON object")
        if not (isinstance(self.damping, list) and all(isinstance(d, dict) for d in self.damping)):
            raise bad("damping", "a list of objects")
        if not (isinstance(self.weights_sha256, str) and _SHA256.match(self.weights_sha256)):
            raise bad("weights_sha256", "64 lowercase hex digits")
        for field in ("robench_version", "notes"):
            if not isinstance(getattr(self, field), str):
                raise bad(field, "a string")
        if self.tag is not None:
            try:
                tag = check_tag(self.tag)
            except BadInput as e:
                raise BadInput(f"{where}: {e}") from None
            if tag is None:
                raise bad("tag", "null for the seed-0 checkpoint (s0 is the untagged name)")
        seed, named = self.training.get("seed"), tag_seed(self.tag)
        if self.tag is not None and named is not None and seed is not None and seed != named:
            raise BadInput(f"{where}: tag {self.tag} names training seed {named} but training.seed is {seed!r}")
        acc = self.metrics.get("test_acc")
        if acc is not None and not (_number(acc) and 0 <= acc <= 1):
            raise BadInput(f"{where}: metrics.test_acc must be a number in [0, 1], got {acc!r}")
        norm = self.normalisation
        if norm and not (set(norm) == {"mean", "std"} and all(
                isinstance(norm[k], list) and len(norm[k]) == 3 and all(_number(x) for x in norm[k]) for k in norm)):
            raise BadInput(f"{where}: normalisation must be {{\"mean\": [3 numbers], \"std\": [3 numbers]}}, got {norm!r}")
        return self

    @classmethod
    def from_file(cls, path: Path) -> "ModelCard":
        data = read_json(path, what="model card", limit=MAX_CARD_BYTES)  # bounded; deep nesting is BadInput
        if not isinstance(data, dict):
            raise BadInput(f"model card {path} is not a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = {"name", "scheme", "lam", "weights_sha256"} - data.keys()
        if missing:
            raise BadInput(f"model card {path} lacks {', '.join(sorted(missing))}")
        card = cls(**{k: v for k, v in data.items() if k in fields})
        card.validate(f"model card {path}")
        if card.lam is not None:
            card.lam = float(card.lam)
        return card


def robench_version() -> str:
    """The installed robench distribution's version (read from package metadata, not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("robench")
    except PackageNotFoundError:
        return "unknown"


def zoo_stem(name: str, lam: float | None, tag: str | None = None) -> str:
    """File stem of a zoo entry: ``inresnet20`` (learned λ), ``inresnet20__lam0.25`` (fixed), plus
    ``.<tag>`` for a tagged variant (``inresnet20__lam0.5.s2``, ``resnet20.s1``). ``name`` may carry
    its tag itself (``resnet20.s1``, a table's model column); ``s0`` is the untagged name."""
    base, own = split_tag(name)
    if own is not None:
        if tag is not None and check_tag(tag) != check_tag(own):
            raise BadInput(f"model {name!r} carries tag {own!r} but tag {tag!r} was given")
        tag = own
    tag = check_tag(tag)
    stem = base if lam is None else f"{base}__lam{float(lam):g}"
    return stem if tag is None else f"{stem}.{tag}"


def train_command(name: str, lam: float | None) -> str:
    """The ``robench train`` command that makes the checkpoint of a (tagged) model name and λ: a seed tag
    ``sN`` is ``--seed N`` (train tags seed N with sN), any other tag ``--tag``."""
    base, tag = split_tag(name)
    tag = check_tag(tag)
    seed = tag_seed(tag)
    return (f"robench train --model {base}" + ("" if lam is None else f" --lam {float(lam):g}")
            + ("" if tag is None else f" --seed {seed}" if seed is not None else f" --tag {tag}"))


def missing_weights_message(pairs: list[tuple[str, float | None]]) -> str:
    """The one line for (model, λ) pairs without trained weights: what is missing, the checkpoints that
    do exist of those models and λ (their tags), and the ``robench train`` command of each."""
    stems = [zoo_stem(m, lam) for m, lam in pairs]
    have = []
    for m, lam in dict.fromkeys((split_tag(m)[0], lam) for m, lam in pairs):
        found = sorted({r.card.model for r in available(m) if r.name == m and r.lam == lam},
                       key=lambda x: (x != m, natural_key(x)))
        if found:
            at = "" if lam is None else f" at λ={float(lam):g}"
            have.append(f"{m}{at} has {', '.join(found)}")
    cmds = ", ".join(f"`{train_command(m, lam)}`" for m, lam in pairs)
    return (f"no trained weights for {', '.join(stems)} in the zoo ({' or '.join(str(d) for d in zoo_dirs())})"
            + (f"; {'; '.join(have)}" if have else "") + f"; train {'it' if len(pairs) == 1 else 'them'} with {cmds}")


def user_zoo() -> Path:
    """``$ROBENCH_HOME/zoo`` (:func:`model_zoo.fileio.robench_home`)."""
    return robench_home() / "zoo"


def zoo_dirs() -> list[Path]:
    """Search order: the user's zoo (their own training wins), then the weights shipped in the package."""
    return [user_zoo(), SHIPPED_ZOO]


def _zoo_roots() -> list[tuple[str, Path]]:
    return [("user", user_zoo()), ("shipped", SHIPPED_ZOO)]


def shipped_path(name: str, lam: float | None, tag: str | None = None) -> Path | None:
    """The shipped weights of that model, λ and tag, or None (``robench train`` warns before shadowing them)."""
    p = SHIPPED_ZOO / (zoo_stem(name, lam, tag) + ".json")
    return p.with_suffix(".safetensors") if os.path.lexists(p) else None


# -- where a checkpoint is -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Location:
    stem: Path
    root: Path
    origin: str


def _locate(name_or_path: str | os.PathLike, *, lam: float | None = None) -> _Location | None:
    p = Path(name_or_path)
    if p.suffix in (".safetensors", ".json") or os.path.lexists(p) or os.sep in str(name_or_path):
        if p.suffix in (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"):
            raise BadInput(f"{p} is a pickle-style checkpoint; robench loads only .safetensors with a .json card "
                           "(a state dict from the papers' code: `robench zoo import`)")
        stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
        if not os.path.lexists(stem.parent / (stem.name + ".json")):
            raise BadInput(f"no model card {stem}.json next to the weights")
        root = stem.parent
        origin = next((o for o, r in _zoo_roots() if root.resolve() == r.resolve()), "file")
        recover_group(stem.parent / (stem.name + ".json"))
        return _Location(stem, root, origin)
    name, tag = parse_model_name(str(name_or_path))
    file_stem = zoo_stem(name, lam, tag)
    if not _SAFE_STEM.match(file_stem):
        raise BadInput(f"invalid checkpoint name {file_stem!r}")
    for origin, root in _zoo_roots():
        if os.path.lexists(root / (file_stem + ".json")) or os.path.lexists(root / f".{file_stem}.commit"):
            recover_group(root / (file_stem + ".json"))  # finish a save or upgrade a kill interrupted
            if os.path.lexists(root / (file_stem + ".json")):
                return _Location(root / file_stem, root, origin)
    return None


def resolve(name_or_path: str | os.PathLike, *, lam: float | None = None) -> Path | None:
    """The stem of the checkpoint for a model name (tagged or not, +λ) or a path; None when no weights exist."""
    loc = _locate(name_or_path, lam=lam)
    return None if loc is None else loc.stem


def _read_card(loc: _Location) -> tuple[ModelCard, Path]:
    card_path = regular_file_inside(loc.stem.parent / (loc.stem.name + ".json"), loc.root, "model card")
    return ModelCard.from_file(card_path), card_path


def load_card(name_or_path: str | os.PathLike, *, lam: float | None = None) -> ModelCard | None:
    loc = _locate(name_or_path, lam=lam)
    return None if loc is None else _read_card(loc)[0]


# -- the architecture header -----------------------------------------------------------------
def _canonical(arch: dict) -> str:
    return json.dumps(arch, sort_keys=True, separators=(",", ":"))


def read_header_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its header without loading tensors."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 0 < n <= _MAX_HEADER:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadInput(f"{path} is not a readable safetensors file: {type(e).__name__}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if isinstance(meta, dict) and not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise BadInput(f"{path} is not a readable safetensors file: its __metadata__ must map text to text")
    return meta if isinstance(meta, dict) else {}


def _check_header(weights: Path, card: ModelCard) -> None:
    raw = read_header_metadata(weights).get(ARCH_HEADER_KEY)
    if raw is None:
        raise BadInput(f"{weights} has no {ARCH_HEADER_KEY} header, so its card cannot be verified (saved by an "
                       f"older robench); if you trust its card, run `robench zoo upgrade {weights}`")
    try:
        stored = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadInput(f"{weights}: its {ARCH_HEADER_KEY} header is not JSON") from None
    if not isinstance(stored, dict):
        raise BadInput(f"{weights}: its {ARCH_HEADER_KEY} header is not a JSON object")
    ours = json.loads(_canonical(card.arch()))
    differ = [k for k in ARCH_FIELDS if stored.get(k) != ours.get(k)]
    if differ:
        detail = "; ".join(f"{k}: card {ours.get(k)!r}, weights {stored.get(k)!r}" for k in differ)
        raise BadInput(f"the card of {weights} does not match the architecture saved with the weights ({detail}); "
                       "the card was edited or belongs to other weights")


def _check_card_against_registry(card: ModelCard, where: str) -> dict[str, Any] | None:
    """The card's name must be registered with the card's scheme; returns the full arch (family models)."""
    check_model_name(card.name)
    info = model_info(card.name)
    if card.scheme != info.scheme:
        raise BadInput(f"{where}: the card says scheme {card.scheme!r} but {card.name} is registered as "
                       f"{info.scheme!r}; these weights are not a {card.name}")
    if card.lam is not None and not info.takes_lam:
        raise BadInput(f"{where}: λ={card.lam:g} does not apply to {card.name} (scheme {info.scheme!r})")
    entry = model_entry(card.name)
    if entry.arch is None:
        return None
    try:
        arch = check_arch({**entry.arch, **card.kwargs})
        check_size(arch, scheme=card.scheme, lam=card.lam, num_classes=card.num_classes, what=card.name)
    except BadInput as e:
        raise BadInput(f"{where}: {e}") from None
    return arch


# -- save / load -----------------------------------------------------------------------------
def _card_for(model: "nn.Module", card: ModelCard | dict | None, name: str) -> ModelCard:
    scheme = getattr(model, "scheme", None)
    base = dict(
        name=name,
        scheme=str(scheme) if scheme is not None else model_info(name).scheme,
        lam=getattr(model, "lam", None),
        num_classes=getattr(model, "num_classes", 10),
        normalisation={"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
        if hasattr(model, "mean") else {},
        damping=model.damping() if hasattr(model, "damping") else [],
    )
    extra = dataclasses.asdict(card) if isinstance(card, ModelCard) else dict(card or {})
    for key in ("name", "scheme", "lam", "num_classes", "normalisation", "damping", "tag"):
        extra.pop(key, None)  # the model itself is the authority on these; save's tag= on the tag
    return ModelCard(**{**base, **extra})


def _card_name(card: ModelCard | dict | None) -> str | None:
    if isinstance(card, ModelCard):
        return card.name
    return (card or {}).get("name")


def save(model: "nn.Module", path: str | os.PathLike, card: ModelCard | dict | None = None, *,
         name: str | None = None, tag: str | None = None) -> ModelCard:
    """Write ``<path>.safetensors`` and ``<path>.json`` atomically; returns the card written.

    ``name`` is the registered model name the weights are for (default: ``card["name"]``, else the
    model part of a zoo stem such as ``inresnet20__lam0.5``); the model's scheme must be that name's
    registered scheme. ``tag`` names a trained variant (``s1`` for training seed 1, see
    :func:`model_zoo.seed_tag`; None or ``s0``: the untagged, seed-0 checkpoint); it goes on the card
    and into the weights' header. A zoo entry's stem is :func:`zoo_stem` ``(name, lam, tag)``, e.g.
    ``inresnet20__lam0.5.s2``; a ``path`` whose file name is a zoo stem of this model must be exactly
    that one. A card's ``training.seed`` other than 0 needs its seed tag (or another tag), since the
    untagged name is the seed-0 checkpoint. ``path`` may name either file or the stem.
    """
    from safetensors.torch import save_file

    stem = Path(path)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    from_stem = split_tag(stem.name)[0].split("__lam")[0]
    name = name or _card_name(card) or (from_stem if is_model(from_stem) else None)
    if not name:
        raise BadInput("model_zoo.save needs the registered model name: pass name=... (or a card with a name, "
                       "or a zoo stem such as resnet20 / inresnet20__lam0.5)")
    check_model_name(name)
    given = card.tag if isinstance(card, ModelCard) else (card or {}).get("tag")
    if given is not None and tag is not None and check_tag(given) != check_tag(tag):
        raise BadInput(f"model_zoo.save: the card says tag {given!r} but tag={tag!r} was given")
    tag = check_tag(tag if tag is not None else given)
    card = _card_for(model, card, name)
    card.tag = tag
    if from_stem == name:  # a zoo stem of this model: the file name must say its λ and tag
        want = zoo_stem(name, card.lam, tag)
        if stem.name != want:
            raise BadInput(f"model_zoo.save: the file name {stem.name} does not match the checkpoint {name}"
                           + ("" if card.lam is None else f" at λ={card.lam:g}") + f" with tag {tag or 'none'} "
                           f"(its zoo stem is {want}; pass the matching tag=, or save to {stem.parent / want})")
    seed = card.training.get("seed")
    if tag is None and isinstance(seed, int) and not isinstance(seed, bool) and seed != 0:
        raise BadInput(f"model_zoo.save: {name} was trained with seed {seed} but has no tag; the untagged name is "
                       f"the seed-0 checkpoint, so pass tag='s{seed}' (model_zoo.seed_tag({seed}))")
    stem.parent.mkdir(parents=True, exist_ok=True)
    _check_card_against_registry(dataclasses.replace(card, weights_sha256="0" * 64).validate(f"card for {name}"), name)
    card.robench_version = robench_version()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _check_finite(tensors, None, name=name)  # an entry every load would refuse must not be written
    weights = stem.parent / (stem.name + ".safetensors")

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata={"format": "pt", ARCH_HEADER_KEY: _canonical(card.arch())})
        card.weights_sha256 = sha256_file(tmp)

    # weights and card change together (one commit point): a kill never leaves a card of other weights
    atomic_write_group([(weights, write), (stem.parent / (stem.name + ".json"),
                                           lambda tmp: Path(tmp).write_text(card.to_json(), encoding="utf-8"))],
                       what="checkpoint")
    return card


def upgrade(path: str | os.PathLike) -> ModelCard:
    """Add the architecture header to a checkpoint saved before robench wrote one.

    The weights must match the card's sha256 (they are what the card was written for); the tensors
    are rewritten byte for byte with the card's architectural fields in the header, and the card's
    ``weights_sha256`` is updated (no other card field changes). The card is trusted as it is: run
    this only on checkpoints you made. Returns the updated card.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    stem = Path(path)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    loc = _Location(stem, stem.parent, "file")
    card, card_path = _read_card(loc)
    weights = regular_file_inside(stem.parent / (stem.name + ".safetensors"), stem.parent, "weights file")
    if sha256_file(weights) != card.weights_sha256:
        raise BadInput(f"{weights}: sha256 does not match its card; only intact checkpoints are upgraded")
    if ARCH_HEADER_KEY in read_header_metadata(weights):
        raise BadInput(f"{weights} already has its {ARCH_HEADER_KEY} header")
    _check_card_against_registry(card, str(card_path))
    try:
        tensors = load_file(str(weights))
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInput(f"{weights} is not a readable safetensors file: {e}") from None
    raw = read_json(card_path, what="model card", limit=MAX_CARD_BYTES)

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata={**meta, ARCH_HEADER_KEY: _canonical(card.arch())})
        raw["weights_sha256"] = card.weights_sha256 = sha256_file(tmp)

    # one commit point: a kill leaves the old pair (upgradable again) or the new one, never a mix
    atomic_write_group([(stem.parent / (stem.name + ".safetensors"), write),
                        (stem.parent / (stem.name + ".json"),
                         lambda tmp: Path(tmp).write_text(json.dumps(raw, indent=1, sort_keys=True) + "\n",
                                                          encoding="utf-8"))], what="checkpoint")
    return card


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A loaded checkpoint as one record: the module (eval mode), its card, where it came from
    ("shipped": model_zoo/weights, "user": the user zoo, "file": a path given directly), the weights
    file, and the sha256 of the card file."""

    model: "nn.Module"
    card: ModelCard
    origin: str
    path: Path
    card_sha256: str


def _check_finite(state: dict, weights: Path | None, *, name: str | None = None) -> None:
    import torch

    bad = [k for k, t in state.items() if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    bad += [k for k, t in state.items() if k.endswith("running_var") and bool((t < 0).any()) and k not in bad]
    if bad:
        where = f"{weights} holds" if weights is not None else f"the {name} to save has"
        raise BadInput(f"{where} non-finite weights or negative BatchNorm variances in "
                       f"{', '.join(bad[:3])}{'…' if len(bad) > 3 else ''}; refused"
                       + ("" if weights is not None else " (nothing written: a diverged training run or a NaN in the "
                          "source file)"))


def load_entry(name_or_path: str | os.PathLike, *, lam: float | None = None, map_location: str = "cpu") -> ZooEntry:
    """Verify and load a checkpoint; returns the model (eval mode, on ``map_location``) with its card and origin.

    ``name_or_path``: a registered model name, tagged or not (``resnet20``, ``resnet20.s1``; with
    ``lam`` for a fixed-λ entry), or the path of a checkpoint. Raises :class:`BadInput` when no
    trained weights exist (naming the tags that do) or any check of the module docstring fails.
    """
    loc = _locate(name_or_path, lam=lam)
    if loc is None:
        raise BadInput(missing_weights_message([(str(name_or_path), lam)]))
    card, card_path = _read_card(loc)
    if loc.origin != "file" and zoo_stem(card.name, card.lam, card.tag) != loc.stem.name:
        raise BadInput(f"{card_path}: the card is for {zoo_stem(card.name, card.lam, card.tag)}, not "
                       f"{loc.stem.name}; a zoo entry's file name must match its card")
    weights_link = loc.stem.parent / (loc.stem.name + ".safetensors")
    if not os.path.lexists(weights_link):
        raise BadInput(f"weights file {weights_link} is missing")
    weights = regular_file_inside(weights_link, loc.root, "weights file")
    digest = sha256_file(weights)
    if digest != card.weights_sha256:
        raise BadInput(f"{weights_link}: sha256 {digest[:12]}… does not match its card ({card.weights_sha256[:12]}…); "
                       "the file is corrupt or was modified")
    _check_header(weights_link, card)
    _check_card_against_registry(card, str(card_path))

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInput(f"{weights_link} is not a readable safetensors file: {e}") from None
    _check_finite(state, weights_link)
    model = create_model(card.name, num_classes=card.num_classes, lam=card.lam, **card.kwargs)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{'…' if len(keys) > 3 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("wrong shape", bad_shape)) if keys)
        raise BadInput(f"{weights_link} does not fit {card.name} (lam={card.lam}) on its card: {detail}")
    if card.normalisation and hasattr(model, "mean"):
        built = {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
        if built != card.normalisation:
            raise BadInput(f"{card_path}: normalisation {card.normalisation} differs from the model's {built}")
    model.load_state_dict(state)
    model.to(map_location)  # load_state_dict copies into the CPU-built module: move the module itself
    return ZooEntry(model=model.eval(), card=card, origin=loc.origin, path=weights_link,
                    card_sha256=sha256_file(card_path))


def load(name_or_path: str | os.PathLike, *, lam: float | None = None, map_location: str = "cpu") -> "nn.Module":
    """Build the model named by the card and load its verified weights (eval mode); see :func:`load_entry`."""
    return load_entry(name_or_path, lam=lam, map_location=map_location).model


# -- what the zoos hold ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ZooRecord:
    """One checkpoint found in a zoo directory (card read and validated, weights not loaded)."""

    card: ModelCard
    origin: str        # "user" or "shipped"
    path: Path         # the weights file
    card_path: Path

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def lam(self) -> float | None:
        return self.card.lam

    @property
    def tag(self) -> str | None:
        return self.card.tag

    @property
    def model(self) -> str:
        """The tagged name (``resnet20.s1``): what a table's ``model`` column carries."""
        return self.card.model

    @property
    def weights_sha256(self) -> str:
        return self.card.weights_sha256


@dataclasses.dataclass(frozen=True)
class ZooProblem:
    """A file in a zoo directory that is not a usable checkpoint, and why."""

    origin: str
    path: Path
    problem: str


def _matches(name: str, tag: str | None, pattern: str) -> bool:
    """A checkpoint matches a pattern by its model name (every tag of it) or by its tagged name."""
    return fnmatch.fnmatchcase(name, pattern) or (tag is not None and fnmatch.fnmatchcase(f"{name}.{tag}", pattern))


def scan_zoo(pattern: str = "*", *, origin: str | None = None) -> tuple[list[ZooRecord], list[ZooProblem]]:
    """Every checkpoint in the zoo directories, user zoo first (a user entry hides the shipped one of
    the same stem), and the cards that could not be used, with the one-line reason. ``pattern``
    matches the model name (``resnet20``: all its tags) or the tagged name (``*.s1``)."""
    if origin is not None and origin not in ("user", "shipped"):
        raise BadInput(f"unknown zoo origin {origin!r}; valid choices: user, shipped")
    seen: dict[str, ZooRecord] = {}
    problems: list[ZooProblem] = []
    for where, root in _zoo_roots():
        if origin not in (None, where) or not root.is_dir():
            continue
        for journal in sorted(root.glob(".*.commit")):  # saves or upgrades a kill interrupted
            try:
                recover_group(root / (journal.name[1:-len(".commit")] + ".json"))
            except BadInput as e:
                problems.append(ZooProblem(where, journal, str(e)))
        for card_link in sorted(root.glob("*.json")):
            stem = card_link.with_suffix("")
            try:
                card_path = regular_file_inside(card_link, root, "model card")
                card = ModelCard.from_file(card_path)
                _check_card_against_registry(card, str(card_link))
                if card_link.stem != zoo_stem(card.name, card.lam, card.tag):
                    raise BadInput(f"{card_link}: its file name does not match the card "
                                   f"(expected {zoo_stem(card.name, card.lam, card.tag)}.json)")
                weights = stem.parent / (stem.name + ".safetensors")
                regular_file_inside(weights, root, "weights file")
            except BadInput as e:
                base, tag = split_tag(card_link.stem)
                base = base.split("__lam")[0]
                if _matches(base, tag, pattern):
                    problems.append(ZooProblem(where, card_link, str(e)))
                continue
            key = zoo_stem(card.name, card.lam, card.tag)
            if _matches(card.name, card.tag, pattern) and key not in seen:
                seen[key] = ZooRecord(card=card, origin=where, path=weights, card_path=card_link)
    return list(seen.values()), problems


def available(pattern: str = "*", *, origin: str | None = None) -> list[ZooRecord]:
    """The usable checkpoints whose model name matches ``pattern``: with ``origin`` None both zoos,
    where a user entry hides the shipped one of the same stem; "user" or "shipped": all of that zoo."""
    return scan_zoo(pattern, origin=origin)[0]
