"""GAN losses as pure tensor functions, reduced in float32 whatever the autocast dtype.

LSGAN (the original project's MSE adversarial loss): D pushes scores of real pairs
towards 1 and of generated pairs towards 0; G pushes its pairs' scores towards 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lsgan_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """Discriminator loss: 0.5 * (MSE(real, 1) + MSE(fake, 0)), halved as in pix2pix."""
    real = F.mse_loss(real_scores.float(), torch.ones_like(real_scores, dtype=torch.float32))
    fake = F.mse_loss(fake_scores.float(), torch.zeros_like(fake_scores, dtype=torch.float32))
    return {"total": 0.5 * (real + fake), "real": real, "fake": fake}


def lsgan_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator's adversarial loss: MSE(D(fake), 1)."""
    return F.mse_loss(fake_scores.float(), torch.ones_like(fake_scores, dtype=torch.float32))


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute chroma error."""
    return F.l1_loss(prediction.float(), target.float())
