"""Colour old photos and videos: `python scripts/colorize.py --checkpoint CKPT INPUT... --out DIR`.

CKPT: a run folder (its newest checkpoint), a checkpoint folder (DDP or DeepSpeed), or an
export (folder or .safetensors). INPUT: image files, video files (mp4, mov, mkv, avi,
webm; needs the `video` extra) or folders (searched recursively), any size, shape and
mode (gray, RGB treated as gray, palette, 16-bit, alpha kept, CMYK, EXIF rotation; for
videos 10-bit, gray, rotated, variable frame rate). Each output has its input's size and
lightness (a video also its frame count, timing and audio); only the colour is new. The
last stdout line is one JSON object: written, skipped, failed, existing, images_per_s,
videos (frames, fps, flicker, ... per video), ...

Exit status: 0 when every input has its output (written now, or kept from before without
--overwrite); 1 when some have none: inputs skipped (unreadable, or not a regular file:
a FIFO or a device is never opened) or outputs that could not be written, each named on
its own line and counted on stderr's last line; 2 when nothing was started: a mistake in
the arguments (a missing input, a --checkpoint that is not one, an --out that cannot be
written, no image files), one `error:` line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings
from functools import partial
from pathlib import Path

from distcolor.errors import run_main
from distcolor.paths import existing_path, make_folder


def _parse_arguments() -> argparse.Namespace:
    """The command line, its numbers range-checked too (a mistake exits with status 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="files or folders")
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="run, checkpoint or export folder, or file"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--render-size",
        type=int,
        default=None,
        help="side of the square copy the network sees (default: the training size)",
    )
    parser.add_argument(
        "--saturation", type=float, default=1.0, help="chroma factor (default 1: as predicted)"
    )
    parser.add_argument("--side-by-side", action="store_true", help="write gray | colour pairs")
    parser.add_argument(
        "--stabilize",
        type=float,
        default=None,
        metavar="S",
        help="videos: strength of the temporal colour smoothing, 0 <= S < 1 (0: frame by "
        "frame; default: stabilize.DEFAULT_STRENGTH)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="photos per network batch")
    parser.add_argument("--weights", choices=["ema", "live"], default="ema")
    parser.add_argument("--device", default=None, help="cuda, cpu, cuda:1 (default: a GPU if any)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = parser.parse_args()
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.render_size is not None and args.render_size < 1:
        parser.error("--render-size must be at least 1")
    if not (0 <= args.saturation < float("inf")):
        parser.error("--saturation must be a finite number >= 0")
    if args.stabilize is not None and not 0 <= args.stabilize < 1:
        parser.error("--stabilize must be at least 0 and below 1")
    return args


def _progress_bars():
    """One bar for the inputs, and one more per video for its frames."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(TextColumn("[bold]{task.description}"), *columns)


def _frame_bar(progress, job):
    """A bar counting one video's frames, under the inputs' bar."""
    from distcolor.infer.files import VideoProgress

    task = progress.add_task(job.source.name, total=None)
    return VideoProgress(
        total=lambda n: progress.update(task, total=n),
        advance=lambda n: progress.advance(task, n),
    )


def _terminated(signum, frame) -> None:
    """SIGTERM (kill, a job's time limit, docker stop) unwinds like Ctrl-C: the video being
    written loses its hidden partial file, nothing is left under its final name."""
    print("error: terminated (SIGTERM); finished outputs are kept", file=sys.stderr)
    raise SystemExit(128 + signum)


def main() -> None:
    args = _parse_arguments()
    signal.signal(signal.SIGTERM, _terminated)

    from PIL import Image

    from distcolor.infer.colorizer import Colorizer
    from distcolor.infer.files import colorize_files, plan_jobs
    from distcolor.preflight import check_render_memory

    existing_path(args.checkpoint, "--checkpoint")  # before loading anything: mistakes show fast
    jobs = plan_jobs(args.inputs, args.out)
    make_folder(args.out, "--out")
    # Large scans are what this is for: PIL's decompression-bomb *warning* (89 to 179 MP)
    # is silenced once here; beyond that PIL refuses and the file is skipped.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    colorizer = Colorizer.from_checkpoint(
        args.checkpoint,
        weights=args.weights,
        render_size=args.render_size,
        device=args.device,
        saturation=args.saturation,
    )
    # the largest batch the network will see (a video's frames fill whole batches)
    batch = (
        args.batch_size if any(job.is_video for job in jobs) else min(args.batch_size, len(jobs))
    )
    check_render_memory(
        colorizer.generator, batch=batch, side=colorizer.render_size, device=colorizer.device
    )
    start = time.perf_counter()
    progress = _progress_bars()
    with progress:
        task = progress.add_task("colorize", total=len(jobs))
        summary = colorize_files(
            colorizer,
            jobs,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            pair=args.side_by_side,
            stabilize=args.stabilize,
            warn=progress.console.print,
            advance=lambda n: progress.advance(task, n),
            video_progress=partial(_frame_bar, progress),
        )
    seconds = time.perf_counter() - start
    result = summary.as_dict()
    result.update(
        seconds=round(seconds, 3),
        images_per_s=len(summary.written) / seconds if seconds > 0 else 0.0,
        frames_per_s=result["frames"] / seconds if seconds > 0 else 0.0,
        render_size=colorizer.render_size,
        device=str(colorizer.device),
        out=str(args.out),
    )
    print(
        f"coloured {result['written']} image(s) into {args.out} at {result['images_per_s']:.1f}/s"
        f" (network at {colorizer.render_size} px on {colorizer.device}); skipped "
        f"{result['skipped']} unreadable or not regular file(s), {result['failed']} output(s) "
        f"not written, kept {result['existing']} existing output(s)"
        + ("" if not result["existing"] else " (--overwrite replaces them)")
    )
    if summary.videos:
        print(
            f"{len(summary.videos)} of them video(s): {result['frames']} frames at "
            f"{result['frames_per_s']:.1f} frames/s"
        )
    print(json.dumps(result))
    problem = summary.problem()
    if problem:  # status 1: some inputs have no output (each was named above)
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)


def entry() -> None:
    """`distcolor-colorize` (and scripts/colorize.py): one line per mistake, a bounded exit."""
    run_main(main)


if __name__ == "__main__":
    entry()
