"""The report's Claims section (robench.analysis.claims_section): verdict table, forest plot, rows."""
from __future__ import annotations

import sys
from pathlib import Path

from robench.claims import CLAIMS, evaluate_claims

sys.path.insert(0, str(Path(__file__).parent))
from table_builders import first, row, stability_tables, table  # noqa: E402


def test_report_claims_section_has_the_table_and_a_forest_plot(tmp_path):
    from robench.analysis.claims_section import claims_section

    ev, st = stability_tables([0.20, 0.18, 0.15, 0.11, 0.10, 0.07], [10, 14, 18, 22, 26, 30])
    frag = claims_section(evaluate_claims([ev, st]), tmp_path / "plots", tmp_path)
    png = tmp_path / "plots" / "claims_forest.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '<img src="plots/claims_forest.png"' in frag and frag.startswith('<p class="meta">')
    assert frag.count("<tr>") == 1 + len(CLAIMS) + 1 + len(evaluate_claims([ev, st]))
    assert "Stability goes with robustness" in frag and "no landscape table" in frag


def test_report_claims_section_without_tested_rows_has_no_plot(tmp_path):
    from robench.analysis.claims_section import claims_section

    frag = claims_section(evaluate_claims(table([row("resnet20", first(10, 20))])), tmp_path / "plots", tmp_path)
    assert "<img" not in frag and not (tmp_path / "plots").exists() and "missing" in frag
