"""distcolor: GAN image colorization (U-Net generator + PatchGAN discriminator),
from one laptop to a GPU cluster."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `distcolor.colorize(image, checkpoint=...)` for notebooks, imported on first use so
    # `import distcolor` stays light (no torch) for the scripts that only parse arguments.
    if name in ("colorize", "Colorizer"):
        from distcolor.infer import colorizer as inference

        return getattr(inference, name)
    if name == "colorize_video":
        from distcolor.infer import video

        return video.colorize_video
    raise AttributeError(f"module 'distcolor' has no attribute {name!r}")
