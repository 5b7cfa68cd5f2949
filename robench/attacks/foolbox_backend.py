"""Foolbox 3 behind the robench attack contract.

Only translation lives here; freezing, seeding, projection and scoring are the shared wrapper's.
Foolbox has no Square, APGD or AutoAttack (the registry lists ART only for those).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from robench.attacks.base import noise_starting_points
from robench.attacks.registry import AttackSpec, register_backend


def _step(p: dict, eps: float) -> float:
    return p["step_size"] if p.get("step_size") is not None else 2.5 * eps / p["steps"]


def _fgsm(p, eps, c):
    import foolbox as fb
    return fb.attacks.FGSM(random_start=False)


def _ifgsm(p, eps, c):
    import foolbox as fb
    return fb.attacks.LinfBasicIterativeAttack(abs_stepsize=p["step_size"], steps=p["steps"])


def _pgd_linf(p, eps, c):
    import foolbox as fb
    return fb.attacks.LinfPGD(abs_stepsize=_step(p, eps), steps=p["steps"], random_start=p["random_start"])


def _pgd_l2(p, eps, c):
    import foolbox as fb
    return fb.attacks.L2PGD(abs_stepsize=_step(p, eps), steps=p["steps"], random_start=p["random_start"])


def _cw(p, eps, c):
    import foolbox as fb
    return fb.attacks.L2CarliniWagnerAttack(binary_search_steps=p["binary_search_steps"], steps=p["steps"],
                                            stepsize=p["learning_rate"], confidence=p["confidence"],
                                            initial_const=p["initial_const"], abort_early=True)


def _deepfool(p, eps, c):
    import foolbox as fb
    # Foolbox refuses more candidates than the model has classes
    return fb.attacks.L2DeepFoolAttack(steps=p["steps"], candidates=min(p["candidates"], c),
                                       overshoot=p["overshoot"], loss="logits")


def _hsj(p, eps, c):
    import foolbox as fb
    return fb.attacks.HopSkipJumpAttack(steps=p["steps"], initial_gradient_eval_steps=p["init_evals"],
                                        max_gradient_eval_steps=p["max_evals"], constraint="linf")


BUILDERS: dict[str, Callable[..., Any]] = {
    "fgsm": _fgsm,
    "ifgsm": _ifgsm,
    "pgd": _pgd_linf,
    "pgd10": _pgd_linf,
    "pgd_l2": _pgd_l2,
    "cw_l2": _cw,
    "deepfool": _deepfool,
    "hsj": _hsj,
}


def generate(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
             params: dict[str, Any], num_classes: int) -> torch.Tensor:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    attack = BUILDERS[spec.name](params, eps, num_classes)
    x = x.contiguous()
    if spec.kind.needs_starting_points:
        # decision-based: start from seeded noise, attack only where a start was found
        starts, found = noise_starting_points(model, x, y)
        out = x.clone()
        if found.any():
            out[found] = attack.run(fmodel, x[found], fb.criteria.Misclassification(y[found]),
                                    starting_points=starts[found])
        return out
    if spec.kind.minimal:
        # minimal-norm attacks: take the unbounded result; the wrapper projects it into the ε-ball
        raw, _, _ = attack(fmodel, x, y, epsilons=None)
        return raw
    _, clipped, _ = attack(fmodel, x, y, epsilons=eps)
    return clipped


register_backend("foolbox", generate)
