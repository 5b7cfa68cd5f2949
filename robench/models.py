"""Models ready to evaluate: zoo checkpoints through ``model_zoo.load_entry`` or modules the user
gives, in eval mode on the device, parameters frozen, in the memory format of the device kind
(:func:`robench.devices.memory_format`),
with the provenance columns of their rows (scheme, λ, origin, weights and card sha256)."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from typing import Iterator, Mapping, Sequence

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
        """Every zoo (model, λ) has trained weights (a model may carry its tag: ``resnet20.s1``); the
        missing ones are named together with the checkpoints that do exist of those models (their
        tags) and the command that trains each."""
        from model_zoo.checkpoint import missing_weights_message, resolve

        missing = [(m, lam) for m, lam in dict.fromkeys(pairs) if m not in self.modules and resolve(m, lam=lam) is None]
        if missing:
            raise BadInput(missing_weights_message(missing))

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


@contextlib.contextmanager
def borrowed(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Lend the caller's modules to an evaluation and give them back exactly as found.

    Evaluating puts a module in eval mode, freezes its parameters and moves it to the device in the
    evaluation's memory format; afterwards (also after an error) every submodule's ``training`` flag,
    every parameter's ``requires_grad``, and every parameter and buffer tensor itself (so its device,
    dtype, memory format and storage) are restored. Values are not copied: an evaluation never
    changes a weight, so the original tensors are put back as they were."""
    saved = []
    for module in modules:
        if not isinstance(module, torch.nn.Module):
            continue  # check_module says what is wrong with it
        mods = list(module.modules())
        params = [(p, p.data, p.requires_grad) for p in module.parameters()]
        buffers = [(m, name, b) for m in mods for name, b in m._buffers.items()]
        saved.append(([(m, m.training) for m in mods], params, buffers))
    try:
        yield
    finally:
        for mods, params, buffers in saved:
            for m, training in mods:
                m.training = training
            for p, data, requires_grad in params:
                p.data = data
                p.requires_grad_(requires_grad)
            for m, name, b in buffers:
                m._buffers[name] = b


def check_module(name: str, module: torch.nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """A user's module must be an nn.Module mapping [0,1] images (N, 3, H, W) to finite real float
    logits of shape (N, classes of the data), for a batch of one image and for the whole batch ``x``
    given (a module that answers larger batches otherwise is also caught on every batch later)."""
    if not isinstance(module, torch.nn.Module):
        raise BadInput(f"model {name!r} must be a torch nn.Module mapping [0,1] images to logits, "
                       f"got {type(module).__name__}")
    for batch in dict.fromkeys((1, len(x))):
        xb = x[:batch]
        with torch.inference_mode():
            try:
                out = module(xb)
            except Exception as e:  # arbitrary user code: any failure means "this module cannot classify the data"
                raise BadInput(f"model {name!r} fails on a batch of {tuple(xb.shape)} [0,1] images: "
                               f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
        if (not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape != (len(xb), num_classes)
                or not out.dtype.is_floating_point):
            shape = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise BadInput(f"model {name!r} must return real float logits of shape (N, {num_classes}) for this data; "
                           f"for N={len(xb)} it returned {shape}")
        if not torch.isfinite(out).all():
            raise BadInput(f"model {name!r} returns non-finite logits (NaN or Inf) on clean images")
