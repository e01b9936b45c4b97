"""Train a colorizer: `python scripts/train.py [--config FILE] [--resume [auto|PATH]] [k=v ...]`.

Works the same under `accelerate launch scripts/train.py ...` (multi-GPU / multi-node).
"""

from __future__ import annotations

import argparse

from distcolor.cli.common import add_config_arguments, config_from_args
from distcolor.config import config_to_yaml
from distcolor.errors import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="auto|PATH",
        help="continue the run: alone, from its newest complete checkpoint (one must exist); "
        "'auto': from it if there is one, else start (for requeued and restarted jobs); "
        "PATH: from that checkpoint folder",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args()
    if args.resume and "=" in args.resume:  # `--resume key=value`: an override, not a path
        args.overrides.insert(0, args.resume)
        args.resume = "latest"
    cfg = config_from_args(args)
    if args.dry_run:
        print(config_to_yaml(cfg), end="")
        return
    from distcolor.train.loop import train  # heavy imports only when training

    train(cfg, resume=args.resume)


def entry() -> None:
    """`distcolor-train` (and scripts/train.py): one line per mistake, a bounded exit."""
    run_main(
        main, disk_full_advice="free some space (or point run.out_dir elsewhere), then --resume"
    )


if __name__ == "__main__":
    entry()
