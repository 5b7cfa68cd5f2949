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


def resolve_threads(value: int | str | None) -> int:
    """The CPU threads to run with: ``value`` (a whole number ≥ 1, or its text), else the environment
    variable ROBENCH_THREADS, else min(cores, 4). Anything else is :class:`~robench.errors.BadInput`."""
    from robench.errors import BadInput

    source = "--threads"
    if value is None:
        value = os.environ.get("ROBENCH_THREADS")
        source = "ROBENCH_THREADS"
        if value is None or not str(value).strip():
            return max(1, min(os.cpu_count() or 1, 4))
    if isinstance(value, bool):
        v = None
    elif isinstance(value, int):
        v = value
    else:
        t = str(value).strip()
        v = int(t) if t.isascii() and t.isdigit() else None
    if v is None or v < 1:
        raise BadInput(f"{source} must be a whole number ≥ 1 (CPU threads), got {value!r}")
    return v
