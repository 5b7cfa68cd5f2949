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

Attack kinds are types (:class:`AttackKind` in the registry; the backends dispatch on the kind,
never on names): ``gradient`` and ``score_based`` attacks are fixed-ε (:class:`FixedEpsAttack`:
one search inside each ε-ball); ``minimal_norm`` (``cw_l2``, ``deepfool``) and ``decision_based``
(``hsj``) attacks search without ε (:class:`MinimalNormAttack`): ``run_eps(model, x, y, eps_list)``
runs the search once and scores it at every ε; points the search did not make adversarial fall
back to x, the rest are projected into each ε-ball, and success is scored on the projected point.
``eps=0`` returns x unchanged (clean accuracy). An L∞ ε above 1 is refused (ε is in pixel units).

Defaults and the documented valid range of every hyper-parameter are in the registry
(``attack_defaults()``, ``param_ranges()``, rendered into README.md by ``python -m
robench.readme_tables``); override any hyper-parameter by keyword, e.g.
``make_attack("pgd", eps=8/255, steps=10, step_size=2/255)`` (``step_size=None`` means
2.5·ε/steps); a value outside its range (``steps=10**12``) is refused with the range.
The first backend listed is the default (ART, except where Foolbox's implementation is much
faster: cw_l2, deepfool, hsj). Budget times were measured on a shared 2-core CPU (briefly trained
ResNet-20) and are indicative only.

``autoattack`` is the standard AutoAttack run by the authors' own code (``pyautoattack``, the
fra31/auto-attack package, ``version="standard"``: APGD-CE, APGD-T, FAB-T, Square 5000; see
``pyautoattack_backend``) on the model's device; ``autoattack_art`` is the same composition built from
ART's components (``art_backend._StandardAutoAttack``), kept to cross-check it; ``autoattack_lite`` is
the cheaper composition robench called ``autoattack`` before (APGD-CE + APGD-DLR + Square 1000).

Seed-paper protocol: ``fgsm`` (one step of ε), ``ifgsm`` (20 × 1/255), ``pgd`` (20 × 1/255, random
start). Unlike the seed code, which centres the PGD projection on the random start, the ε-ball is
centred on the clean image. ``pgd10`` is the common PGD-10 (step 2.5·ε/10).
"""
from robench.attacks.base import Attack, AttackOutput, FixedEpsAttack, MinimalNormAttack, make_attack
# the backends register themselves (robench.attacks.registry.BACKENDS); the wrapper imports neither
from robench.attacks import art_backend, foolbox_backend, pyautoattack_backend  # noqa: E402,F401
from robench.attacks.registry import (AttackKind, attack_defaults, backends_for, defaults_markdown, list_attacks,
                                      param_ranges, ranges_markdown)

__all__ = ["make_attack", "list_attacks", "backends_for", "attack_defaults", "defaults_markdown", "param_ranges",
           "ranges_markdown", "Attack", "AttackKind", "AttackOutput", "FixedEpsAttack", "MinimalNormAttack"]
