"""Typed config: defaults -> YAML file -> dotted command-line overrides.

    sections.py   each section's keys, types, bounds and defaults
    schema.py     Config: the sections together, and checks that span them
    loading.py    YAML file and overrides in, one-line ConfigError out; back to YAML

Everything a caller needs is importable from here (`from distcolor.config import Config,
load_config`).
"""

from distcolor.config.loading import config_from_dict, config_to_yaml, load_config
from distcolor.config.schema import Config
from distcolor.config.sections import (
    DataConfig,
    DeepSpeedConfig,
    DiscriminatorConfig,
    GeneratorConfig,
    ModelConfig,
    PruneConfig,
    RunConfig,
    SyntheticConfig,
    TrainConfig,
)
from distcolor.errors import ConfigError  # what load_config and config_from_dict raise

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DeepSpeedConfig",
    "DiscriminatorConfig",
    "GeneratorConfig",
    "ModelConfig",
    "PruneConfig",
    "RunConfig",
    "SyntheticConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_yaml",
    "load_config",
]
