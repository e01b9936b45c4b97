"""Building blocks shared by the generator and the discriminator."""

from __future__ import annotations

from torch import nn

NORMS = ("batch", "instance", "none")


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
