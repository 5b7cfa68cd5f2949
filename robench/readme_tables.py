"""README tables generated from the registries, so the README cannot drift from the code.

Each entry of :data:`TABLES` is (marker, function returning Markdown). README.md holds every table
between ``<!-- robench:MARKER -->`` and ``<!-- /robench:MARKER -->``; :func:`render` replaces the
text between the markers and leaves everything else alone. Regenerate with
``python -m robench.readme_tables``; ``tests/test_readme_tables.py`` fails while the README is stale.
Adding a table is one line in :data:`TABLES` plus the two markers in the README.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from robench.errors import BadInput

README = Path(__file__).resolve().parent.parent / "README.md"


def _models() -> str:
    from model_zoo import models_markdown
    return models_markdown().rstrip("\n")


def _attacks() -> str:
    from robench.attacks import defaults_markdown
    return defaults_markdown()


def _attack_params() -> str:
    from robench.attacks import ranges_markdown
    return ranges_markdown()


def _corruptions() -> str:
    from robench.corruptions import corruptions_markdown
    return corruptions_markdown()


# The committed depth-20 tables the README's claims paragraph is computed from, and where its table lives.
CLAIMS_SOURCES = ("results/lambda_study_depth20.parquet", "results/lambda_study_depth20_landscape.parquet",
                  "results/lambda_study_depth20_stability.parquet")
CLAIMS_TABLE = "results/lambda_study_depth20_claims"


def claims_rows():
    """The claims table of the committed depth-20 tables (what README and CLAIMS_TABLE must show)."""
    from robench.claims import evaluate_claims

    return evaluate_claims([README.parent / p for p in CLAIMS_SOURCES])


def _claims() -> str:
    from robench.claims import readme_markdown

    command = f"robench claims {' '.join(CLAIMS_SOURCES)} -o {CLAIMS_TABLE}"
    return readme_markdown(claims_rows(), command=command)


TABLES: list[tuple[str, Callable[[], str]]] = [
    ("models", _models),
    ("attacks", _attacks),
    ("attack-params", _attack_params),
    ("corruptions", _corruptions),
    ("claims", _claims),
]


def _block(marker: str) -> re.Pattern[str]:
    m = re.escape(marker)
    return re.compile(rf"(<!-- robench:{m} -->\n)(.*?)(<!-- /robench:{m} -->)", re.DOTALL)


def render(text: str, tables: list[tuple[str, Callable[[], str]]] | None = None) -> str:
    """``text`` with every marked block replaced by its freshly generated table; a marker pair
    missing from ``text`` is a :class:`BadInput` naming it."""
    for marker, fn in TABLES if tables is None else tables:
        pattern = _block(marker)
        found = len(pattern.findall(text))
        if found != 1:
            raise BadInput(f"README needs exactly one '<!-- robench:{marker} -->' … '<!-- /robench:{marker} -->' "
                           f"block, found {found}")
        body = fn().rstrip("\n") + "\n"
        text = pattern.sub(lambda mo: mo.group(1) + body + mo.group(3), text)
    return text


def stale(path: Path = README) -> list[str]:
    """Markers whose block in ``path`` differs from the generated table (empty: up to date)."""
    text = path.read_text(encoding="utf-8")
    return [marker for marker, fn in TABLES if render(text, [(marker, fn)]) != text]


def update(path: Path = README) -> list[str]:
    """Rewrite the marked blocks of ``path`` in place; returns the markers that changed."""
    changed = stale(path)
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
        tmp.replace(path)
    return changed


def main() -> None:
    changed = update()
    print(f"{README}: " + (f"regenerated {', '.join(changed)}" if changed else "up to date"))


if __name__ == "__main__":
    main()
