"""distcolor: GAN image colorization (U-Net generator + PatchGAN discriminator),
from one laptop to a GPU cluster."""

__version__ = "0.1.0"
