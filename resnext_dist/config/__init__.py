"""The typed configuration: the schema (schema.py: every key declared once, with its default, rule, doc and
whether it is part of the run's identity), the value rules (rules.py), loading a recipe with `key=value` overrides
(load.py), the checks that tie keys together (checks.py), a run's identity (identity.py), the command line the
entry points share (arguments.py) and secrets kept out of `tracking.uri` (credentials.py). Importing it imports no
torch: `--help` and a bad key answer at once.

    cfg = load_config(find_config("quickstart"), ["train.epochs=2"])   # raises InputError, one line
"""
from resnext_dist.config.checks import grad_accum_steps, validate
from resnext_dist.config.load import configs_dir, find_config, load_config, to_yaml
from resnext_dist.config.schema import (CheckpointConfig, DataConfig, DistConfig, ModelConfig, OptimConfig, RunConfig,
                                        SlurmConfig, TrackingConfig, TrainConfig, TrainingConfig, declared_keys,
                                        get_key, key, to_flat_dict)

__all__ = ["CheckpointConfig", "DataConfig", "DistConfig", "ModelConfig", "OptimConfig", "RunConfig", "SlurmConfig",
           "TrackingConfig", "TrainConfig", "TrainingConfig", "configs_dir", "declared_keys", "find_config", "get_key",
           "grad_accum_steps", "key", "load_config", "to_flat_dict", "to_yaml", "validate"]
