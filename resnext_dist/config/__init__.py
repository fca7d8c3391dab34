"""The typed configuration: the schema (schema.py: every key with its default and doc), loading a recipe with
`key=value` overrides (load.py), the value rules and the checks that tie keys together (checks.py), a run's identity
(identity.py), the command line the entry points share (arguments.py) and secrets kept out of `tracking.uri`
(credentials.py). Importing it imports no torch: `--help` and a bad key answer at once.

    cfg = load_config(find_config("quickstart"), ["train.epochs=2"])   # raises InputError, one line
"""
from resnext_dist.config.checks import get_key, grad_accum_steps, validate
from resnext_dist.config.load import configs_dir, find_config, load_config, to_yaml
from resnext_dist.config.schema import (CHOICES, CheckpointConfig, DataConfig, DistConfig, ModelConfig, OptimConfig,
                                        RunConfig, SlurmConfig, TrackingConfig, TrainConfig, TrainingConfig,
                                        to_flat_dict)

__all__ = ["CHOICES", "CheckpointConfig", "DataConfig", "DistConfig", "ModelConfig", "OptimConfig", "RunConfig",
           "SlurmConfig", "TrackingConfig", "TrainConfig", "TrainingConfig", "configs_dir", "find_config", "get_key",
           "grad_accum_steps", "load_config", "to_flat_dict", "to_yaml", "validate"]
