"""Pack images into WebDataset shards: `python scripts/make_shards.py --out shards/NAME SOURCES`.

Sources: `--source NAME=DIR` (repeatable) and/or `--synthetic N` (procedural scenes).
The names landscapes, faces, flowers and scenes know their dataset's layout (Kaggle
landscapes, VGGFace2, Oxford 102 Flowers, ADE20K); any other name is a folder walked
recursively. Writes train-*.tar, test-*.tar and manifest.json; re-running an
interrupted build with the same arguments keeps the shards it finished.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distcolor.data.shard_build import build_shards
from distcolor.data.shard_manifest import few_shards_warning
from distcolor.data.sources import DEFAULT_MIN_COLORFULNESS
from distcolor.errors import UserError, run_main
from distcolor.paths import input_folder, output_folder


def _source(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, Path(folder)


def _parser() -> argparse.ArgumentParser:
    """The command line: sources, how images are stored, how the set is cut and checked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="output folder (e.g. shards/mydata)")
    p.add_argument(
        "--source",
        action="append",
        type=_source,
        default=[],
        metavar="NAME=DIR",
        help="dataset folder (landscapes, faces, flowers, scenes: their layout; other names: "
        "every file under DIR); repeatable",
    )
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="add N procedural scenes")
    p.add_argument("--synthetic-size", type=int, default=96, help="side of synthetic scenes (px)")
    p.add_argument("--size", type=int, default=286, help="resize the shorter side to this (px)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of stored images")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share held out for testing")
    p.add_argument("--seed", type=int, default=0, help="split (and synthetic scene) seed")
    p.add_argument(
        "--min-colorfulness",
        type=float,
        default=DEFAULT_MIN_COLORFULNESS,
        help="skip nearly colourless images below this Hasler-Suesstrunk colourfulness "
        f"(default {DEFAULT_MIN_COLORFULNESS}; 0 keeps every colour image)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes decoding input images")
    p.add_argument(
        "--readers",
        type=int,
        default=16,
        help="ranks x loader workers you plan to train with (warns when shards are fewer)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    return p


def main() -> None:
    a = _parser().parse_args()
    for flag, value, ok in [
        ("--size", a.size, a.size >= 16),
        ("--quality", a.quality, 1 <= a.quality <= 100),
        ("--shard-size", a.shard_size, a.shard_size >= 1),
        ("--test-fraction", a.test_fraction, 0 <= a.test_fraction < 1),
        ("--workers", a.workers, a.workers >= 1),
        ("--readers", a.readers, a.readers >= 1),
        ("--min-colorfulness", a.min_colorfulness, 0 <= a.min_colorfulness < 200),
        ("--synthetic", a.synthetic, a.synthetic >= 0),
        ("--synthetic-size", a.synthetic_size, 32 <= a.synthetic_size <= 512),
    ]:
        if not ok:
            raise UserError(f"{flag}: invalid value {value}")
    output_folder(a.out, "--out")
    for name, root in a.source:
        input_folder(root, f"--source {name}={root}")
    manifest = build_shards(
        a.out,
        folders=a.source,
        synthetic=a.synthetic,
        synthetic_size=a.synthetic_size,
        synthetic_seed=a.seed,
        size=a.size,
        quality=a.quality,
        shard_size=a.shard_size,
        test_fraction=a.test_fraction,
        seed=a.seed,
        min_colorfulness=a.min_colorfulness,
        workers=a.workers,
        overwrite=a.overwrite,
    )
    _print_summary(a.out, manifest)
    warning = few_shards_warning(manifest, a.readers)
    if warning:
        print(f"warning: {warning}")


def _print_summary(out: Path, manifest: dict) -> None:
    """What the build wrote, per source and split, and the first inputs it skipped."""
    splits = manifest["splits"]
    for name, counts in manifest["sources"].items():
        print(
            f"  {name}: train {counts['train']}, test {counts['test']}, skipped {counts['skipped']}"
        )
    print(
        f"wrote {out}: train {splits['train']['count']} in {len(splits['train']['shards'])} "
        f"shards, test {splits['test']['count']} in {len(splits['test']['shards'])} shards, "
        f"{manifest['duplicates']} duplicates dropped, {manifest['skipped_count']} inputs skipped"
    )
    for skip in manifest["skipped"][:10]:
        print(f"  skipped {skip['path']}: {skip['reason']}")
    if manifest["skipped_count"] > 10:
        print(f"  ... and {manifest['skipped_count'] - 10} more (see manifest.json)")
    if manifest["skipped_by_kind"]:
        kinds = ", ".join(f"{k} {n}" for k, n in manifest["skipped_by_kind"].items())
        print(f"skipped by kind: {kinds}")


def entry() -> None:
    """`distcolor-make-shards` (and scripts/make_shards.py): one line per mistake; bounded."""
    run_main(
        main,
        disk_full_advice="free some space (or choose another --out), then run the same "
        "command again: finished shards are kept",
    )


if __name__ == "__main__":
    entry()
