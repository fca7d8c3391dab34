"""The typed configuration: the schema (every key declared once), the value rules, loading a recipe with `key=value`
overrides, the checks that tie keys together, a run's identity, the command line the entry points share and secrets
kept out of `tracking.uri`. Importing it imports no torch: `--help` and a bad key answer at once.

    cfg = load_config(find_config("quickstart"), ["train.epochs=2"])   # raises InputError, one line
"""
from resnext_dist.config.checks import batch_split, validate
from resnext_dist.config.load import find_config, load_config, to_yaml
from resnext_dist.config.schema import (CheckpointConfig, DataConfig, DistConfig, ModelConfig, OptimConfig, RunConfig,
                                        SlurmConfig, TrackingConfig, TrainConfig, TrainingConfig, key, to_flat_dict)

__all__ = ["CheckpointConfig", "DataConfig", "DistConfig", "ModelConfig", "OptimConfig", "RunConfig", "SlurmConfig",
           "TrackingConfig", "TrainConfig", "TrainingConfig", "batch_split", "find_config", "key", "load_config",
           "to_flat_dict", "to_yaml", "validate"]
