"""Throughput of colorize on a folder of 640x480 (or --photo-size) JPEGs, and the share of
time spent outside the network (reading, decoding, resizing, colour conversion, encoding, writing).

    python benchmarks/bench_colorize.py [--quick] [--images N] [--batch N] [--device D]

Runs `colorize_files` (what scripts/colorize.py runs) end to end, on black-and-white
640x480 JPEGs of synthetic landscapes, with untrained weights (timing does not depend on
them) for two generators:

- small: the default config's U-Net (width 32, depth 6) rendering at 64 px;
- paper: the original project's U-Net (54.4M parameters) rendering at 256 px, where the
  target is outside_network_fraction < 0.3.

outside_network_fraction = 1 - (time in the generator's forward) / (wall time); reading
and writing run on threads beside the network, so this is the share of the wall clock
the network is not running. Prints one JSON object as its last line: images_per_s and
outside_network_fraction of the small model at the top level, both models under `runs`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from distcolor.cli.common import DEFAULT_CONFIG
from distcolor.config import load_config
from distcolor.data.synthetic import render_scene
from distcolor.infer.colorizer import Colorizer
from distcolor.infer.files import colorize_files, plan_jobs
from distcolor.models.build import build_generator

MODELS = {
    "small": (DEFAULT_CONFIG, 64),
    "paper": (DEFAULT_CONFIG.parent / "paper.yaml", 256),
}


def write_photos(folder: Path, count: int, *, width: int = 640, height: int = 480) -> None:
    """`count` gray width x height JPEGs (quality 90), each a different scene."""
    folder.mkdir(parents=True, exist_ok=True)
    side = max(width, height)
    for i in range(count):
        scene = render_scene(i, size=512).resize((side, side), Image.Resampling.BICUBIC)
        top, left = (side - height) // 2, (side - width) // 2
        photo = scene.crop((left, top, left + width, top + height)).convert("L")
        photo.save(folder / f"photo-{i:04d}.jpg", quality=90)


def run(model: str, photos: Path, out: Path, *, batch: int, device: str, warmup: int) -> dict:
    config, render = MODELS[model]
    generator = build_generator(load_config(config).model)
    colorizer = Colorizer(generator, render_size=render, device=device)
    jobs = plan_jobs([photos], out)
    colorize_files(colorizer, jobs[:warmup], batch_size=batch, overwrite=True, warn=lambda _: None)
    colorizer.timings.clear()
    start = time.perf_counter()
    summary = colorize_files(colorizer, jobs, batch_size=batch, overwrite=True, warn=lambda _: None)
    wall = time.perf_counter() - start
    network = colorizer.timings["network"]
    stages = {k: round(v, 4) for k, v in colorizer.timings.items()}
    return {
        "model": model,
        "parameters": sum(p.numel() for p in generator.parameters()),
        "render_size": render,
        "images": len(summary.written),
        "seconds": round(wall, 4),
        "images_per_s": len(summary.written) / wall,
        "outside_network_fraction": 1.0 - network / wall,
        "stages_s": stages,  # prepare (resize + L*), network, compose (chroma + L* -> sRGB)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images: under a minute")
    parser.add_argument("--images", type=int, default=None, help="default 48 (quick: 8)")
    parser.add_argument("--paper-images", type=int, default=None, help="default 16 (quick: 4)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="small,paper")
    parser.add_argument("--photo-size", default="640x480", help="WIDTHxHEIGHT of the photos")
    args = parser.parse_args()
    width, height = (int(v) for v in args.photo_size.lower().split("x"))
    count = args.images or (8 if args.quick else 48)
    paper_count = args.paper_images or (4 if args.quick else 16)
    root = Path(tempfile.mkdtemp(prefix="bench-colorize-"))
    try:
        results = {}
        for model in args.models.split(","):
            n = paper_count if model == "paper" else count
            photos = root / f"photos-{n}"
            if not photos.exists():
                write_photos(photos, n, width=width, height=height)
            result = run(
                model, photos, root / f"out-{model}", batch=args.batch, device=args.device,
                warmup=min(args.batch, n),
            )  # fmt: skip
            results[model] = result
            print(
                f"{model}: {result['images']} images in {result['seconds']:.2f} s, "
                f"{result['images_per_s']:.2f} images/s, outside the network "
                f"{result['outside_network_fraction']:.1%} ({result['stages_s']})"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    first = results[next(iter(results))]
    summary = {
        "images_per_s": first["images_per_s"],
        "outside_network_fraction": first["outside_network_fraction"],
        "model": first["model"],
        "runs": results,
        "device": args.device,
        "photo_size": [width, height],
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "quick": args.quick,
    }
    if "paper" in results:
        summary["paper_outside_network_fraction"] = results["paper"]["outside_network_fraction"]
        summary["paper_target_met"] = results["paper"]["outside_network_fraction"] < 0.3
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
