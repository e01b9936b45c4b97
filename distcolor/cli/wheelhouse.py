"""Build a wheelhouse for an offline install: `python scripts/wheelhouse.py --out DIR
[--python-version 3.12] [--platform manylinux_2_28_x86_64 ...] [--have FILE | --all]
[--extras deepspeed] [--latest] [--no-self]`.

Fetches distcolor's dependency closure as wheels for the TARGET's Python and platform
(environment markers read as they would there), skipping what the target already holds:
the have-list FILE (its `python3 -m pip list --format=freeze`, or names one a line), by
default benchmarks/gpu_image_packages.txt (this project's GPU check image); --all skips
nothing (torch included: GBs). Versions installed here are pinned (what the tests ran
against) unless --latest. A package with no wheel on the index (deepspeed: sdists only) is
built here, and must come out pure (py3-none-any). distcolor's own wheel is added unless
--no-self. Writes DIR/INSTALL.txt (the commands for the target) and DIR/requirements.txt;
prints a table of the wheels, then, as the last line, one JSON object with wheels,
total_mb, python_version, platforms and extras. See docs/offline_install.md.

Needs only the standard library and `packaging` (not distcolor's own dependencies), so
`PYTHONPATH=. python scripts/wheelhouse.py ...` runs from a bare checkout too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distcolor.errors import run_main
from distcolor.paths import output_folder


def main() -> None:
    from distcolor import wheelhouse as wh

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the wheelhouse folder")
    parser.add_argument(
        "--python-version",
        default=wh.DEFAULT_PYTHON,
        help=f"the target's Python, 3.X or 3.X.Y (default {wh.DEFAULT_PYTHON})",
    )
    parser.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="TAG",
        help=f"the target's wheel platform tag (default {wh.DEFAULT_PLATFORM}); a manylinux "
        "tag brings every older glibc's with it",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--have",
        type=Path,
        metavar="FILE",
        help="what the target holds: its `python3 -m pip list --format=freeze` (default: "
        "benchmarks/gpu_image_packages.txt, this project's GPU check image)",
    )
    which.add_argument("--all", action="store_true", help="everything, torch included (several GB)")
    parser.add_argument(
        "--extras",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help="distcolor's optional extras to include, e.g. deepspeed",
    )
    parser.add_argument(
        "--latest",
        action="store_true",
        help="the index's newest matching versions, not the ones installed here",
    )
    parser.add_argument("--no-self", action="store_true", help="leave distcolor's own wheel out")
    args = parser.parse_args()
    output_folder(args.out, "--out")  # before the index is asked anything
    extras = [e.strip() for chunk in args.extras for e in chunk.split(",") if e.strip()]
    house = wh.build_wheelhouse(
        args.out,
        python_version=args.python_version,
        platforms=args.platform,
        have_file=args.have,
        everything=args.all,
        extras=extras,
        latest=args.latest,
        own_wheel=not args.no_self,
    )
    for name in house.removed:
        print(f"removed {name} (an earlier run's: one version of each package is kept)")
    print(wh.summary_table(house))
    skipped = ", ".join(sorted(house.closure.skipped))
    print(f"already on the target, skipped ({len(house.closure.skipped)}): {skipped}")
    print(f"install on the target: see {house.out / 'INSTALL.txt'}")
    print(json.dumps(house.facts()))


def entry() -> None:
    """`distcolor-wheelhouse` (and scripts/wheelhouse.py): one line per mistake, a bounded exit."""
    run_main(main)


if __name__ == "__main__":
    entry()
