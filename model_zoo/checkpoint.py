"""Checkpoints: weights as safetensors, metadata as a JSON model card. Nothing is ever unpickled.

A checkpoint is two files side by side, ``<stem>.safetensors`` and ``<stem>.json``; the stem of a
zoo entry is the model name, plus ``__lam<λ>`` for a fixed-λ model. The card records the sha256 of
the weights file; loading recomputes it and refuses a mismatch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model_zoo.registry import check_model_name, create_model
from robench.errors import BadInput
from robench.fileio import atomic_write_text, sha256_file

SHIPPED_ZOO = Path(__file__).resolve().parent / "weights"
_SAFE_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


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

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> "ModelCard":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadInput(f"model card {path} is unreadable: {e}") from None
        if not isinstance(data, dict):
            raise BadInput(f"model card {path} is not a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = {"name", "scheme", "lam", "weights_sha256"} - data.keys()
        if missing:
            raise BadInput(f"model card {path} lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in fields})


def robench_version() -> str:
    from robench import __version__

    return __version__


def zoo_stem(name: str, lam: float | None) -> str:
    """File stem of a zoo entry: ``inresnet20`` (learned λ) or ``inresnet20__lam0.25`` (fixed)."""
    return name if lam is None else f"{name}__lam{float(lam):g}"


def user_zoo() -> Path:
    """``$ROBENCH_HOME/zoo``; ROBENCH_HOME defaults to ``$XDG_CACHE_HOME/robench`` (~/.cache/robench)."""
    home = os.environ.get("ROBENCH_HOME")
    if not home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(cache, "robench")
    return Path(home) / "zoo"


def zoo_dirs() -> list[Path]:
    """Search order: the user's zoo (their own training wins), then the weights shipped in the package."""
    return [user_zoo(), SHIPPED_ZOO]


def _inside(path: Path, root: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BadInput(f"{path} escapes the zoo directory {root}")
    return resolved


def _card_for(model: nn.Module, card: ModelCard | dict | None) -> ModelCard:
    base = dict(
        name=getattr(model, "model_name", type(model).__name__),
        scheme=getattr(getattr(model, "scheme", None), "value", "euler"),
        lam=getattr(model, "lam", None),
        num_classes=getattr(model, "num_classes", 10),
        normalisation={"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
        if hasattr(model, "mean") else {},
        damping=model.damping() if hasattr(model, "damping") else [],
    )
    extra = dataclasses.asdict(card) if isinstance(card, ModelCard) else dict(card or {})
    for key in ("name", "scheme", "lam", "num_classes", "normalisation", "damping"):
        extra.pop(key, None)  # the model itself is the authority on these
    return ModelCard(**{**base, **extra})


def save(model: nn.Module, path: str | os.PathLike, card: ModelCard | dict | None = None) -> ModelCard:
    """Write ``<path>.safetensors`` and ``<path>.json`` atomically; returns the card written.

    ``path`` may name either file or the common stem.
    """
    stem = Path(path)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    card = _card_for(model, card)
    card.robench_version = robench_version()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = stem.parent / (stem.name + ".safetensors")
    fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})  # one key: byte-identical files for identical weights
        card.weights_sha256 = sha256_file(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, weights)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    atomic_write_text(stem.parent / (stem.name + ".json"), card.to_json())
    return card


