"""Optimizers for the two networks."""

from __future__ import annotations

import torch
from torch import nn

from distcolor.config import TrainConfig


def build_optimizers(
    generator: nn.Module, discriminator: nn.Module, *, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for G and D with pix2pix's betas (0.5, 0.999): a low beta1 keeps GAN updates
    responsive."""
    betas = (cfg.betas[0], cfg.betas[1])
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=betas)
    return opt_g, opt_d
