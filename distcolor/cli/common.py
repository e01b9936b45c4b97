"""What the programs that take a run config share: `--config FILE` and overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

from distcolor.config import Config, load_config

# The embedded default, shipped inside the package (found whatever the working directory).
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and trailing `section.key=value` overrides, as every script takes."""
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="YAML config (default: configs/default.yaml)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override config values, e.g. train.max_steps=50 data.batch_size=8",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
