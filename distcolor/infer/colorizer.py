"""Colour a photo at full resolution: `Colorizer` and the notebook API `colorize(image)`.

The network runs on a square copy of the photo at the render size (its training size
by default), as Zhang et al.'s and DeOldify's colorizers do, so photos of every shape
batch together. Its chroma is upsampled (bilinear) to the photo's own size and joined
to the photo's full-resolution lightness: every detail of the input is kept, and the
output's L* is the input's (up to 8-bit rounding), because chroma that sRGB cannot show
at a pixel's lightness is scaled towards gray (`color.fit_chroma`) rather than clipped.

    >>> from distcolor import colorize
    >>> colorize("grandma.jpg", checkpoint="runs/default").save("grandma-colour.png")
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from distcolor.color import fitted_srgb, lightness_input
from distcolor.errors import UserError
from distcolor.infer.photos import Photo, photo_of, read_photo
from distcolor.infer.weights import load_generator
from distcolor.sizes import unet_multiple

STRIPE_PIXELS = 1 << 22
"""Full-resolution colour is made in stripes of about this many pixels: a 50-megapixel
scan needs a few hundred MB, not several GB, of float32 temporaries."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def usable_device(device: torch.device | str | None) -> torch.device:
    """`device` (default: a GPU if there is one) or a one-line UserError naming it."""
    if device is None:
        return default_device()
    try:
        chosen = torch.device(device)
        torch.empty(1, device=chosen)  # fails here, not deep inside a forward
    except (RuntimeError, AssertionError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--device: {device} cannot be used ({reason})") from None
    return chosen


def check_saturation(saturation: float) -> None:
    if not 0 <= saturation < float("inf"):  # NaN fails both comparisons
        raise UserError(f"--saturation: {saturation} must be a finite number >= 0")


class Colorizer:
    """A trained generator, ready to colour photos of any size.

    render_size: side of the square copy the network sees (a multiple of 2**depth);
    saturation: factor on the predicted chroma (1 = as predicted; >1 more colourful);
    timings: seconds spent per stage (`prepare`, `network`, `compose`), for benchmarks.
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        *,
        render_size: int,
        device: torch.device | str | None = None,
        saturation: float = 1.0,
    ) -> None:
        multiple = unet_multiple(generator.depth)
        if render_size < multiple or render_size % multiple:
            raise UserError(
                f"--render-size: {render_size} must be a positive multiple of 2**depth = "
                f"{multiple} for this generator"
            )
        check_saturation(saturation)
        self.device = usable_device(device)
        self.generator = generator.to(self.device).eval()
        self.render_size, self.saturation = render_size, saturation
        self.timings: Counter = Counter()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        weights: str = "ema",
        render_size: int | None = None,
        device: torch.device | str | None = None,
        saturation: float = 1.0,
    ) -> Colorizer:
        """From a run folder, checkpoint (DDP or DeepSpeed) or export; renders at the
        training size unless `render_size` says otherwise."""
        trained = load_generator(Path(path), weights=weights)
        return cls(
            trained.generator,
            render_size=trained.image_size if render_size is None else render_size,
            device=device,
            saturation=saturation,
        )

    def network_input(self, gray: Image.Image) -> torch.Tensor:
        """(1, 1, R, R) scaled L* of the square render-size copy of a mode-"L" image."""
        size = (self.render_size, self.render_size)
        small = gray if gray.size == size else gray.resize(size, Image.Resampling.BICUBIC)
        return lightness_input(torch.from_numpy(np.array(small))[None, None])

    def network_inputs(self, grays: list[Image.Image]) -> torch.Tensor:
        """(B, 1, R, R) network input of a batch of gray images, on the device."""
        t0 = time.perf_counter()
        batch = torch.cat([self.network_input(gray) for gray in grays]).to(self.device)
        self.timings["prepare"] += time.perf_counter() - t0
        return batch

    @torch.no_grad()
    def chroma_of(self, lightness: torch.Tensor) -> torch.Tensor:
        """Scaled chroma (B, 2, R, R) the network predicts for `network_inputs(...)`."""
        t0 = time.perf_counter()
        chroma = self.generator(lightness).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so `network` times the network
        self.timings["network"] += time.perf_counter() - t0
        return chroma

    def predict(self, grays: list[Image.Image]) -> torch.Tensor:
        """Scaled chroma (B, 2, R, R) for a batch of gray images, on the device."""
        return self.chroma_of(self.network_inputs(grays))

    @torch.no_grad()
    def compose(self, gray: Image.Image, chroma: torch.Tensor) -> np.ndarray:
        """uint8 (H, W, 3) sRGB: `gray`'s full-resolution lightness with `chroma` (1, 2, R,
        R) upsampled to its size, scaled by `saturation` and fitted into sRGB."""
        t0 = time.perf_counter()
        width, height = gray.size
        pixels = torch.from_numpy(np.array(gray))
        out = np.empty((height, width, 3), dtype=np.uint8)
        rows = max(1, STRIPE_PIXELS // width)
        # Upsampled stripe by stripe; each stripe is interpolated with a row of context
        # on both sides so the seams match a whole-image interpolation exactly.
        scale = chroma.shape[-2] / height
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            lightness = lightness_input(pixels[None, None, top:bottom].to(self.device))
            ab = _upsampled_rows(chroma, height, width, top, bottom, scale) * self.saturation
            rgb = fitted_srgb(lightness, ab)
            out[top:bottom] = (rgb[0] * 255).round_().to(torch.uint8).permute(1, 2, 0).cpu()
        self.timings["compose"] += time.perf_counter() - t0
        return out

    def colorize_photos(self, photos: list[Photo]) -> list[Image.Image]:
        """Colour images (RGB, or RGBA when the photo had alpha) at each photo's own size."""
        chroma = self.predict([photo.gray for photo in photos])
        images = []
        for photo, ab in zip(photos, chroma, strict=True):
            image = Image.fromarray(self.compose(photo.gray, ab[None]))
            if photo.alpha is not None:
                image.putalpha(photo.alpha)
            images.append(image)
        return images

    def __call__(self, image: Image.Image | str | Path) -> Image.Image:
        """One picture (a PIL image of any mode, or a path) -> its colour version."""
        photo = read_photo(Path(image)) if isinstance(image, str | Path) else photo_of(image)
        return self.colorize_photos([photo])[0]


