"""Show what a config trains: `python scripts/summary.py [--config FILE] [section.key=value ...]`.

Prints both networks block by block (layers, output shape, parameters, forward FLOPs),
then, as the last line, one JSON object with generator_params, discriminator_params
(trainable) and train_flops_per_image, among others.
"""

from __future__ import annotations

import argparse
import json

from distcolor.cli.common import add_config_arguments, config_from_args
from distcolor.errors import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args())
    from distcolor.models.summary import print_summary, summarise  # torch only after the config

    summary = summarise(cfg)
    print_summary(summary)
    print(json.dumps(summary["facts"]))


def entry() -> None:
    """`distcolor-summary` (and scripts/summary.py): one line per mistake, a bounded exit."""
    run_main(main)


if __name__ == "__main__":
    entry()
