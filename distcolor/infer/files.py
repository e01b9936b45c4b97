"""`scripts/colorize.py`'s work: files and folders in, colour images out, nothing lost.

Outputs mirror the inputs: a file goes to OUT/<its name>, a folder's files to
OUT/<path inside the folder>. The format follows the input's (JPEG stays JPEG at quality
95, PNG stays PNG, ...), PNG when the input's format cannot hold the result (alpha in a
JPEG, a GIF's palette). Inputs are never overwritten and outputs only with `overwrite`;
unreadable files and what is not a regular file (a FIFO, a device) are reported and
skipped, and outputs that cannot be written are reported as failed. Reading and writing
run on threads (PIL releases the GIL while it decodes and encodes) while the network
works on a batch.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from distcolor.errors import UserError
from distcolor.infer.colorizer import Colorizer
from distcolor.infer.photos import IMAGE_SUFFIXES, Photo, Unreadable, read_photo
from distcolor.infer.stabilize import DEFAULT_STRENGTH
from distcolor.infer.video import VIDEO_SUFFIXES, transcode
from distcolor.paths import checked_stat, output_folder

KEEP_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
               ".webp": "WEBP", ".bmp": "BMP"}  # fmt: skip
NO_ALPHA = {"JPEG", "BMP"}
SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}, "PNG": {"compress_level": 4}}


@dataclass
class Job:
    source: Path
    target: Path  # suffix decided once the image is known (alpha may force PNG)

    @property
    def is_video(self) -> bool:
        return self.source.suffix.lower() in VIDEO_SUFFIXES


@dataclass
class Summary:
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # input not read -> reason
    failed: dict[str, str] = field(default_factory=dict)  # input whose output failed -> reason
    existing: list[str] = field(default_factory=list)  # outputs kept (no overwrite)
    videos: list[dict] = field(default_factory=list)  # a VideoReport per video written

    def as_dict(self) -> dict:
        return {
            "written": len(self.written),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "existing": len(self.existing),
            "skipped_files": self.skipped,
            "failed_files": self.failed,
            "outputs": self.written,
            "videos": self.videos,
            "frames": sum(video["frames"] for video in self.videos),
        }

    def problem(self) -> str | None:
        """One line on the inputs left without an output, or None when there are none."""
        if not self.skipped and not self.failed:
            return None
        parts = []
        if self.skipped:
            source, reason = next(iter(self.skipped.items()))
            parts.append(f"{len(self.skipped)} skipped (e.g. {source}: {reason})")
        if self.failed:
            reason = next(iter(self.failed.values()))  # names the output
            parts.append(f"{len(self.failed)} not written (e.g. {reason})")
        if not self.written and not self.existing:
            return "nothing was coloured: " + "; ".join(parts)
        total = len(self.written) + len(self.existing) + len(self.skipped) + len(self.failed)
        return f"{len(self.skipped) + len(self.failed)} of {total} inputs have no output: " + (
            "; ".join(parts)
        )


def plan_jobs(inputs: list[Path], out_dir: Path) -> list[Job]:
    """One Job per image file found; UserError for a missing input, an input that
    nothing comes of, an --out that cannot be written, or two inputs that would write the
    same file. Inputs that are not regular files become jobs too: reading skips them."""
    output_folder(out_dir, "--out")
    out = out_dir.resolve()
    jobs: list[Job] = []
    planned: set[tuple[Path, Path]] = set()
    for given in inputs:
        if stat.S_ISDIR(checked_stat(given, "input").st_mode):
            if not os.access(given, os.R_OK | os.X_OK):  # rglob would find nothing, silently
                raise UserError(f"input {given} cannot be read: permission denied")
            found = sorted(
                p
                for p in given.rglob("*")
                if not p.is_dir()  # FIFOs and devices included: reported, never opened
                # an interrupted run's hidden partial video is no input
                and not (p.name.startswith(".") and ".partial." in p.name)
                and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
                # an --out strictly inside the folder holds earlier outputs, not inputs
                and (out == given.resolve() or out not in p.resolve().parents)
            )
            pairs = [(p, out_dir / p.relative_to(given)) for p in found]
        else:
            pairs = [(given, out_dir / given.name)]
        for source, target in pairs:
            if (source.resolve(), target) not in planned:  # the same file named twice
                planned.add((source.resolve(), target))
                jobs.append(Job(source, target))
    if not jobs:
        raise UserError(f"no image or video files in {', '.join(str(p) for p in inputs)}")
    inputs_resolved = {job.source.resolve() for job in jobs}
    seen: dict[Path, Path] = {}
    for job in jobs:
        for candidate in _candidate_targets(job):
            if candidate.resolve() in inputs_resolved:
                raise UserError(
                    f"--out: {out_dir} would overwrite the input {candidate}; choose another --out"
                )
        for candidate in _candidate_targets(job):  # x.gif -> x.gif.png meets x.gif.png
            if candidate in seen:
                raise UserError(
                    f"inputs {seen[candidate]} and {job.source} would both be written to "
                    f"{candidate}; colour them into separate --out folders"
                )
        for candidate in _candidate_targets(job):
            seen[candidate] = job.source
    return jobs


def _candidate_targets(job: Job) -> list[Path]:
    """Every file name a job may end up writing (its own, or for a photo its own + .png)."""
    return [job.target] if job.is_video else [job.target, _png_name(job.target)]


def _png_name(target: Path) -> Path:
    """Where a PNG goes when the input's format cannot hold the output: x.jpg -> x.jpg.png,
    so inputs x.jpg and x.tif in one folder never meet."""
    return target if target.suffix.lower() == ".png" else target.with_name(target.name + ".png")


def output_path(target: Path, image: Image.Image) -> tuple[Path, str]:
    """(path, PIL format) for an output image planned at `target`."""
    fmt = KEEP_FORMAT.get(target.suffix.lower(), "PNG")
    if fmt in NO_ALPHA and image.mode == "RGBA":
        fmt = "PNG"
    return (_png_name(target) if fmt == "PNG" else target), fmt


def side_by_side(gray: Image.Image, colour: Image.Image) -> Image.Image:
    """The gray input left, its colour version right (alpha kept on both halves)."""
    left = gray.convert(colour.mode)
    if colour.mode == "RGBA":
        left.putalpha(colour.getchannel("A"))
    pair = Image.new(colour.mode, (colour.width * 2, colour.height))
    pair.paste(left, (0, 0))
    pair.paste(colour, (colour.width, 0))
    return pair


def _write(image: Image.Image, path: Path, fmt: str) -> str | None:
    """Write atomically (a crash never leaves half an image under the final name); the
    reason it could not be written (a full disk, a format's size limit), or None."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp, format=fmt, **SAVE_OPTIONS.get(fmt, {}))
        os.replace(tmp, path)
        return None
    except (OSError, ValueError) as err:
        return f"cannot write {path}: {getattr(err, 'strerror', None) or err}"
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _read(job: Job) -> Photo | Unreadable:
    try:
        return read_photo(job.source)
    except Unreadable as err:
        return err
    except Exception as err:  # one odd file must not end a long run
        return Unreadable(f"unreadable ({type(err).__name__}: {err})")


def colorize_files(
    colorizer: Colorizer,
    jobs: list[Job],
    *,
    batch_size: int = 8,
    overwrite: bool = False,
    pair: bool = False,
    stabilize: float | None = None,
    warn: Callable[[str], None] = print,
    advance: Callable[[int], None] = lambda n: None,
    video_progress: Callable[[Job], VideoProgress] | None = None,
) -> Summary:
    """Colour every job's image or video; `pair` writes photos gray | colour side by side;
    `stabilize`: the videos' stabiliser strength (None: its default)."""
    summary = Summary()
    photos, videos = [], []
    for job in jobs:
        existing = [p for p in _candidate_targets(job) if p.is_file()]  # a folder is no output
        if existing and not overwrite:
            summary.existing.append(str(existing[0]))
            advance(1)
        else:
            (videos if job.is_video else photos).append(job)
    _colorize_photos(colorizer, photos, summary, batch_size, pair, warn, advance)
    for job in videos:
        progress = video_progress(job) if video_progress else VideoProgress()
        _colorize_video(colorizer, job, summary, batch_size, stabilize, warn, progress)
        advance(1)
    return summary


@dataclass
class VideoProgress:
    """Callbacks for one video: its frame count once known (None: unknown), frames done."""

    total: Callable[[int | None], None] = lambda n: None
    advance: Callable[[int], None] = lambda n: None


def _colorize_video(colorizer, job: Job, summary: Summary, batch_size, stabilize, warn, progress):
    """One video, its outcome counted in `summary` as a photo's is (see video.py)."""
    strength = DEFAULT_STRENGTH if stabilize is None else stabilize
    try:
        report = transcode(
            colorizer, job.source, job.target, stabilize=strength, batch_size=batch_size,
            advance=progress.advance, on_total=progress.total,
        )  # fmt: skip
    except (Unreadable, UserError) as err:  # UserError: PyAV is not installed
        summary.skipped[str(job.source)] = str(err)
        warn(f"skipped {job.source}: {err}")
        return
    except (OSError, ValueError) as err:
        problem = f"cannot write {job.target}: {getattr(err, 'strerror', None) or err}"
        summary.failed[str(job.source)] = problem
        warn(f"not written {job.source}: {problem}")
        return
    for note in report.notes:
        warn(f"note {job.source}: {note}")
    summary.written.append(str(job.target))
    summary.videos.append(report.as_dict())


def _colorize_photos(colorizer, jobs: list[Job], summary: Summary, batch_size, pair, warn, advance):
    with ThreadPoolExecutor(max_workers=2) as readers, ThreadPoolExecutor(max_workers=2) as writers:
        writes: deque[tuple] = deque()
        for batch, photos in _read_ahead(readers, jobs, batch_size):
            usable = []
            for job, photo in zip(batch, photos, strict=True):
                if isinstance(photo, Unreadable):
                    summary.skipped[str(job.source)] = str(photo)
                    warn(f"skipped {job.source}: {photo}")
                    advance(1)
                else:
                    usable.append((job, photo))
            if not usable:
                continue
            colours = colorizer.colorize_photos([photo for _, photo in usable])
            for (job, photo), colour in zip(usable, colours, strict=True):
                image = side_by_side(photo.gray, colour) if pair else colour
                path, fmt = output_path(job.target, image)
                writes.append((job, path, writers.submit(_write, image, path, fmt)))
                advance(1)
            while len(writes) > 2 * batch_size:  # bounded: finished images are not hoarded
                _finish(writes.popleft(), summary, warn)
        while writes:
            _finish(writes.popleft(), summary, warn)


def _finish(write: tuple, summary: Summary, warn: Callable[[str], None]) -> None:
    job, path, future = write
    problem = future.result()
    if problem is None:
        summary.written.append(str(path))
    else:
        summary.failed[str(job.source)] = problem
        warn(f"not written {job.source}: {problem}")


def _read_ahead(pool: ThreadPoolExecutor, jobs: list[Job], batch_size: int) -> Iterator:
    """(jobs, photos or Unreadable) per batch, the next batch read while this one runs;
    only those two batches of photos are held at a time."""
    batches = deque(jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size))
    pending: deque = deque()
    while batches or pending:
        while batches and len(pending) < 2:
            batch = batches.popleft()
            pending.append((batch, pool.submit(lambda b=batch: [_read(job) for job in b])))
        batch, future = pending.popleft()
        yield batch, future.result()
