"""Progress of long runs as plain lines, and the time estimate of ``--dry-run``.

One job: say how far a run is and how long the rest will take. Nothing here changes what is
computed; the executors call :class:`CellProgress` back (``on_unit`` when a unit starts, ``on_cell``
when a cell is finished), so progress reporting stays out of the evaluation code.

The cost model counts an image's **forward-pass equivalents** per cell (a backward pass costs about
two forward passes): a clean or corruption cell is 1; an attack is its gradient steps × 3 plus the
scoring pass; black-box attacks count their queries. It is a rough model (a minimal-norm or
decision-based attack stops early on most images; AutoAttack's later attacks run only on the images
still robust), so estimates are given as rough, and the ETA of a running sweep is re-fitted to the
seconds the finished cells actually took.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

Log = Callable[[str], None]
BACKWARD = 2.0  # a backward pass ≈ two forward passes


def attack_passes(attack: str, params: Mapping[str, Any], n_eps: int = 1) -> float:
    """Forward-pass equivalents per image of ONE ε of ``attack`` (its full hyper-parameters, defaults
    included; a minimal-norm attack searches once for all ``n_eps`` ε, so its search is shared)."""
    from robench.attacks.registry import get_spec

    spec = get_spec(attack)
    p = {k: v.default for k, v in spec.params.items()}
    p.update(params)
    grad = 1.0 + BACKWARD
    steps = int(p.get("steps") or 1)
    if attack == "fgsm":
        search = grad
    elif attack == "apgd_ce":
        search = steps * int(p.get("restarts", 1)) * grad
    elif attack == "cw_l2":
        search = steps * int(p.get("binary_search_steps", 1)) * grad
    elif attack == "deepfool":
        search = steps * min(int(p.get("candidates", 10)), 10) * grad / 4  # most images stop after a few steps
    elif attack == "square":
        search = float(p.get("queries", 1000)) * int(p.get("restarts", 1)) / 4  # only the robust images are queried
    elif attack == "hsj":
        search = steps * float(p.get("max_evals", 1000)) / 20
    elif attack == "autoattack":
        # APGD-CE on every image; the targeted attacks and Square on the (few) images still robust
        search = steps * grad * (1 + 0.1 * 2 * int(p.get("target_classes", 9))) + 0.1 * float(p.get("queries", 5000))
    elif attack == "autoattack_lite":
        search = 2 * steps * grad + float(p.get("queries", 1000)) / 4
    else:  # ifgsm, pgd, pgd10, pgd_l2 and any other iterative gradient attack
        search = steps * grad
    if spec.kind.minimal:
        search /= max(1, n_eps)
    return search + 1.0  # the scoring pass


def cell_cost(cell, n_eps: int = 1) -> float:
    """Forward-pass equivalents of one cell (all its images)."""
    if cell.kind == "attack":
        return cell.n * attack_passes(cell.perturbation, dict(cell.params), n_eps)
    return float(cell.n)


def costs(cells: Sequence) -> list[float]:
    """:func:`cell_cost` of every cell, with the ε count of each attack's group."""
    eps_per_group: dict[tuple, int] = {}
    for c in cells:
        if c.kind == "attack":
            k = (c.model, c.lam, c.perturbation, c.backend, c.params, c.seed)
            eps_per_group[k] = eps_per_group.get(k, 0) + 1
    return [cell_cost(c, eps_per_group.get((c.model, c.lam, c.perturbation, c.backend, c.params, c.seed), 1))
            for c in cells]


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 20 min``, ``2 d 4 h``."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 90:
        return f"{s} s"
    m = int(round(s / 60))
    if m < 90:
        return f"{m} min"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m:02d} min"
    d, h = divmod(h, 24)
    return f"{d} d {h} h"


def forward_seconds(cache, pairs: Iterable[tuple[str, float | None]], *, batch: int = 64,
                    threads: int | None = None) -> dict[tuple, float]:
    """Seconds per image of one forward pass of each (model, λ), timed on ``batch`` random images
    in the evaluation's layout (the best of two passes after a warm-up)."""
    import torch

    from robench.executors import torch_threads
    from robench.models import to_format

    out = {}
    with torch_threads(threads), torch.inference_mode():
        x = to_format(torch.rand(batch, 3, 32, 32, device=cache.device))
        for model, lam in dict.fromkeys(pairs):
            net = cache.get(model, lam).module
            net(x)  # warm-up at the timed shape (oneDNN builds its kernels per shape)
            best = math.inf
            for _ in range(2):
                t0 = time.perf_counter()
                net(x)
                best = min(best, time.perf_counter() - t0)
            out[(model, lam)] = best / batch
    return out


def estimate(cells: Sequence, per_image: Mapping[tuple, float]) -> float:
    """Seconds the ``cells`` should take, from the cost model and each model's forward time."""
    return sum(cost * per_image.get((c.model, c.lam), 0.0) for c, cost in zip(cells, costs(cells)))


def rate_from_records(cells: Sequence, records: Mapping[str, Mapping]) -> float | None:
    """Seconds per forward-pass equivalent measured on finished cells (``records``: cell id → row),
    or None when none has a time."""
    spent = work = 0.0
    for c, cost in zip(cells, costs(cells)):
        r = records.get(c.cell_id())
        if r is not None and isinstance(r.get("seconds"), (int, float)) and math.isfinite(r["seconds"]):
            spent += float(r["seconds"])
            work += cost
    return spent / work if work > 0 and spent > 0 else None


class CellProgress:
    """A line per finished cell: ``[k/N] label: 51.3 % (12.4 s) · ETA 1 h 02 min``.

    ``total``: cells of the whole plan, ``done``: cells finished before this run (the counter goes
    on from there after a resume), ``pending``: the cells this run will do (for the ETA, fitted to
    the seconds the cells of this run took, weighted by the cost model). ``on_unit`` says which
    group of cells starts, so a long attack over several ε is not silent."""

    def __init__(self, total: int, done: int, pending: Sequence, log: Log,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.done, self.log, self.clock = total, done, log, clock
        self._cost = {c.cell_id(): w for c, w in zip(pending, costs(pending))}
        self._left = sum(self._cost.values())
        self._work = 0.0
        self._start = clock()

    def eta(self) -> float | None:
        if self._work <= 0:
            return None
        return (self.clock() - self._start) / self._work * self._left

    def on_unit(self, unit) -> None:
        if len(unit.cells) > 1:
            self.log(f"[{self.done + 1}–{self.done + len(unit.cells)}/{self.total}] running {unit.label()} "
                     f"({len(unit.cells)} cells)")

    def on_cell(self, cell, record: Mapping) -> None:
        from robench.results import pct

        self.done += 1
        w = self._cost.pop(cell.cell_id(), 0.0)
        self._work += w
        self._left -= w
        eta = self.eta()
        left = self.total - self.done
        tail = "" if not left else (f" · ETA {duration(eta)}" if eta is not None else "")
        self.log(f"[{self.done}/{self.total}] {cell.label()}: {pct(record.get('accuracy'))} % "
                 f"({float(record.get('seconds') or 0.0):.1f} s){tail}")
