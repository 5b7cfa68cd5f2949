"""Adversarial Robustness Toolbox (ART) behind the robench attack contract.

Only translation lives here: the shared wrapper (``robench.attacks.base``) has already frozen the
model, put it in eval mode and seeded numpy/torch/random; it projects and scores what we return.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from robench.attacks.base import noise_starting_points
from robench.attacks.registry import AttackSpec, register_backend

# ART logs a success rate and prints progress bars per call; neither belongs in a benchmark.
logging.getLogger("art").setLevel(logging.WARNING)


@contextlib.contextmanager
def _no_unlogged_success_rate() -> Any:
    """ART's PGD (and BIM, which is PGD) computes its success rate only to log it at INFO level, and
    computes it even when nobody listens: two forward passes over the batch (clean and adversarial),
    a tenth of a PGD-20. While ART's logger is not enabled for INFO the rate is not computed (the
    value is used for nothing else; the adversarial examples are the same)."""
    from art.attacks.evasion.projected_gradient_descent import projected_gradient_descent_pytorch as pgd

    if logging.getLogger(pgd.__name__).isEnabledFor(logging.INFO):
        yield
        return
    computed = pgd.compute_success
    pgd.compute_success = lambda *args, **kwargs: float("nan")
    try:
        yield
    finally:
        pgd.compute_success = computed


class _AsDtype(nn.Module):
    """Casts inputs to x's dtype: ART's HopSkipJump L∞ binary search hands the model float64."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype))


def classifier(model: nn.Module, x: torch.Tensor, num_classes: int):
    """Wrap ``model`` as ART's PyTorchClassifier on x's device (pixels in [0,1], CE loss)."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=_AsDtype(model, x.dtype),
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if x.device.type == "cuda" else "cpu",
    )


class _FirstAdversarial(nn.Module):
    """Passes the model through and, while tracking, keeps for each tracked row the first input it
    sees that the model misclassifies: every point ART's APGD evaluates (each iterate goes through a
    forward for its gradient or loss) is checked at no extra cost. ART 1.20's APGD returns only its
    last iterate, so without this an example misclassified at some iterate but not at the last one
    would count as robust; the paper's algorithm and the reference code keep the best point."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.labels: torch.Tensor | None = None
        self.found: torch.Tensor | None = None
        self.hit: torch.Tensor | None = None

    def track(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.labels, self.found, self.hit = y, x.clone(), torch.zeros_like(y, dtype=torch.bool)

    def stop(self) -> tuple[torch.Tensor, torch.Tensor]:
        found, hit = self.found, self.hit
        self.labels = self.found = self.hit = None
        return found, hit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        # rows map to the tracked examples only when ART evaluates the whole tracked set at once
        if self.labels is not None and out.shape[0] == self.labels.shape[0]:
            with torch.no_grad():
                new = (out.argmax(1) != self.labels) & ~self.hit
                if new.any():
                    self.found[new] = x.detach()[new].to(self.found.dtype)
                    self.hit |= new
        return out


def _step(p: dict, eps: float) -> float:
    return p["step_size"] if p.get("step_size") is not None else 2.5 * eps / p["steps"]


def _fgsm(clf, eps, p, n):
    from art.attacks.evasion import FastGradientMethod
    return FastGradientMethod(clf, norm=np.inf, eps=eps, eps_step=eps, batch_size=n)


def _ifgsm(clf, eps, p, n):
    from art.attacks.evasion import BasicIterativeMethod
    return BasicIterativeMethod(clf, eps=eps, eps_step=p["step_size"], max_iter=p["steps"], batch_size=n,
                                verbose=False)


def _pgd(norm):
    def build(clf, eps, p, n):
        from art.attacks.evasion import ProjectedGradientDescent
        return ProjectedGradientDescent(clf, norm=norm, eps=eps, eps_step=_step(p, eps), max_iter=p["steps"],
                                        num_random_init=1 if p["random_start"] else 0, batch_size=n,
                                        verbose=False)
    return build


def _apgd(clf, eps, p, n, loss="cross_entropy"):
    from art.attacks.evasion import AutoProjectedGradientDescent
    # ART's initial step η⁰ is eps_step; Croce & Hein use η⁰ = 2ε
    return AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=p["steps"],
                                        nb_random_init=p.get("restarts", 1), batch_size=n, loss_type=loss,
                                        verbose=False)


def _cw(clf, eps, p, n):
    from art.attacks.evasion import CarliniL2Method
    return CarliniL2Method(clf, confidence=p["confidence"], learning_rate=p["learning_rate"],
                           binary_search_steps=p["binary_search_steps"], max_iter=p["steps"],
                           initial_const=p["initial_const"], batch_size=n, verbose=False)


def _deepfool(clf, eps, p, n):
    from art.attacks.evasion import DeepFool
    return DeepFool(clf, max_iter=p["steps"], epsilon=p["overshoot"],
                    nb_grads=min(p["candidates"], clf.nb_classes), batch_size=n, verbose=False)


