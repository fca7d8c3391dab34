"""The model zoo: ResNeXt presets per the paper (see resnext.py)."""
from resnext_dist.models.resnext import PRESETS, ResNeXt, build_model, resnext

__all__ = ["PRESETS", "ResNeXt", "build_model", "resnext"]
