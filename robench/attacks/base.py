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
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Sequence, final

import numpy as np
import torch
from torch import nn

from robench.attacks.registry import AttackKind, AttackSpec, backend_generate, get_spec
from robench.errors import BadInput, NonFiniteLogits

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


def _check_eps(eps: Any, norm: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise BadInput(f"ε must be a finite number ≥ 0 in pixel units (e.g. 8/255), got {eps!r}")
    if norm == "linf" and eps > 1:
        # pixels are in [0,1]: an L∞ ε above 1 allows every image, so it is a unit mistake
        raise BadInput(f"ε={eps:g} is above 1, but ε is in pixel units ([0,1]); did you mean {eps:g}/255?")
    return float(eps)


class Attack:
    """A configured attack (Foolbox 3 style: hyper-parameters are keyword-only and fixed at
    construction; build with :func:`make_attack`). Apply with ``attack(model, x, y) -> x_adv``,
    ``attack.run(model, x, y) -> AttackOutput`` or, for several ε on the same examples,
    ``attack.run_eps(model, x, y, eps_list) -> list[AttackOutput]``.

    ``model`` is any ``nn.Module`` mapping [0,1] pixels to logits; ε is in pixel units. The two
    kinds are the subclasses :class:`FixedEpsAttack` and :class:`MinimalNormAttack`; every public
    method is defined here once and the subclasses only say how ε enters the search.
    """

    def __init__(self, spec: AttackSpec, *, eps: float, backend: str, seed: int, params: dict[str, Any],
                 backend_fn: BackendFn) -> None:
        self._spec = spec
        self.name: str = spec.name
        self.kind: AttackKind = spec.kind
        self.backend: str = backend
        self.norm: str = spec.norm
        self.eps: float = float(eps)
        self.seed: int = int(seed)
        self.params: Mapping[str, Any] = MappingProxyType(dict(params))  # fixed at construction
        self.steps: int | None = spec.steps_of(self.params)
        self.minimal: bool = spec.kind.minimal
        self._backend_fn = backend_fn

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return (f"{type(self).__name__}({self.name!r}, backend={self.backend!r}, norm={self.norm!r}, "
                f"eps={self.eps:g}, seed={self.seed}{', ' + hp if hp else ''})")

    @final
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._outputs(model, x, y, [self.eps], score=False)[0].x_adv

    @final
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        return self.run_eps(model, x, y, [self.eps])[0]

    @final
    def run_eps(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                eps_list: Sequence[float]) -> list[AttackOutput]:
        """One :class:`AttackOutput` per ε of ``eps_list`` (in that order; the attack's own ``eps``
        is not used), each with the contract of :meth:`run`: ``x_adv`` inside that ε-ball and
        [0,1], robust flags scored on it. A fixed-ε attack runs once per ε, each run seeded exactly
        as ``run`` with that ε (same seed → same x_adv); a minimal-norm attack searches once and
        projects/scores the one result at every ε."""
        _check_eps_list(eps_list)
        return self._outputs(model, x, y, eps_list, score=True)

    @final
    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
        """Check ``(model, x, y)`` as every call does (one host read) and return the model's number of
        classes: run once on a whole set before :meth:`run_batch` on its batches."""
        x, y = _check_inputs(model, x, y)
        with frozen_eval(model), torch.no_grad():
            return _num_classes(model, x, y)

    @final
    def run_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float], *,
                  num_classes: int, score: bool = True) -> tuple[list[AttackOutput], torch.Tensor]:
        """:meth:`run_eps` for a loop over batches of a set checked once by :meth:`prepare` (robench's
        executor), with no host synchronisation of its own: the batch is not checked again, and the
        ε-ball / [0,1] bound and the scoring logits' finiteness come back as a pair on x's device (see
        :meth:`_finish`), for the caller to fold with ``torch.maximum`` and read once after its loop
        (:func:`check_bound`).
        The outputs are those of :meth:`run_eps` with the same seed (``score=False``: ``robust`` empty,
        as for ``__call__``)."""
        _check_eps_list(eps_list)
        y = torch.as_tensor(y).to(device=x.device, dtype=torch.long)
        finished = self._run(model, x.detach(), y, [_check_eps(e, self.norm) for e in eps_list], num_classes,
                             score=score)
        return [out for out, _ in finished], torch.stack([excess for _, excess in finished]).amax(dim=0)

    # -- the shared wrapper ------------------------------------------------------------------
    def _outputs(self, model, x, y, eps_list, *, score: bool) -> list[AttackOutput]:
        eps_values = [_check_eps(e, self.norm) for e in eps_list]
        x, y = _check_inputs(model, x, y)
        with frozen_eval(model):
            with torch.no_grad():
                num_classes = _num_classes(model, x, y)
        finished = self._run(model, x, y, eps_values, num_classes, score=score)
        check_bound(torch.stack([excess for _, excess in finished]).amax(dim=0), self)
        return [out for out, _ in finished]

    def _run(self, model, x, y, eps_values, num_classes, *, score: bool) -> list[tuple[AttackOutput, torch.Tensor]]:
        with frozen_eval(model):
            raws = self._raw(model, x, y, eps_values, num_classes)
            return [self._finish(model, x, y, raw, eps, score, num_classes) for raw, eps in zip(raws, eps_values)]

    def _raw(self, model, x, y, eps_values, num_classes) -> list[torch.Tensor | None]:
        """One raw search result per ε (None: nothing to search, x itself)."""
        raise NotImplementedError

    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                num_classes: int) -> torch.Tensor:
        """The backend's raw result, seeded, non-finite entries replaced by x."""
        with seeded(self.seed, x.device):
            raw = self._backend_fn(self._spec, model, x, y, eps=eps, params=self.params, num_classes=num_classes)
        raw = torch.as_tensor(raw).detach().to(device=x.device, dtype=x.dtype).reshape(x.shape)
        return torch.where(torch.isfinite(raw), raw, x)

    def _finish(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, raw: torch.Tensor | None,
                eps: float, score: bool, num_classes: int = 0) -> tuple[AttackOutput, torch.Tensor]:
        """Project into the ε-ball around x and [0,1] and score (unless not asked: ``__call__``
        returns x_adv only and saves the scoring forward). Nothing is read on the host here: the
        second value, a float64 pair on x's device, is how far the result lies outside the bound
        (≤ 0 inside) and whether the scoring logits had a NaN or Inf (an argmax of NaN logits, class
        0, is no prediction); the caller reads it once (:func:`check_bound`). The logits' shape
        (N, classes) is host metadata and is checked on every batch."""
        x_adv = x.clone() if raw is None or eps == 0.0 else project(x, raw, eps, self.norm)
        norms = perturbation_norm(x_adv - x, self.norm)
        robust = torch.zeros(0, dtype=torch.bool, device=x.device)
        if not x.shape[0]:
            return AttackOutput(x_adv=x_adv, robust=robust, perturbation_norm=norms.float()), no_excess(x.device)
        lo, hi = torch.aminmax(x_adv.detach())
        bound = torch.stack([norms.max() - (eps + NORM_TOL), -lo.double(), hi.double() - 1.0]).amax()
        nonfinite = torch.zeros((), dtype=torch.float64, device=x.device)
        if score:
            with torch.no_grad():
                logits = model(x_adv)
            _check_logits(logits, x.shape[0], num_classes, f"{self.name}/{self.backend}")
            robust = logits.argmax(dim=1) == y
            nonfinite = (~torch.isfinite(logits).all()).double()
        return AttackOutput(x_adv=x_adv, robust=robust, perturbation_norm=norms.float()), torch.stack([bound, nonfinite])


