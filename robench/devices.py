"""Torch devices by name: the one place that says which devices this machine has."""
from __future__ import annotations

import torch

from robench.errors import BadInput


def resolve_device(device: str | torch.device) -> torch.device:
    """A usable torch device, or BadInput naming the ones this machine has."""
    valid = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise BadInput(f"unknown device {device!r}; valid choices: {', '.join(valid)}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available() or (dev.index is not None and dev.index >= torch.cuda.device_count()):
            raise BadInput(f"device {device!r} is not available here; valid choices: {', '.join(valid)}")
        return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    if dev.type != "cpu" and not (dev.type == "mps" and torch.backends.mps.is_available()):
        raise BadInput(f"device {device!r} is not available here; valid choices: {', '.join(valid)}")
    return dev


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