def _square(clf, eps, p, n):
    from art.attacks.evasion import SquareAttack
    return SquareAttack(clf, norm=np.inf, eps=eps, max_iter=p["queries"], p_init=p["p_init"],
                        nb_restarts=p["restarts"], batch_size=n, verbose=False)


def _hsj(clf, eps, p, n):
    from art.attacks.evasion import HopSkipJump
    return HopSkipJump(clf, norm=np.inf, max_iter=p["steps"], max_eval=p["max_evals"],
                       init_eval=p["init_evals"], verbose=False)


def _linf_project(x: np.ndarray, adv: np.ndarray, eps: float) -> np.ndarray:
    return np.clip(np.clip(adv, x - eps, x + eps), 0.0, 1.0).astype(np.float32)


class _WorstCase:
    """The AutoAttack loop: each component attacks only the examples still robust, and an
    example's adversarial point is kept once found (inside the ε-ball, misclassified), so the
    result is the per-example worst case over the components. Success is untargeted (any wrong
    class) for every component, targeted ones included, as in the reference implementation."""

    def __init__(self, clf, eps: float, x: np.ndarray, y: np.ndarray) -> None:
        self.clf, self.eps, self.x, self.y = clf, eps, x, y
        self.x_adv = x.copy()
        self.logits = clf.predict(x, batch_size=max(1, len(x)))
        self.robust = self.logits.argmax(1) == y

    def onehot(self, labels: np.ndarray) -> np.ndarray:
        return np.eye(self.clf.nb_classes, dtype=np.float32)[labels]

    def step(self, component: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> None:
        """``component(x, y, idx) -> adv`` on the robust examples ``idx``."""
        idx = np.flatnonzero(self.robust)
        if idx.size == 0:
            return
        adv = _linf_project(self.x[idx], np.asarray(component(self.x[idx], self.y[idx], idx)), self.eps)
        fooled = self.clf.predict(adv, batch_size=len(idx)).argmax(1) != self.y[idx]
        self.x_adv[idx[fooled]] = adv[fooled]
        self.robust[idx[fooled]] = False


class _StandardAutoAttack:
    """``autoattack_art``: standard AutoAttack L∞ (Croce & Hein 2020; fra31/auto-attack ``version='standard'``)
    composed from ART, kept to cross-check ``autoattack`` (the authors' code, ``pyautoattack_backend``):
    APGD-CE (1 restart, ``steps`` iterations, η⁰ = 2ε), APGD-T (DLR loss, 1 restart per target,
    the ``target_classes`` highest non-true logits of the clean image as targets), FAB-T (1 restart
    per target, same targets, the authors' implementation from ``pyautoattack``; ART has no FAB) and
    Square (``queries`` queries, p_init = 0.8, 1 restart), in that order, per-example worst case.

    ART's ``AutoAttack`` class is not used: with ``targeted=True`` it re-runs every component
    (Square included) targeted at every class, which is not the standard composition.
    """

    def __init__(self, clf, eps: float, p: dict, n: int) -> None:
        from art.estimators.classification import PyTorchClassifier

        self.clf, self.eps, self.p, self.n = clf, eps, p, n
        self.tracker = _FirstAdversarial(clf.model)
        # APGD sees the model through the tracker (ART builds its own estimator from ``.model``)
        self.tracked_clf = PyTorchClassifier(model=self.tracker, loss=nn.CrossEntropyLoss(),
                                             input_shape=clf.input_shape, nb_classes=clf.nb_classes,
                                             clip_values=(0.0, 1.0),
                                             device_type="gpu" if clf.device.type == "cuda" else "cpu")

    def _apgd(self, attack, xs: np.ndarray, ys: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """One APGD run on (xs, ys) with attack labels ``labels`` (targets for APGD-T), keeping for
        each example the first misclassified iterate when the last one is not."""
        device = self.tracked_clf.device
        self.tracker.track(torch.from_numpy(xs).to(device), torch.from_numpy(ys).long().to(device))
        try:
            adv = np.array(attack.generate(x=xs, y=labels), dtype=np.float32)
        finally:
            found, hit = self.tracker.stop()
        hit_np = hit.cpu().numpy()
        adv[hit_np] = found.cpu().numpy()[hit_np]
        return adv

    def generate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

        clf, eps, p, n = self.clf, self.eps, self.p, max(1, len(x))
        wc = _WorstCase(clf, eps, x, y)
        n_targets = min(p["target_classes"], clf.nb_classes - 1)
        ranked = np.argsort(wc.logits, axis=1)  # ascending: [:, -1] is the top class

        apgd_ce = AutoProjectedGradientDescent(self.tracked_clf, norm=np.inf, eps=eps, eps_step=2 * eps,
                                               max_iter=p["steps"], nb_random_init=1, batch_size=n,
                                               loss_type="cross_entropy", verbose=False)
        wc.step(lambda xs, ys, idx: self._apgd(apgd_ce, xs, ys, wc.onehot(ys)))

        # ART's targeted DLR is −(z_t − max_{j≠t} z_j)/(z_π1 − z_π3), not the paper's
        # −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2); both are shift- and scale-invariant
        apgd_t = AutoProjectedGradientDescent(self.tracked_clf, norm=np.inf, eps=eps, eps_step=2 * eps,
                                              max_iter=p["steps"], nb_random_init=1, batch_size=n, targeted=True,
                                              loss_type="difference_logits_ratio", verbose=False)
        for k in range(2, n_targets + 2):
            wc.step(lambda xs, ys, idx: self._apgd(apgd_t, xs, ys, wc.onehot(ranked[idx, -k])))

        wc.step(lambda xs, ys, idx: self._fab_t(xs, ys, n_targets))

        square = SquareAttack(clf, norm=np.inf, eps=eps, max_iter=p["queries"], p_init=0.8, nb_restarts=1,
                              batch_size=n, verbose=False)
        wc.step(lambda xs, ys, idx: square.generate(x=xs, y=wc.onehot(ys)))
        return wc.x_adv

    def _fab_t(self, x: np.ndarray, y: np.ndarray, n_targets: int) -> np.ndarray:
        from pyautoattack.fab_pt import FABAttack_PT

        model = self.clf.model
        device = next(model.parameters(), torch.empty(0)).device
        # FAB seeds torch's global RNG from its seed; the wrapper's scoped fork restores it afterwards
        fab = FABAttack_PT(model, norm="Linf", n_restarts=1, n_iter=self.p["steps"], eps=self.eps,
                           seed=int(np.random.randint(0, 2 ** 31 - 1)), targeted=True,
                           n_target_classes=n_targets, verbose=False, device=device)
        adv = fab.perturb(torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device))
        return adv.detach().cpu().numpy()


class _AutoAttackLite:
    """AutoAttack-lite: APGD-CE, APGD-DLR, Square (1000 queries, p_init 0.05), 1 restart each,
    per-example worst case (robench's ``autoattack`` before it became the standard version; kept
    bit for bit). ART's AutoAttack loop via ART's own ``run_attack``:
    ``art.attacks.evasion.AutoAttack.generate`` imports the optional ``multiprocess`` package even
    without a pool."""

    def __init__(self, clf, eps: float, attacks: list) -> None:
        self.clf, self.eps, self.attacks = clf, eps, attacks

    def generate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from art.attacks.evasion.auto_attack import run_attack

        onehot = np.eye(self.clf.nb_classes, dtype=np.float32)[y]
        x_adv = x.astype(np.float32).copy()
        robust = self.clf.predict(x_adv, batch_size=len(x)).argmax(1) == y
        for attack in self.attacks:
            if not robust.any():
                break
            x_adv, robust = run_attack(x=x_adv, y=onehot, sample_is_robust=robust, attack=attack,
                                       estimator_orig=self.clf, norm=np.inf, eps=self.eps)
        return x_adv


def _autoattack(clf, eps, p, n):
    return _StandardAutoAttack(clf, eps, p, n)


def _autoattack_lite(clf, eps, p, n):
    from art.attacks.evasion import SquareAttack
    attacks = [_apgd(clf, eps, p, n, "cross_entropy"), _apgd(clf, eps, p, n, "difference_logits_ratio"),
               SquareAttack(clf, norm=np.inf, eps=eps, max_iter=p["queries"], p_init=0.05, nb_restarts=1,
                            batch_size=n, verbose=False)]
    return _AutoAttackLite(clf, eps, attacks)


BUILDERS: dict[str, Callable[..., Any]] = {
    "fgsm": _fgsm,
    "ifgsm": _ifgsm,
    "pgd": _pgd(np.inf),
    "pgd10": _pgd(np.inf),
    "pgd_l2": _pgd(2),
    "apgd_ce": _apgd,
    "cw_l2": _cw,
    "deepfool": _deepfool,
    "square": _square,
    "hsj": _hsj,
    "autoattack_art": _autoattack,
    "autoattack_lite": _autoattack_lite,
}


def generate(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
             params: dict[str, Any], num_classes: int) -> torch.Tensor:
    device_ctx = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
    with device_ctx:
        clf = classifier(model, x, num_classes)
        attack = BUILDERS[spec.name](clf, eps, params, x.shape[0])
        if not spec.kind.needs_starting_points:
            with _no_unlogged_success_rate():
                x_adv = attack.generate(x=x.cpu().numpy().astype(np.float32), y=y.cpu().numpy())
            return torch.from_numpy(np.asarray(x_adv))
        # decision-based: start from seeded noise, attack only where a start was found
        starts, found = noise_starting_points(model, x, y)
        out = x.clone()
        if found.any():
            sel = found.cpu().numpy()
            adv = attack.generate(x=x.cpu().numpy().astype(np.float32)[sel], y=y.cpu().numpy()[sel],
                                  x_adv_init=starts.cpu().numpy().astype(np.float32)[sel])
            out[found] = torch.from_numpy(np.asarray(adv)).to(device=x.device, dtype=x.dtype)
    return out


register_backend("art", generate)
