"""ONNX export and serving: export time, file size, parity, and colorize's photos/s with
onnxruntime against PyTorch on the CPU.

    python benchmarks/bench_onnx.py [--quick] [--images N] [--models small,paper]

For each generator (small: the default config's U-Net at 64 px; paper: the original
project's 54.4M-parameter one at 256 px), untrained weights are saved as a checkpoint,
exported with `export_onnx` (timed: load, trace, write, parity check), and then the same
gray 640x480 JPEGs (benchmarks/bench_colorize.py's) are coloured end to end by
`colorize_files` twice: with the PyTorch generator and with the ONNX file under
onnxruntime's CPU provider, after a warm-up batch each. Prints one JSON object as its
last line: the small model's figures at the top level, every model's under `runs`.
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
from bench_colorize import write_photos

from distcolor.checkpoint import save_checkpoint
from distcolor.cli.common import DEFAULT_CONFIG
from distcolor.config import load_config
from distcolor.infer.colorizer import Colorizer
from distcolor.infer.files import colorize_files, plan_jobs
from distcolor.infer.onnx_export import export_onnx
from distcolor.infer.weights import load_generator
from distcolor.models.build import build_generator

MODELS = {
    "small": (DEFAULT_CONFIG, 64),
    "paper": (DEFAULT_CONFIG.parent / "paper.yaml", 256),
}


def write_checkpoint(model: str, folder: Path) -> Path:
    """Untrained weights of `model` as a training checkpoint (timing does not depend on them)."""
    config, _ = MODELS[model]
    cfg = load_config(config)
    torch.manual_seed(0)
    generator = build_generator(cfg.model)
    state = {
        "G": generator.state_dict(),
        "G_ema": None,
        "D": {},
        "config": cfg.model_dump(mode="json"),
        "step": 0,
    }
    return save_checkpoint(state, folder / "checkpoints", step=0, keep_last=1)


def colour(colorizer: Colorizer, photos: Path, out: Path, *, batch: int) -> dict:
    """Photos/s of colorize_files end to end, after a warm-up batch."""
    jobs = plan_jobs([photos], out)
    quiet = {"batch_size": batch, "overwrite": True, "warn": lambda _: None}
    colorize_files(colorizer, jobs[:batch], **quiet)
    colorizer.timings.clear()
    start = time.perf_counter()
    summary = colorize_files(colorizer, jobs, **quiet)
    wall = time.perf_counter() - start
    images = len(summary.written)
    return {
        "images": images,
        "seconds": round(wall, 4),
        "images_per_s": images / wall,
        "network_s_per_image": colorizer.timings["network"] / max(images, 1),
    }


def run(model: str, root: Path, photos: Path, *, batch: int) -> dict:
    _, render = MODELS[model]
    checkpoint = write_checkpoint(model, root / f"run-{model}")
    exported = export_onnx(checkpoint, root / f"onnx-{model}")
    print(
        f"{model}: exported in {exported['onnx_seconds']:.1f} s, "
        f"{exported['onnx_bytes'] / 1e6:.1f} MB, parity {exported['parity_max_abs_diff']:.2g}"
    )
    result = {
        "render_size": render,
        "export_s": exported["onnx_seconds"],
        "onnx_bytes": exported["onnx_bytes"],
        "opset": exported["opset"],
        "parity_max_abs_diff": exported["parity_max_abs_diff"],
    }
    for runtime, source in (("pytorch", checkpoint), ("onnxruntime", exported["onnx_file"])):
        generator = load_generator(Path(source), weights="live").generator
        colorizer = Colorizer(generator, render_size=render, device="cpu")
        result[runtime] = colour(colorizer, photos, root / f"out-{model}-{runtime}", batch=batch)
        print(
            f"{model} {runtime}: {result[runtime]['images_per_s']:.2f} photos/s, network "
            f"{result[runtime]['network_s_per_image'] * 1e3:.1f} ms per photo"
        )
    result["onnx_speedup"] = (
        result["onnxruntime"]["images_per_s"] / result["pytorch"]["images_per_s"]
    )
    result["network_speedup"] = (
        result["pytorch"]["network_s_per_image"] / result["onnxruntime"]["network_s_per_image"]
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small model, few photos")
    parser.add_argument("--images", type=int, default=None, help="default 96 (quick: 48)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", default=None, help="default small,paper (quick: small)")
    args = parser.parse_args()
    count = args.images or (48 if args.quick else 96)
    models = (args.models or ("small" if args.quick else "small,paper")).split(",")
    root = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    try:
        write_photos(root / "photos", count)
        runs = {model: run(model, root, root / "photos", batch=args.batch) for model in models}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    first = runs[models[0]]
    print(
        json.dumps(
            {
                "model": models[0],
                "export_s": first["export_s"],
                "onnx_bytes": first["onnx_bytes"],
                "parity_max_abs_diff": first["parity_max_abs_diff"],
                "pytorch_images_per_s": first["pytorch"]["images_per_s"],
                "onnxruntime_images_per_s": first["onnxruntime"]["images_per_s"],
                "onnx_speedup": first["onnx_speedup"],
                "runs": runs,
                "photo_size": [640, 480],
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "quick": args.quick,
            }
        )
    )


if __name__ == "__main__":
    main()
