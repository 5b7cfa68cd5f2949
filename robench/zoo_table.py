"""``robench zoo list`` as a DataFrame: architectures × trained weights."""
from __future__ import annotations

import math

import pandas as pd
import torch

import model_zoo


def zoo_table(pattern: str = "*") -> pd.DataFrame:
    trained: dict[str, list] = {}
    for card in model_zoo.available(pattern):
        trained.setdefault(card.name, []).append(card)
    rows = []
    for name in model_zoo.list_models(pattern):
        with torch.device("meta"):  # counts parameters without allocating ResNeXt's 68M floats
            m = model_zoo.create_model(name)
        params = sum(p.numel() for p in m.parameters())
        cards = sorted(trained.get(name, []), key=lambda c: (c.lam is not None, c.lam or 0.0))
        base = dict(model=name, params_M=round(params / 1e6, 3), scheme=m.scheme.value)
        if not cards:
            rows.append(base | dict(lam="learned" if m.learned else "-", weights="-", test_acc=math.nan))
        for c in cards:
            lam = "learned" if c.lam is None and m.learned else ("-" if c.lam is None else f"{c.lam:g}")
            acc = c.metrics.get("test_acc", math.nan)
            rows.append(base | dict(lam=lam, weights=c.dataset.get("zoo", "?"), test_acc=acc))
    return pd.DataFrame(rows)
