"""robench model zoo: what is evaluated. ``create_model(name)``, ``list_models(pattern)``, ``save`` / ``load``.

Importing the package imports no torch (and nothing from robench): the registry, schemes, cards and
zoo listing are plain Python; the network classes and weight loading import torch when used.
"""
from model_zoo.errors import BadInput
from model_zoo.arch import CIFAR10_MEAN, CIFAR10_STD, MAX_PARAMETERS
from model_zoo.schemes import Scheme, get_scheme, lam_schemes, list_schemes, register_scheme
from model_zoo.registry import (ModelInfo, canonical_name, check_tag, create_model, is_model, join_tag, list_models,
                                model_info, models_markdown, parse_model_name, register_cifar_resnet, register_model,
                                seed_tag, split_tag, tag_seed, train_tag)
from model_zoo import variants as _variants  # noqa: F401  (registers the variants)
from model_zoo.checkpoint import (ModelCard, ZooEntry, ZooProblem, ZooRecord, available, load, load_card, load_entry,
                                  save, scan_zoo, user_zoo, zoo_dirs, zoo_stem)

__all__ = ["create_model", "list_models", "model_info", "ModelInfo", "register_model", "register_cifar_resnet",
           "is_model", "split_tag", "check_tag", "join_tag", "parse_model_name", "canonical_name",
           "seed_tag", "tag_seed", "train_tag", "models_markdown",
           "CifarResNet", "Scheme", "get_scheme", "lam_schemes", "list_schemes", "register_scheme",
           "CIFAR10_MEAN", "CIFAR10_STD", "MAX_PARAMETERS", "BadInput",
           "ModelCard", "ZooEntry", "ZooRecord", "ZooProblem", "load_entry", "available", "scan_zoo", "load",
           "load_card", "save", "user_zoo", "zoo_dirs", "zoo_stem"]


def __getattr__(name: str):
    # lazy: the network class needs torch, which listing the zoo must not pay for
    if name == "CifarResNet":
        from model_zoo.resnet import CifarResNet

        return CifarResNet
    raise AttributeError(f"module 'model_zoo' has no attribute {name!r}")
