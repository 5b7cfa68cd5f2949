"""``robench zoo list`` as a DataFrame: architectures × trained weights (read from the registry and
the cards: nothing is built and torch is not imported)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import model_zoo

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("model", "params_M", "scheme", "lam", "weights", "test_acc")


def zoo_table(pattern: str = "*", records: list | None = None) -> "pd.DataFrame":
    """:func:`zoo_rows` as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(zoo_rows(pattern, records), columns=list(COLUMNS))


def format_rows(rows: list[dict]) -> str:
    """Right-aligned plain-text table (what ``DataFrame.to_string(index=False)`` prints), without pandas."""
    cells = [[str(c) for c in COLUMNS]] + [["NaN" if isinstance(r[c], float) and math.isnan(r[c]) else str(r[c])
                                             for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join(" ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)


def zoo_rows(pattern: str = "*", records: list | None = None) -> list[dict]:
    """One row per registered model matching ``pattern`` and per checkpoint of it (``records``:
    what :func:`model_zoo.available` returns, by default read now). A checkpoint's ``model`` is its
    tagged name (``resnet20.s1``); ``pattern`` matches a model name (all its checkpoints) or a tagged
    name (``*.s1``)."""
    from model_zoo.registry import natural_key

    trained: dict[str, list] = {}
    for rec in model_zoo.available(pattern) if records is None else records:
        trained.setdefault(rec.name, []).append(rec)
    names = set(model_zoo.list_models(pattern)) | set(trained)
    rows = []
    for name in sorted(names, key=natural_key):
        info = model_zoo.model_info(name)
        recs = sorted(trained.get(name, []), key=lambda r: (r.lam is not None, r.lam or 0.0, r.tag is not None,
                                                            natural_key(r.tag or "")))
        base = dict(model=name, params_M=round(info.params / 1e6, 3), scheme=info.scheme)
        if not recs:
            rows.append(base | dict(lam="learned" if info.learned else "-", weights="-", test_acc=math.nan))
        for r in recs:
            lam = "learned" if r.lam is None and info.learned else ("-" if r.lam is None else f"{r.lam:g}")
            acc = r.card.metrics.get("test_acc", math.nan)
            rows.append(base | dict(model=r.model, lam=lam, weights=f"{r.origin}: {r.path.parent}", test_acc=acc))
    return rows
