"""Held-out metrics, summed over every rank's share of the test split."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from distcolor.color import lab_inputs


@torch.no_grad()
def held_out_l1(generator: nn.Module, loader: DataLoader, accelerator: Accelerator) -> dict:
    """Mean L1 of the generator's chroma vs the truth, and of predicting no colour (ab = 0).

    The gap between the two is the colour the model has learned; both are in scaled
    chroma units (|a|, |b| / 110) averaged over pixels and images.
    """
    was_training = generator.training
    generator.eval()
    device = accelerator.device
    # (sum |pred - true|, sum |true|, pixels, images) on this rank
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for batch in loader:
        lightness, chroma = lab_inputs(batch, device)
        prediction = generator(lightness).float()
        totals[0] += (prediction - chroma).abs().sum().double()
        totals[1] += chroma.abs().sum().double()
        totals[2] += chroma.numel()
        totals[3] += chroma.shape[0]
    generator.train(was_training)
    totals = accelerator.reduce(totals, reduction="sum")
    pixels = max(totals[2].item(), 1.0)
    return {
        "l1_model": totals[0].item() / pixels,
        "l1_no_colour": totals[1].item() / pixels,
        "images": int(totals[3].item()),
    }
