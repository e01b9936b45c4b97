"""Where images come from: image folders and the synthetic scenes, as (key, image, meta) records.

Each input becomes either a `Sample` (re-encoded sRGB JPEG + metadata) or a `Skip`
(the path, why it was not used, and a `kind` from SKIP_KINDS that manifests count).
Nothing here raises for one bad file.

What a file goes through: decode (decompression bombs refused) -> EXIF orientation ->
grayscale modes refused -> alpha composited on white -> embedded ICC profile converted
to sRGB -> shorter side resized -> colourfulness filter -> JPEG.
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# Re-exported: the folder walk lives with the dataset layouts.
from distcolor.data.layouts import IMAGE_SUFFIXES, iter_folder

__all__ = [
    "DEFAULT_MIN_COLORFULNESS",
    "GRAYSCALE_MODES",
    "IMAGE_SUFFIXES",
    "SKIP_KINDS",
    "Sample",
    "Skip",
    "colorfulness",
    "encode_jpeg",
    "iter_folder",
    "load_image_file",
    "resize_shorter",
    "synthetic_sample",
]

# Modes that hold no colour: training on them teaches the generator to output gray.
GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

SKIP_KINDS = (
    "unreadable",  # the file could not be read
    "empty",  # zero bytes
    "not_image",  # no image format recognised
    "corrupt",  # truncated or undecodable
    "bomb",  # too many pixels (decompression bomb)
    "grayscale",  # a grayscale mode: no colour at all
    "colourless",  # RGB but nearly gray (below --min-colorfulness)
    "icc",  # an embedded colour profile that cannot be read or applied
)

# Hasler-Suesstrunk colourfulness below which an RGB image counts as colourless (black-and-
# white scans stored as RGB teach the generator to output gray). Measured at 286 px shorter
# side on the real photos bundled in scikit-image / scikit-learn / matplotlib wheels, then on
# each made gray-as-RGB, sepia (the classic matrix, full and blended 50% with gray), toned
# (gray mapped onto a brown..cream ramp), gray with a warm paper cast, and 25% saturation
# (these after a JPEG round trip at quality 95, as they would be stored):
#
#   photo              colour  gray  sepia  sepia50  toned  warm  desat25
#   hubble_deep_field    12.4   0.0    8.2      4.1    8.6   2.9      2.2
#   china                36.4   0.0   28.2     14.3   14.2  13.2      8.6
#   chelsea (cat)        37.9   0.0   24.7     12.3   11.2   7.5      9.5
#   ihc (microscopy)     40.3   0.0   26.2     13.0   12.6  10.1      9.9
#   rocket (Adobe RGB)   48.7   0.0   16.6      8.5   10.1   5.3     11.7
#   motorcycle_left      54.6   0.0   29.8     14.9   12.2   9.4     13.1
#   grace_hopper         67.5   0.0   28.5     14.1   12.4   9.5     16.6
#   astronaut            72.5   0.0   34.6     17.4   13.2  11.6     17.9
#   coffee               76.8   0.0   28.2     14.2   12.3   9.4     18.9
#   flower               86.4   0.0   25.5     12.8   11.3   7.8     21.5
#   retina               99.5   0.0   28.7     14.4   11.7   8.5     24.7
#
# 10 keeps every real photo (lowest 12.4) and drops gray-as-RGB and most faint casts. A
# sepia tint scales with contrast, so toned prints (8-14) and full sepia (8-35) overlap
# muted colour photos: this score alone cannot remove them without losing real photos.
DEFAULT_MIN_COLORFULNESS = 10.0


@dataclass(frozen=True)
class Sample:
    key: str
    jpeg: bytes
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    path: str
    reason: str
    kind: str = "other"  # one of SKIP_KINDS for every skip made here


class Rejected(Exception):
    """An input that is readable but unusable; becomes a Skip."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


# -- colour ----------------------------------------------------------------------------------


def colorfulness(rgb: Image.Image | np.ndarray) -> float:
    """Colourfulness M of Hasler & Suesstrunk (2003), "Measuring colourfulness in natural
    images", from 0..255 RGB: 0 for gray; on their scale 15 is slightly, 33 moderately,
    45 averagely, 59 quite, 82 highly and 109 extremely colourful."""
    if isinstance(rgb, Image.Image) and rgb.mode != "RGB":
        rgb = rgb.convert("RGB")
    a = np.asarray(rgb, dtype=np.float64)
    if a.ndim != 3 or a.shape[2] != 3 or a.size == 0:
        raise ValueError(f"colorfulness needs an HxWx3 RGB image, got shape {a.shape}")
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    rg = r - g
    yb = (r + g) / 2 - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


_SRGB = ImageCms.createProfile("sRGB")
# Relative colorimetric with black point compensation (Photoshop's default conversion):
# colours inside sRGB come out exactly as the profile defines them, which is what a
# colour-managed viewer shows and what the model should learn; only out-of-gamut colours
# are clipped. Perceptual would defer to vendor tables that differ between profiles (and
# matrix profiles such as Adobe RGB or Display P3 have none: littleCMS then falls back to
# colorimetric anyway). BPC maps a print's ink black to sRGB black, not a washed-out gray.
_INTENT = ImageCms.Intent.RELATIVE_COLORIMETRIC
_FLAGS = ImageCms.Flags.BLACKPOINTCOMPENSATION
# A coarse RGB grid: a profile that moves none of it by more than a level is sRGB already.
_LEVELS = np.linspace(0, 255, 8).round().astype(np.uint8)
_PROBE = Image.fromarray(
    np.stack(np.meshgrid(_LEVELS, _LEVELS, _LEVELS, indexing="ij"), axis=-1).reshape(1, -1, 3)
)


