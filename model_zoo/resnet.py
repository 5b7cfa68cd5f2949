"""One configurable CIFAR ResNet family; the skip rule ("scheme") is an argument, not a network.

Blocks are pre-activation (BN-ReLU-conv) as in the seed code minicheshire/InResNet: a 3×3 stem
conv (no BN/ReLU, the first block starts with them), three stages, BN-ReLU-avgpool-FC head.

Which blocks are damped: the first block of the network and every block with a projection
shortcut (a stage transition, or the stem→bottleneck widening) keep the plain residual
``x + f(x)`` in every scheme, as both reference implementations do. All other blocks follow the
scheme, a registered record of :mod:`model_zoo.schemes` (its update rule, whether λ applies, the
init range of the learned k_n): ResNet (``euler``), In-ResNet (``damped``), λ-In-ResNet
(``lambda_damped``) and LM-ResNet (``lm``); this class has no per-scheme branches.

With a fixed ``lam`` the damped schemes hold λ as a plain float, so the model has exactly the
parameters and state-dict keys of the ResNet of the same depth and ``lam=0`` *is* that ResNet.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_zoo.arch import CIFAR10_MEAN, CIFAR10_STD, check_arch, check_num_classes
from model_zoo.errors import BadInput
from model_zoo.schemes import Scheme, get_scheme


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
        scheme: Scheme | str = "euler",
        lam: float | None = None,
        num_classes: int = 10,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        k_init: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        scheme = get_scheme(scheme)
        if lam is not None:
            if not scheme.takes_lam:
                from model_zoo.schemes import lam_schemes

                raise BadInput(f"λ (lam) does not apply to scheme {scheme.value!r}; it applies to "
                               f"{' and '.join(lam_schemes())} models")
            if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and 0.0 <= float(lam) <= 1.0):
                raise BadInput(f"lam must be a number in [0, 1], got {lam!r}")
            lam = float(lam)
        check_arch(dict(block=block, layers=layers, stem_width=stem_width, widths=widths, inner_widths=inner_widths,
                        groups=groups, mean=mean, std=std))
        check_num_classes(num_classes)
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
        self.learned = scheme.learned and lam is None
        if self.learned:
            # the uniform range of the initial k_n: the scheme's (the reference code's default), or a
            # training recipe's own (the reference draws depth-164 k_n from other ranges); init only,
            # so it is not part of the architecture
            lo, hi = scheme.k_init if k_init is None else k_init
            if not (lo <= hi):
                raise BadInput(f"k_init must be a range (low, high) with low <= high, got {k_init!r}")
            self.k = nn.Parameter(torch.empty(len(damped)).uniform_(lo, hi))
        self._slot = {b: i for i, b in enumerate(damped)}

    # -- the per-block coefficients --------------------------------------------------------
    def lambdas(self) -> torch.Tensor:
        """λ_n per damped block (schemes that take λ), differentiable when learned."""
        if not self.scheme.takes_lam:
            raise ValueError(f"scheme {self.scheme.value!r} has no λ")
        return self.scheme.lam_of_k(self.k) if self.learned else torch.full((len(self.damped_blocks),), self.lam)

    def _coefficients(self) -> list | torch.Tensor:
        """The coefficient each damped block's update gets (λ_n, k_n, or None for a rule without one)."""
        s = self.scheme
        if self.learned:
            return s.lam_of_k(self.k) if s.lam_of_k is not None else self.k
        # a fixed λ stays a Python float so that λ=0 is exactly ResNet
        return [self.lam] * len(self.damped_blocks)

    def damping(self) -> list[dict]:
        """Per-block damping as flat records: block index, stage, coefficient name and value.

        λ_n for the damped schemes, k_n for LM-ResNet, λ=0 for ResNet's blocks.
        """
        if self.scheme.takes_lam and (self.learned or self.lam is not None):
            values = self.lambdas().detach().cpu().tolist()
        elif self.learned:
            values = self.k.detach().cpu().tolist()
        else:
            values = [0.0] * len(self.damped_blocks)
        stage_of = []
        for stage, n in enumerate(self.config["layers"]):
            stage_of += [stage] * n
        return [{"block": b, "stage": stage_of[b], "coef": self.scheme.coef, "value": float(v)}
                for b, v in zip(self.damped_blocks, values)]

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.conv1(x)
        step = self.scheme.step
        coefs = self._coefficients()
        prev = x  # x_{n-1} for LM; after a projection block it is the projected input
        for i, block in enumerate(self.blocks):
            proj = self.projections[str(i)] if str(i) in self.projections else None
            if proj is not None or i == 0:
                shortcut = proj(x) if proj is not None else x
                x, prev = block(x) + shortcut, shortcut
                continue
            out = step(block(x), x, prev, coefs[self._slot[i]])
            x, prev = out, x
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
