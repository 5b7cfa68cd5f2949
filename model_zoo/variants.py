"""Registered variants: each is one short function over :class:`CifarResNet`."""
from __future__ import annotations

from model_zoo.registry import register_model
from model_zoo.resnet import CifarResNet, Scheme


def _resnet(depth: int, scheme: Scheme, **kw) -> CifarResNet:
    """ResNet-20…110 use basic blocks (6n+2 layers); ResNet-164 uses bottlenecks (9n+2), widths ×4."""
    if depth == 164:
        n = (depth - 2) // 9
        return CifarResNet(block="bottleneck", layers=(n, n, n), widths=(64, 128, 256), scheme=scheme, **kw)
    n = (depth - 2) // 6
    return CifarResNet(block="basic", layers=(n, n, n), scheme=scheme, **kw)


def _resnext29(cardinality: int, base_width: int, scheme: Scheme, **kw) -> CifarResNet:
    """CIFAR ResNeXt-29 (Xie et al. 2017): 64-wide stem, 3 stages × 3 grouped bottlenecks."""
    inner = tuple(cardinality * base_width * 2**s for s in range(3))
    return CifarResNet(block="bottleneck", layers=(3, 3, 3), stem_width=64, widths=(256, 512, 1024),
                       inner_widths=inner, groups=cardinality, scheme=scheme, **kw)


# -- ResNet (forward Euler) ---------------------------------------------------------------
@register_model
def resnet20(**kw): return _resnet(20, Scheme.EULER, **kw)
@register_model
def resnet32(**kw): return _resnet(32, Scheme.EULER, **kw)
@register_model
def resnet44(**kw): return _resnet(44, Scheme.EULER, **kw)
@register_model
def resnet56(**kw): return _resnet(56, Scheme.EULER, **kw)
@register_model
def resnet110(**kw): return _resnet(110, Scheme.EULER, **kw)
@register_model
def resnet164(**kw): return _resnet(164, Scheme.EULER, **kw)
@register_model
def resnext29_8x64d(**kw): return _resnext29(8, 64, Scheme.EULER, **kw)
@register_model
def resnext29_16x64d(**kw): return _resnext29(16, 64, Scheme.EULER, **kw)


# -- In-ResNet (damped) -------------------------------------------------------------------
@register_model
def inresnet20(**kw): return _resnet(20, Scheme.DAMPED, **kw)
@register_model
def inresnet32(**kw): return _resnet(32, Scheme.DAMPED, **kw)
@register_model
def inresnet44(**kw): return _resnet(44, Scheme.DAMPED, **kw)
@register_model
def inresnet56(**kw): return _resnet(56, Scheme.DAMPED, **kw)
@register_model
def inresnet110(**kw): return _resnet(110, Scheme.DAMPED, **kw)
@register_model
def inresnet164(**kw): return _resnet(164, Scheme.DAMPED, **kw)
@register_model
def inresnext29_8x64d(**kw): return _resnext29(8, 64, Scheme.DAMPED, **kw)


# -- λ-In-ResNet ((1+λ)f + (1−λ)x) --------------------------------------------------------
@register_model
def lambda_inresnet20(**kw): return _resnet(20, Scheme.LAMBDA_DAMPED, **kw)
@register_model
def lambda_inresnet32(**kw): return _resnet(32, Scheme.LAMBDA_DAMPED, **kw)
@register_model
def lambda_inresnet44(**kw): return _resnet(44, Scheme.LAMBDA_DAMPED, **kw)
@register_model
def lambda_inresnet56(**kw): return _resnet(56, Scheme.LAMBDA_DAMPED, **kw)
@register_model
def lambda_inresnet110(**kw): return _resnet(110, Scheme.LAMBDA_DAMPED, **kw)
@register_model
def lambda_inresnet164(**kw): return _resnet(164, Scheme.LAMBDA_DAMPED, **kw)


# -- LM-ResNet (linear multistep) ---------------------------------------------------------
@register_model
def lmresnet20(**kw): return _resnet(20, Scheme.LM, **kw)
@register_model
def lmresnet32(**kw): return _resnet(32, Scheme.LM, **kw)
@register_model
def lmresnet44(**kw): return _resnet(44, Scheme.LM, **kw)
@register_model
def lmresnet56(**kw): return _resnet(56, Scheme.LM, **kw)
@register_model
def lmresnet110(**kw): return _resnet(110, Scheme.LM, **kw)
@register_model
def lmresnet164(**kw): return _resnet(164, Scheme.LM, **kw)
@register_model
def lmresnext29_8x64d(**kw): return _resnext29(8, 64, Scheme.LM, **kw)
