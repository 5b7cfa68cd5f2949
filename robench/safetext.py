"""Text read from files is data: these functions make it safe for each place it is shown.

- :func:`csv_cell` / :func:`csv_uncell`: a spreadsheet runs a CSV cell that starts with ``=``,
  ``+``, ``-``, ``@``, a tab or a carriage return as a formula (``=HYPERLINK(...)``). Such a cell,
  and one that already starts with ``'``, is written with one leading ``'`` (OWASP's advice), so no
  spreadsheet evaluates it; reading removes exactly that ``'`` again, so a CSV table round-trips
  to the same values as its parquet twin. :func:`neutralise_frame` / :func:`restore_frame` apply
  them to every text column of a table.
- :func:`markdown_cell`: Markdown and HTML in a name (``<img onerror=…>``, ``[x](http://…)``,
  ``|``, ``$…$``) become literal text in a Markdown table cell; control characters become visible
  escapes, so a name cannot rewrite the terminal either.
- :func:`terminal_text`: control characters (ANSI escapes, newlines) of a name printed on a
  terminal or in a one-line error become visible escapes.
- :func:`url_path`: a relative file path as the ``src`` of an HTML image (percent-encoded).
"""
from __future__ import annotations

import re
import urllib.parse

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MD_ALWAYS = re.compile(r"([\\`*\[\]<>|$~&])")
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def csv_cell(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet evaluates (see the module docstring)."""
    return "'" + text if text[:1] in FORMULA_START or text[:1] == "'" else text


def csv_uncell(text: str) -> str:
    """The exact inverse of :func:`csv_cell`."""
    return text[1:] if text[:1] == "'" else text


def _text_columns(df: pd.DataFrame) -> list:
    return [c for c in df.columns if pd.api.types.is_string_dtype(df[c].dtype) or df[c].dtype == object]


def neutralise_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells are :func:`csv_cell`'d (for writing CSV)."""
    out = df.copy()
    for c in _text_columns(out):
        out[c] = out[c].map(lambda v: csv_cell(v) if isinstance(v, str) else v, na_action="ignore").astype(out[c].dtype)
    return out


def restore_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its text cells :func:`csv_uncell`'d (after reading a CSV robench wrote)."""
    for c in _text_columns(df):
        df[c] = df[c].map(lambda v: csv_uncell(v) if isinstance(v, str) else v, na_action="ignore").astype(df[c].dtype)
    return df


def _visible(m: re.Match) -> str:
    ch = m.group(0)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")


def terminal_text(text: object) -> str:
    """``text`` with control characters (ANSI escapes, newlines, ...) as visible escapes."""
    return _CONTROL.sub(_visible, str(text))


def markdown_cell(text: object) -> str:
    """``text`` as literal content of a Markdown table cell (no markup, no HTML, one line)."""
    s = _MD_ALWAYS.sub(r"\\\1", terminal_text(text))
    return _MD_UNDERSCORE.sub(r"\\_", s)


def url_path(path: str) -> str:
    """A relative POSIX path percent-encoded for an HTML ``src``/``href``."""
    return urllib.parse.quote(path, safe="/")
