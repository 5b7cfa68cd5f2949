"""The threat model a results table was made under, read from the table alone: norm, ε, every attack
with its backend and hyper-parameters (the ``params`` column, defaults included) and whether it is
targeted, the data (``data_label``), n, the attack seeds, the trained models' seeds (tags), and
what the corruption cells are. The leaderboard and the report state it above their numbers."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pandas as pd

from model_zoo.registry import natural_key, split_tag
from robench.results import format_eps, nan_to_none


@dataclasses.dataclass(frozen=True)
class AttackUsed:
    name: str
    norm: str
    backends: tuple[str, ...]
    eps: tuple[float, ...]
    params: tuple[str, ...]  # each distinct hyper-parameter set as "k=v, …"; empty when not recorded
    targeted: str
    steps: tuple[int, ...]  # the table's steps column (recorded by older tables too)


@dataclasses.dataclass(frozen=True)
class ThreatModel:
    attacks: tuple[AttackUsed, ...]
    norms: tuple[str, ...]
    eps: tuple[float, ...]
    data: tuple[str, ...]
    n: tuple[int, ...]
    seeds: tuple[int, ...]
    models: tuple[str, ...]
    training_seeds: dict  # base model → tags (trained variants) present
    corruptions: str

    def lines(self) -> list[str]:
        """The statement as plain lines (Markdown / terminal); HTML views render :meth:`items`."""
        return [f"{k}: {v}" for k, v in self.items()]

    def items(self) -> list[tuple[str, str]]:
        out = []
        if self.attacks:
            eps = ", ".join(format_eps(e) for e in self.eps)
            out.append(("Threat model", f"{' and '.join(n.upper().replace('LINF', 'L∞') for n in self.norms)}, "
                                        f"ε ∈ {{{eps}}} in pixel units of [0, 1] images; "
                                        f"{'; '.join(sorted({a.targeted for a in self.attacks}))}; white-box "
                                        "access to the model (gradients) unless the attack is marked black box"))
            for a in self.attacks:
                hp = ("; ".join(a.params) if a.params else
                      "hyper-parameters not recorded in this table (it predates the params column)"
                      + (f"; steps {', '.join(map(str, a.steps))}" if a.steps else ""))
                out.append((f"Attack {a.name}", f"{a.norm}, backend {', '.join(a.backends)}, {a.targeted}; {hp}"))
        data = "; ".join(self.data) or "?"
        out.append(("Data", f"{data}; n = {', '.join(map(str, self.n))} (the first n test images)"))
        out.append(("Seeds", f"attack/corruption seed{'s' if len(self.seeds) != 1 else ''} "
                             f"{', '.join(map(str, self.seeds))}; " + self._training()))
        if self.corruptions:
            out.append(("Corruptions", self.corruptions))
        return out

    def _training(self) -> str:
        multi = {b: t for b, t in self.training_seeds.items() if len(t) > 1}
        if not multi:
            return "one trained model per architecture and λ (a difference between two models may be training noise)"
        return "trained seeds: " + "; ".join(f"{b} ×{len(t)} ({', '.join(t)})" for b, t in sorted(multi.items()))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        k = v * 255
        if v > 0 and math.isfinite(k) and abs(k - round(k)) < 1e-9 and round(k) < 255:  # a table's value may be huge
            return f"{round(k)}/255"
        return f"{v:g}"
    return json.dumps(v) if isinstance(v, str) else str(v)


def _params_text(text: Any) -> str | None:
    text = nan_to_none(text)
    if text is None:
        return None
    try:
        params = json.loads(str(text))
    except (TypeError, ValueError):
        return str(text)
    if not isinstance(params, dict):
        return str(text)
    if not params:
        return "no hyper-parameters (one step of size ε)"
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))


def threat_model(df: pd.DataFrame) -> ThreatModel:
    """The threat model of an eval/sweep table (see the module docstring)."""
    from robench.attacks.registry import REGISTRY
    from robench.leaderboard import corruption_set

    atk = df[df["kind"] == "attack"]
    attacks = []
    for name in sorted({str(p) for p in atk["perturbation"]}, key=lambda a: (list(REGISTRY).index(a)
                                                                              if a in REGISTRY else 99, a)):
        rows = atk[atk["perturbation"] == name]
        spec = REGISTRY.get(name)
        params = tuple(sorted({t for t in (_params_text(v) for v in rows.get("params", pd.Series(dtype=object)))
                               if t is not None}))
        steps = tuple(sorted({int(s) for s in rows["steps"].dropna()})) if "steps" in rows.columns else ()
        attacks.append(AttackUsed(
            name=name, norm="+".join(sorted({str(v) for v in rows["norm"].dropna()})) or (spec.norm if spec else "?"),
            backends=tuple(sorted({str(v) for v in rows["backend"].dropna()})),
            eps=tuple(sorted({float(e) for e in rows["eps"].dropna()})), params=params,
            targeted=spec.targeted if spec is not None else "targeting not known",
            steps=steps if not params else ()))
    models = sorted({str(m) for m in df["model"]}, key=natural_key)
    tags: dict[str, list[str]] = {}
    for m in models:
        base, tag = split_tag(m)
        tags.setdefault(base, []).append(tag or "seed 0 (untagged)")
    data = sorted({str(v) for v in df["data_label"].dropna()}) if "data_label" in df.columns else []
    if not data:
        shas = sorted({str(v)[:8] for v in df.get("data_sha256", pd.Series(dtype=object)).dropna()})
        data = [f"{d} (sha256 {', '.join(shas)}; the copy is not named in this table)" if shas else str(d)
                for d in sorted({str(v) for v in df["dataset"].dropna()})]
    return ThreatModel(
        attacks=tuple(attacks), norms=tuple(sorted({n for a in attacks for n in a.norm.split("+")})),
        eps=tuple(sorted({float(e) for e in atk["eps"].dropna()})), data=tuple(data),
        n=tuple(sorted({int(v) for v in df["n"].dropna()})), seeds=tuple(sorted({int(v) for v in df["seed"].dropna()})),
        models=tuple(models), training_seeds=tags, corruptions=corruption_set(df))


def to_markdown(tm: ThreatModel) -> str:
    return "\n".join(f"- **{k}**: {v}" for k, v in tm.items()) + "\n"