def _upsampled_rows(
    chroma: torch.Tensor, height: int, width: int, top: int, bottom: int, scale: float
) -> torch.Tensor:
    """Rows top:bottom of `chroma` (1, 2, R, R) bilinearly resized to (height, width),
    computed from the source rows they need only (align_corners=False sampling)."""
    if top == 0 and bottom == height:
        return F.interpolate(chroma, size=(height, width), mode="bilinear", align_corners=False)
    # Output row y samples source row (y + 0.5) * scale - 0.5: take the rows around it.
    source = chroma.shape[-2]
    first = max(0, int(np.floor((top + 0.5) * scale - 0.5)) - 1)
    last = min(source, int(np.ceil((bottom - 0.5) * scale - 0.5)) + 2)
    ys = (torch.arange(top, bottom, dtype=torch.float64) + 0.5) * scale - 0.5
    ys = ys.clamp(0, source - 1)
    low = ys.floor().long().clamp(max=source - 1)
    high = (low + 1).clamp(max=source - 1)
    frac = (ys - low).to(chroma.dtype).to(chroma.device).view(1, 1, -1, 1)
    # Columns first (plain interpolate on the needed rows), then rows by hand.
    cols = F.interpolate(
        chroma[:, :, first:last], size=(last - first, width), mode="bilinear", align_corners=False
    )
    low, high = (low - first).to(chroma.device), (high - first).to(chroma.device)
    return cols[:, :, low] * (1 - frac) + cols[:, :, high] * frac


@functools.lru_cache(maxsize=2)
def cached_colorizer(checkpoint: str, weights: str, render_size, device: str) -> Colorizer:
    return Colorizer.from_checkpoint(
        checkpoint, weights=weights, render_size=render_size, device=device
    )


def colorize(
    image: Image.Image | str | Path,
    checkpoint: str | Path,
    *,
    weights: str = "ema",
    render_size: int | None = None,
    saturation: float = 1.0,
    device: str | None = None,
) -> Image.Image:
    """The colour version of `image` (a PIL image or a path), at its full resolution, by the
    generator in `checkpoint` (run folder, checkpoint, DeepSpeed checkpoint or export).
    The loaded generator is kept for the next call with the same checkpoint."""
    chosen = str(device or default_device())
    check_saturation(saturation)
    colorizer = cached_colorizer(str(Path(checkpoint).resolve()), weights, render_size, chosen)
    colorizer.saturation = saturation
    return colorizer(image)
