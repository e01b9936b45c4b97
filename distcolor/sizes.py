"""Input size rules of the networks, in plain arithmetic (no torch), so the config can check
them before anything is built."""

from __future__ import annotations


def unet_multiple(depth: int) -> int:
    """A `depth`-level U-Net halves both sides `depth` times: they must divide by this."""
    return 2**depth


def patch_output_size(size: int, layers: int) -> int:
    """Side of a `layers`-layer PatchGAN's score grid for a `size`-pixel input.

    All convs are 4x4 with padding 1: `layers` of stride 2, then 2 of stride 1."""
    for _ in range(layers):
        size = (size + 2 - 4) // 2 + 1
    for _ in range(2):
        size = size + 2 - 4 + 1
    return size


def smallest_patchgan_input(layers: int) -> int:
    """The smallest side a `layers`-layer PatchGAN can score."""
    size = 1
    while patch_output_size(size, layers) < 1:
        size += 1
    return size
