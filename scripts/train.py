"""Train a colorizer: `python scripts/train.py [--config FILE] [--resume] [section.key=value ...]`.

Works the same under `accelerate launch scripts/train.py ...` (multi-GPU / multi-node).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distcolor.cli import run_main
from distcolor.config import config_to_yaml, load_config

# The embedded default, found from the checkout whatever the working directory.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="YAML config (default: configs/default.yaml)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override config values, e.g. train.max_steps=50 data.batch_size=8",
    )
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(config_to_yaml(cfg), end="")
        return
    from distcolor.trainer import train  # heavy imports only when training

    train(cfg, resume=args.resume)


if __name__ == "__main__":
    run_main(main)
