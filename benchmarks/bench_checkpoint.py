"""Pause per checkpoint: a synchronous save against a host snapshot + background write.

    python benchmarks/bench_checkpoint.py [--quick] [--config FILE] [--batch N] [key=value ...]
    python benchmarks/bench_checkpoint.py                   # configs/paper.yaml
    python benchmarks/bench_checkpoint.py --quick           # configs/default.yaml, < 1 min

Builds what a trainer checkpoints for the config: G, D, both optimizers (after real steps,
so Adam's moments exist), G's average when train.ema_half_life is set and the pruning
rewind snapshots when `prune` is set, in the trainer's state layout. Then, into a scratch
folder beside the config's runs (run.out_dir, removed afterwards; the same disk as real
checkpoints), times:

  sync   `save_checkpoint` (torch.save, fsync, marker, rename, pruning): the whole pause
  async  `CheckpointWriter.save`: the pause is the snapshot to host memory only; the write
         runs on a thread (write_s of wall time, write_cpu_s of CPU time). Training steps
         run while it writes, then as many alone: the difference (median over the repeats)
         is what the write costs the steps beside it on this machine (its cores are
         shared), and pause + that cost is the async total to hold against the sync save.
         On a busy machine the step times, hence that difference, are noisy; write_cpu_s
         bounds the core time the write takes from training.

Fractions of training time at the config's train.ckpt_every: pause / (ckpt_every x step
time + pause), with the step time measured here and an assumed GPU step time
(--gpu-step-ms, default 30). On CPU the networks run in float32 (as bench_prune).
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distcolor.backends.ddp import ddp_step
from distcolor.backends.distributed import build_accelerator
from distcolor.checkpoint import STATE, checkpoint_path, save_checkpoint
from distcolor.cli.common import DEFAULT_CONFIG, add_config_arguments, config_from_args
from distcolor.data.loader import LoaderState
from distcolor.errors import run_main
from distcolor.models import build_models
from distcolor.prune.lottery import LotteryTicket
from distcolor.train.async_checkpoint import CheckpointWriter
from distcolor.train.checkpointing import code_version
from distcolor.train.ema import GeneratorEMA
from distcolor.train.precision import Precision, resolve_precision
from distcolor.train.resume import data_order

PAPER = DEFAULT_CONFIG.parent / "paper.yaml"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(p)
    p.set_defaults(config=None)
    p.add_argument("--batch", type=int, help="images per step (default: data.batch_size)")
    p.add_argument("--repeats", type=int, help="saves timed each way (default 3)")
    p.add_argument("--steps", type=int, help="timed training steps (default 2)")
    p.add_argument("--gpu-step-ms", type=float, default=30.0, help="assumed GPU step time")
    p.add_argument("--quick", action="store_true", help="default config; under a minute on 2 CPUs")
    a = p.parse_args()
    if a.config is None:
        a.config = DEFAULT_CONFIG if a.quick else PAPER
    cfg = config_from_args(a)
    tc = cfg.train
    batch = a.batch or cfg.data.batch_size
    repeats = a.repeats or 3
    steps = a.steps or 2

    accelerator = build_accelerator(cfg)
    device = accelerator.device
    mode = resolve_precision(tc.mixed_precision) if device.type == "cuda" else "no"
    generator, discriminator = build_models(cfg.model, seed=0)
    ema = None
    if tc.ema_half_life is not None:
        ema = GeneratorEMA(generator, half_life=tc.ema_half_life, rampup=tc.ema_rampup)
    step_fn = ddp_step(cfg, accelerator, generator, discriminator, Precision(mode, device))
    plain_g = accelerator.unwrap_model(step_fn.G)
    plain_d = accelerator.unwrap_model(step_fn.D)
    ticket = None
    if cfg.prune is not None:
        ticket = LotteryTicket(cfg.prune, generator=plain_g, discriminator=plain_d)
        step_fn.update_g.masks = ticket.masks["G"]
        step_fn.update_d.masks = ticket.masks.get("D")
        ticket.start()

    side = cfg.data.image_size
    torch.manual_seed(0)
    lightness = torch.rand(batch, 1, side, side, device=device) * 2 - 1
    chroma = (torch.rand(batch, 2, side, side, device=device) - 0.5) * 0.6

    def train_step() -> float:
        start = time.perf_counter()
        step_fn([(lightness, chroma)])
        if ema is not None:
            ema.update(plain_g, images_seen=0, step_images=batch)
        sync(device)
        return time.perf_counter() - start

    train_step()  # creates the optimizers' moments (and is a warm-up)
    step_s = statistics.median(train_step() for _ in range(steps))

    def state(step: int) -> dict:  # the trainer's layout (distcolor/train/checkpointing.py)
        out = {
            "step": step,
            "init_seed": 0,
            "backend": "ddp",
            "G_ema": ema.state_dict() if ema is not None else None,
            "prune": ticket.state_dict() if ticket is not None else None,
            "steps": step_fn.state_dict(),
            "loader": [LoaderState(cfg.data.num_workers).state_dict()],
            "rng": [{"torch": torch.get_rng_state()}],
            "config": cfg.model_dump(mode="json"),
            "code_version": code_version(),
            "world_size": 1,
            "data_order": data_order(cfg, 1),
        }
        out["G"] = plain_g.state_dict()
        out["D"] = plain_d.state_dict()
        return out

    Path(cfg.run.out_dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".bench_checkpoint-", dir=cfg.run.out_dir))
    try:
        sync_s = []
        for i in range(repeats):
            start = time.perf_counter()
            save_checkpoint(state(i + 1), scratch / "sync", step=i + 1, keep_last=1)
            sync_s.append(time.perf_counter() - start)
        file_bytes = (checkpoint_path(scratch / "sync", repeats) / STATE).stat().st_size

        # Each async save: the pause, then training steps while the thread writes, then as
        # many steps alone: the difference is what the write costs the steps beside it.
        writer = CheckpointWriter(scratch / "async", keep_last=1)
        pause_s, write_s, write_cpu_s, beside_s, alone_s, beside_n = [], [], [], [], [], []
        snapshot_bytes = 0
        for i in range(repeats):
            writer.save(state(i + 1), step=i + 1)
            pause_s.append(writer.last["pause_s"])
            snapshot_bytes = writer.last["snapshot_bytes"]
            beside = []
            while writer.busy or not beside:
                beside.append(train_step())
            writer.wait()
            write_s.append(writer.last["write_s"])
            write_cpu_s.append(writer.last["write_cpu_s"])
            beside_n.append(len(beside))
            beside_s.append(sum(beside))
            alone_s.append(sum(train_step() for _ in beside))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    sync_med, pause_med = statistics.median(sync_s), statistics.median(pause_s)
    slowdown = statistics.median(b - a for b, a in zip(beside_s, alone_s, strict=True))
    cadence = tc.ckpt_every
    gpu_step = a.gpu_step_ms / 1e3

    def fraction(pause: float, step: float) -> float:
        return round(pause / (cadence * step + pause), 6)

    result = {
        "benchmark": "checkpoint",
        "device": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
        ),
        "config": str(a.config),
        "state_bytes": tensor_bytes(state(0)),
        "snapshot_bytes": snapshot_bytes,
        "file_bytes": file_bytes,
        "sync_save_s": round(sync_med, 4),
        "sync_save_s_all": [round(s, 4) for s in sync_s],
        "async_pause_s": round(pause_med, 4),
        "async_pause_s_all": [round(s, 4) for s in pause_s],
        "async_write_s": round(statistics.median(write_s), 4),
        "async_write_cpu_s": round(statistics.median(write_cpu_s), 4),
        "pause_ratio_sync_vs_async": round(sync_med / pause_med, 2),
        "steps_beside_write": beside_n,
        "steps_beside_write_s": [round(s, 4) for s in beside_s],
        "steps_alone_s": [round(s, 4) for s in alone_s],
        "write_cost_to_steps_s": round(slowdown, 4),
        "async_total_cost_s": round(pause_med + max(slowdown, 0.0), 4),
        "total_cost_ratio_sync_vs_async": round(sync_med / (pause_med + max(slowdown, 0.0)), 2),
        "batch_size": batch,
        "step_s": round(step_s, 4),
        "ckpt_every": cadence,
        "gpu_step_s_assumed": gpu_step,
        "fraction_sync_at_gpu_step": fraction(sync_med, gpu_step),
        "fraction_async_at_gpu_step": fraction(pause_med, gpu_step),
        "fraction_sync_at_measured_step": fraction(sync_med, step_s),
        "fraction_async_at_measured_step": fraction(pause_med, step_s),
        "repeats": repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
