"""Progress lines and the time estimate: the cost model, the ETA fitted to finished cells, durations."""
from __future__ import annotations

import pytest

from robench.plan import Cell
from robench.progress import CellProgress, attack_passes, costs, duration, estimate


def cell(kind="clean", pert="none", eps=None, params=(), n=100, model="resnet20", sev=None):
    return Cell(model=model, lam=None, kind=kind, perturbation=pert, backend="art" if kind == "attack" else None,
                eps=eps, severity=sev, seed=0, n=n, dataset="samples", params=params)


def test_cost_model_counts_forward_pass_equivalents():
    assert attack_passes("fgsm", {}) == 1 + 2 + 1  # forward + backward (2) + scoring
    assert attack_passes("pgd", {}) == 20 * 3 + 1  # the registry's default steps
    assert attack_passes("pgd", {"steps": 50}) == 50 * 3 + 1
    # a minimal-norm attack searches once for every ε of its group
    assert attack_passes("deepfool", {}, n_eps=4) == pytest.approx((attack_passes("deepfool", {}) - 1) / 4 + 1)
    cells = [cell(), cell("attack", "pgd", 2 / 255), cell("attack", "pgd", 8 / 255), cell("corruption", "snow", sev=1)]
    assert costs(cells) == [100.0, 6100.0, 6100.0, 100.0]
    assert estimate(cells, {("resnet20", None): 0.001}) == pytest.approx(12.4)


def test_eta_is_fitted_to_the_finished_cells_and_the_counter_starts_where_a_resume_does():
    now = [0.0]
    lines = []
    pending = [cell("attack", "pgd", 2 / 255), cell("attack", "pgd", 8 / 255), cell()]
    p = CellProgress(total=10, done=7, pending=pending, log=lines.append, clock=lambda: now[0])
    now[0] = 61.0  # the first PGD cell (6100 units) took 61 s → 0.01 s per unit; 6200 units are left
    p.on_cell(pending[0], {"accuracy": 0.125, "seconds": 61.0})
    assert lines[-1] == "[8/10] resnet20 pgd[art] ε=2/255 seed=0: 12.5 % (61.0 s) · ETA 62 s"
    now[0] = 122.0
    p.on_cell(pending[1], {"accuracy": 0.0, "seconds": 61.0})
    assert lines[-1].endswith("0.0 % (61.0 s) · ETA 1 s")
    p.on_cell(pending[2], {"accuracy": 1.0, "seconds": 1.0})
    assert lines[-1] == "[10/10] resnet20 clean seed=0: 100.0 % (1.0 s)"  # nothing left: no ETA


@pytest.mark.parametrize("seconds,text", [(5, "5 s"), (89, "89 s"), (600, "10 min"), (5400, "1 h 30 min"),
                                          (3 * 86400 + 7200, "3 d 2 h")])
def test_duration(seconds, text):
    assert duration(seconds) == text
