"""The authors' AutoAttack behind the robench attack contract: ``autoattack`` is
``pyautoattack.AutoAttack(model, norm="Linf", eps=ε, version="standard", seed=s, device=x's device)``,
i.e. the fra31/auto-attack code itself (APGD-CE, APGD-T with 9 target classes, FAB-T with 9 target
classes, Square with 5000 queries; each component attacks only the examples still robust, and an
example's first adversarial point is kept), run on the batch robench's wrapper hands it.

Only translation lives here: the wrapper (``robench.attacks.base``) has frozen the model, put it in eval
mode, seeded torch/numpy/``random`` with the batch's seed inside a scoped RNG fork, and afterwards
projects into the ε-ball (a no-op for AutoAttack's points), checks the bound and scores every example.

Seed: AutoAttack's ``seed`` is the batch's seed (``torch.initial_seed()`` inside the wrapper's scope, which
seeded torch's default generator with it), so ``pyautoattack.AutoAttack(..., seed=robench.engine.batch_seed(s,
b)).run_standard_evaluation(x_b, y_b, batch_size=len(x_b))`` on batch ``b`` of cell seed ``s`` is exactly
what robench runs (``benchmarks/autoattack_crosscheck.py`` checks the per-example flags are identical).

Budgets: the defaults of ``steps`` (APGD-CE, APGD-T per target, FAB-T per target), ``target_classes``
(capped at classes − 1) and ``queries`` (Square) are the standard version's; other values set the same
attributes of the reference's attack objects (a cheaper, non-standard AutoAttack).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from robench.attacks.registry import AttackSpec, register_backend
from robench.errors import BadInput

# AutoAttack logs its progress at DEBUG and its own sanity checks (randomised or dynamic defence,
# probabilities instead of logits) at WARNING; the warnings stay visible.
logging.getLogger("auto-attack").setLevel(logging.WARNING)

ATTACKS = ("autoattack",)


def reference(model: nn.Module, *, eps: float, seed: int, device: torch.device, steps: int = 100,
              target_classes: int = 9, queries: int = 5000, num_classes: int = 10):
    """The reference ``AutoAttack`` object robench runs: the standard version at the given budgets."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, norm="Linf", eps=float(eps), version="standard", seed=int(seed), device=device)
    targets = max(1, min(int(target_classes), num_classes - 1))
    aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = int(steps)
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = targets
    aa.square.n_queries = int(queries)
    return aa


def generate(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
             params: dict[str, Any], num_classes: int) -> torch.Tensor:
    if spec.name not in ATTACKS:
        raise BadInput(f"attack {spec.name!r} has no pyautoattack implementation; valid choices: {', '.join(ATTACKS)}")
    aa = reference(model, eps=eps, seed=torch.initial_seed(), device=x.device, num_classes=num_classes, **params)
    # the reference views its gradients as (N, -1), which needs the default layout (robench keeps images
    # channels_last on CPU and CUDA)
    x_adv, _ = aa.run_standard_evaluation(x.contiguous(), y, batch_size=max(1, x.shape[0]))
    return x_adv


register_backend("pyautoattack", generate)
