"""The model zoo: the ResNeXt presets of the paper (presets.py), the network (network.py), and a constructor per preset,
named as torchvision names them.

    model = resnext_dist.models.resnext50_32x4d(num_classes=10, stem="cifar")
    model = resnext_dist.models.build_model(cfg.model)          # from the config's model section
    resnext_dist.weights.init_model(model, "runs/x/export")     # weights from a file: resnext_dist.weights

Importing this package imports no torch (the config checks read PRESETS); the network, and torch with it, is
imported the first time one of its names is used.
"""
from resnext_dist.models.presets import PRESETS

_NETWORK = ("ResNeXt", "build_model", "resnext", *PRESETS)
__all__ = ["PRESETS", *_NETWORK]


def __getattr__(name: str):
    if name in _NETWORK:
        from resnext_dist.models import network  # torch: only once a model is built (config checks stay torch-free)
        return getattr(network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
