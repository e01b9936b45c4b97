"""`scripts/evaluate.py`'s work: a trained generator and a shard folder -> report/.

report/metrics.json   the model and both baselines, overall and per source, + protocol
report/grid.png       Figure 1 of the original project: rows gray input / output /
                      original, a column per test image (the same images every time)
report/losses.png     Figure 2: discriminator and generator losses from the run's
                      TensorBoard logs (when the checkpoint sits in its run folder)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from distcolor.data.catalog import check_crop_size, read_manifest, shard_list, stored_size
from distcolor.data.loader import build_eval_loader
from distcolor.errors import UserError
from distcolor.evaluate.figures import plot_losses
from distcolor.evaluate.heldout import METHODS, HeldOut
from distcolor.infer.colorizer import usable_device
from distcolor.infer.weights import load_generator
from distcolor.tracking import draw_sample_grid, save_png

GRID_IMAGES = 8


def write_report(
    checkpoint: Path,
    shards: Path,
    out_dir: Path,
    *,
    weights: str = "ema",
    images: int | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
    mean_images: int = 1024,
    grid_images: int = GRID_IMAGES,
    num_workers: int = 2,
    device: str | None = None,
    log=print,
) -> dict:
    """Evaluate the generator in `checkpoint` on the test split of `shards`; write
    out_dir/{metrics.json, grid.png, losses.png}; return the report."""
    trained = load_generator(checkpoint, weights=weights)
    size = trained.image_size if image_size is None else image_size
    if size < 11 or size % trained.multiple:  # 11: SSIM's window
        raise UserError(
            f"--image-size: {size} must be at least 11 (SSIM's window) and divisible by "
            f"2**depth = {trained.multiple} for this generator"
        )
    manifest = read_manifest(shards, key="--shards")
    check_crop_size(size, stored_size(manifest), key="--image-size", shards=shards)
    test = shard_list(shards, manifest, "test")
    train = shard_list(shards, manifest, "train")
    if not test:
        raise UserError(f"--shards: {shards} has no test shards")
    if not train:
        raise UserError(f"--shards: {shards} has no train shards (their mean chroma is a baseline)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out: cannot create {out_dir}: {err.strerror or err}") from None
    chosen = usable_device(device)
    generator = trained.generator.to(chosen)

    held_out = HeldOut(
        test,
        train,
        image_size=size,
        batch_size=batch_size,
        num_workers=num_workers,
        rank=0,
        world=1,
        images=images,
        mean_images=mean_images,
        device=chosen,
    )
    report = held_out(generator)
    if report["model"]["images"] == 0:
        raise UserError(f"--shards: no readable test images in {shards}")
    report["checkpoint"] = {
        "path": str(trained.source),
        "weights": trained.weights,
        "step": trained.step,
        **({"note": trained.note} if trained.note else {}),
    }
    report["files"] = {"metrics": str(out_dir / "metrics.json")}
    _write_json(report, out_dir / "metrics.json")  # first: a figure that fails loses no scores
    grid = _grid(generator, test, size=size, count=grid_images, device=chosen)
    if grid is not None:
        save_png(grid, out_dir / "grid.png")
        report["files"]["grid"] = str(out_dir / "grid.png")
    notes = _draw_losses(trained, out_dir, report["files"])
    if notes:
        report["notes"] = notes
    _write_json(report, out_dir / "metrics.json")
    return report


def _draw_losses(trained, out_dir: Path, files: dict) -> list[str]:
    """Figure 2, the loss curves, from the run's TensorBoard logs; notes on why not."""
    tb = trained.run_dir / "tb" if trained.run_dir is not None else None
    if tb is None or not tb.is_dir():
        return [
            "losses.png not drawn: the checkpoint is not inside a run folder with TensorBoard "
            "logs (tb/)"
        ]
    try:
        plot_losses(tb, out_dir / "losses.png", l1_weight=trained.l1_weight)
    except UserError as err:
        return [f"losses.png not drawn: {err}"]
    files["losses"] = str(out_dir / "losses.png")
    return []


def _write_json(report: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


@torch.no_grad()
def _grid(generator, test_shards: list, *, size: int, count: int, device) -> torch.Tensor | None:
    """Figure 1: the first images of each source in turn (a fixed set), `count` columns."""
    if count <= 0:
        return None
    sources = sorted({shard.source for shard in test_shards})
    per_source = math.ceil(count / len(sources))
    batches = []
    for source in sources:
        loader = build_eval_loader(
            [s for s in test_shards if s.source == source],
            image_size=size,
            batch_size=per_source,
            num_workers=0,
            rank=0,
            world_size=1,
            limit=per_source,
        )
        batches.extend(loader)
    if not batches:
        return None
    batch = {
        "gray": torch.cat([b["gray"] for b in batches])[:count],
        "rgb": torch.cat([b["rgb"] for b in batches])[:count],
    }
    return draw_sample_grid(generator, batch, device)


def summary_lines(report: dict) -> list[str]:
    """A small table of the headline numbers, for the terminal."""
    names = ("psnr", "ssim", "ciede2000", "colorfulness", "ab_hist_js", "auc")
    lines = [f"{'':14}" + "".join(f"{n:>13}" for n in names)]
    for method in METHODS:
        row = report[method]
        cells = "".join(
            f"{row[n]:>13.4f}" if isinstance(row.get(n), float) else f"{'-':>13}" for n in names
        )
        lines.append(f"{method:14}{cells}")
    original = report["model"]["colorfulness_original"]
    lines.append(f"{'original':14}{'':39}{original:>13.4f}")
    return lines
