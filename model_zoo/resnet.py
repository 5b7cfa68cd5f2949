"""One configurable CIFAR ResNet family; the skip rule ("scheme") is an argument, not a network.

Blocks are pre-activation (BN-ReLU-conv) as in the seed code minicheshire/InResNet: a 3×3 stem
conv (no BN/ReLU, the first block starts with them), three stages, BN-ReLU-avgpool-FC head.

Which blocks are damped: the first block of the network and every block with a projection
shortcut (a stage transition, or the stem→bottleneck widening) keep the plain residual
``x + f(x)`` in every scheme, as both reference implementations do. All other blocks follow the
scheme:

- ``euler``          x_{n+1} = x_n + f(x_n)                                  (ResNet)
- ``damped``         x_{n+1} = f(x_n) + (1 − λ_n) x_n,  λ_n = relu(1 − k_n)    (In-ResNet)
- ``lambda_damped``  x_{n+1} = (1 + λ_n) f(x_n) + (1 − λ_n) x_n,  λ_n = relu(k_n)
- ``lm``             x_{n+1} = (1 − k_n) x_n + k_n x_{n−1} + f(x_n)          (LM-ResNet)

With a fixed ``lam`` the damped schemes hold λ as a plain float, so the model has exactly the
parameters and state-dict keys of the ResNet of the same depth and ``lam=0`` *is* that ResNet.
"""
from __future__ import annotations

import math
from enum import Enum
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from robench.errors import BadInput

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class Scheme(str, Enum):
    EULER = "euler"
    DAMPED = "damped"
    LAMBDA_DAMPED = "lambda_damped"
    LM = "lm"


# Initial ranges of the learned per-block coefficient k_n (reference code).
_K_INIT = {Scheme.DAMPED: (0.75, 0.8), Scheme.LAMBDA_DAMPED: (0.2, 0.25), Scheme.LM: (-0.1, 0.0)}


class PreActBasic(nn.Module):
    """BN-ReLU-conv3×3 ×2: the residual branch f of ResNet-20…110."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(out)))


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1×1 → BN-ReLU-conv3×3 (grouped for ResNeXt) → BN-ReLU-conv1×1."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, width: int, groups: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return self.conv3(F.relu(self.bn3(out)))


class Projection(nn.Sequential):
    """BN-ReLU-conv1×1 shortcut used where a block changes width or resolution."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__(nn.BatchNorm2d(in_ch), nn.ReLU(), nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False))


class CifarResNet(nn.Module):
    """CIFAR ResNet / ResNeXt with a configurable skip rule. Takes pixels in [0, 1]."""

    def __init__(
        self,
        *,
        block: str = "basic",
        layers: Sequence[int] = (3, 3, 3),
        stem_width: int = 16,
        widths: Sequence[int] = (16, 32, 64),
        inner_widths: Sequence[int] | None = None,
        groups: int = 1,
        scheme: Scheme | str = Scheme.EULER,
        lam: float | None = None,
        num_classes: int = 10,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        scheme = Scheme(scheme)
        if lam is not None:
            if scheme not in (Scheme.DAMPED, Scheme.LAMBDA_DAMPED):
                raise BadInput(f"λ (lam) does not apply to scheme {scheme.value!r}; it applies to damped and lambda_damped models")
            if not (isinstance(lam, (int, float)) and 0.0 <= float(lam) <= 1.0):
                raise BadInput(f"lam must be a number in [0, 1], got {lam!r}")
            lam = float(lam)
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        self.scheme = scheme
        self.lam = lam
        self.num_classes = num_classes
        self.config = dict(block=block, layers=list(layers), stem_width=stem_width, widths=list(widths),
                           inner_widths=None if inner_widths is None else list(inner_widths), groups=groups)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        self.conv1 = nn.Conv2d(3, stem_width, 3, padding=1, bias=False)
        blocks, projections, damped = [], {}, []
        in_ch = stem_width
        for stage, (n, out_ch) in enumerate(zip(layers, widths)):
            for j in range(n):
                stride = 2 if (stage > 0 and j == 0) else 1
                if block == "basic":
                    b = PreActBasic(in_ch, out_ch, stride)
                else:
                    width = inner_widths[stage] if inner_widths is not None else out_ch // 4
                    b = PreActBottleneck(in_ch, out_ch, stride, width=width, groups=groups)
                idx = len(blocks)
                if in_ch != out_ch or stride != 1:
                    projections[str(idx)] = Projection(in_ch, out_ch, stride)
                elif idx > 0:
                    damped.append(idx)
                blocks.append(b)
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.projections = nn.ModuleDict(projections)
        self.damped_blocks: list[int] = damped
        self.bn = nn.BatchNorm2d(in_ch)
        self.fc = nn.Linear(in_ch, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        # k_n is a parameter only when it is learned, so fixed-λ and ResNet state dicts coincide.
        self.learned = scheme != Scheme.EULER and lam is None
        if self.learned:
            lo, hi = _K_INIT[scheme]
            self.k = nn.Parameter(torch.empty(len(damped)).uniform_(lo, hi))
        self._slot = {b: i for i, b in enumerate(damped)}

    # -- the per-block coefficients --------------------------------------------------------
    def lambdas(self) -> torch.Tensor:
        """λ_n per damped block (damped schemes), differentiable when learned."""
        if self.scheme == Scheme.DAMPED:
            return F.relu(1 - self.k) if self.learned else torch.full((len(self.damped_blocks),), self.lam)
        if self.scheme == Scheme.LAMBDA_DAMPED:
            return F.relu(self.k) if self.learned else torch.full((len(self.damped_blocks),), self.lam)
        raise ValueError(f"scheme {self.scheme.value!r} has no λ")

    def damping(self) -> list[dict]:
        """Per-block damping as flat records: block index, stage, coefficient name and value.

        λ_n for the damped schemes, k_n for LM-ResNet, λ=0 for ResNet's blocks.
        """
        if self.scheme in (Scheme.DAMPED, Scheme.LAMBDA_DAMPED):
            name, values = "lam", self.lambdas().detach().cpu().tolist()
        elif self.scheme == Scheme.LM:
            name, values = "k", self.k.detach().cpu().tolist()
        else:
            name, values = "lam", [0.0] * len(self.damped_blocks)
        stage_of = []
        for stage, n in enumerate(self.config["layers"]):
            stage_of += [stage] * n
        return [{"block": b, "stage": stage_of[b], "coef": name, "value": float(v)}
                for b, v in zip(self.damped_blocks, values)]

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.conv1(x)
        s = self.scheme
        if s in (Scheme.DAMPED, Scheme.LAMBDA_DAMPED):
            # one formula for λ_n (lambdas()); a fixed λ stays a Python float so λ=0 is exactly ResNet
            lams = self.lambdas() if self.learned else [self.lam] * len(self.damped_blocks)
        prev = x  # x_{n-1} for LM; after a projection block it is the projected input
        for i, block in enumerate(self.blocks):
            proj = self.projections[str(i)] if str(i) in self.projections else None
            if proj is not None or i == 0:
                shortcut = proj(x) if proj is not None else x
                x, prev = block(x) + shortcut, shortcut
                continue
            f = block(x)
            if s == Scheme.EULER:
                out = x + f
            elif s == Scheme.DAMPED:
                lam = lams[self._slot[i]]
                out = f + (1 - lam) * x
            elif s == Scheme.LAMBDA_DAMPED:
                lam = lams[self._slot[i]]
                out = (1 + lam) * f + (1 - lam) * x
            else:  # LM
                k = self.k[self._slot[i]]
                out = f + (1 - k) * x + k * prev
            x, prev = out, x
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
