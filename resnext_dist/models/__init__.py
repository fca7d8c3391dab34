"""The model zoo: ResNeXt presets per the paper (see resnext.py), constructors by name as torchvision has them,
and `load(path)`, which rebuilds a model from an export (see resnext_dist/export.py).

    model = resnext_dist.models.resnext50_32x4d(num_classes=10, stem="cifar")
    model = resnext_dist.models.resnext50_32x4d(init="runs/x/export")   # built, then weights loaded
    model = resnext_dist.models.load("runs/x/export")                    # architecture and weights, eval mode
"""
from __future__ import annotations


from resnext_dist.models.resnext import PRESETS, ResNeXt, build_model, resnext


def _constructor(arch: str):
    def build(num_classes: int = 1000, stem: str = "imagenet", **kw) -> ResNeXt:
        # Through ModelConfig and build_model, the trainer's one way in: an unknown keyword is a TypeError
        # naming it, and `init=PATH` loads weights exactly as model.init does in training.
        from resnext_dist.config_schema import ModelConfig

        cfg = ModelConfig(arch=arch, num_classes=num_classes, stem=stem, **kw)
        model = build_model(cfg)
        if cfg.init:
            from resnext_dist.weights import init_model
            init_model(model, cfg.init)
        return model

    build.__name__ = build.__qualname__ = arch
    build.__doc__ = (f"ResNeXt {arch} ({PRESETS[arch][0]} blocks, cardinality {PRESETS[arch][1]}, group width "
                     f"{PRESETS[arch][2]}); keywords are the model.* config keys (layers, base_channels, init, ...).")
    return build


resnext50_32x4d = _constructor("resnext50_32x4d")
resnext101_32x4d = _constructor("resnext101_32x4d")
resnext101_32x8d = _constructor("resnext101_32x8d")
resnext101_64x4d = _constructor("resnext101_64x4d")
resnext152_32x4d = _constructor("resnext152_32x4d")
assert set(PRESETS) == {"resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                        "resnext152_32x4d"}, "a preset without a constructor"


def load(path: str, map_location="cpu") -> ResNeXt:
    """Rebuild a model from an export (its directory, model.json or model.safetensors), in eval mode."""
    from resnext_dist.export import load_model
    return load_model(path, map_location=map_location)


__all__ = ["PRESETS", "ResNeXt", "build_model", "resnext", "load", "resnext50_32x4d", "resnext101_32x4d",
           "resnext101_32x8d", "resnext101_64x4d", "resnext152_32x4d"]
