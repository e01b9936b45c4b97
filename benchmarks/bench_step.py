"""Time one full GAN training step (D step + G step, forward and backward) on this device.

    python benchmarks/bench_step.py [--quick] [--config FILE] [--batch N] [key=value ...]
    python benchmarks/bench_step.py --config configs/paper.yaml --batch 32   # on a GPU
    python benchmarks/bench_step.py --config configs/paper.yaml --batch 16,32,64,128,256

Several batch sizes (a ladder) reuse the networks and optimizers, go up in order and stop
at the first that runs out of memory; the last line then holds every rung under `runs`
and the fastest under `best`. With train.compile the compiled graphs are dropped between
rungs (each size compiles once, static).

Random (L, ab) batches already on the device, so the model alone is measured; the step is
the trainer's own (`GANStep`: DDP wrappers, the config's mixed precision, loss scalers).
After warm-up, each step is timed on its own (with a device sync) and the median is kept.
Prints one JSON object as its last line: images_per_s, flops_per_s (model FLOPs from
`distcolor.models.flops`), mfu where the device's peak is known, and the device.
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
from distcolor.cli.common import add_config_arguments, config_from_args
from distcolor.errors import run_main
from distcolor.models import build_models
from distcolor.models.flops import peak_flops, step_flops
from distcolor.train.precision import Precision, resolve_precision


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step, cfg, precision, device, batch: int, warmup: int, repeats: int) -> dict:
    """Median time of `repeats` steps on one random batch of `batch` images, after `warmup`."""
    side = cfg.data.image_size
    torch.manual_seed(0)
    lightness = torch.rand(batch, 1, side, side, device=device) * 2 - 1
    chroma = (torch.rand(batch, 2, side, side, device=device) - 0.5) * 0.6

    for _ in range(warmup):
        step([(lightness, chroma)])
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step([(lightness, chroma)])
        sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    flops = step_flops(cfg, batch_size=batch)["train_flops_per_step"]
    peak = peak_flops(device, precision.mode, cfg.train.peak_flops)
    return {
        "benchmark": "step",
        "device": device_name(device),
        "mixed_precision": precision.mode,
        "channels_last": cfg.model.channels_last,
        "compile": cfg.train.compile,
        "image_size": side,
        "batch_size": batch,
        "generator_width": cfg.model.generator.width,
        "generator_depth": cfg.model.generator.depth,
        "step_ms_median": round(seconds * 1e3, 2),
        "step_ms_min": round(min(times) * 1e3, 2),
        "images_per_s": round(batch / seconds, 2),
        "flops_per_step": flops,
        "flops_per_s": flops / seconds,
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "peak_memory_gib": (
            round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if device.type == "cuda"
            else None
        ),
        "repeats": repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(p)
    p.add_argument(
        "--batch", help="images per step, or a comma list for a ladder (default: data.batch_size)"
    )
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5; --quick: 2)")
    p.add_argument("--repeats", type=int, help="timed steps (default 20; --quick: 5)")
    p.add_argument("--quick", action="store_true", help="under a minute on 2 CPU cores")
    a = p.parse_args()
    cfg = config_from_args(a)
    batches = [int(b) for b in a.batch.split(",")] if a.batch else [cfg.data.batch_size]
    warmup = a.warmup if a.warmup is not None else (2 if a.quick else 5)
    repeats = a.repeats if a.repeats is not None else (5 if a.quick else 20)

    accelerator = build_accelerator(cfg)
    device = accelerator.device
    generator, discriminator = build_models(cfg.model, seed=0)
    precision = Precision(resolve_precision(cfg.train.mixed_precision), device)
    step = ddp_step(cfg, accelerator, generator, discriminator, precision)
    runs = []
    for batch in batches:
        try:
            runs.append(time_step(step, cfg, precision, device, batch, warmup, repeats))
        except RuntimeError as err:  # OutOfMemoryError, or cuDNN's own allocation failure
            if "out of memory" not in str(err).lower() and "alloc" not in str(err).lower():
                raise
            runs.append({"batch_size": batch, "error": "out of memory"})
            break
        finally:
            step.update_g.optimizer.zero_grad(set_to_none=True)
            step.update_d.optimizer.zero_grad(set_to_none=True)
            if cfg.train.compile:
                torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if len(batches) > 1:
            print(json.dumps(runs[-1]), flush=True)
    timed = [r for r in runs if "images_per_s" in r]
    if len(batches) == 1:
        result = runs[0]
    else:
        best = max(timed, key=lambda r: r["images_per_s"]) if timed else None
        result = {"benchmark": "step_ladder", "runs": runs, "best": best}
    print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
