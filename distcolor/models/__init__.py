"""Networks: U-Net generator and PatchGAN discriminator."""

from distcolor.models.patchgan import PatchDiscriminator
from distcolor.models.unet import UNetGenerator

__all__ = ["PatchDiscriminator", "UNetGenerator"]
