"""Video colorize: frames/s end to end and the share of time outside the network, then the
stabiliser's flicker study.

    python benchmarks/bench_video.py [--quick] [--frames N] [--device D] [--checkpoint CKPT]

Throughput: `video.transcode` (what scripts/colorize.py runs for a video: decode on a
thread, network, stabiliser, composition at full resolution, encode on a thread, audio
copied) on a 640x360 H.264 clip of a slow pan over a synthetic landscape, with untrained
weights (timing does not depend on them), for two generators:

- small: the default config's U-Net rendering at 64 px;
- paper: the original project's U-Net (54.4M parameters) rendering at 256 px, where the
  target is outside_network_fraction < 0.3, as for photos.

outside_network_fraction = 1 - (time in the generator's forward) / (wall time).

Flicker (`video_clips.flicker_study`): the pan/zoom clip and the clip with cuts, coloured
frame by frame (--stabilize 0) and stabilised (the default), against the original colour
clip; with --checkpoint a trained model, else untrained weights (--quick).
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.video_clips import pan_zoom_frames, write_video  # noqa: E402
from distcolor.cli.common import DEFAULT_CONFIG  # noqa: E402
from distcolor.config import load_config  # noqa: E402
from distcolor.data.synthetic import render_scene  # noqa: E402
from distcolor.infer.colorizer import Colorizer  # noqa: E402
from distcolor.infer.stabilize import DEFAULT_STRENGTH  # noqa: E402
from distcolor.infer.video import transcode  # noqa: E402
from distcolor.models.build import build_generator  # noqa: E402

MODELS = {
    "small": (DEFAULT_CONFIG, 64),
    "paper": (DEFAULT_CONFIG.parent / "paper.yaml", 256),
}


def throughput(model: str, clip: Path, out: Path, *, device: str, batch: int) -> dict:
    config, render = MODELS[model]
    generator = build_generator(load_config(config).model)
    colorizer = Colorizer(generator, render_size=render, device=device)
    transcode(colorizer, clip, out, stabilize=DEFAULT_STRENGTH, batch_size=batch)  # warm-up
    colorizer.timings.clear()
    start = time.perf_counter()
    report = transcode(colorizer, clip, out, stabilize=DEFAULT_STRENGTH, batch_size=batch)
    wall = time.perf_counter() - start
    return {
        "model": model,
        "render_size": render,
        "frames": report.frames,
        "size": [report.width, report.height],
        "seconds": round(wall, 3),
        "frames_per_s": report.frames / wall,
        "outside_network_fraction": 1.0 - colorizer.timings["network"] / wall,
        "stages_s": {k: round(v, 3) for k, v in colorizer.timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short clips: under a minute")
    parser.add_argument("--frames", type=int, default=None, help="default 120 (quick: 24)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", default=None, help="default small,paper (quick: small)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="model for the flicker study")
    args = parser.parse_args()
    frames = args.frames or (24 if args.quick else 120)
    models = (args.models or ("small" if args.quick else "small,paper")).split(",")
    root = Path(tempfile.mkdtemp(prefix="bench-video-"))
    try:
        clip = root / "pan.mp4"
        write_video(pan_zoom_frames(render_scene(7, size=512), frames), clip)
        runs = {}
        for model in models:
            runs[model] = throughput(
                model, clip, root / f"out-{model}.mp4", device=args.device, batch=args.batch
            )
            r = runs[model]
            print(
                f"{model}: {r['frames']} frames {r['size'][0]}x{r['size'][1]} in {r['seconds']} s,"
                f" {r['frames_per_s']:.1f} frames/s, outside the network "
                f"{r['outside_network_fraction']:.1%} ({r['stages_s']})"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    first = runs[models[0]]
    summary = {
        "frames_per_s": first["frames_per_s"],
        "outside_network_fraction": first["outside_network_fraction"],
        "model": first["model"],
        "runs": runs,
    }
    if "paper" in runs:
        summary["paper_outside_network_fraction"] = runs["paper"]["outside_network_fraction"]
        summary["paper_target_met"] = runs["paper"]["outside_network_fraction"] < 0.3
    summary["flicker"] = flicker(args)
    summary.update(
        device=args.device,
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        quick=args.quick,
    )
    print(json.dumps(summary))


def flicker(args) -> dict:
    from benchmarks.flicker_study import flicker_study

    if args.checkpoint is not None:
        colorizer = Colorizer.from_checkpoint(args.checkpoint, device=args.device)
    else:
        config, render = MODELS["small"]
        colorizer = Colorizer(build_generator(load_config(config).model), render_size=render)
    return flicker_study(colorizer, quick=args.quick)


if __name__ == "__main__":
    main()
