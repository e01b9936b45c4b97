"""Networks: U-Net generator and PatchGAN discriminator, built from config."""

from distcolor.models.build import build_models, count_parameters, init_seed
from distcolor.models.layers import InputSizeError, PenalizedTanh
from distcolor.models.patchgan import PatchDiscriminator
from distcolor.models.unet import UNetGenerator

__all__ = [
    "InputSizeError",
    "PatchDiscriminator",
    "PenalizedTanh",
    "UNetGenerator",
    "build_models",
    "count_parameters",
    "init_seed",
]
