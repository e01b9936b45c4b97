"""Training: the loop, the GAN step and what they are built from."""
