"""Building blocks shared by the generator and the discriminator."""

from __future__ import annotations

import torch
from torch import nn

from distcolor.errors import UserError

NORMS = ("batch", "instance", "none")
ACTIVATIONS = ("relu", "leaky_relu", "penalized_tanh")


class InputSizeError(UserError, ValueError):
    """An input the network cannot take (sides not divisible, too small): one clear line."""


class PenalizedTanh(nn.Module):
    """tanh(x) for x > 0, a * tanh(x) otherwise (Xu, Huang & Li 2016, "Revise saturated
    activation functions"); the gradient is (1 - tanh(x)^2), scaled by a on the negative side.
    """

    def __init__(self, a: float = 0.25) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(x)
        return torch.where(x > 0, t, self.a * t)

    def extra_repr(self) -> str:
        return f"a={self.a}"


def make_activation(
    kind: str, *, leaky_slope: float = 0.2, tanh_penalty: float = 0.25
) -> nn.Module:
    """Hidden-layer activation by name. ReLU and LeakyReLU work in place: they always follow
    a freshly computed tensor (a norm, a conv or a concatenation) that nothing else reads."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(leaky_slope, inplace=True)
    if kind == "penalized_tanh":
        return PenalizedTanh(tanh_penalty)
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer by name; 'instance' has no affine weights, as in pix2pix."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def conv_bias(norm: str) -> bool:
    """Batch norm's shift makes a conv bias redundant (pix2pix drops it); other norms keep it."""
    return norm != "batch"


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """pix2pix initialisation: conv weights ~ N(0, std), norm scales ~ N(1, std), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
