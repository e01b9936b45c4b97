"""Where images come from: image folders and the synthetic scenes, as (key, image, meta) records.

Each input becomes either a `Sample` (re-encoded RGB JPEG + metadata) or a `Skip`
(the path and why it was not used). Nothing here raises for one bad file.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
# Modes that hold no colour: training on them teaches the generator to output gray.
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass(frozen=True)
class Sample:
    key: str
    jpeg: bytes
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    path: str
    reason: str


def encode_jpeg(image: Image.Image, *, size: int | None, quality: int) -> bytes:
    """RGB JPEG with the shorter side resized to `size` (never upscaled)."""
    if size is not None and min(image.size) > size:
        scale = size / min(image.size)
        new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(new, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _to_rgb(image: Image.Image) -> Image.Image | str:
    """Colour image as RGB, or the reason it is not usable."""
    image = ImageOps.exif_transpose(image)  # phones store rotation in EXIF, not in pixels
    if image.mode in GRAYSCALE_MODES:
        return f"grayscale image (mode {image.mode}): no colour to learn"
    if image.mode in ("RGBA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels hold arbitrary colour: composite on white, as a viewer shows them.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image_file(
    path: Path, *, root: Path, source: str, size: int | None, quality: int
) -> Sample | Skip:
    """Read one file into a Sample, or say why it was skipped."""
    rel = path.relative_to(root).as_posix()
    try:
        raw = path.read_bytes()
    except OSError as err:
        return Skip(str(path), f"unreadable file: {err.strerror or err}")
    if not raw:
        return Skip(str(path), "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                image.load()
                original_size = list(image.size)
                rgb = _to_rgb(image)
    except UnidentifiedImageError:
        return Skip(str(path), "not an image")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Skip(str(path), "decompression bomb (too many pixels)")
    except (OSError, SyntaxError, ValueError) as err:
        return Skip(str(path), f"corrupt or truncated image: {err}")
    if isinstance(rgb, str):
        return Skip(str(path), rgb)
    digest = hashlib.sha256(raw).hexdigest()
    meta = {"source": source, "path": rel, "original_size": original_size, "sha256": digest}
    return Sample(f"{source}-{digest[:16]}", encode_jpeg(rgb, size=size, quality=quality), meta)


def iter_folder(root: Path, *, exclude: Path | None = None) -> Iterator[Path]:
    """Every file under `root`, recursively, in a stable (sorted) order; hidden entries and
    anything under `exclude` (the shard output folder, if it sits inside) skipped."""
    exclude = exclude.resolve() if exclude is not None else None
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(root).parts):
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        yield path


def synthetic_samples(count: int, *, size: int, seed: int, quality: int) -> Iterator[Sample]:
    """The procedural scenes of `distcolor.data.synthetic` as Samples."""
    from distcolor.data.synthetic import iter_scenes

    for key, image in iter_scenes(count, size=size, seed=seed):
        digest = hashlib.sha256(image.tobytes()).hexdigest()
        meta = {
            "source": "synthetic",
            "path": key,
            "original_size": list(image.size),
            "sha256": digest,
        }
        yield Sample(key, encode_jpeg(image, size=None, quality=quality), meta)
