"""resnext_dist: train ResNeXt-50/101/152 image classifiers across GPUs and nodes."""
__version__ = "0.1.0"
