"""Flicker of colorized video, stabiliser off vs on, on the two test clips.

    python benchmarks/flicker_study.py --checkpoint runs/default [--quick] [--strength S ...]

Makes the clips of benchmarks/video_clips.py (a slow pan and zoom over a still
synthetic landscape; three slowly filmed landscapes joined by hard cuts), colours each
frame's grayscale (PIL convert("L"), as colorize does for photos) with the model:
predict -> ChromaStabilizer -> compose, once frame by frame (S = 0) and once per
strength asked (default: DEFAULT_STRENGTH), and reports for each the flicker
(distcolor/infer/flicker.py), the mean CIEDE2000 to the original colour frames and the
cuts found, beside the original clip's own flicker. The targets (issue 20): flicker at
least 3x lower than frame by frame, CIEDE2000 at most 5% above it. Prints one JSON
object. Without --checkpoint it uses untrained weights (nearly constant colour: only
for a quick run of the code, not for the numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.video_clips import cut_frames, cut_starts, pan_zoom_frames, scene_photos
from distcolor.infer.colorizer import Colorizer
from distcolor.infer.flicker import FlickerMeter, mean_ciede2000
from distcolor.infer.stabilize import DEFAULT_STRENGTH, ChromaStabilizer

FLICKER_TARGET = 3.0
CIEDE2000_TARGET = 0.05
BATCH = 8


def test_clips(*, quick: bool) -> dict[str, list[np.ndarray]]:
    """{"pan_zoom": frames, "cuts": frames}: 20/30 frames with quick, else 60/90."""
    photos = scene_photos(4)
    pan_count, cut_count = (20, 30) if quick else (60, 90)
    return {
        "pan_zoom": pan_zoom_frames(photos[0], pan_count),
        "cuts": cut_frames(photos[1:], cut_count),
    }


def predict_clip(colorizer: Colorizer, frames: list[np.ndarray]) -> list[tuple]:
    """(grays, network input, chroma) per batch: the network runs once per clip, and each
    strength's stabiliser then sees the same predictions."""
    batches = []
    for start in range(0, len(frames), BATCH):
        grays = [Image.fromarray(frame).convert("L") for frame in frames[start : start + BATCH]]
        chroma = colorizer.predict(grays)
        lightness = torch.cat([colorizer.network_input(gray) for gray in grays])
        batches.append((grays, lightness.to(chroma.device), chroma))
    return batches


def colour_clip(
    colorizer: Colorizer, batches: list[tuple], stabilizer: ChromaStabilizer
) -> list[np.ndarray]:
    """The colorized frames: predictions -> stabilizer -> compose, batch by batch."""
    out = []
    for grays, lightness, chroma in batches:
        chroma = stabilizer(lightness, chroma)
        out += [colorizer.compose(gray, ab[None]) for gray, ab in zip(grays, chroma, strict=True)]
    return out


def measure(frames: list[np.ndarray], original: list[np.ndarray]) -> dict:
    meter = FlickerMeter()
    for frame in frames:
        meter.update(frame)
    return {
        "flicker": meter.value,
        "stable_fraction": meter.stable_fraction,
        "ciede2000": mean_ciede2000(frames, original),
    }


def study_clip(
    colorizer: Colorizer, original: list[np.ndarray], strengths: list[float], motion: bool
) -> dict:
    meter = FlickerMeter()
    for frame in original:
        meter.update(frame)
    result = {"frames": len(original), "original_flicker": meter.value, "runs": {}}
    batches = predict_clip(colorizer, original)
    for strength in [0.0, *strengths]:
        stabilizer = ChromaStabilizer(strength, motion=motion)
        start = time.perf_counter()
        frames = colour_clip(colorizer, batches, stabilizer)
        run = {"seconds": round(time.perf_counter() - start, 2), "cuts": stabilizer.cuts}
        run.update(measure(frames, original))
        result["runs"][f"S={strength:g}"] = run
    off = result["runs"]["S=0"]
    for name, run in result["runs"].items():
        if name != "S=0" and off["flicker"] and run["flicker"]:
            run["flicker_reduction"] = off["flicker"] / run["flicker"]
            run["ciede2000_increase"] = run["ciede2000"] / off["ciede2000"] - 1
            run["meets_targets"] = bool(
                run["flicker_reduction"] >= FLICKER_TARGET
                and run["ciede2000_increase"] <= CIEDE2000_TARGET
            )
    return result


def flicker_study(
    colorizer: Colorizer,
    *,
    quick: bool,
    strengths: list[float] | None = None,
    motion: bool = True,
) -> dict:
    """Flicker and CIEDE2000 of the two test clips, frame by frame vs stabilised."""
    strengths = strengths or [DEFAULT_STRENGTH]
    clips = test_clips(quick=quick)
    report = {
        "default_strength": DEFAULT_STRENGTH,
        "motion": motion,
        "render_size": colorizer.render_size,
        "cut_frames": cut_starts(len(clips["cuts"]), 3)[1:],
    }
    for name, original in clips.items():
        report[name] = study_clip(colorizer, original, strengths, motion)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="run folder, checkpoint or export")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--strength", type=float, action="append")
    parser.add_argument("--no-motion", action="store_true", help="blend without warping")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        colorizer = Colorizer.from_checkpoint(args.checkpoint, device="cpu")
    else:
        from distcolor.cli.common import DEFAULT_CONFIG
        from distcolor.config import load_config
        from distcolor.models.build import build_generator

        generator = build_generator(load_config(DEFAULT_CONFIG).model)
        colorizer = Colorizer(generator, render_size=64, device="cpu")
    report = flicker_study(
        colorizer, quick=args.quick, strengths=args.strength, motion=not args.no_motion
    )
    report["checkpoint"] = args.checkpoint
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
