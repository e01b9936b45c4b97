"""Train a colorizer: `python scripts/train.py [--config FILE] [--resume] [section.key=value ...]`.

Works the same under `accelerate launch scripts/train.py ...` (multi-GPU / multi-node).
"""

from __future__ import annotations

import argparse

from distcolor.cli import add_config_arguments, config_from_args, run_main
from distcolor.config import config_to_yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args()
    cfg = config_from_args(args)
    if args.dry_run:
        print(config_to_yaml(cfg), end="")
        return
    from distcolor.trainer import train  # heavy imports only when training

    train(cfg, resume=args.resume)


if __name__ == "__main__":
    run_main(main)
