"""Torch devices by name: the one place that says which devices this machine has, how robench runs on
each kind (memory format, default batch sizes) and what makes a run on it deterministic.

Every command resolves its ``--device`` here first (:func:`resolve_device`), before it reads data or
loads a model, so ``cuda`` on a machine without a GPU, ``gpu``, ``meta`` or ``cuda:7`` on a one-GPU
machine is one line (exit 2), not a traceback after minutes of work.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from robench.errors import BadInput

DEVICE_KINDS = ("cpu", "cuda", "mps")

# cuBLAS reuses workspaces across streams unless this is set before its first handle is created;
# with it, repeated cuBLAS calls give bit-identical results (NVIDIA's and torch's reproducibility notes).
CUBLAS_WORKSPACE = ":4096:8"

# Images per batch when --batch-size is not given, per job and device kind. CPU: what robench always
# used (a table made with the default batch size stays the same cells). CUDA: a ResNet-20 batch of 256
# is a few microseconds of work per kernel on a large GPU, so the step is bound by kernel launches;
# 1000 images give each kernel 4x the work, keep the forward+backward activations of depth 164 at
# about 26 GB (depth 110: about 10 GB) and divide the 10,000 test images evenly. The forward-only
# noise protocol takes 2,500. A smaller GPU takes --batch-size.
DEFAULT_BATCH_SIZES = {
    "eval": {"cpu": 256, "cuda": 1000, "mps": 256},
    "analysis": {"cpu": 250, "cuda": 1000, "mps": 250},
    "noise": {"cpu": 500, "cuda": 2500, "mps": 500},
}

# Memory format of models and images per device kind. channels_last on CPU, where oneDNN's
# convolutions run faster in it (PGD-20 on ResNet-20, benchmarks/RESULTS.md), and on CUDA, where
# cuDNN's NHWC kernels are the tensor-core path and training already runs channels_last;
# ROBENCH_MEMORY_FORMAT=contiguous|channels_last overrides it (the GPU campaign's probe times both).
MEMORY_FORMATS = {"cpu": "channels_last", "cuda": "channels_last", "mps": "contiguous"}
MEMORY_FORMAT_ENV = "ROBENCH_MEMORY_FORMAT"
_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def available_devices() -> list[str]:
    """The device names this machine accepts, for error messages."""
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def device_kind(device: str | torch.device) -> str:
    """``cpu``, ``cuda`` or ``mps`` of a device name, without asking whether this machine has it (a Ray
    driver plans cells for the workers' devices). Anything else is BadInput."""
    dev = _parse(device)
    if dev.type not in DEVICE_KINDS:
        raise BadInput(f"device {device!r} cannot run an evaluation; valid choices: {', '.join(available_devices())}")
    return dev.type


def _parse(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    valid = ", ".join(available_devices())
    if not isinstance(device, str) or not device.strip():
        raise BadInput(f"device must be a name such as cpu or cuda, got {device!r}; valid choices: {valid}")
    text = device.strip()
    try:
        return torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        hint = "; did you mean cuda?" if text.lower() in ("gpu", "nvidia", "cuda0") or text.lower().startswith("gpu:") \
            else ""
        raise BadInput(f"unknown device {device!r}; valid choices: {valid}{hint}") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """A usable torch device (``cuda`` → ``cuda:<current>``), or BadInput naming the ones this machine has."""
    dev = _parse(device)
    valid = ", ".join(available_devices())
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is a CPU build" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise BadInput(f"device {device!r} is not available here ({build}); valid choices: {valid}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(f"device {device!r} is not available here ({torch.cuda.device_count()} CUDA device"
                           f"{'s' if torch.cuda.device_count() != 1 else ''}); valid choices: {valid}")
        return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    if dev.type == "mps" and _mps_available():
        return dev
    if dev.type != "cpu":
        raise BadInput(f"device {device!r} is not available here or cannot run an evaluation; valid choices: {valid}")
    return torch.device("cpu")


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_batch_size(device: str | torch.device, job: str = "eval") -> int:
    """The batch size a ``job`` (``eval``, ``analysis``, ``noise``) uses on ``device`` when none is given."""
    return DEFAULT_BATCH_SIZES[job][device_kind(device)]


def memory_format_name(device: str | torch.device) -> str:
    """``channels_last`` or ``contiguous``: the layout models and images use on ``device`` (per device kind,
    :data:`MEMORY_FORMATS`, or ``$ROBENCH_MEMORY_FORMAT``)."""
    forced = os.environ.get(MEMORY_FORMAT_ENV, "").strip()
    if forced:
        if forced not in _FORMATS:
            raise BadInput(f"{MEMORY_FORMAT_ENV}={forced!r}; valid choices: {', '.join(_FORMATS)}")
        return forced
    return MEMORY_FORMATS[device_kind(device)]


def memory_format(device: str | torch.device) -> torch.memory_format:
    return _FORMATS[memory_format_name(device)]


def to_format(x: torch.Tensor) -> torch.Tensor:
    """A batch of images (N, C, H, W) in its device's memory format; other tensors unchanged."""
    return x.contiguous(memory_format=memory_format(x.device)) if x.dim() == 4 else x


def precision_name(device: str | torch.device, tf32: bool = False) -> str:
    """What float32 arithmetic means on ``device`` in a run: ``fp32`` (IEEE float32 everywhere), ``tf32``
    (CUDA convolutions and matmuls with TensorFloat-32 inputs, ``--tf32``), or, on a CPU whose torch was
    told to use lower-precision matmuls (``torch.set_float32_matmul_precision``), ``fp32-matmul-<that>``."""
    kind = device_kind(device)
    if kind == "cuda":
        return "tf32" if tf32 else "fp32"
    setting = torch.get_float32_matmul_precision()
    return "fp32" if setting == "highest" else f"fp32-matmul-{setting}"


def prepare_cuda_env() -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` unless the user set it: before the first cuBLAS handle exists
    (the CLI does this before any command runs; :func:`determinism` again for library calls)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


@contextlib.contextmanager
def determinism(device: str | torch.device, *, tf32: bool = False) -> Iterator[None]:
    """Run the block deterministically on ``device``; the previous settings are restored afterwards.

    On CUDA: cuDNN picks deterministic algorithms and no benchmark search (its autotuner may choose
    another kernel per run), TF32 is off for convolutions and matmuls unless ``tf32`` (TF32 keeps 10
    mantissa bits: a different number, not just a faster one), and ``CUBLAS_WORKSPACE_CONFIG`` is set
    (it only takes effect when no cuBLAS handle exists yet in the process, which is why the CLI sets it
    at start-up). On CPU nothing changes: the float32 kernels are deterministic for a fixed thread count.
    """
    if device_kind(device) != "cuda":
        yield
        return
    prepare_cuda_env()
    matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True,
                                        allow_tf32=bool(tf32)):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