def resolve(name_or_path: str | os.PathLike, *, lam: float | None = None) -> Path | None:
    """The stem of the checkpoint for a model name (+λ) or a path; None when no weights exist."""
    p = Path(name_or_path)
    if p.suffix in (".safetensors", ".json") or p.exists() or os.sep in str(name_or_path):
        if p.suffix in (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"):
            raise BadInput(f"{p} is a pickle-style checkpoint; robench loads only .safetensors with a .json card")
        stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
        if not (stem.parent / (stem.name + ".json")).exists():
            raise BadInput(f"no model card {stem}.json next to the weights")
        return stem
    name = str(name_or_path)
    check_model_name(name)
    file_stem = zoo_stem(name, lam)
    if not _SAFE_STEM.match(file_stem):
        raise BadInput(f"invalid checkpoint name {file_stem!r}")
    for root in zoo_dirs():
        cand = root / file_stem
        if (root / (file_stem + ".json")).exists():
            _inside(root / (file_stem + ".json"), root)
            return cand
    return None


def load_card(name_or_path: str | os.PathLike, *, lam: float | None = None) -> ModelCard | None:
    stem = resolve(name_or_path, lam=lam)
    return None if stem is None else ModelCard.from_file(stem.parent / (stem.name + ".json"))


def load(name_or_path: str | os.PathLike, *, lam: float | None = None, map_location: str = "cpu") -> nn.Module:
    """Build the model named by the card and load its verified weights (eval mode).

    Raises :class:`BadInput` when no trained weights exist, the sha256 does not match, the file is not
    safetensors, or the weights do not fit the architecture on the card.
    """
    stem = resolve(name_or_path, lam=lam)
    if stem is None:
        hint = f"robench train --model {name_or_path}" + ("" if lam is None else f" --lam {lam:g}")
        raise BadInput(f"no trained weights for {zoo_stem(str(name_or_path), lam)} in "
                       f"{' or '.join(str(d) for d in zoo_dirs())}; train them with `{hint}`")
    card = ModelCard.from_file(stem.parent / (stem.name + ".json"))
    weights = stem.parent / (stem.name + ".safetensors")
    if not weights.exists():
        raise BadInput(f"weights file {weights} is missing")
    digest = sha256_file(weights)
    if digest != card.weights_sha256:
        raise BadInput(f"{weights}: sha256 {digest[:12]}… does not match its card ({card.weights_sha256[:12]}…); "
                       "the file is corrupt or was modified")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInput(f"{weights} is not a readable safetensors file: {e}") from None
    check_model_name(card.name)
    model = create_model(card.name, num_classes=card.num_classes, lam=card.lam, **card.kwargs)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{'…' if len(keys) > 3 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("wrong shape", bad_shape)) if keys)
        raise BadInput(f"{weights} does not fit {card.name} (lam={card.lam}) on its card: {detail}")
    model.load_state_dict(state)
    model.card = card
    return model.eval()


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A loaded checkpoint as one record: the module (eval mode), its card, where it came from
    ("shipped": model_zoo/weights, "user": the user zoo, "file": a path given directly), the weights
    file, and the sha256 of the card file."""

    model: nn.Module
    card: ModelCard
    origin: str
    path: Path
    card_sha256: str


def _origin(stem: Path) -> str:
    parent = stem.parent.resolve()
    if parent == SHIPPED_ZOO.resolve():
        return "shipped"
    if parent == user_zoo().resolve():
        return "user"
    return "file"


def load_entry(name_or_path: str | os.PathLike, *, lam: float | None = None, map_location: str = "cpu") -> ZooEntry:
    """As :func:`load`, but returns the model together with its card and origin (:class:`ZooEntry`)."""
    stem = resolve(name_or_path, lam=lam)
    model = load(name_or_path, lam=lam, map_location=map_location)
    return ZooEntry(model=model, card=model.card, origin=_origin(stem),
                    path=stem.parent / (stem.name + ".safetensors"),
                    card_sha256=sha256_file(stem.parent / (stem.name + ".json")))


def available(pattern: str = "*") -> list[ModelCard]:
    """Cards of every checkpoint in the zoo directories (user zoo first; a user entry hides a shipped one)."""
    import fnmatch

    seen: dict[str, ModelCard] = {}
    for root in zoo_dirs():
        if not root.is_dir():
            continue
        for card_path in sorted(root.glob("*.json")):
            try:
                card = ModelCard.from_file(card_path)
            except BadInput:
                continue  # an unreadable card is reported when that checkpoint is loaded
            key = zoo_stem(card.name, card.lam)
            if fnmatch.fnmatchcase(card.name, pattern) and key not in seen:
                seen[key] = dataclasses.replace(card, dataset={**card.dataset, "zoo": str(root)})
    return list(seen.values())
