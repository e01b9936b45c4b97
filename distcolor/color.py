"""The colour space, defined once: CIE Lab, scaled to [-1, 1].

The generator sees lightness L and predicts chroma (a, b); the discriminator sees
(L, a, b). Lightness comes from PIL's grayscale of the photo (what a black-and-white
photo holds), read as a gray sRGB value and converted to L*. Chroma comes from the
colour photo. sRGB <-> Lab is kornia's (D65 white, exact sRGB transfer curve), so it
runs the same on CPU loader workers and on the GPU.

Shapes: rgb (B, 3, H, W) in [0, 1]; L (B, 1, H, W) and ab (B, 2, H, W) in [-1, 1].

The generator's input is made one way only, for training, evaluation and `colorize`:
`grayscale` (PIL, on the loader workers or on a user's photo), then `lightness_input`
(on the device). A public colorization tutorial trained on Lab lightness and fed its
model the red channel at inference; here there is no second path to get wrong
(tests/test_colorize.py checks that colorize's network input is the loader's).
"""

from __future__ import annotations

import torch
from kornia.color import lab_to_rgb, rgb_to_lab
from PIL import Image

L_SCALE = 50.0
"""L* in [0, 100] -> L / 50 - 1 in [-1, 1]."""
AB_SCALE = 110.0
"""sRGB colours have a*, b* within about [-108, 98]; /110 keeps them inside tanh's range."""


def rgb_to_chroma(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> (B, 2, H, W) scaled a*, b*."""
    return rgb_to_lab(rgb)[:, 1:] / AB_SCALE


def grayscale(image: Image.Image) -> Image.Image:
    """The model's view of a picture: PIL's grayscale (ITU-R 601 luma of the sRGB values,
    mode "L"), what a black-and-white photo of the scene holds. A gray image is itself."""
    return image if image.mode == "L" else image.convert("L")


def lightness_input(gray: torch.Tensor) -> torch.Tensor:
    """uint8 grayscale (B, 1, H, W) -> the generator's input, scaled L* (B, 1, H, W).

    L* of a gray value depends on that value alone: a 256-entry table (made by
    `gray_to_lightness`) replaces a colour conversion of every pixel."""
    return _lightness_table(gray.device)[gray.long()]


_LIGHTNESS_TABLES: dict[torch.device, torch.Tensor] = {}


def _lightness_table(device: torch.device) -> torch.Tensor:
    if device not in _LIGHTNESS_TABLES:
        levels = torch.arange(256, dtype=torch.float32).div_(255.0).view(1, 1, 1, 256)
        _LIGHTNESS_TABLES[device] = gray_to_lightness(levels).flatten().to(device)
    return _LIGHTNESS_TABLES[device]


def gray_to_lightness(gray: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) gray sRGB values in [0, 1] -> (B, 1, H, W) scaled L*."""
    lab = rgb_to_lab(gray.expand(-1, 3, -1, -1))
    return lab[:, :1] / L_SCALE - 1.0


def lab_to_srgb(lightness: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Scaled L (B, 1, H, W) + scaled ab (B, 2, H, W) -> sRGB (B, 3, H, W) clipped to [0, 1]."""
    lab = torch.cat([(lightness.float() + 1.0) * L_SCALE, chroma.float() * AB_SCALE], dim=1)
    return lab_to_rgb(lab, clip=True)


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def lab_inputs(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch's uint8 `gray` and `rgb` -> (L, ab) on `device`, converted there:
    one batched op on the GPU instead of per-image float work on the loader workers."""
    gray = batch["gray"].to(device, non_blocking=True)
    rgb = batch["rgb"].to(device, non_blocking=True)
    return lightness_input(gray), rgb_to_chroma(uint8_to_unit(rgb))


GAMUT_STEPS = 10
"""Bisection steps of the gamut fit: chroma found to within 1/1024 of the prediction."""
GAMUT_TOLERANCE = 1e-4
"""How far outside [0, 1] an RGB channel may fall and still count as in gamut (rounding)."""


def fit_chroma(lightness: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Chroma (B, 2, H, W) scaled down, per pixel, to what sRGB can show at that lightness.

    Clipping RGB instead would change the lightness (and the hue) of every out-of-gamut
    pixel; scaling a*, b* towards gray keeps L* and the hue angle and only lowers the
    chroma, to the largest factor in [0, 1] that lands in gamut (gray always does).
    """
    chroma = _finite(chroma)
    _, outside, factor = _gamut_fit(lightness.float(), chroma)
    if factor is None:
        return chroma
    fitted = chroma.clone()
    fitted.permute(1, 0, 2, 3)[:, outside] *= factor
    return fitted


def fitted_srgb(lightness: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """sRGB (B, 3, H, W) in [0, 1] of L with `fit_chroma(L, chroma)`, converting each
    in-gamut pixel once (the colorize path, where this is most of the time outside the
    network)."""
    lightness, chroma = lightness.float(), _finite(chroma)
    rgb, outside, factor = _gamut_fit(lightness, chroma)
    if factor is not None:
        light = lightness.permute(1, 0, 2, 3)[:, outside].reshape(1, 1, -1, 1)
        ab = chroma.permute(1, 0, 2, 3)[:, outside].reshape(1, 2, -1, 1) * factor.view(1, 1, -1, 1)
        rgb.permute(1, 0, 2, 3)[:, outside] = _lab_rgb(light, ab).reshape(3, -1)
    return rgb.clamp_(0.0, 1.0)


def _finite(chroma: torch.Tensor) -> torch.Tensor:
    """Float chroma with NaN/inf (a diverged model's) as gray: the pixel keeps its L*."""
    return torch.nan_to_num(chroma.float(), nan=0.0, posinf=0.0, neginf=0.0)


def _lab_rgb(lightness: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Unclipped sRGB of scaled Lab."""
    lab = torch.cat([(lightness + 1.0) * L_SCALE, chroma * AB_SCALE], dim=1)
    return lab_to_rgb(lab, clip=False)


def _inside(rgb: torch.Tensor) -> torch.Tensor:
    return ((rgb >= -GAMUT_TOLERANCE) & (rgb <= 1.0 + GAMUT_TOLERANCE)).all(dim=1)


def _gamut_fit(lightness: torch.Tensor, chroma: torch.Tensor):
    """(unclipped sRGB (B, 3, H, W), out-of-gamut mask (B, H, W), chroma factor per
    outside pixel (N,) or None when all are inside), the factor found by bisection on the
    outside pixels only, as (1, C, N, 1) columns (kornia wants images)."""
    rgb = _lab_rgb(lightness, chroma)
    outside = ~_inside(rgb)
    if not bool(outside.any()):
        return rgb, outside, None
    light = lightness.permute(1, 0, 2, 3)[:, outside].reshape(1, 1, -1, 1)
    ab = chroma.permute(1, 0, 2, 3)[:, outside].reshape(1, 2, -1, 1)
    low, high = torch.zeros_like(light), torch.ones_like(light)
    for _ in range(GAMUT_STEPS):
        mid = (low + high) / 2
        fits = _inside(_lab_rgb(light, ab * mid)).unsqueeze(1)
        low, high = torch.where(fits, mid, low), torch.where(fits, high, mid)
    return rgb, outside, low.flatten()
