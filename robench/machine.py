"""What machine a number was measured on (model cards, benchmark reports)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here ("AVX2", "AVX512", ...).

    The model name alone does not tell machines apart: two virtual CPUs both called "AMD EPYC" trained
    ResNet-20 at 439 (AVX512) and 216 (AVX2) images/s in fp32 on one thread.
    """
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU. Without them bf16 autocast runs reference code:
    ResNet-20 training on an AVX2 CPU went from 216 images/s in fp32 to 18 in bf16."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: a torch without it cannot tell, so do not warn
        return True


def cpu_label() -> str:
    return f"{cpu_name()} ({os.cpu_count()} logical cores, {cpu_capability()})"


THREADS_ENV = "ROBENCH_THREADS"
DEFAULT_MAX_THREADS = 4


def resolve_threads(value: int | str | None = None) -> int:
    """The intra-op thread count to run with: ``value`` (a ``--threads`` option), else the environment
    variable ROBENCH_THREADS, else min(usable cores, 4). On a loaded 2-core machine torch's default
    made a 20-image forward 15× slower than one thread. Raises BadInput for anything but an integer ≥ 1.
    """
    from robench.errors import BadInput

    source = "--threads"
    if value is None or value == "":
        value, source = os.environ.get(THREADS_ENV) or None, THREADS_ENV
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if value is None:
        return max(1, min(cores, DEFAULT_MAX_THREADS))
    try:
        n = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        n = None
    top = max(64, 4 * cores)  # far more threads than cores only slows work; 100000 crashes the thread pool
    if n is None or n < 1 or str(value).strip() not in (str(n), f"+{n}"):
        raise BadInput(f"{source} must be a whole number of threads ≥ 1, got {value!r}")
    if n > top:
        raise BadInput(f"{source} must be a whole number of threads in [1, {top}] ({cores} usable cores here), "
                       f"got {value!r}")
    return n
