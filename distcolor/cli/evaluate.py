"""Score a trained generator on held-out images: `python scripts/evaluate.py --checkpoint CKPT
--shards DIR [--out report/]`.

CKPT: a run folder (its newest checkpoint), a checkpoint folder (DDP or DeepSpeed) or an
export. DIR: a shard folder (its test split is scored, its train split gives the mean
chroma baseline). Writes OUT/metrics.json, OUT/grid.png (gray / output / original) and,
for a checkpoint in its run folder, OUT/losses.png from the TensorBoard logs. The last
stdout line is the report as one JSON object: `model`, `baseline_gray`, `baseline_mean`
(each psnr, ssim, ciede2000, colorfulness, ab_hist_js, auc, l1, per_source) and `protocol`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distcolor.errors import run_main
from distcolor.paths import existing_path, input_folder, output_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="run, checkpoint or export")
    parser.add_argument("--shards", required=True, type=Path, help="shard folder (manifest.json)")
    parser.add_argument("--out", type=Path, default=Path("report"), help="default: report/")
    parser.add_argument(
        "--images", type=int, default=None, help="score the first N test images (default: all)"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="crop size (default: the training size)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--mean-images", type=int, default=1024, help="train images for the mean-chroma baseline"
    )
    parser.add_argument("--grid", type=int, default=8, help="columns of grid.png (0: none)")
    parser.add_argument("--weights", choices=["ema", "live"], default="ema")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: a GPU if any)")
    args = parser.parse_args()
    for name in ("images", "batch_size", "mean_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.grid < 0 or args.workers < 0:
        parser.error("--grid and --workers must be >= 0")
    existing_path(args.checkpoint, "--checkpoint")
    input_folder(args.shards, "--shards")
    output_folder(args.out, "--out")

    from distcolor.evaluate.report import summary_lines, write_report

    report = write_report(
        args.checkpoint,
        args.shards,
        args.out,
        weights=args.weights,
        images=args.images,
        image_size=args.image_size,
        batch_size=args.batch_size,
        mean_images=args.mean_images,
        grid_images=args.grid,
        num_workers=args.workers,
        device=args.device,
    )
    protocol = report["protocol"]
    print(
        f"{protocol['images']} test images at {protocol['resolution']} px from {args.shards} "
        f"(step {report['checkpoint']['step']}, {report['checkpoint']['weights']} weights)"
    )
    for line in summary_lines(report):
        print(line)
    for note in report.get("notes", []):
        print(f"note: {note}")
    print(f"report: {', '.join(report['files'].values())}")
    print(json.dumps(report))


def entry() -> None:
    """`distcolor-evaluate` (and scripts/evaluate.py): one line per mistake, a bounded exit."""
    run_main(main)


if __name__ == "__main__":
    entry()
