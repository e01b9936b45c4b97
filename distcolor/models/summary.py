"""What a config will train: each network block by block, parameter counts and FLOPs.

Everything runs on the meta device (shapes only), so the paper's 57M-parameter pair is
summarised in about a second without allocating its weights.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distcolor.config import Config
from distcolor.models import PenalizedTanh, build_models, count_parameters
from distcolor.models.flops import step_flops


def _layer_text(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        kind = "convT" if isinstance(module, nn.ConvTranspose2d) else "conv"
        k, s = module.kernel_size[0], module.stride[0]
        bias = "" if module.bias is not None else " no-bias"
        return f"{kind} {module.in_channels}->{module.out_channels} {k}x{k}/{s}{bias}"
    if isinstance(module, nn.BatchNorm2d | nn.InstanceNorm2d):
        return type(module).__name__.removesuffix("2d").lower().replace("norm", " norm")
    if isinstance(module, nn.LeakyReLU):
        return f"leaky_relu({module.negative_slope})"
    if isinstance(module, nn.Dropout):
        return f"dropout({module.p})"
    if isinstance(module, PenalizedTanh):
        return f"penalized_tanh({module.a})"
    return type(module).__name__.lower()


def _blocks(network: nn.Module) -> list[tuple[str, nn.Sequential]]:
    """(name, block): the U-Net's down/up blocks, or the PatchGAN's conv stages."""
    if hasattr(network, "down"):
        return [(f"down.{k}", b) for k, b in enumerate(network.down)] + [
            (f"up.{k}", b) for k, b in reversed(list(enumerate(network.up)))
        ]
    stages, current = [], []
    for layer in network.net:
        if isinstance(layer, nn.Conv2d) and current:
            stages.append(current)
            current = []
        current.append(layer)
    stages.append(current)
    return [(f"net.{i}", nn.Sequential(*layers)) for i, layers in enumerate(stages)]


def network_rows(network: nn.Module, example: torch.Tensor) -> list[dict]:
    """One row per block: its layers, output shape, parameters and forward FLOPs per image."""
    blocks = _blocks(network)
    shapes: dict[str, tuple] = {}
    handles = [
        block[-1].register_forward_hook(
            lambda _m, _inp, out, key=name: shapes.__setitem__(key, tuple(out.shape[1:]))
        )
        for name, block in blocks
    ]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(example)
    for handle in handles:
        handle.remove()
    # FlopCounterMode keys modules by "<class>.<path>"; sum each block's layers.
    counts = counter.get_flop_counts()
    path = {id(m): f"{type(network).__name__}.{n}" for n, m in network.named_modules()}
    rows = []
    for name, block in blocks:
        flops = sum(sum(counts.get(path[id(layer)], {}).values()) for layer in block)
        rows.append(
            {
                "block": name,
                "layers": ", ".join(_layer_text(m) for m in block),
                "output": shapes.get(name),
                "params": count_parameters(block),
                "flops": flops / example.shape[0],
            }
        )
    return rows


def summarise(cfg: Config) -> dict:
    """Rows of both networks and the facts a user checks before launching a run."""
    side = cfg.data.image_size
    with torch.device("meta"):
        generator, discriminator = build_models(cfg.model, seed=0)
        gray = torch.zeros(1, cfg.model.generator.in_channels, side, side)
        pairs = torch.zeros(1, cfg.model.discriminator.in_channels, side, side)
    generator.eval(), discriminator.eval()
    flops = step_flops(cfg, batch_size=cfg.data.batch_size)
    return {
        "generator_rows": network_rows(generator, gray),
        "discriminator_rows": network_rows(discriminator, pairs),
        "facts": {
            "generator_params": count_parameters(generator),
            "discriminator_params": count_parameters(discriminator),
            "image_size": side,
            "batch_size": cfg.data.batch_size,
            **flops,
        },
    }


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console(width=None if Console().is_terminal else 120)
    for title, key in (
        ("Generator (U-Net)", "generator_rows"),
        ("Discriminator", "discriminator_rows"),
    ):
        table = Table(title=title, title_justify="left")
        for column in ("block", "layers", "output", "params", "GFLOP fwd/img"):
            table.add_column(
                column, justify="right" if column in ("params", "GFLOP fwd/img") else "left"
            )
        for row in summary[key]:
            shape = "x".join(str(n) for n in row["output"]) if row["output"] else ""
            table.add_row(
                row["block"],
                row["layers"],
                shape,
                f"{row['params']:,}",
                f"{row['flops'] / 1e9:.3f}",
            )
        total = sum(r["params"] for r in summary[key])
        table.add_row(
            "total", "", "", f"{total:,}", f"{sum(r['flops'] for r in summary[key]) / 1e9:.3f}"
        )
        console.print(table)
    f = summary["facts"]
    console.print(
        f"trainable parameters: generator {f['generator_params']:,}, "
        f"discriminator {f['discriminator_params']:,}\n"
        f"training FLOPs per image at {f['image_size']} px (D step + G step, forward and "
        f"backward): {f['train_flops_per_image'] / 1e9:.2f} G; per step of "
        f"{f['batch_size']}: {f['train_flops_per_step'] / 1e12:.3f} T",
        highlight=False,
    )
