"""Attacks behind one contract: ``make_attack(name, eps=…)`` → ``attack(model, x, y) -> x_adv``.

``x`` holds pixels in [0,1] and ε is in pixel units (8/255), never rescaled: normalisation lives
inside the model. Every attack, on either backend (ART or Foolbox), goes through one shared wrapper
(:mod:`robench.attacks.base`) that

- freezes the parameters (``requires_grad_(False)``) and puts every module in eval mode for the
  duration of the attack, then restores each parameter's ``requires_grad``/``.grad`` and each
  module's training flag, also on exceptions (no weight gradients: ART/Foolbox PGD get ~40-60%
  cheaper);
- seeds torch, numpy and ``random`` from ``seed`` inside a scoped RNG fork (the caller's global
  RNG state is untouched): same seed -> identical ``x_adv`` on CPU;
- projects the result into the ε-ball around the *clean* image (in the attack's norm) and into
  [0,1], checks the bound (1e-6 tolerance) and scores per-example success.

Minimal-norm attacks (``cw_l2``, ``deepfool``, ``hsj``) are evaluated at the given ε: points they
did not make adversarial fall back to x, the rest are projected into the ε-ball, and success is
scored on the projected point. ``eps=0`` returns x unchanged (clean accuracy).

Defaults (``attack_defaults()`` returns this table; override any hyper-parameter by keyword, e.g.
``make_attack("pgd", eps=8/255, steps=10, step_size=2/255)``; ``step_size=None`` means 2.5·ε/steps).
The first backend listed is the default (ART, except where Foolbox's implementation is much
faster: cw_l2, deepfool, hsj). "moderate" budgets are sized so that n=20 CIFAR images on a
ResNet-20 take seconds to a couple of minutes on a CPU with the default backend; the times in the
table were measured on a shared 2-core CPU (briefly trained ResNet-20) and are indicative only.

| attack | norm | backends | defaults | budget | description |
|---|---|---|---|---|---|
| fgsm | linf | art,foolbox | step=ε | cheap | FGSM: one signed-gradient step of size ε (seed protocol) |
| ifgsm | linf | art,foolbox | steps=20, step_size=1/255 | cheap | I-FGSM / BIM: 20 steps of 1/255 from the clean image (seed protocol) |
| pgd | linf | art,foolbox | steps=20, step_size=1/255, random_start=True | cheap | PGD L∞: 20 steps of 1/255, random start, projection centred on the clean image (seed protocol, fixed) |
| pgd10 | linf | art,foolbox | steps=10, step_size=None, random_start=True | cheap | PGD-10 L∞: 10 steps of 2.5·ε/10, random start (common protocol) |
| pgd_l2 | l2 | art,foolbox | steps=20, step_size=None, random_start=True | cheap | PGD L2: 20 steps of 2.5·ε/20, random start |
| apgd_ce | linf | art | steps=100, restarts=1 | moderate: 100 fwd+bwd per restart; n=20: ~2 s | Auto-PGD with cross-entropy loss (Croce & Hein 2020), initial step 2·ε |
| cw_l2 | l2 | foolbox,art | steps=50, binary_search_steps=5, learning_rate=0.01, initial_const=0.01, confidence=0 | moderate: 5×50 steps (paper: 9×10000); n=20: foolbox ~5 s, art 40 s–5 min | Carlini–Wagner L2 (minimal norm; output projected into the ε-ball) |
| deepfool | l2 | foolbox,art | steps=50, overshoot=0.02, candidates=10 | cheap: ≤50 steps; n=20: foolbox ~1 s, art ~7 s | DeepFool L2 (minimal norm; output projected into the ε-ball) |
| square | linf | art | queries=1000, p_init=0.05, restarts=1 | moderate: 1000 queries (paper: 10000); n=20: ~30 s | Square Attack L∞ (score-based black box, Andriushchenko et al. 2020) |
| hsj | linf | foolbox,art | steps=20, max_evals=1000, init_evals=100 | moderate: 20 iterations, ≤1000 queries per estimate (paper: 64, 10000); n=20: ~1 min | HopSkipJump L∞ (decision-based; minimal norm, output projected into the ε-ball) |
| autoattack | linf | art | steps=100, queries=1000 | moderate: 2×100 fwd+bwd + 1000 queries (standard AA: APGD-T, FAB-T, Square 5000); n=20: 3–40 s | AutoAttack-lite (ART): APGD-CE + APGD-DLR + Square, 1 restart each, worst case per example |

Seed-paper protocol: ``fgsm`` (one step of ε), ``ifgsm`` (20 × 1/255), ``pgd`` (20 × 1/255, random
start). Unlike the seed code, which centres the PGD projection on the random start, the ε-ball is
centred on the clean image. ``pgd10`` is the common PGD-10 (step 2.5·ε/10).
"""
from robench.attacks.base import Attack, AttackOutput, make_attack
from robench.attacks.registry import attack_defaults, backends_for, defaults_markdown, list_attacks

__all__ = ["make_attack", "list_attacks", "backends_for", "attack_defaults", "defaults_markdown",
           "Attack", "AttackOutput"]
