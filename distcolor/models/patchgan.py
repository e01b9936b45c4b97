"""PatchGAN discriminator (pix2pix NLayerDiscriminator): (L, a, b) -> a grid of real/fake scores.

With `layers=3` each output score sees a 70x70 patch of the input.

    conv 4x4/2 -> activation
    `layers` x: conv 4x4 (stride 2, the last stride 1) -> norm -> activation
    conv 4x4/1 -> one raw score per patch
"""

from __future__ import annotations

import torch
from torch import nn

from distcolor.models.layers import (
    InputSizeError,
    conv_bias,
    init_weights,
    make_activation,
    make_norm,
)
from distcolor.sizes import smallest_patchgan_input


class PatchDiscriminator(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int = 3,
        width: int = 64,
        layers: int = 3,
        norm: str = "batch",
        activation: str = "leaky_relu",
        leaky_slope: float = 0.2,
        tanh_penalty: float = 0.25,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        bias = conv_bias(norm)

        def act() -> nn.Module:
            return make_activation(activation, leaky_slope=leaky_slope, tanh_penalty=tanh_penalty)

        seq: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), act()]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1  # the last wide layer keeps resolution
            seq += [
                nn.Conv2d(width * prev, width * mult, 4, stride=stride, padding=1, bias=bias),
                make_norm(norm, width * mult),
                act(),
            ]
        seq.append(nn.Conv2d(width * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)
        self.layers = layers
        self.min_size = smallest_patchgan_input(layers)
        init_weights(self, init_std)

    @property
    def edge_layers(self) -> tuple[str, str]:
        """Names of the first and last layer in forward order."""
        return "net.0", f"net.{len(self.net) - 1}"

    def forward(self, lab: torch.Tensor) -> torch.Tensor:
        h, w = lab.shape[-2:]
        if min(h, w) < self.min_size:
            raise InputSizeError(
                f"discriminator input is {h}x{w} px; a {self.layers}-layer PatchGAN needs at "
                f"least {self.min_size} px on each side"
            )
        return self.net(lab)  # (B, 1, h, w) raw scores, one per patch
