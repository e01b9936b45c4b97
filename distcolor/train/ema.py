"""Exponential moving average of the generator's weights (StyleGAN2-ADA's G_ema).

The average often colours better than the live generator, whose weights jitter with every
adversarial update. Samples and evaluation use it when `train.ema_half_life` is set.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class GeneratorEMA:
    """An eval-mode copy of the generator whose weights follow the live ones.

    After each step: w_ema <- beta * w_ema + (1 - beta) * w, with beta = 0.5 ** (images in
    the step / half-life in images), the half-life capped at `rampup` x images seen so far
    (StyleGAN2-ADA's formula). Buffers (batch-norm statistics) are copied, not averaged:
    the average is evaluated with the live generator's running statistics, which were
    measured with the live weights. StyleGAN2's generator has no batch norm; with pix2pix's
    it is an approximation that the held-out scores in benchmarks/RESULTS.md show to help.
    """

    def __init__(self, generator: nn.Module, *, half_life: float, rampup: float | None) -> None:
        self.module = copy.deepcopy(generator).float().eval().requires_grad_(False)
        self.half_life, self.rampup = half_life, rampup

    def beta(self, *, images_seen: int, step_images: int) -> float:
        """Weight kept by the average in a step of `step_images` after `images_seen`."""
        half_life = self.half_life
        if self.rampup is not None:
            half_life = min(half_life, images_seen * self.rampup)
        return 0.5 ** (step_images / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, generator: nn.Module, *, images_seen: int, step_images: int) -> None:
        """Fold the live weights in; `images_seen` counts the images before this step."""
        beta = self.beta(images_seen=images_seen, step_images=step_images)
        averaged = list(self.module.parameters())
        # float32 whatever the live copy's dtype (DeepSpeed trains bf16/fp16 modules)
        pairs = zip(generator.parameters(), averaged, strict=True)
        live = [p.detach().to(a.dtype) for p, a in pairs]
        torch._foreach_lerp_(averaged, live, 1.0 - beta)
        for mine, theirs in zip(self.module.buffers(), generator.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
