"""Zoo models with known behaviour for the engine tests, made in well under a second (no training).

The classifier head of an untrained zoo model is solved in closed form (least squares on the
penultimate features of the 20 bundled samples) so that the model predicts the true label of every
even-indexed sample and a wrong one (label+1) for every odd-indexed one: clean flags are exactly
[True, False, True, False, …], which the tests can check the engine against.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

import model_zoo
from robench.data import load_samples


def expected_clean_flags(n: int) -> np.ndarray:
    return np.arange(n) % 2 == 0


@functools.lru_cache(maxsize=None)
@torch.no_grad()
def fitted_model(name: str, lam: float | None = None, seed: int = 0, margin: float = 10.0) -> torch.nn.Module:
    """``margin``: logit gap between the predicted class and the runner-up (label+2); a small gap
    makes predictions flip under tiny input changes (to tell two noise draws apart)."""
    torch.manual_seed(seed)
    model = model_zoo.create_model(name, lam=lam).eval()
    x, y = load_samples().as_float()
    target = torch.where(torch.from_numpy(expected_clean_flags(len(y))), y, (y + 1) % 10)
    feats = {}
    hook = model.fc.register_forward_hook(lambda mod, inp, out: feats.__setitem__("f", inp[0]))
    model(x)
    hook.remove()
    f = torch.cat([feats["f"].double(), torch.ones(len(y), 1, dtype=torch.float64)], dim=1)
    logits = 10.0 * torch.nn.functional.one_hot(target, 10).double()
    logits += (10.0 - margin) * torch.nn.functional.one_hot((y + 2) % 10, 10).double()
    w = torch.linalg.pinv(f) @ logits
    model.fc.weight.copy_(w[:-1].T.float())
    model.fc.bias.copy_(w[-1].float())
    assert torch.equal(model(x).argmax(1), target), "closed-form head did not fit the samples"
    return model


def save_fitted(name: str, lam: float | None = None, margin: float = 10.0) -> model_zoo.ModelCard:
    """Put a fitted ``name`` (λ) into the user zoo ($ROBENCH_HOME/zoo), where ``model_zoo.load`` finds it.
    The fit is cached per process; only the files are written per call."""
    return model_zoo.save(fitted_model(name, lam, margin=margin), model_zoo.user_zoo() / model_zoo.zoo_stem(name, lam))
