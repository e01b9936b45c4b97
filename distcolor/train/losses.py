"""GAN losses, reduced in float32 whatever the autocast dtype.

Two adversarial losses, selected by `train.gan_loss`:
- lsgan (Mao et al. 2017; the original project's MSE loss): D pushes scores of real pairs
  towards 1 and of generated pairs towards 0; G pushes its pairs' scores towards 1.
- vanilla (Goodfellow et al. 2014, non-saturating G loss, as pix2pix's "vanilla"): the same
  targets through binary cross-entropy on D's logits.
D's loss is halved, as pix2pix does, so D learns at half G's pace.

`GANObjective` holds everything a step computes from the networks' outputs; the trainer,
the FLOP counter and the benchmarks all use it, so they measure the same work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GAN_LOSSES = ("lsgan", "vanilla")


def _towards(scores: torch.Tensor, target: float, kind: str) -> torch.Tensor:
    """Mean loss of raw scores against a constant target (1 = real, 0 = fake), in float32."""
    scores = scores.float()
    wanted = torch.full_like(scores, target)
    if kind == "lsgan":
        return F.mse_loss(scores, wanted)
    if kind == "vanilla":
        return F.binary_cross_entropy_with_logits(scores, wanted)
    raise ValueError(f"unknown GAN loss {kind!r}; expected one of {GAN_LOSSES}")


def d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor, kind: str) -> dict:
    """Discriminator loss: 0.5 * (loss(real, 1) + loss(fake, 0)), with its two parts, and
    D's mean output on each (its score, or for vanilla its probability of "real")."""
    real = _towards(real_scores, 1.0, kind)
    fake = _towards(fake_scores, 0.0, kind)
    with torch.no_grad():
        out_real, out_fake = (
            (s.float().mean() if kind == "lsgan" else torch.sigmoid(s.float()).mean())
            for s in (real_scores, fake_scores)
        )
    return {
        "total": 0.5 * (real + fake),
        "real": real,
        "fake": fake,
        "out_real": out_real,
        "out_fake": out_fake,
    }


def g_adversarial_loss(fake_scores: torch.Tensor, kind: str) -> torch.Tensor:
    """Generator's adversarial loss: loss(D(fake), 1)."""
    return _towards(fake_scores, 1.0, kind)


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute chroma error."""
    return F.l1_loss(prediction.float(), target.float())


class GANObjective:
    """The discriminator's and generator's losses for a batch; D sees (L, ab) pairs."""

    def __init__(self, *, gan_loss: str = "lsgan", l1_weight: float = 100.0) -> None:
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"unknown GAN loss {gan_loss!r}; expected one of {GAN_LOSSES}")
        self.gan_loss, self.l1_weight = gan_loss, l1_weight

    def discriminator(
        self, D: nn.Module, lightness: torch.Tensor, chroma: torch.Tensor, fake: torch.Tensor
    ) -> dict:
        """Real pairs vs generated ones; `fake` is detached here, so no gradient reaches G."""
        real_scores = D(torch.cat([lightness, chroma], dim=1))
        fake_scores = D(torch.cat([lightness, fake.detach()], dim=1))
        return d_loss(real_scores, fake_scores, self.gan_loss)

    def generator(
        self, D: nn.Module, lightness: torch.Tensor, chroma: torch.Tensor, fake: torch.Tensor
    ) -> dict:
        """Fool D and stay near the true colours: adversarial + l1_weight * L1."""
        adversarial = g_adversarial_loss(D(torch.cat([lightness, fake], dim=1)), self.gan_loss)
        l1 = l1_loss(fake, chroma)
        return {"total": adversarial + self.l1_weight * l1, "adv": adversarial, "l1": l1}
