"""Models ready to evaluate: zoo checkpoints through ``model_zoo.load_entry`` or modules the user
gives, in eval mode on the device, parameters frozen, in the memory format of the device kind
(:func:`robench.devices.memory_format`),
with the provenance columns of their rows (scheme, λ, origin, weights and card sha256)."""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Mapping, Sequence

import torch

from robench.devices import memory_format, resolve_device, to_format  # noqa: F401  (memory_format, to_format re-exported)
from robench.errors import BadInput


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to evaluate (eval mode, on the device, parameters frozen) with the provenance
    columns of its rows."""

    module: torch.nn.Module
    scheme: str
    lam: float  # the table's λ: the fixed value, 0.0 for forward Euler, NaN when learned / not one number
    origin: str  # shipped | user | file | module
    path: str | None
    weights_sha256: str | None
    card_sha256: str | None
    num_classes: int | None = None

    def describe(self, name: str) -> str:
        return f"{name} ({self.origin}{', ' + self.path if self.path else ''})"


def module_sha256(module: torch.nn.Module) -> str:
    """A fingerprint of a module's parameters and buffers (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _table_lam(scheme: str, lam: float | None) -> float:
    if lam is not None:
        return float(lam)
    return 0.0 if scheme == "euler" else math.nan  # forward Euler is λ=0; learned/LM: not one number


class ModelCache:
    """Each (model, λ) once: from the zoo via ``model_zoo.load_entry`` (sha256-verified), or a module
    the caller gave (``modules``: name → nn.Module); in eval mode on the device, parameters frozen."""

    def __init__(self, device: str | torch.device = "cpu", modules: Mapping[str, torch.nn.Module] | None = None) -> None:
        self.device = resolve_device(device)
        self.modules = dict(modules or {})
        self._models: dict[tuple[str, float | None], LoadedModel] = {}

    def check_weights(self, pairs: Sequence[tuple[str, float | None]]) -> None:
        """Every zoo (model, λ) has trained weights; the missing ones are named together, each with
        the command that trains it."""
        from model_zoo.checkpoint import resolve, zoo_stem

        missing = [(m, lam) for m, lam in dict.fromkeys(pairs) if m not in self.modules and resolve(m, lam=lam) is None]
        if missing:
            hints = ", ".join(f"`robench train --model {m}" + ("" if lam is None else f" --lam {lam:g}") + "`"
                              for m, lam in missing)
            raise BadInput(f"no trained weights for {', '.join(zoo_stem(m, lam) for m, lam in missing)} in the zoo; "
                           f"train them with {hints}")

    def get(self, model: str, lam: float | None) -> LoadedModel:
        key = (model, None if lam is None else float(lam))
        if key not in self._models:
            if model in self.modules:
                net = self.modules[model]
                loaded = dict(module=net, scheme="unknown", lam=math.nan, origin="module", path=None,
                              weights_sha256=module_sha256(net), card_sha256=None, num_classes=None)
            else:
                import model_zoo

                entry = model_zoo.load_entry(model, lam=key[1], map_location="cpu")
                net = entry.model
                loaded = dict(module=net, scheme=str(entry.card.scheme), lam=_table_lam(str(entry.card.scheme), entry.card.lam),
                              origin=entry.origin, path=str(entry.path), weights_sha256=entry.card.weights_sha256 or None,
                              card_sha256=entry.card_sha256, num_classes=int(entry.card.num_classes))
            # attacks need gradients w.r.t. the input only
            net.to(self.device, memory_format=memory_format(self.device)).eval().requires_grad_(False)
            self._models[key] = LoadedModel(**loaded)
        return self._models[key]


def check_module(name: str, module: torch.nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """A user's module must be an nn.Module mapping [0,1] images (N, 3, H, W) to finite logits of
    shape (N, classes of the data)."""
    if not isinstance(module, torch.nn.Module):
        raise BadInput(f"model {name!r} must be a torch nn.Module mapping [0,1] images to logits, "
                       f"got {type(module).__name__}")
    with torch.inference_mode():
        try:
            out = module(x[:2])
        except Exception as e:  # arbitrary user code: any failure means "this module cannot classify the data"
            raise BadInput(f"model {name!r} fails on a batch of {tuple(x[:2].shape)} [0,1] images: "
                           f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape != (len(x[:2]), num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInput(f"model {name!r} must return logits of shape (N, {num_classes}) for this data, got {shape}")
    if not torch.isfinite(out).all():
        raise BadInput(f"model {name!r} returns non-finite logits (NaN or Inf) on clean images")
