"""DDP vs DeepSpeed ZeRO-1/2/3: seconds per step and peak memory per rank, 2 processes.

    python benchmarks/bench_zero.py [--quick] [--model paper|default] [--steps N]
    python benchmarks/bench_zero.py --device cuda --nproc 1 --backends ddp,zero2 \
        --precision bf16 --image-size 256 --batch 32        # one GPU (the GPU suite)

Each backend trains the same model on the same in-memory batch with 2 CPU processes
(torchrun, gloo; on a GPU machine set CUDA_VISIBLE_DEVICES and drop ACCELERATE_USE_CPU to
compare on GPUs). Reported per backend: median seconds per step after warm-up, and each
rank's peak resident memory (CPU) or peak allocated GPU memory; the model states a ZeRO
stage shards (fp32 masters, gradients, Adam moments) are what the memory column shows.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {
    "ddp": [],
    "zero1": ["train.backend=deepspeed", "deepspeed.config=configs/deepspeed/zero1.json"],
    "zero2": ["train.backend=deepspeed", "deepspeed.config=configs/deepspeed/zero2.json"],
    "zero3": ["train.backend=deepspeed", "deepspeed.config=configs/deepspeed/zero3.json"],
}


def worker(out: str, config: str, overrides: list[str]) -> None:
    """One rank: train on a fixed random batch, time every step, report memory."""
    import torch

    from distcolor.config import load_config
    from distcolor.train.loop import train

    cfg = load_config(config, overrides)
    size, batch = cfg.data.image_size, cfg.data.batch_size
    g = torch.Generator().manual_seed(int(os.environ.get("RANK", 0)))
    rgb = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    sample = {
        "gray": rgb.float().mean(1, keepdim=True).to(torch.uint8),
        "rgb": rgb,
        "worker": 0,
        "position": {},
        "skipped": 0,
        "sources": Counter({"synthetic": batch}),
    }
    stamps = []

    def timed():
        for item in itertools.repeat(sample):
            stamps.append(time.perf_counter())
            yield item

    train(cfg, batches=timed())
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rank = int(os.environ.get("RANK", 0))
    Path(f"{out}.rank{rank}").write_text(json.dumps({"steps": steps, "peak_bytes": peak}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, few steps (<60 s)")
    parser.add_argument("--model", choices=["paper", "default"], default="paper")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--precision", default="no", help="train.mixed_precision (paper model)")
    parser.add_argument("--batch", type=int, default=2, help="images per step per rank")
    parser.add_argument("--nproc", type=int, default=2, help="processes (ranks)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="cuda: one GPU per rank"
    )
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2:])
        return
    model = "default" if args.quick else args.model
    steps = 3 if args.quick else args.steps
    size = 64 if args.quick else args.image_size
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            extra = BACKENDS[name]
            overrides = [
                f"run.out_dir={tmp}",
                f"run.name={name}",
                f"data.image_size={size}",
                f"data.batch_size={args.batch}",
                "data.num_workers=0",
                # a few real shards for the run's bookkeeping; the steps use the fixed batch
                f"data.shards={tmp}/shards",
                "data.synthetic.count=20",
                f"data.synthetic.size={max(size, 32)}",
                f"train.max_steps={steps}",
                f"train.ckpt_every={10**6}",
                f"train.log_every={steps}",
                f"train.sample_every={10**6}",
                f"train.hist_every={10**6}",
                "train.eval_images=0",
                *extra,
            ]
            config = str(ROOT / f"configs/{model}.yaml")
            if model == "paper":  # bf16 there is for GPUs
                overrides += ["prune=null", f"train.mixed_precision={args.precision}"]
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
            if args.device == "cpu":
                env.setdefault("ACCELERATE_USE_CPU", "1")
            out = f"{tmp}/{name}"
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                __file__, "--worker", out, config, *overrides,
            ]  # fmt: skip
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(args.nproc)]
            timings = ranks[0]["steps"][1:]  # the first step includes warm-up
            results[name] = {
                "s_per_step": statistics.median(timings),
                "images_per_s": args.batch * args.nproc / statistics.median(timings),
                "peak_mb_per_rank": [round(r["peak_bytes"] / 2**20, 1) for r in ranks],
            }
            print(f"{name}: {results[name]}", flush=True)
    base = results.get("ddp")
    others = {n: r for n, r in results.items() if n != "ddp"} if base else {}
    summary = {
        "model": model,
        "image_size": size,
        "batch_per_rank": args.batch,
        "ranks": args.nproc,
        "device": args.device,
        "precision": args.precision,
        "backends": results,
        **{f"{n}_time_vs_ddp": r["s_per_step"] / base["s_per_step"] for n, r in others.items()},
        **{
            f"{n}_memory_vs_ddp": max(r["peak_mb_per_rank"]) / max(base["peak_mb_per_rank"])
            for n, r in others.items()
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
