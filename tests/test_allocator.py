"""The CLI keeps freed memory for reuse (glibc malloc): a training or evaluation step's activations
are not handed back to the kernel and faulted in again on the next step."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                                reason="glibc malloc only")

# 20 rounds of allocating, touching and freeing a 64 MiB tensor, as a step's activations are; prints the
# minor page faults of those rounds (the first round, which must fault its pages in, left out)
PROBE = """
import resource, sys, torch
{setup}
x = torch.empty(16 * 2**20); x.fill_(1.0); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = torch.empty(16 * 2**20)
    x.fill_(1.0)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_PER_ROUND = 64 * 2**20 // 4096


def _faults(setup: str, env: dict | None = None) -> int:
    import os

    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                         check=True, env={**os.environ, **(env or {})})
    return int(out.stdout.strip().splitlines()[-1])


def test_the_cli_process_reuses_freed_tensors_instead_of_faulting_them_in_again():
    # glibc's defaults: each 64 MiB block is mmapped afresh and every page faulted in, round after round
    assert _faults("") > 10 * PAGES_PER_ROUND
    # what every robench command runs first (the click group's callback)
    cli = ("from click.testing import CliRunner\nfrom robench.cli import cli\n"
           "assert CliRunner().invoke(cli, ['zoo', 'list']).exit_code == 0")
    assert _faults(cli) < 2 * PAGES_PER_ROUND  # at most one round's worth in 20


def test_robench_malloc_default_leaves_glibcs_settings():
    setup = "from robench.machine import keep_freed_memory\nassert keep_freed_memory() is False"
    assert _faults(setup, {"ROBENCH_MALLOC": "default"}) > 10 * PAGES_PER_ROUND


def test_an_unknown_robench_malloc_value_is_one_line_naming_the_choices():
    import os

    out = subprocess.run([sys.executable, "-m", "robench", "zoo", "list"], capture_output=True, text=True,
                         env={**os.environ, "ROBENCH_MALLOC": "off"})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: ROBENCH_MALLOC must be 'keep' (robench's setting) or 'default' (glibc's), got 'off'"]
