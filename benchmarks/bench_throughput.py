"""Throughput of the data loader alone and of full training steps, on the default config.

    python benchmarks/bench_throughput.py [--quick] [--steps N]

Prints one JSON object as its last line: loader images/s with 0 and N workers, and
training images/s (D + G step) with the real loader feeding it. Builds the default
synthetic shards first if they are missing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import torch

from distcolor.backends.ddp import ddp_step
from distcolor.backends.distributed import build_accelerator
from distcolor.color import lab_inputs
from distcolor.config import load_config
from distcolor.data.batching import recycle_batches
from distcolor.data.catalog import shard_list
from distcolor.data.loader import build_train_loader
from distcolor.data.shards import ensure_shards
from distcolor.models import build_models
from distcolor.train.precision import Precision, resolve_precision

ROOT = Path(__file__).resolve().parents[1]


def default_loader(shards, cfg, workers: int):
    data = cfg.data.model_copy(update={"num_workers": workers})
    return build_train_loader(shards, data, seed=0, rank=0, world_size=1)


def loader_rate(shards, cfg, workers: int, batches: int) -> float:
    it = recycle_batches(default_loader(shards, cfg, workers))
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in itertools.islice(it, batches):
        pass
    return batches * cfg.data.batch_size / (time.perf_counter() - start)


def train_rate(shards, cfg, steps: int) -> float:
    accelerator = build_accelerator(cfg)
    g, d = build_models(cfg.model, seed=0)
    precision = Precision(resolve_precision(cfg.train.mixed_precision), accelerator.device)
    step = ddp_step(cfg, accelerator, g, d, precision)
    it = recycle_batches(default_loader(shards, cfg, cfg.data.num_workers))
    device = accelerator.device
    for _ in range(3):  # warm-up
        step([lab_inputs(next(it), device)])
    start = time.perf_counter()
    for _ in range(steps):
        step([lab_inputs(next(it), device)])
    return steps * cfg.data.batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="under a minute")
    p.add_argument("--steps", type=int, default=100)
    a = p.parse_args()
    cfg = load_config(ROOT / "configs/default.yaml", [f"data.shards={ROOT / 'shards/default'}"])
    manifest = ensure_shards(Path(cfg.data.shards), cfg.data.synthetic)
    shards = shard_list(Path(cfg.data.shards), manifest, "train")
    batches = 20 if a.quick else 150
    steps = 15 if a.quick else a.steps
    result = {
        "benchmark": "throughput",
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "batch_size": cfg.data.batch_size,
        "image_size": cfg.data.image_size,
        "loader_images_per_s_0_workers": round(loader_rate(shards, cfg, 0, batches), 1),
        f"loader_images_per_s_{cfg.data.num_workers}_workers": round(
            loader_rate(shards, cfg, cfg.data.num_workers, batches), 1
        ),
        "train_images_per_s": round(train_rate(shards, cfg, steps), 1),
        "train_steps": steps,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
