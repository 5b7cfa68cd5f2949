"""The registered models: one line each (name, skip rule, architecture). See :mod:`model_zoo.arch`."""
from __future__ import annotations

from model_zoo.arch import resnet_arch, resnext29_arch
from model_zoo.registry import register_cifar_resnet as _reg

# -- ResNet (forward Euler) ---------------------------------------------------------------
for _d in (20, 32, 44, 56, 110, 164):
    _reg(f"resnet{_d}", "euler", resnet_arch(_d))
_reg("resnext29_8x64d", "euler", resnext29_arch(8, 64))
_reg("resnext29_16x64d", "euler", resnext29_arch(16, 64))

# -- In-ResNet (damped) -------------------------------------------------------------------
for _d in (20, 32, 44, 56, 110, 164):
    _reg(f"inresnet{_d}", "damped", resnet_arch(_d))
_reg("inresnext29_8x64d", "damped", resnext29_arch(8, 64))

# -- λ-In-ResNet ((1+λ)f + (1−λ)x) --------------------------------------------------------
for _d in (20, 32, 44, 56, 110, 164):
    _reg(f"lambda_inresnet{_d}", "lambda_damped", resnet_arch(_d))

# -- LM-ResNet (linear multistep) ---------------------------------------------------------
for _d in (20, 32, 44, 56, 110, 164):
    _reg(f"lmresnet{_d}", "lm", resnet_arch(_d))
_reg("lmresnext29_8x64d", "lm", resnext29_arch(8, 64))
