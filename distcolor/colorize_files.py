"""`scripts/colorize.py`'s work: files and folders in, colour images out, nothing lost.

Outputs mirror the inputs: a file goes to OUT/<its name>, a folder's files to
OUT/<path inside the folder>. The format follows the input's (JPEG stays JPEG at quality
95, PNG stays PNG, ...), PNG when the input's format cannot hold the result (alpha in a
JPEG, a GIF's palette). Inputs are never overwritten and outputs only with `overwrite`;
unreadable files are reported and skipped. Reading and writing run on threads (PIL
releases the GIL while it decodes and encodes) while the network works on a batch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from distcolor.errors import UserError
from distcolor.inference import Colorizer
from distcolor.photos import IMAGE_SUFFIXES, Photo, Unreadable, read_photo

KEEP_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
               ".webp": "WEBP", ".bmp": "BMP"}  # fmt: skip
NO_ALPHA = {"JPEG", "BMP"}
SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}, "PNG": {"compress_level": 4}}


@dataclass
class Job:
    source: Path
    target: Path  # suffix decided once the image is known (alpha may force PNG)


@dataclass
class Summary:
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # input -> reason
    existing: list[str] = field(default_factory=list)  # outputs kept (no overwrite)

    def as_dict(self) -> dict:
        return {
            "written": len(self.written),
            "skipped": len(self.skipped),
            "existing": len(self.existing),
            "skipped_files": self.skipped,
            "outputs": self.written,
        }


def plan_jobs(inputs: list[Path], out_dir: Path) -> list[Job]:
    """One Job per image file found; UserError for a missing input, an input that
    nothing comes of, or two inputs that would write the same file."""
    jobs: list[Job] = []
    for given in inputs:
        if not given.exists():
            raise UserError(f"input {given} does not exist")
        if given.is_dir():
            found = sorted(
                p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            jobs.extend(Job(p, out_dir / p.relative_to(given)) for p in found)
        else:
            jobs.append(Job(given, out_dir / given.name))
    if not jobs:
        raise UserError(f"no image files in {', '.join(str(p) for p in inputs)}")
    inputs_resolved = {job.source.resolve() for job in jobs}
    seen: dict[Path, Path] = {}
    for job in jobs:
        for candidate in _candidate_targets(job.target):
            if candidate.resolve() in inputs_resolved:
                raise UserError(
                    f"--out: {out_dir} would overwrite the input {candidate}; choose another --out"
                )
        stem = job.target.with_suffix("")
        if stem in seen:
            raise UserError(
                f"inputs {seen[stem]} and {job.source} would both be written to {stem}.*; "
                "colour them into separate --out folders"
            )
        seen[stem] = job.source
    return jobs


def _candidate_targets(target: Path) -> list[Path]:
    """Every file name a job may end up writing (its suffix, or .png)."""
    return [target, target.with_suffix(".png")]


def output_path(target: Path, image: Image.Image) -> tuple[Path, str]:
    """(path, PIL format) for an output image planned at `target`."""
    fmt = KEEP_FORMAT.get(target.suffix.lower(), "PNG")
    if fmt in NO_ALPHA and image.mode == "RGBA":
        fmt = "PNG"
    if fmt == "PNG" and target.suffix.lower() != ".png":
        target = target.with_suffix(".png")
    return target, fmt


def side_by_side(gray: Image.Image, colour: Image.Image) -> Image.Image:
    """The gray input left, its colour version right (alpha kept on both halves)."""
    left = gray.convert(colour.mode)
    if colour.mode == "RGBA":
        left.putalpha(colour.getchannel("A"))
    pair = Image.new(colour.mode, (colour.width * 2, colour.height))
    pair.paste(left, (0, 0))
    pair.paste(colour, (colour.width, 0))
    return pair


def _write(image: Image.Image, path: Path, fmt: str) -> None:
    """Write atomically: a crash never leaves half an image under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        image.save(tmp, format=fmt, **SAVE_OPTIONS.get(fmt, {}))
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _read(job: Job) -> Photo | Unreadable:
    try:
        return read_photo(job.source)
    except Unreadable as err:
        return err


def colorize_files(
    colorizer: Colorizer,
    jobs: list[Job],
    *,
    batch_size: int = 8,
    overwrite: bool = False,
    pair: bool = False,
    warn: Callable[[str], None] = print,
    advance: Callable[[int], None] = lambda n: None,
) -> Summary:
    """Colour every job's image; `pair` writes gray | colour side by side."""
    summary = Summary()
    todo = []
    for job in jobs:
        existing = [p for p in _candidate_targets(job.target) if p.exists()]
        if existing and not overwrite:
            summary.existing.append(str(existing[0]))
            advance(1)
        else:
            todo.append(job)
    with ThreadPoolExecutor(max_workers=2) as readers, ThreadPoolExecutor(max_workers=2) as writers:
        writes: deque[Future] = deque()
        for batch, photos in _read_ahead(readers, todo, batch_size):
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
                writes.append(writers.submit(_write, image, path, fmt))
                summary.written.append(str(path))
                advance(1)
            while len(writes) > 2 * batch_size:  # bounded: finished images are not hoarded
                writes.popleft().result()
        for write in writes:
            write.result()  # raises the UserError of an output that cannot be written
    return summary


def _read_ahead(pool: ThreadPoolExecutor, jobs: list[Job], batch_size: int) -> Iterator:
    """(jobs, photos or Unreadable) per batch, the next batch read while this one runs."""
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    pending = [pool.submit(lambda b=b: [_read(job) for job in b]) for b in batches[:1]]
    for i, batch in enumerate(batches):
        if i + 1 < len(batches):
            nxt = batches[i + 1]
            pending.append(pool.submit(lambda b=nxt: [_read(job) for job in b]))
        yield batch, pending[i].result()
