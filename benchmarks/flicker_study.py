"""Flicker of colorized video, stabiliser off vs on, on the two test clips.

    python benchmarks/flicker_study.py --checkpoint runs/default [--quick] [--strength S ...]

Makes the clips of benchmarks/video_clips.py (a slow pan and zoom over a still
synthetic landscape; three slowly filmed landscapes joined by hard cuts), colours each
frame's grayscale (PIL convert("L"), as colorize does for photos) with the model:
predict -> ChromaStabilizer -> compose, once frame by frame (S = 0) and once per
strength asked (default: DEFAULT_STRENGTH), and reports per clip: the original
colour clip's own flicker (the measure's floor: interpolation and 8-bit rounding), the
frame-by-frame flicker and mean CIEDE2000 to the original colour frames, and per
strength the stabilised flicker and CIEDE2000, the flicker reduction (frame by frame /
stabilised), the CIEDE2000 change and whether issue 20's targets are met (flicker at
least 3x lower than frame by frame, CIEDE2000 at most 5% above it). Flicker is the
motion-compensated warping error of distcolor/infer/flicker.py. Prints one JSON object
on stdout and the same as a table on stderr. Without --checkpoint it uses untrained
weights (nearly constant colour: only for a quick run of the code, not for the numbers).
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
from distcolor.infer.stabilize import DEFAULT_STRENGTH, GATE_LSTAR, ChromaStabilizer

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
        "counted_fraction": meter.stable_fraction,
        "ciede2000": mean_ciede2000(frames, original),
    }


def study_clip(
    colorizer: Colorizer, original: list[np.ndarray], strengths: list[float], motion: bool
) -> dict:
    """{"original": its own flicker, "frame_by_frame": flicker and CIEDE2000 at S = 0,
    "stabilised": per strength the same plus the ratios and the verdict}."""
    meter = FlickerMeter()
    for frame in original:
        meter.update(frame)
    result = {
        "frames": len(original),
        "original": {"flicker": meter.value, "cut_pairs_skipped": meter.skipped_pairs},
    }
    batches = predict_clip(colorizer, original)
    runs = {}
    for strength in [0.0, *strengths]:
        stabilizer = ChromaStabilizer(strength, motion=motion)
        start = time.perf_counter()
        frames = colour_clip(colorizer, batches, stabilizer)
        run = {"seconds": round(time.perf_counter() - start, 2), "cuts_found": stabilizer.cuts}
        runs[strength] = measure(frames, original) | run
    off = result["frame_by_frame"] = runs.pop(0.0)
    result["stabilised"] = {f"S={strength:g}": verdict(run, off) for strength, run in runs.items()}
    return result


def verdict(run: dict, off: dict) -> dict:
    """`run` with its flicker reduction and CIEDE2000 change against frame by frame, and
    whether both meet issue 20's targets."""
    if not (off["flicker"] and run["flicker"]):
        return run | {"meets_targets": None}
    reduction = off["flicker"] / run["flicker"]
    change = run["ciede2000"] / off["ciede2000"] - 1
    return run | {
        "flicker_reduction": round(reduction, 3),
        "ciede2000_change": round(change, 4),
        "meets_flicker_target": reduction >= FLICKER_TARGET,
        "meets_ciede2000_target": change <= CIEDE2000_TARGET,
        "meets_targets": reduction >= FLICKER_TARGET and change <= CIEDE2000_TARGET,
    }


def summary(report: dict) -> str:
    """A plain-text table of the report, one line per clip and strength."""
    lines = [
        f"flicker = motion-compensated warping error (mean |delta a*b*|); targets: "
        f">= {FLICKER_TARGET:g}x less than frame by frame, CIEDE2000 <= +{CIEDE2000_TARGET:.0%}",
        f"{'clip':9} {'original':>8} {'fbf flk':>8} {'fbf dE00':>8} {'S':>5} "
        f"{'stab flk':>8} {'stab dE00':>9} {'ratio':>6} {'dE00 chg':>8}  targets",
    ]
    for clip in ("pan_zoom", "cuts"):
        data = report[clip]
        off = data["frame_by_frame"]
        for name, run in data["stabilised"].items():
            lines.append(
                f"{clip:9} {_num(data['original']['flicker']):>8} {_num(off['flicker']):>8} "
                f"{_num(off['ciede2000'], 2):>8} {name[2:]:>5} {_num(run['flicker']):>8} "
                f"{_num(run['ciede2000'], 2):>9} {_num(run.get('flicker_reduction'), 2):>6} "
                f"{run.get('ciede2000_change', float('nan')):>+8.1%}  "
                f"{'met' if run['meets_targets'] else 'NOT met'}"
            )
    return "\n".join(lines)


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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
        "gate_lstar": GATE_LSTAR,
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
    parser.add_argument("--render-size", type=int, help="default: the checkpoint's")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        colorizer = Colorizer.from_checkpoint(
            args.checkpoint, device="cpu", render_size=args.render_size
        )
    else:
        from distcolor.cli.common import DEFAULT_CONFIG
        from distcolor.config import load_config
        from distcolor.models.build import build_generator

        generator = build_generator(load_config(DEFAULT_CONFIG).model)
        colorizer = Colorizer(generator, render_size=args.render_size or 64, device="cpu")
    report = flicker_study(
        colorizer, quick=args.quick, strengths=args.strength, motion=not args.no_motion
    )
    report["checkpoint"] = args.checkpoint
    print(json.dumps(report, indent=1))
    print(summary(report), file=sys.stderr)


if __name__ == "__main__":
    main()