@functools.lru_cache(maxsize=32)  # a dataset's images share a handful of profiles
def _srgb_transform(icc: bytes, mode: str) -> tuple[ImageCms.ImageCmsTransform | None, str]:
    """(transform from the profile to sRGB, None when it is sRGB already; its description).

    Raises OSError / ImageCms.PyCMSError for a profile that cannot be parsed or does not
    fit the image mode."""
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    description = (profile.profile.profile_description or "").strip() or "unnamed profile"
    transform = ImageCms.buildTransform(profile, _SRGB, mode, "RGB", _INTENT, _FLAGS)
    if mode == "RGB":
        moved = np.asarray(transform.apply(_PROBE), dtype=np.int16) - np.asarray(_PROBE)
        if np.abs(moved).max() <= 1:  # one of the many builds of sRGB: leave pixels alone
            return None, description
    return transform, description


def to_srgb(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, str | None]:
    """RGB pixels in sRGB, and the description of the profile converted from (if any)."""
    if image.mode not in ("RGB", "CMYK"):
        image = image.convert("RGB")
    if icc:
        try:
            transform, description = _srgb_transform(bytes(icc), image.mode)
            if transform is not None:
                return transform.apply(image), description
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as err:
            raise Rejected(
                "icc", f"embedded ICC colour profile cannot be applied ({image.mode}): {err}"
            ) from None
    # CMYK without a profile: Pillow's naive conversion is the best guess there is.
    return image.convert("RGB"), None


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """Colour image as sRGB RGB (and the ICC profile converted from), or Rejected."""
    icc = image.info.get("icc_profile")
    image = ImageOps.exif_transpose(image)  # phones store rotation in EXIF, not in pixels
    if image.mode in GRAYSCALE_MODES:
        raise Rejected("grayscale", f"grayscale image (mode {image.mode}): no colour to learn")
    if image.mode in ("RGBA", "RGBa", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels hold arbitrary colour: composite on white, as a viewer shows them.
        # Done before the ICC conversion: white in the profile's space maps to sRGB white.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    return to_srgb(image, icc)


# -- files -----------------------------------------------------------------------------------


def resize_shorter(image: Image.Image, size: int | None) -> Image.Image:
    """`image` with its shorter side resized to `size` (never upscaled)."""
    if size is None or min(image.size) <= size:
        return image
    scale = size / min(image.size)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new, Image.Resampling.LANCZOS)


def encode_jpeg(image: Image.Image, *, size: int | None, quality: int) -> bytes:
    """RGB JPEG with the shorter side resized to `size` (never upscaled)."""
    buf = io.BytesIO()
    resize_shorter(image, size).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _decode(raw: bytes) -> tuple[Image.Image, list[int], str | None]:
    """(sRGB RGB image, original size, ICC profile converted from), or Rejected."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                image.load()
                original_size = list(image.size)
                rgb, icc = _to_rgb(image)
    except UnidentifiedImageError:
        raise Rejected("not_image", "not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Rejected("bomb", "decompression bomb (too many pixels)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise Rejected("corrupt", f"corrupt or truncated image: {err}") from None
    return rgb, original_size, icc


def read_input(path: Path) -> bytes | Skip:
    """A file's bytes, or a Skip saying why there are none."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        return Skip(str(path), f"unreadable file: {err.strerror or err}", "unreadable")
    return raw if raw else Skip(str(path), "empty file", "empty")


def load_image_file(
    path: Path,
    *,
    root: Path,
    source: str,
    size: int | None,
    quality: int,
    min_colorfulness: float = DEFAULT_MIN_COLORFULNESS,
) -> Sample | Skip:
    """Read one file into a Sample, or say why it was skipped (`min_colorfulness` 0: keep
    every colour image)."""
    rel = path.relative_to(root).as_posix()
    raw = read_input(path)
    if isinstance(raw, Skip):
        return raw
    try:
        rgb, original_size, icc = _decode(raw)
    except Rejected as rejected:
        return Skip(str(path), rejected.reason, rejected.kind)
    small = resize_shorter(rgb, size)
    # On the stored size: cheap, and what the model will see.
    colour = colorfulness(small)
    if colour < min_colorfulness:
        reason = (
            f"nearly colourless (colourfulness {colour:.1f} < {min_colorfulness:g}, "
            "--min-colorfulness)"
        )
        return Skip(str(path), reason, "colourless")
    digest = hashlib.sha256(raw).hexdigest()
    meta = {
        "source": source,
        "path": rel,
        "original_size": original_size,
        "sha256": digest,
        "colorfulness": round(colour, 2),
    }
    if icc is not None:
        meta["icc"] = icc
    return Sample(f"{source}-{digest[:16]}", encode_jpeg(small, size=None, quality=quality), meta)


def synthetic_sample(
    index: int, *, ref: str, digest: str, size: int, seed: int, quality: int
) -> Sample:
    """Scene `index` of `distcolor.data.synthetic` as a Sample (`digest` identifies it)."""
    from distcolor.data.synthetic import scene_image

    image = scene_image(index, size=size, seed=seed)
    meta = {"source": "synthetic", "path": ref, "original_size": list(image.size), "sha256": digest}
    return Sample(f"synthetic-{digest[:16]}", encode_jpeg(image, size=None, quality=quality), meta)
