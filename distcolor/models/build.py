"""Networks from config, with initial weights that depend on the init seed alone."""

from __future__ import annotations

import torch

from distcolor.config import Config, ModelConfig
from distcolor.models.patchgan import PatchDiscriminator
from distcolor.models.unet import UNetGenerator


def count_parameters(module: torch.nn.Module) -> int:
    """Trainable parameters (the figure the original project reports)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def init_seed(cfg: Config) -> int:
    """The seed of the initial weights: model.init_seed, else run.seed."""
    return cfg.model.init_seed if cfg.model.init_seed is not None else cfg.run.seed


def build_generator(cfg: ModelConfig) -> UNetGenerator:
    g = cfg.generator
    return UNetGenerator(
        in_channels=g.in_channels,
        out_channels=g.out_channels,
        width=g.width,
        depth=g.depth,
        norm=g.norm,
        dropout=g.dropout,
        down_activation=g.down_activation,
        up_activation=g.up_activation,
        leaky_slope=cfg.leaky_slope,
        tanh_penalty=cfg.tanh_penalty,
        init_std=cfg.init_std,
    )


def build_discriminator(cfg: ModelConfig) -> PatchDiscriminator:
    d = cfg.discriminator
    return PatchDiscriminator(
        in_channels=d.in_channels,
        width=d.width,
        layers=d.layers,
        norm=d.norm,
        activation=d.activation,
        leaky_slope=cfg.leaky_slope,
        tanh_penalty=cfg.tanh_penalty,
        init_std=cfg.init_std,
    )


def build_models(cfg: ModelConfig, *, seed: int) -> tuple[UNetGenerator, PatchDiscriminator]:
    """Generator and discriminator, each initialised from its own seed derived from `seed`.

    Separate seeds keep G's initial weights the same when only D's config changes, and the
    global RNG is left as it was, so building (or rebuilding, to rewind a lottery ticket)
    never shifts the randomness of what follows.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 2)
        generator = build_generator(cfg)
        torch.manual_seed(seed * 2 + 1)
        discriminator = build_discriminator(cfg)
    if cfg.channels_last:
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
    return generator, discriminator
