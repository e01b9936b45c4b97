"""Shared entry-point plumbing for scripts/*.py: user errors become one line, not a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from distcolor.config import Config, load_config
from distcolor.errors import UserError

# The embedded default, found from the checkout whatever the working directory.
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


def run_main(main: Callable[[], object]) -> None:
    """Run `main`; a UserError exits with status 2 and a single `error: ...` line on stderr."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
