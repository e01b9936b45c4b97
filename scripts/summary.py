"""Show what a config trains: `python scripts/summary.py [--config FILE] [section.key=value ...]`.

Prints both networks block by block (layers, output shape, parameters, forward FLOPs),
then, as the last line, one JSON object with generator_params, discriminator_params
(trainable) and train_flops_per_image, among others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distcolor.cli import run_main
from distcolor.config import load_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="YAML config (default: configs/default.yaml)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="as for scripts/train.py"
    )
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    from distcolor.summary import print_summary, summarise  # torch only after the config

    summary = summarise(cfg)
    print_summary(summary)
    print(json.dumps(summary["facts"]))


if __name__ == "__main__":
    run_main(main)
