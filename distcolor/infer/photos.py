"""A user's picture, whatever its file holds, as the gray photo `colorize` works from.

Every PIL mode a photo comes in ends as a mode-"L" image (`color.grayscale`, the same one
training uses) plus its alpha channel when it has one:

    1, L                    gray as stored
    LA, La, PA, RGBA, RGBa  alpha split off and kept for the output
    P                       through its palette (RGBA when it has a transparent entry)
    I;16*, I                16-bit gray: 0..65535 read to 0..255 by rounding (PIL's own
                            convert("L") clips instead, turning most of the range white)
    F                       floats: 0..1 when they fit there, else 0..255, clipped
    RGB, CMYK, YCbCr, ...   colour: to sRGB (an embedded ICC profile converted by littleCMS,
                            as make_shards does), then gray (a colour photo is treated as a
                            black-and-white one)

EXIF orientation is applied first, so a phone's portrait photo comes out upright.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from distcolor.color import grayscale
from distcolor.data.sources import Rejected, to_srgb
from distcolor.paths import kind_of

SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
WITH_ALPHA = {"LA", "La", "PA", "RGBA", "RGBa"}
IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".jfif", ".jp2",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".psd", ".ico", ".dib", ".pcx", ".sgi",
}  # fmt: skip
"""What a folder walk picks up; a file named on the command line is tried whatever its name."""


@dataclass
class Photo:
    """gray: mode "L" at the file's full size (upright); alpha: mode "L" or None."""

    gray: Image.Image
    alpha: Image.Image | None = None
    mode: str = "L"  # the file's PIL mode, for messages


class Unreadable(Exception):
    """A file `read_photo` cannot use; the message says why (one line)."""


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading when it is a regular file, else Unreadable. A FIFO would
    block open() until a writer comes and a device may never end, so neither is opened;
    the kind is checked again on the open file, in case the path changed in between."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # even a FIFO opens at once
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISREG(mode):
                    os.set_blocking(fd, True)
                    return os.fdopen(fd, "rb")
            except OSError:
                os.close(fd)
                raise
            os.close(fd)
    except OSError as err:
        raise Unreadable(f"cannot be opened ({err.strerror or err})") from None
    raise Unreadable(f"not a regular file ({kind_of(mode)})")


def read_photo(path: Path) -> Photo:
    """The photo in `path`, or Unreadable naming the reason."""
    try:
        with open_regular(path) as file, Image.open(file) as image:
            image.load()
            return photo_of(image)
    except UnidentifiedImageError:
        raise Unreadable("not an image PIL can read") from None
    except Image.DecompressionBombError:
        raise Unreadable("too many pixels for PIL's decompression-bomb limit") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise Unreadable(f"unreadable or truncated image ({err})") from None


def photo_of(image: Image.Image) -> Photo:
    """An opened PIL image -> Photo (see the module docstring for each mode)."""
    mode = image.mode
    icc = image.info.get("icc_profile")
    image = ImageOps.exif_transpose(image)  # phones store rotation in EXIF, not in pixels
    alpha = None
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        icc = None  # a palette's colours are sRGB as stored
    elif image.mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert("LA" if image.mode == "L" else "RGBA")  # a PNG's tRNS colour
    if image.mode in WITH_ALPHA:
        # La / RGBa hold premultiplied colour: converted first, so alpha is band "A".
        image = image.convert(
            {"La": "LA", "RGBa": "RGBA", "PA": "RGBA"}.get(image.mode, image.mode)
        )
        alpha = image.getchannel("A")
        image = image.convert("L" if image.mode == "LA" else "RGB")
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64) / 257.0
        return Photo(_gray_array(values), alpha, mode)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        return Photo(_gray_array(np.nan_to_num(values) * scale), alpha, mode)
    if image.mode in ("1", "L"):
        return Photo(image.convert("L"), alpha, mode)
    try:
        rgb, _ = to_srgb(image, icc)  # RGB, CMYK, YCbCr, LAB, HSV -> sRGB
    except Rejected:  # a damaged or mismatched profile: the pixels are still a photo
        rgb, _ = to_srgb(image, None)
    return Photo(grayscale(rgb), alpha, mode)


def _gray_array(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
