"""The one attack contract: ``Attack(model, x, y) -> x_adv`` on [0,1] pixels, shared by every backend.

Everything that must hold for *every* attack lives here, once: input checks, the frozen/eval model
scope, scoped seeding, projection to the ε-ball and [0,1], the norm check and per-example scoring.
Backends only translate (model, x, y, ε, hyper-parameters) into a library call.
"""
from __future__ import annotations

import math
import numbers
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from robench.attacks.registry import AttackSpec, get_spec
from robench.errors import BadInput

# Room for float32 rounding in the final "never leaves the ε-ball" check.
NORM_TOL = 1e-6

# backend(spec, model, x, y, eps=…, params=…, num_classes=…) -> raw adversarial batch (any float tensor)
BackendFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AttackOutput:
    x_adv: torch.Tensor  # same shape/device/dtype as x, inside the ε-ball and [0,1]
    robust: torch.Tensor  # bool[N]: model(x_adv).argmax(1) == y
    perturbation_norm: torch.Tensor  # float[N]: ‖x_adv − x‖ in the attack's norm


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Parameters frozen and every module in eval mode for the duration; the exact previous state
    (each parameter's requires_grad and .grad, each module's training flag) is restored afterwards,
    also when the attack raises.

    Why: with parameters requiring grad, every backward of ART / Foolbox also computes weight
    gradients nobody reads, which costs 40–60% on PGD; BatchNorm/Dropout must not train either.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for m, _ in modes:
            m.training = False
        for p, _, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, req, grad in params:
            p.requires_grad_(req)
            p.grad = grad  # ART's zero_grad() would otherwise drop the caller's gradients
        # set the flag directly: Module.train() recurses and custom overrides could differ
        for m, flag in modes:
            m.training = flag


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and x's GPU), numpy and ``random`` for the duration; the caller's global RNG
    states are restored afterwards (ART draws from numpy and ``random``, Foolbox from torch)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.random.default_generator.manual_seed(seed)
            for d in cuda:
                with torch.cuda.device(d):
                    torch.cuda.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def noise_starting_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          tries: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Misclassified uniform-noise images to start decision-based attacks from, drawn from the
    (scoped, seeded) numpy RNG so both backends start alike and same seed → same result.

    Returns (starts, found): found[i] is False where x[i] is already misclassified (nothing to do)
    or no noise image in ``tries`` draws was misclassified (the attack fails there and keeps x).
    ART's HopSkipJump would otherwise draw from an unseeded ``np.random.RandomState()``, and
    Foolbox's raises when its own initialisation fails for any input.
    """
    starts = x.clone()
    with torch.no_grad():
        todo = _predict(model, x) == y
        found = torch.zeros_like(todo)
        for _ in range(tries):
            if not todo.any():
                break
            idx = todo.nonzero().squeeze(1)
            noise = torch.from_numpy(np.random.uniform(0.0, 1.0, size=(len(idx), *x.shape[1:])))
            noise = noise.to(device=x.device, dtype=x.dtype)
            hit = _predict(model, noise) != y[idx]
            starts[idx[hit]] = noise[hit]
            found[idx[hit]] = True
            todo[idx[hit]] = False
    return starts, found


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.detach().reshape(delta.shape[0], -1).double()
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` into the ε-ball around the clean ``x`` (not around a random start), then
    clip to [0,1]. Clipping after projecting is safe: it only moves coordinates towards x."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.reshape(delta.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        factor = (eps / n).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
        delta = delta * factor
    return (x + delta).clamp(0.0, 1.0)


class Attack:
    """A configured attack. Apply with ``attack(model, x, y) -> x_adv`` or ``attack.run(...)``.

    ``model`` is any ``nn.Module`` mapping [0,1] pixels to logits; ε is in pixel units.
    """

    def __init__(self, spec: AttackSpec, *, eps: float, backend: str, seed: int, params: dict[str, Any],
                 backend_fn: BackendFn) -> None:
        self._spec = spec
        self.name: str = spec.name
        self.backend: str = backend
        self.norm: str = spec.norm
        self.eps: float = float(eps)
        self.seed: int = int(seed)
        self.params: dict[str, Any] = dict(params)
        self.steps: int | None = spec.steps_of(self.params)
        self.minimal: bool = spec.minimal
        self._backend_fn = backend_fn

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return (f"Attack({self.name!r}, backend={self.backend!r}, norm={self.norm!r}, eps={self.eps:g}, "
                f"seed={self.seed}{', ' + hp if hp else ''})")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._attack(model, x, y, score=False)[0]

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        x_adv, robust = self._attack(model, x, y, score=True)
        return AttackOutput(x_adv=x_adv, robust=robust,
                            perturbation_norm=perturbation_norm(x_adv - x.detach(), self.norm).float())

    # -- the shared wrapper ------------------------------------------------------------------
    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, score: bool):
        x, y = _check_inputs(model, x, y)
        with frozen_eval(model):
            with torch.no_grad():
                num_classes = _num_classes(model, x, y)
            if self.eps == 0.0 or x.shape[0] == 0:
                x_adv = x.clone()  # the ε=0 cell is clean accuracy: nothing to search
            else:
                with seeded(self.seed, x.device):
                    raw = self._backend_fn(self._spec, model, x, y, eps=self.eps, params=self.params,
                                           num_classes=num_classes)
                raw = torch.as_tensor(raw).detach().to(device=x.device, dtype=x.dtype).reshape(x.shape)
                raw = torch.where(torch.isfinite(raw), raw, x)
                if self.minimal:
                    # keep only points the attack made adversarial; a failed minimal-norm search
                    # (e.g. Foolbox C&W returns zeros there) must not become an arbitrary ε-step
                    with torch.no_grad():
                        fooled = _predict(model, raw) != y
                    raw = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), raw, x)
                x_adv = project(x, raw, self.eps, self.norm)
            worst = perturbation_norm(x_adv - x, self.norm).max().item() if x.shape[0] else 0.0
            if worst > self.eps + NORM_TOL or x_adv.min().item() < 0.0 or x_adv.max().item() > 1.0:
                raise RuntimeError(f"{self.name}/{self.backend} left its {self.norm} ε-ball "
                                   f"(‖δ‖={worst:.3g} > ε={self.eps:g}) or [0,1]; this is a robench bug")
            robust = None
            if score:
                with torch.no_grad():
                    robust = _predict(model, x_adv) == y
        return x_adv, robust


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1)


def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise BadInput(f"model must be a torch nn.Module mapping [0,1] pixels to logits, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise BadInput("x must be a float tensor of shape (N, ...) with pixels in [0,1]")
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
        raise BadInput(f"y must be integer class labels of shape ({x.shape[0]},), got {tuple(y.shape)} {y.dtype}")
    if x.numel() and (x.min().item() < 0.0 or x.max().item() > 1.0):
        raise BadInput(f"x must be pixels in [0,1] (normalisation lives in the model), "
                       f"got range [{x.min().item():.3g}, {x.max().item():.3g}]")
    p = next(model.parameters(), None)
    if p is not None and p.device != x.device:
        raise BadInput(f"model is on {p.device} but x is on {x.device}; put both on the same device")
    return x.detach(), y.to(device=x.device, dtype=torch.long)


def _num_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    out = model(x[:1]) if x.shape[0] else None
    if out is None:
        return 0
    if out.dim() != 2:
        raise BadInput(f"model must return logits of shape (N, classes), got {tuple(out.shape)}")
    c = int(out.shape[1])
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        raise BadInput(f"labels must be in [0, {c - 1}] for a model with {c} outputs, "
                       f"got [{int(y.min())}, {int(y.max())}]")
    return c


def make_attack(name: str, *, eps: float, backend: str | None = None, seed: int = 0, **overrides: Any) -> Attack:
    """Build an attack by its public name. ``backend=None`` picks the attack's default library;
    ``overrides`` replace default hyper-parameters (see :func:`attack_defaults`)."""
    spec = get_spec(name)
    if backend is None:
        backend = spec.backends[0]
    if backend not in spec.backends:
        raise BadInput(f"attack {name!r} has no backend {backend!r}; choose one of: {', '.join(spec.backends)}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise BadInput(f"ε must be a finite number ≥ 0 in pixel units (e.g. 8/255), got {eps!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise BadInput(f"seed must be an integer ≥ 0, got {seed!r}")
    unknown = sorted(set(overrides) - set(spec.params))
    if unknown:
        valid = ", ".join(spec.params) or "none"
        raise BadInput(f"{name}: unknown hyper-parameter(s) {', '.join(unknown)}; valid: {valid}")
    params = {k: p.default for k, p in spec.params.items()}
    for k, v in overrides.items():
        params[k] = spec.params[k].check(name, k, v)
    if backend == "art":
        from robench.attacks import art_backend as mod
    else:
        from robench.attacks import foolbox_backend as mod
    return Attack(spec, eps=float(eps), backend=backend, seed=int(seed), params=params, backend_fn=mod.generate)
