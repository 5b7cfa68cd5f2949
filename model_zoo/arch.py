"""The CIFAR ResNet family's architecture as plain data: validated and measured without torch.

An *arch* is the keyword set of :class:`model_zoo.resnet.CifarResNet` (block, layers, stem_width,
widths, inner_widths, groups, mean, std). :func:`check_arch` refuses a malformed one with one line
and :func:`count_parameters` counts its parameters analytically, so ``robench zoo list`` and the
checkpoint loader know a model's size before anything is allocated.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from model_zoo.errors import BadInput
from model_zoo.schemes import get_scheme

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

ARCH_KEYS = ("block", "layers", "stem_width", "widths", "inner_widths", "groups", "mean", "std")
DEFAULT_ARCH: dict[str, Any] = dict(block="basic", layers=(3, 3, 3), stem_width=16, widths=(16, 32, 64),
                                    inner_widths=None, groups=1, mean=CIFAR10_MEAN, std=CIFAR10_STD)
# Refused before any allocation: the largest registered model (ResNeXt-29 16x64d) has 68M parameters.
MAX_PARAMETERS = 200_000_000
MAX_CLASSES = 100_000


def resnet_arch(depth: int) -> dict[str, Any]:
    """ResNet-20…110 use basic blocks (6n+2 layers); ResNet-164 uses bottlenecks (9n+2), widths ×4."""
    if depth == 164:
        n = (depth - 2) // 9
        return dict(block="bottleneck", layers=(n, n, n), widths=(64, 128, 256))
    n = (depth - 2) // 6
    return dict(block="basic", layers=(n, n, n))


def resnext29_arch(cardinality: int, base_width: int) -> dict[str, Any]:
    """CIFAR ResNeXt-29 (Xie et al. 2017): 64-wide stem, 3 stages × 3 grouped bottlenecks."""
    return dict(block="bottleneck", layers=(3, 3, 3), stem_width=64, widths=(256, 512, 1024),
                inner_widths=tuple(cardinality * base_width * 2**s for s in range(3)), groups=cardinality)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(v: Any, n: int | None = None) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_int(x) and x >= 1 for x in v) \
        and (n is None or len(v) == n)


def check_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """The full arch (defaults filled in), or :class:`BadInput` naming the first bad key."""
    if not isinstance(arch, Mapping) or not all(isinstance(k, str) for k in arch):
        raise BadInput(f"architecture keywords must be an object of names, got {arch!r}")
    unknown = sorted(set(arch) - set(ARCH_KEYS))
    if unknown:
        raise BadInput(f"unknown architecture keyword(s) {', '.join(unknown)}; valid choices: {', '.join(ARCH_KEYS)}")
    a = {**DEFAULT_ARCH, **arch}
    if a["block"] not in ("basic", "bottleneck"):
        raise BadInput(f"block must be 'basic' or 'bottleneck', got {a['block']!r}")
    if not _ints(a["layers"]):
        raise BadInput(f"layers must be a list of positive integers, got {a['layers']!r}")
    if not _ints(a["widths"], len(a["layers"])):
        raise BadInput(f"widths must be {len(a['layers'])} positive integers (one per stage), got {a['widths']!r}")
    if not (_int(a["stem_width"]) and a["stem_width"] >= 1):
        raise BadInput(f"stem_width must be a positive integer, got {a['stem_width']!r}")
    if not (_int(a["groups"]) and a["groups"] >= 1):
        raise BadInput(f"groups must be a positive integer, got {a['groups']!r}")
    if a["inner_widths"] is not None and not _ints(a["inner_widths"], len(a["layers"])):
        raise BadInput(f"inner_widths must be {len(a['layers'])} positive integers or null, got {a['inner_widths']!r}")
    if a["block"] == "bottleneck":
        inner = a["inner_widths"] or [w // 4 for w in a["widths"]]
        if any(w < 1 or w % a["groups"] for w in inner):
            raise BadInput(f"bottleneck widths {list(inner)} must be positive multiples of groups={a['groups']}")
    elif a["groups"] != 1:
        raise BadInput("groups applies to bottleneck blocks only")
    for key in ("mean", "std"):
        v = a[key]
        if not (isinstance(v, (list, tuple)) and len(v) == 3
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            raise BadInput(f"{key} must be 3 finite numbers (one per colour channel), got {v!r}")
    if any(x <= 0 for x in a["std"]):
        raise BadInput(f"std must be positive, got {a['std']!r}")
    return a


def check_num_classes(num_classes: Any) -> int:
    if not (_int(num_classes) and 2 <= num_classes <= MAX_CLASSES):
        raise BadInput(f"num_classes must be an integer in [2, {MAX_CLASSES}], got {num_classes!r}")
    return num_classes


def damped_blocks(arch: Mapping[str, Any]) -> list[int]:
    """Indices of the blocks that follow the scheme: all but the first and the projection blocks."""
    a = {**DEFAULT_ARCH, **arch}
    out, idx, in_ch = [], 0, a["stem_width"]
    for stage, (n, out_ch) in enumerate(zip(a["layers"], a["widths"])):
        for j in range(n):
            stride = 2 if (stage > 0 and j == 0) else 1
            if not (in_ch != out_ch or stride != 1) and idx > 0:
                out.append(idx)
            idx += 1
            in_ch = out_ch
    return out


def count_parameters(arch: Mapping[str, Any], *, scheme: str = "euler", lam: float | None = None,
                     num_classes: int = 10) -> int:
    """Trainable parameters of ``CifarResNet(**arch, scheme=scheme, lam=lam, num_classes=...)``, by formula."""
    a = check_arch(arch)
    total = 3 * a["stem_width"] * 9
    in_ch = a["stem_width"]
    for stage, (n, out_ch) in enumerate(zip(a["layers"], a["widths"])):
        for j in range(n):
            stride = 2 if (stage > 0 and j == 0) else 1
            if a["block"] == "basic":
                total += 2 * in_ch + in_ch * out_ch * 9 + 2 * out_ch + out_ch * out_ch * 9
            else:
                w = a["inner_widths"][stage] if a["inner_widths"] is not None else out_ch // 4
                total += 2 * in_ch + in_ch * w + 2 * w + w * (w // a["groups"]) * 9 + 2 * w + w * out_ch
            if in_ch != out_ch or stride != 1:
                total += 2 * in_ch + in_ch * out_ch
            in_ch = out_ch
    total += 2 * in_ch + in_ch * num_classes + num_classes
    if get_scheme(scheme).learned and lam is None:
        total += len(damped_blocks(a))
    return total


def check_size(arch: Mapping[str, Any], *, scheme: str = "euler", lam: float | None = None,
               num_classes: int = 10, what: str = "model") -> int:
    """The parameter count, or :class:`BadInput` when it exceeds :data:`MAX_PARAMETERS`."""
    n = count_parameters(arch, scheme=scheme, lam=lam, num_classes=num_classes)
    if n > MAX_PARAMETERS:
        raise BadInput(f"{what} would have {n:,} parameters, more than the limit of {MAX_PARAMETERS:,}; "
                       "refused before allocating it")
    return n
