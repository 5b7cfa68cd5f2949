"""The one exception type that means "the user asked for something invalid"."""
from __future__ import annotations


class BadInput(ValueError):
    """Invalid user input. The CLI prints ``error: <message>`` on one line and exits with code 2."""