def no_excess(device) -> torch.Tensor:
    """The start of a running :func:`check_bound` maximum: inside the bound, logits finite."""
    return torch.tensor([-1.0, 0.0], dtype=torch.float64, device=device)


def check_bound(excess: torch.Tensor, attack: "Attack") -> None:
    """Raise when an attack's output left its ε-ball or [0,1], or its scoring logits were not finite:
    ``excess`` is the element-wise maximum of :meth:`Attack.run_batch`'s second values (one host read)."""
    worst, nonfinite = excess.tolist()
    if nonfinite:
        raise NonFiniteLogits(f"{attack.name}/{attack.backend}: the model returned non-finite logits (NaN or Inf) on "
                              "the adversarial images; they cannot be scored (check the weights)")
    if worst > 0.0:
        raise RuntimeError(f"{attack.name}/{attack.backend} left its {attack.norm} ε-ball or [0,1] by {worst:.3g} "
                           "(pixels); this is a robench bug")


def _check_eps_list(eps_list: Any) -> None:
    if isinstance(eps_list, (str, bytes)) or not isinstance(eps_list, Sequence) or not eps_list:
        raise BadInput(f"eps_list must be a non-empty list of ε in pixel units, got {eps_list!r}")


@final
class FixedEpsAttack(Attack):
    """Searches inside the ε-ball it is given (gradient and score-based attacks): one search per ε."""

    def _raw(self, model, x, y, eps_values, num_classes) -> list[torch.Tensor | None]:
        return [None if eps == 0.0 or x.shape[0] == 0 else self._search(model, x, y, eps, num_classes)
                for eps in eps_values]


