"""``python -m robench ...``: the CLI from a working tree that is not pip-installed (the GPU machine)."""
from robench.cli import main

main()
