"""Weights in files: into a model, out as an export, back as a model. Nothing read can run code.

    note = init_model(model, "resnext50_32x4d-1a0047aa.pth")   # model.init, evaluate, predict (init.py)
    write_export(model, cfg, "runs/x/export", class_names)      # the trainer's export/ (export.py)
    model = load("runs/x/export")                               # an export rebuilt, in eval mode (export.py)

Where weights lie is layout.py; every torch file, checkpoints included, is read by safe_load.py.
"""
from resnext_dist.weights.export import load_model as load, write_export
from resnext_dist.weights.init import init_model, read_state_dict

__all__ = ["init_model", "load", "read_state_dict", "write_export"]
