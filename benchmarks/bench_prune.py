"""Cost of lottery-ticket pruning on the paper generator: one global round, and the
per-step cost of enforcing the masks.

    python benchmarks/bench_prune.py [--quick] [--config FILE] [--batch N] [key=value ...]

1. Rounds: the generator's masks for rounds 1..R at 20% (threshold + masks, i.e.
   `compute_global_masks`), timed on --round-threads threads (default 1: the target is
   "under 2 s on one CPU core").
2. Enforcement: the trainer's step (`GANStep`, D and G updates) at the config's image
   size and --batch, with the generator pruned to 1 - 0.8**R; the masks' work per step
   (gradients and weights multiplied by the 0/1 masks) is timed on its own and divided by
   the step's median time -> mask_overhead_fraction. Steps with and without masks are
   also timed, alternating, as a cross-check (their ratio is noisier than the fraction).
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from distcolor.backends.ddp import ddp_step
from distcolor.backends.distributed import build_accelerator
from distcolor.cli.common import DEFAULT_CONFIG, add_config_arguments, config_from_args
from distcolor.errors import run_main
from distcolor.models import build_models
from distcolor.prune.masks import Masks, alive_after, compute_global_masks, prunable_weights
from distcolor.train.precision import Precision, resolve_precision

PAPER = DEFAULT_CONFIG.parent / "paper.yaml"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(generator: torch.nn.Module, rounds: int, threads: int) -> tuple[Masks, list]:
    """Prune `rounds` rounds at 20%; returns the masks and each round's seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    masks = Masks(prunable_weights(generator))
    total, seconds = masks.total(), []
    for r in range(1, rounds + 1):
        start = time.perf_counter()
        keep, _ = compute_global_masks(
            masks.weights, masks.keep, alive_after_round=alive_after(total, rate=0.2, rounds=r)
        )
        seconds.append(time.perf_counter() - start)
        masks.set(keep)
        masks.zero_weights()
    torch.set_num_threads(before)
    return masks, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(p)
    p.set_defaults(config=PAPER)
    p.add_argument(
        "--batch", type=int, help="images per step (default: data.batch_size; --quick: 4)"
    )
    p.add_argument("--rounds", type=int, help="pruning rounds (default 5; --quick: 3)")
    p.add_argument("--round-threads", type=int, default=1, help="threads for the rounds")
    p.add_argument("--repeats", type=int, help="timed steps each way (default 4; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="under a minute on 2 CPU cores")
    a = p.parse_args()
    cfg = config_from_args(a)
    batch = a.batch or (4 if a.quick else cfg.data.batch_size)
    rounds = a.rounds or (3 if a.quick else 5)
    repeats = a.repeats or (2 if a.quick else 4)

    accelerator = build_accelerator(cfg)
    device = accelerator.device
    mode = resolve_precision(cfg.train.mixed_precision) if device.type == "cuda" else "no"
    generator, discriminator = build_models(cfg.model, seed=0)
    generator.to(device)
    masks, round_s = time_rounds(generator, rounds, a.round_threads)

    step = ddp_step(cfg, accelerator, generator, discriminator, Precision(mode, device))
    side = cfg.data.image_size
    torch.manual_seed(0)
    lightness = torch.rand(batch, 1, side, side, device=device) * 2 - 1
    chroma = (torch.rand(batch, 2, side, side, device=device) - 0.5) * 0.6
    step([(lightness, chroma)])  # warm-up
    timed = {"masked": [], "plain": []}
    for _ in range(repeats):  # alternating, so drift on a shared machine hits both
        for kind in ("masked", "plain"):
            step.update_g.masks = masks if kind == "masked" else None
            sync(device)
            start = time.perf_counter()
            step([(lightness, chroma)])
            sync(device)
            timed[kind].append(time.perf_counter() - start)
    # The enforcement alone, as the step runs it: gradients before, weights after.
    for w in masks.weights.values():
        w.grad = torch.randn_like(w)
    enforce = []
    for _ in range(max(5, repeats)):
        sync(device)
        start = time.perf_counter()
        masks.zero_grads()
        masks.enforce_weights()
        sync(device)
        enforce.append(time.perf_counter() - start)
    step_s = statistics.median(timed["masked"] + timed["plain"])
    enforce_s = statistics.median(enforce)
    result = {
        "benchmark": "prune",
        "device": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads for steps)"
        ),
        "prunable_weights": masks.total(),
        "generator_width": cfg.model.generator.width,
        "generator_depth": cfg.model.generator.depth,
        "round_threads": a.round_threads,
        "rounds": rounds,
        "round_s": [round(s, 3) for s in round_s],
        "prune_round_s": round(statistics.median(round_s), 3),
        "prune_round_s_max": round(max(round_s), 3),
        "sparsity": round(1 - masks.alive() / masks.total(), 4),
        "image_size": side,
        "batch_size": batch,
        "mixed_precision": mode,
        "step_s": round(step_s, 6),
        "mask_enforce_s": round(enforce_s, 7),
        "mask_overhead_fraction": round(enforce_s / step_s, 6),
        "step_masked_s": round(statistics.median(timed["masked"]), 4),
        "step_plain_s": round(statistics.median(timed["plain"]), 4),
        "step_ratio_masked_vs_plain": round(
            statistics.median(timed["masked"]) / statistics.median(timed["plain"]), 4
        ),
        "repeats": repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
