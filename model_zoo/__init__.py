"""robench model zoo: what is evaluated. ``create_model(name)``, ``list_models(pattern)``, ``save`` / ``load``."""
from model_zoo.registry import ModelInfo, create_model, is_model, list_models, model_info, register_model
from model_zoo.resnet import CIFAR10_MEAN, CIFAR10_STD, CifarResNet, Scheme
from model_zoo import variants as _variants  # noqa: F401  (registers the variants)

__all__ = ["create_model", "list_models", "model_info", "ModelInfo", "register_model", "is_model", "CifarResNet", "Scheme",
           "CIFAR10_MEAN", "CIFAR10_STD"]
from model_zoo.checkpoint import ModelCard, ZooEntry, available, load_entry, load, load_card, save, user_zoo, zoo_dirs, zoo_stem  # noqa: E402

__all__ += ["ModelCard", "ZooEntry", "load_entry", "available", "load", "load_card", "save", "user_zoo", "zoo_dirs", "zoo_stem"]
