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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_THRESHOLD = 1 << 30  # 1 GiB
ALLOCATOR_ENV = "ROBENCH_MALLOC"


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel: blocks
    below 1 GiB come from the heap (not a fresh ``mmap`` each) and the heap is trimmed only when 1 GiB
    is free at its top. torch's CPU tensors are malloc'd and freed every step; with glibc's defaults a
    freed activation (8 MiB for a ResNet-20 batch of 128, 65 MiB at an evaluation batch of 1000) goes
    back to the kernel and is faulted in again on the next step: 1–3 million page faults and 10–15 % of
    the wall time of a 4 × 20-step ResNet-20 training (benchmarks/RESULTS.md, packed_throughput). The
    price: a process keeps its peak heap until it exits. Process-wide, so only the CLI calls it (and the
    Ray executor's tasks, and the benchmarks, to measure what the CLI runs); a library user's process is
    left as it is. ``ROBENCH_MALLOC=default`` leaves glibc's defaults (``keep``, the default, applies it;
    anything else is refused). Returns whether it was applied
    (not on other C libraries or systems)."""
    from robench.errors import BadInput

    choice = os.environ.get(ALLOCATOR_ENV, "").strip().lower() or "keep"
    if choice not in ("keep", "default"):
        raise BadInput(f"{ALLOCATOR_ENV} must be 'keep' (robench's setting) or 'default' (glibc's), got "
                       f"{os.environ[ALLOCATOR_ENV]!r}")
    if choice == "default" or platform.system() != "Linux":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another C library: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: setting either fixes both (glibc stops adapting them), and a trim
    # threshold alone would leave every block above 128 KiB to mmap: far more page faults, not fewer
    return bool(mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, ALLOCATOR_THRESHOLD))


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
