"""The colour space, defined once: CIE Lab, scaled to [-1, 1].

The generator sees lightness L and predicts chroma (a, b); the discriminator sees
(L, a, b). Lightness comes from PIL's grayscale of the photo (what a black-and-white
photo holds), read as a gray sRGB value and converted to L*. Chroma comes from the
colour photo. sRGB <-> Lab is kornia's (D65 white, exact sRGB transfer curve), so it
runs the same on CPU loader workers and on the GPU.

Shapes: rgb (B, 3, H, W) in [0, 1]; L (B, 1, H, W) and ab (B, 2, H, W) in [-1, 1].
"""

from __future__ import annotations

import torch
from kornia.color import lab_to_rgb, rgb_to_lab

L_SCALE = 50.0
"""L* in [0, 100] -> L / 50 - 1 in [-1, 1]."""
AB_SCALE = 110.0
"""sRGB colours have a*, b* within about [-108, 98]; /110 keeps them inside tanh's range."""


def rgb_to_chroma(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> (B, 2, H, W) scaled a*, b*."""
    return rgb_to_lab(rgb)[:, 1:] / AB_SCALE


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
    return gray_to_lightness(uint8_to_unit(gray)), rgb_to_chroma(uint8_to_unit(rgb))
