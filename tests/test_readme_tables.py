"""README tables are generated from the registries; a stale README fails here."""
from __future__ import annotations

import pytest

from robench import readme_tables
from robench.errors import BadInput


def test_readme_is_up_to_date():
    assert readme_tables.stale() == [], "README.md is stale: run `python -m robench.readme_tables`"


def test_every_registry_has_its_block():
    text = readme_tables.README.read_text(encoding="utf-8")
    for marker, fn in readme_tables.TABLES:
        assert f"<!-- robench:{marker} -->\n{fn()}\n<!-- /robench:{marker} -->" in text


def test_a_changed_registry_makes_the_readme_stale_and_update_fixes_only_the_blocks(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    others = [m for m, _ in readme_tables.TABLES if m != "attacks"]
    readme.write_text("intro\n<!-- robench:attacks -->\nold\n<!-- /robench:attacks -->\nmiddle\n"
                      + "".join(f"<!-- robench:{m} -->\n<!-- /robench:{m} -->\n" for m in others) + "outro\n",
                      encoding="utf-8")
    markers = [m for m, _ in readme_tables.TABLES]
    assert readme_tables.stale(readme) == markers
    assert readme_tables.update(readme) == markers
    assert readme_tables.stale(readme) == []
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro\n<!-- robench:attacks -->\n| attack |") and text.endswith("-->\noutro\n")
    assert "\nmiddle\n" in text and "\nold\n" not in text
    # a registry change (here: a new table entry) shows up as stale until regenerated
    monkeypatch.setattr(readme_tables, "TABLES", [(m, (lambda: "| new |") if m == "attacks" else fn)
                                                  for m, fn in readme_tables.TABLES])
    assert readme_tables.stale(readme) == ["attacks"]


def test_missing_marker_is_one_line_bad_input(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n", encoding="utf-8")
    with pytest.raises(BadInput, match=f"<!-- robench:{readme_tables.TABLES[0][0]} -->"):
        readme_tables.update(readme)
    assert readme.read_text(encoding="utf-8") == "no markers here\n"
