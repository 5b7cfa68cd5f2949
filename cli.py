"""``robench`` console entry point: a thin shim over :mod:`robench.cli`."""
from robench.cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
