"""Parsers shared by several commands. They live in the library (:mod:`robench.spec`); this module
re-exports them for the commands, and splits repeatable options that also take comma lists."""
from __future__ import annotations

from robench.errors import BadInput
from robench.spec import parse_eps, parse_int, parse_lam, parse_number, parse_param, parse_severity

__all__ = ["parse_eps", "parse_int", "parse_lam", "parse_number", "parse_param", "parse_severity", "split_list"]


def split_list(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also take comma lists: ``--eps 2/255,8/255 --eps 16/255``."""
    out = []
    for v in values:
        parts = [p.strip() for p in str(v).split(",")]
        if any(not p for p in parts):
            raise BadInput(f"empty item in the list {v!r}; separate values with single commas")
        out += parts
    return out
