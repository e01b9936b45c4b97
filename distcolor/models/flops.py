"""Model FLOPs of a training step, for throughput in FLOP/s and model FLOP utilisation.

Counted with PyTorch's `FlopCounterMode` on the meta device: the real networks and the
real objective run shape-only, so any config is counted in milliseconds and without
memory. Convolutions (forward and backward) are counted; norms, activations and the
optimizer update are elementwise and left out, as is usual for MFU.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from distcolor.config import Config
from distcolor.models import build_models
from distcolor.train.losses import GANObjective

# Dense bf16/fp16 tensor-core peak per GPU (vendor data sheets), by a name fragment; the
# first fragment found in the device name wins, so longer names come before their prefixes.
_PEAK_FLOPS = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.5e12),
    ("H100", 989.4e12),  # SXM / HBM3
    ("A100", 312.0e12),
    ("L40S", 362.1e12),
    ("L40", 181.0e12),
    ("L4", 121.0e12),
    ("A10G", 70.0e12),
    ("V100", 125.0e12),
)


def step_flops(cfg: Config, *, batch_size: int = 1, image_size: int | None = None) -> dict:
    """FLOPs of one D + G step on `batch_size` images, and of one generator forward."""
    side = image_size or cfg.data.image_size
    with torch.device("meta"):
        generator, discriminator = build_models(cfg.model, seed=0)
        lightness = torch.zeros(batch_size, cfg.model.generator.in_channels, side, side)
        chroma = torch.zeros(batch_size, cfg.model.generator.out_channels, side, side)
    objective = GANObjective(gan_loss=cfg.train.gan_loss, l1_weight=cfg.train.l1_weight)
    with FlopCounterMode(display=False) as counter:
        fake = generator(lightness)
        objective.discriminator(discriminator, lightness, chroma, fake)["total"].backward()
        discriminator.requires_grad_(False)
        objective.generator(discriminator, lightness, chroma, fake)["total"].backward()
    train = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generator(lightness)
    return {
        "train_flops_per_step": train,
        "train_flops_per_image": train / batch_size,
        "generator_forward_flops_per_image": counter.get_total_flops() / batch_size,
    }


def peak_flops(device: torch.device, mixed_precision: str, override: float | None) -> float | None:
    """Peak FLOP/s of one device for MFU: `override`, else the data-sheet bf16/fp16 figure
    of a known GPU; None on CPU or in float32 (TF32 or not depends on backend flags)."""
    if override is not None:
        return override
    if device.type != "cuda" or mixed_precision == "no":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in _PEAK_FLOPS if part in name), None)