@final
class MinimalNormAttack(Attack):
    """Searches the smallest adversarial perturbation without an ε (minimal-norm and decision-based
    attacks): one search, then projected into and scored at every ε. Points the search did not make
    adversarial fall back to x (a failed C&W search must not become an arbitrary ε-step)."""

    def _raw(self, model, x, y, eps_values, num_classes) -> list[torch.Tensor | None]:
        raw = None
        if x.shape[0] and any(e > 0 for e in eps_values):
            # the search does not read ε; the largest one is passed for backends that want a number
            raw = self._search(model, x, y, max(eps_values), num_classes)
            with torch.no_grad():
                fooled = _predict(model, raw) != y
            raw = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), raw, x)
        return [raw] * len(eps_values)


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1)


def _check_logits(out: object, n: int, num_classes: int, what: str) -> None:
    """Logits of a batch of ``n`` must be a real float tensor (n, classes); a module that answers a
    larger batch with fewer columns or rows is refused instead of scored (shape is host metadata:
    no sync)."""
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n or (
            num_classes and out.shape[1] != num_classes) or not out.dtype.is_floating_point:
        shape = (f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__)
        raise BadInput(f"{what}: the model returned {shape} for a batch of {n} images; logits must be a real float "
                       f"tensor of shape ({n}, {num_classes or 'classes'})")


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
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or not out.dtype.is_floating_point:
        shape = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInput(f"model must return real float logits of shape (N, classes), got {shape}")
    c = int(out.shape[1])
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        raise BadInput(f"labels must be in [0, {c - 1}] for a model with {c} outputs, "
                       f"got [{int(y.min())}, {int(y.max())}]")
    return c


def make_attack(name: str, *, eps: float, backend: str | None = None, seed: int = 0, **overrides: Any) -> Attack:
    """Build an attack by its public name. ``backend=None`` picks the attack's default library;
    ``overrides`` replace default hyper-parameters (see :func:`attack_defaults`; each has a
    documented range, :func:`param_ranges`). Returns a :class:`FixedEpsAttack` or a
    :class:`MinimalNormAttack` according to the registered :class:`AttackKind`."""
    spec = get_spec(name)
    if backend is None:
        backend = spec.backends[0]
    if backend not in spec.backends:
        raise BadInput(f"attack {name!r} has no backend {backend!r}; choose one of: {', '.join(spec.backends)}")
    eps = _check_eps(eps, spec.norm)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise BadInput(f"seed must be an integer ≥ 0, got {seed!r}")
    unknown = sorted(set(overrides) - set(spec.params))
    if unknown:
        valid = ", ".join(spec.params) or "none"
        raise BadInput(f"{name}: unknown hyper-parameter(s) {', '.join(unknown)}; valid: {valid}")
    params = {k: p.default for k, p in spec.params.items()}
    for k, v in overrides.items():
        params[k] = spec.params[k].check(name, k, v)
    cls = MinimalNormAttack if spec.kind.minimal else FixedEpsAttack
    return cls(spec, eps=eps, backend=backend, seed=int(seed), params=params, backend_fn=backend_generate(backend))
