"""U-Net generator (pix2pix layout): lightness (B, 1, H, W) -> chroma (B, 2, H, W) in [-1, 1].

Encoder block k halves the resolution to width * min(2**k, 8) channels; decoder block k
takes [skip from encoder k, output of decoder k+1] and doubles the resolution back.

    down[k]: conv 4x4/2 -> norm (not k = 0, not the innermost) -> activation (not innermost)
    up[k]:   activation -> transposed conv 4x4/2 -> norm -> dropout (inner wide blocks)
    up[0]:   activation -> transposed conv 4x4/2 -> tanh

The skip carries the *activated* encoder features. pix2pix gets the same effect from an
in-place LeakyReLU on the tensor it later concatenates; here it is explicit, so it does
not depend on which activation happens to work in place.
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
from distcolor.sizes import unet_multiple

# pix2pix puts dropout in the decoder blocks between the 8x-wide ones (k >= 4) and the innermost.
_FIRST_DROPOUT_BLOCK = 4


class UNetGenerator(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 2,
        width: int = 64,
        depth: int = 8,
        norm: str = "batch",
        dropout: float = 0.5,
        down_activation: str = "leaky_relu",
        up_activation: str = "relu",
        leaky_slope: float = 0.2,
        tanh_penalty: float = 0.25,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"U-Net depth must be at least 2 (got {depth})")
        self.depth = depth
        bias = conv_bias(norm)
        chans = [width * min(2**k, 8) for k in range(depth)]

        def act(kind: str) -> nn.Module:
            return make_activation(kind, leaky_slope=leaky_slope, tanh_penalty=tanh_penalty)

        self.down = nn.ModuleList()
        for k in range(depth):
            innermost = k == depth - 1
            c_in = in_channels if k == 0 else chans[k - 1]
            # The outermost block sees the image (no norm); the innermost output is 1x1 at
            # 2**depth px, where a norm has nothing to normalise over. Like pix2pix, these
            # two convs still go without a bias under batch norm (the paper's count has none).
            layers: list[nn.Module] = [nn.Conv2d(c_in, chans[k], 4, stride=2, padding=1, bias=bias)]
            if 0 < k < depth - 1:
                layers.append(make_norm(norm, chans[k]))
            if not innermost:
                layers.append(act(down_activation))
            self.down.append(nn.Sequential(*layers))

        self.up = nn.ModuleList()
        for k in range(depth):
            innermost, outermost = k == depth - 1, k == 0
            c_in = chans[k] if innermost else 2 * chans[k]
            c_out = out_channels if outermost else chans[k - 1]
            layers = [
                act(up_activation),
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=outermost or bias),
            ]
            if outermost:
                layers.append(nn.Tanh())
            else:
                layers.append(make_norm(norm, c_out))
                if dropout > 0 and _FIRST_DROPOUT_BLOCK <= k < depth - 1:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        init_weights(self, init_std)

    @property
    def edge_layers(self) -> tuple[str, str]:
        """Names of the first and last layer in forward order (the last is registered
        early, as up[0]: registration order would say otherwise)."""
        return "down.0.0", "up.0.1"

    @property
    def size_multiple(self) -> int:
        return unet_multiple(self.depth)

    def check_input(self, height: int, width: int) -> None:
        """Raise InputSizeError unless every down-sampling halves both sides exactly."""
        if height % self.size_multiple or width % self.size_multiple:
            raise InputSizeError(
                f"generator input is {height}x{width} px; both sides must be divisible by "
                f"2**depth = {self.size_multiple} ({self.depth} down-samplings)"
            )

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        self.check_input(*lightness.shape[-2:])
        skips = []
        x = lightness
        for block in self.down:
            x = block(x)
            skips.append(x)  # skips[k]: (B, chans[k], H / 2**(k+1), W / 2**(k+1))
        x = self.up[-1](skips[-1])
        for k in range(self.depth - 2, -1, -1):
            x = self.up[k](torch.cat([skips[k], x], dim=1))
        return x  # (B, out_channels, H, W)
