"""Data-parallel scaling on paper: gradient all-reduce bytes, time and efficiency at N GPUs.

    python benchmarks/scaling_model.py [--step-ms MS | --images-per-s N] [--batch B]
        [--accum K] [--config FILE] [--gpus 8,64,512] [--json] [key=value ...]

Not a simulator and not a measurement: a small explicit model (docs/scaling.md has the
formulas, the constants and their sources). From the config it takes the parameter counts
(`count_parameters`), the FLOPs per image (`distcolor.models.flops.step_flops`) and, counted the
same way on the meta device, when each gradient becomes ready during the two backward
passes of distcolor's step (D's backward, then G's: distcolor/train/gan_step.py). Gradients go into
DDP's buckets in that order (1 MiB first bucket, then `--bucket-mb`, as DDP rebuilds them
after its first iteration); each bucket's all-reduce starts when its last gradient is
ready and the previous bucket's all-reduce is done. Whatever is still running when the
network's backward ends is exposed: the optimizer step waits for it.

    t_step(n) = t_compute + exposed_D(n) + exposed_G(n),   efficiency = t_compute / t_step(n)

The single-GPU step time is `--step-ms` or `--images-per-s` (measured, at `--batch`), else
an estimate: 40% MFU of the H200's dense bf16 peak at the config's FLOPs per image. The
loader's CPU cores per GPU come from `--loader-images-per-core-s`, by default the
bench_data.py figure recorded in benchmarks/RESULTS.md. Runs in seconds on a CPU; the last
stdout line is one JSON object (`--json`: that line only). `--quick` is accepted and does
nothing (every benchmark takes it).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from distcolor.config import Config, load_config
from distcolor.errors import run_main
from distcolor.models import build_models, count_parameters
from distcolor.models.flops import step_flops
from distcolor.train.losses import GANObjective

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
MiB = 1 << 20

# -- constants (docs/scaling.md gives the sources) -------------------------------------------

H200_BF16_PEAK = 989.4e12  # dense bf16 tensor-core FLOP/s (data sheet; distcolor/models/flops.py)
ESTIMATE_MFU = 0.40  # the step-time estimate when nothing measured is given
ESTIMATE_BATCH = 64  # images per GPU per step for the estimate
GPUS_PER_NODE = 8
NVLINK_BUSBW = 450e9  # B/s: all-reduce bus bandwidth in an 8-GPU H100/H200 NVLink4 node
IB_EFFICIENCY = 0.85  # all-reduce bus bandwidth over InfiniBand line rate, one NIC per GPU
# Latency per collective, NCCL's own cost model (src/graph/tuning.cc, Simple protocol):
BASE_LATENCY = 8.4e-6  # s, once per all-reduce (baseLat, Ring/Simple)
NVLINK_STEP_LATENCY = 3.4e-6  # s per intra-node ring step, 2(g-1) steps (hwLat NVLink Ring)
NET_TREE_LATENCY = 28e-6  # s per inter-node tree level, up and down (hwLat NET Tree/Simple)
NET_RING_LATENCY = 14e-6  # s per inter-node ring step, 2(N-1) steps (hwLat NET Ring/Simple)


@dataclass(frozen=True)
class Fabric:
    """Where the all-reduce runs: NVLink inside a node, plus a per-GPU NIC between nodes."""

    name: str
    nvlink_busbw: float = NVLINK_BUSBW  # bytes/s
    net_busbw: float | None = None  # bytes/s per GPU (one NIC each); None: a single node
    gpus_per_node: int = GPUS_PER_NODE
    net_latency: str = "tree"  # latency across nodes: "tree" (log2 N) or "ring" (N - 1)

    @classmethod
    def infiniband(cls, gbit: float, efficiency: float = IB_EFFICIENCY, **kw) -> Fabric:
        return cls(f"IB {gbit:g} Gb/s per GPU", net_busbw=gbit / 8 * 1e9 * efficiency, **kw)

    def reaches(self, gpus: int) -> bool:
        return gpus <= self.gpus_per_node or self.net_busbw is not None


def allreduce_seconds(nbytes: float, gpus: int, fabric: Fabric) -> float:
    """One all-reduce of `nbytes` over `gpus` GPUs: latency + bytes / bandwidth.

    Inside a node a ring: each GPU sends and receives 2(g-1)/g x bytes over NVLink. Across
    N nodes, hierarchical: the same NVLink reduce-scatter + all-gather, and in between an
    all-reduce of each GPU's 1/g shard across the nodes over its own NIC (2(N-1)/N x
    bytes/g per NIC). The two parts are added (not pipelined: an upper bound)."""
    if gpus <= 1:
        return 0.0
    g = min(gpus, fabric.gpus_per_node)
    nodes = math.ceil(gpus / fabric.gpus_per_node)
    seconds = BASE_LATENCY + 2 * (g - 1) * NVLINK_STEP_LATENCY
    seconds += 2 * (g - 1) / g * nbytes / fabric.nvlink_busbw
    if nodes > 1:
        if fabric.net_busbw is None:
            raise ValueError(f"{fabric.name} spans one node ({fabric.gpus_per_node} GPUs)")
        seconds += 2 * (nodes - 1) / nodes * nbytes / g / fabric.net_busbw
        if fabric.net_latency == "ring":
            seconds += 2 * (nodes - 1) * NET_RING_LATENCY
        else:
            seconds += 2 * math.ceil(math.log2(nodes)) * NET_TREE_LATENCY
    return seconds


# -- the step, counted on the meta device ------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    nbytes: int  # in the parameters' dtype (fp32)
    ready_flops: float  # per image, from the start of the backward that fills it


@dataclass(frozen=True)
class Network:
    params: int
    buckets: tuple[Bucket, ...]  # in the order they become ready
    window_flops: float  # per image: the backward the all-reduce overlaps with

    @property
    def grad_bytes_fp32(self) -> int:
        return sum(b.nbytes for b in self.buckets)


@dataclass(frozen=True)
class Profile:
    flops_per_image: float  # one D + G step (distcolor.models.flops.step_flops)
    generator_forward_flops: float  # per image; run once more per micro-batch when accumulating
    phases: dict  # per image: forward and backward of each half of the step
    G: Network
    D: Network


def ddp_buckets(ready: list[tuple[torch.Tensor, float]], bucket_mb: float) -> tuple[Bucket, ...]:
    """DDP's bucketing of gradients in the order they became ready (what its reducer rebuilds
    after the first iteration): a 1 MiB first bucket, then `bucket_mb` MiB ones, a bucket
    closing once it reaches its cap (so one large tensor can overshoot it)."""
    params = [p for p, _ in ready]
    limits = [MiB, int(bucket_mb * MiB)]
    # The function DDP itself calls (torch/nn/parallel/distributed.py), on the ready order.
    groups, _ = torch.distributed._compute_bucket_assignment_by_size(params, limits)
    buckets = [
        Bucket(
            sum(params[i].numel() * params[i].element_size() for i in group),
            max(ready[i][1] for i in group),
        )
        for group in groups
    ]
    return tuple(sorted(buckets, key=lambda b: b.ready_flops))


def profile_step(cfg: Config, *, bucket_mb: float = 25) -> Profile:
    """FLOPs per image of each phase of distcolor's step (one micro-batch), and the FLOPs
    into each backward at which every gradient is ready, on the meta device."""
    side = cfg.data.image_size
    with torch.device("meta"):
        generator, discriminator = build_models(cfg.model, seed=0)
        lightness = torch.zeros(1, cfg.model.generator.in_channels, side, side)
        chroma = torch.zeros(1, cfg.model.generator.out_channels, side, side)
    objective = GANObjective(gan_loss=cfg.train.gan_loss, l1_weight=cfg.train.l1_weight)
    params = {"G": count_parameters(generator), "D": count_parameters(discriminator)}
    counter = FlopCounterMode(display=False)
    ready: list[tuple[torch.Tensor, float]] = []
    start = [0]  # FLOPs counted when the current backward began

    def on_ready(p: torch.Tensor) -> None:
        ready.append((p, counter.get_total_flops() - start[0]))

    handles = [
        p.register_post_accumulate_grad_hook(on_ready)
        for net in (generator, discriminator)
        for p in net.parameters()
    ]
    phases = {}
    with counter:  # the order of distcolor/train/gan_step.py with one micro-batch
        fake = generator(lightness)
        d_loss = objective.discriminator(discriminator, lightness, chroma, fake)["total"]
        phases["D_half_forward"] = start[0] = counter.get_total_flops()
        d_loss.backward()
        phases["D_backward"] = counter.get_total_flops() - start[0]
        d_ready = list(ready)
        ready.clear()
        discriminator.requires_grad_(False)
        before = counter.get_total_flops()
        g_loss = objective.generator(discriminator, lightness, chroma, fake)["total"]
        start[0] = counter.get_total_flops()
        phases["G_half_forward"] = start[0] - before
        g_loss.backward()
        phases["G_half_backward"] = counter.get_total_flops() - start[0]
    for h in handles:
        h.remove()
    g_ready = list(ready)
    counted = step_flops(cfg, batch_size=1)
    G = Network(params["G"], ddp_buckets(g_ready, bucket_mb), phases["G_half_backward"])
    D = Network(params["D"], ddp_buckets(d_ready, bucket_mb), phases["D_backward"])
    return Profile(
        flops_per_image=counted["train_flops_per_image"],
        generator_forward_flops=counted["generator_forward_flops_per_image"],
        phases=phases,
        G=G,
        D=D,
    )


# -- the model -------------------------------------------------------------------------------


def exposed_seconds(
    buckets: list[tuple[float, float]], window: float, gpus: int, fabric: Fabric
) -> tuple[float, float]:
    """(all-reduce seconds in all, seconds still running after the backward ends).

    `buckets`: (bytes, ready time) in ready order; all-reduces run one after the other on
    one communication stream, each from max(its ready time, the previous one's end)."""
    end = total = 0.0
    for nbytes, ready in buckets:
        seconds = allreduce_seconds(nbytes, gpus, fabric)
        end = max(end, ready) + seconds
        total += seconds
    return total, max(0.0, end - window)


def predict(
    prof: Profile,
    *,
    gpus: int,
    fabric: Fabric,
    step_s: float,
    batch: int,
    grad_dtype: str = "fp32",
    accum: int = 1,
) -> dict:
    """Predicted step at `gpus` GPUs; `step_s` is one GPU's step on one micro-batch of
    `batch` images (accumulation: `accum` such micro-batches, each with one more G forward,
    and only the last one's backward overlaps the all-reduce)."""
    rate = prof.flops_per_image * batch / step_s  # FLOP/s, assumed equal in every phase
    per_image = prof.flops_per_image + (prof.generator_forward_flops if accum > 1 else 0.0)
    compute = accum * batch * per_image / rate
    scale = {"fp32": 1.0, "bf16": 0.5}[grad_dtype]
    comm, exposed = {}, {}
    for name, net in (("D", prof.D), ("G", prof.G)):
        buckets = [(b.nbytes * scale, b.ready_flops * batch / rate) for b in net.buckets]
        window = net.window_flops * batch / rate
        comm[name], exposed[name] = exposed_seconds(buckets, window, gpus, fabric)
    step = compute + exposed["D"] + exposed["G"]
    return {
        "gpus": gpus,
        "nodes": math.ceil(gpus / fabric.gpus_per_node),
        "compute_ms": compute * 1e3,
        "allreduce_ms": {k: v * 1e3 for k, v in comm.items()},
        "exposed_ms": {k: v * 1e3 for k, v in exposed.items()},
        "step_ms": step * 1e3,
        "efficiency": compute / step,
        "images_per_s": gpus * accum * batch / step,
    }


def model_busbw(nbytes: float, gpus: int, fabric: Fabric) -> float:
    """The bus bandwidth (bytes/s) nccl-tests' all_reduce_perf would report for one
    all-reduce of `nbytes` if the model were right: 2(n-1)/n x bytes / time. Compare it with
    a measured all_reduce_perf line at the same size to calibrate the constants."""
    return 2 * (gpus - 1) / gpus * nbytes / allreduce_seconds(nbytes, gpus, fabric)


def traffic_per_gpu(nbytes: float, gpus: int, gpus_per_node: int = GPUS_PER_NODE) -> dict:
    """Bytes each GPU sends (and receives) per all-reduce: a flat ring's 2(n-1)/n x bytes,
    and the hierarchical split into NVLink bytes and NIC bytes."""
    g = min(gpus, gpus_per_node)
    nodes = math.ceil(gpus / gpus_per_node)
    return {
        "ring": 2 * (gpus - 1) / gpus * nbytes,
        "nvlink": 2 * (g - 1) / g * nbytes,
        "nic": 2 * (nodes - 1) / nodes * nbytes / g,
    }


# -- inputs ----------------------------------------------------------------------------------


def recorded_loader_rate(path: Path = RESULTS) -> tuple[float, str] | None:
    """Median 'loader img/s' (1 worker, so per core) of bench_data.py's runs on 286-px shards
    in RESULTS.md, with a line saying where it came from; None if there is no such table."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    for section in re.split(r"\n(?=## )", text):
        title = section.splitlines()[0]
        if not (title.startswith("## bench_data.py") and "286-px" in title):
            continue
        rows = [
            [
                cell.strip().strip("*").replace(",", "")
                for cell in line.strip().strip("|").split("|")
            ]
            for line in section.splitlines()
            if line.startswith("|")
        ]
        header = next((r for r in rows if "loader img/s" in r), None)
        if header is None:
            continue
        column = header.index("loader img/s")
        values = []
        for row in rows:
            try:
                values.append(float(row[column]))
            except (IndexError, ValueError):
                pass
        if values:
            median = statistics.median(values)
            source = (
                f"benchmarks/RESULTS.md, {title.lstrip('# ')}: median 'loader img/s' of "
                f"{len(values)} runs ({', '.join(f'{v:g}' for v in values)})"
            )
            return median, source
    return None


def step_input(args: argparse.Namespace, prof: Profile) -> tuple[float, int, str]:
    """(seconds per single-GPU step, batch, where the figure comes from)."""
    batch = args.batch or ESTIMATE_BATCH
    if args.step_ms is not None:
        return args.step_ms / 1e3, batch, f"measured: --step-ms {args.step_ms:g} at batch {batch}"
    if args.images_per_s is not None:
        return batch / args.images_per_s, batch, f"measured: --images-per-s {args.images_per_s:g}"
    rate = ESTIMATE_MFU * H200_BF16_PEAK
    return (
        batch * prof.flops_per_image / rate,
        batch,
        f"estimate: {ESTIMATE_MFU:.0%} MFU of the H200 dense bf16 peak "
        f"{H200_BF16_PEAK / 1e12:g} TFLOP/s at {prof.flops_per_image / 1e9:.1f} GFLOP/image",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=ROOT / "configs" / "paper.yaml", help="YAML config")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--step-ms", type=float, help="measured single-GPU step time (ms)")
    given.add_argument("--images-per-s", type=float, help="measured single-GPU images/s")
    p.add_argument("--batch", type=int, help=f"images per GPU per step (default {ESTIMATE_BATCH})")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per step (default 1)")
    p.add_argument("--gpus", default="8,64,512", help="GPU counts (default 8,64,512)")
    p.add_argument("--bucket-mb", type=float, default=25, help="DDP bucket_cap_mb (default 25)")
    p.add_argument("--nvlink-busbw", type=float, default=NVLINK_BUSBW / 1e9, help="GB/s")
    p.add_argument("--ib-efficiency", type=float, default=IB_EFFICIENCY, help="of line rate")
    p.add_argument("--net-latency", choices=("tree", "ring"), default="tree")
    p.add_argument(
        "--loader-images-per-core-s",
        type=float,
        help="one loader worker's images/s (default: bench_data.py's figure in RESULTS.md)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON line only")
    p.add_argument("--quick", action="store_true", help="no effect (this runs in seconds)")
    args = p.parse_args(argv)
    if (args.batch is not None and args.batch < 1) or args.accum < 1:
        p.error("--batch and --accum must be at least 1")
    if any(v is not None and v <= 0 for v in (args.step_ms, args.images_per_s)):
        p.error("--step-ms and --images-per-s must be positive")
    try:
        args.gpu_counts = sorted({int(x) for x in args.gpus.split(",")})
    except ValueError:
        p.error(f"--gpus takes counts like 8,64,512, not {args.gpus!r}")
    if args.gpu_counts[0] < 1:
        p.error("--gpus: counts start at 1")
    return args


def run(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, args.overrides)
    prof = profile_step(cfg, bucket_mb=args.bucket_mb)
    step_s, batch, source = step_input(args, prof)
    kw = {"nvlink_busbw": args.nvlink_busbw * 1e9, "net_latency": args.net_latency}
    fabrics = {
        "nvlink": Fabric("NVLink4, one node", **kw),
        "ib200": Fabric.infiniband(200, args.ib_efficiency, **kw),
        "ib400": Fabric.infiniband(400, args.ib_efficiency, **kw),
    }
    counts = sorted({1, *args.gpu_counts})
    rows = []
    for key, fabric in fabrics.items():
        for dtype in ("fp32", "bf16"):
            for n in counts:
                if fabric.reaches(n):
                    rows.append(
                        {
                            "fabric": key,
                            "grad_dtype": dtype,
                            **predict(
                                prof,
                                gpus=n,
                                fabric=fabric,
                                step_s=step_s,
                                batch=batch,
                                grad_dtype=dtype,
                                accum=args.accum,
                            ),
                        }
                    )
    table = {}
    for r in rows:
        table.setdefault(r["fabric"], {}).setdefault(r["grad_dtype"], {})[str(r["gpus"])] = round(
            r["efficiency"], 4
        )
    one = next(r for r in rows if r["gpus"] == 1)
    per_gpu = one["images_per_s"]
    loader: dict = {"images_per_s_per_gpu": per_gpu}
    if args.loader_images_per_core_s is not None:
        per_core = args.loader_images_per_core_s
        loader["source"] = "--loader-images-per-core-s"
    else:
        recorded = recorded_loader_rate()
        per_core, loader["source"] = recorded if recorded else (None, "none recorded")
    if per_core:
        cores = per_gpu / per_core
        loader.update(
            images_per_core_s=per_core,
            cores_per_gpu=cores,
            workers_per_gpu=math.ceil(cores),
            cores_per_node=GPUS_PER_NODE * (math.ceil(cores) + 1),  # + the training process
        )
    bytes_ = {
        name: {"params": net.params, "fp32": net.params * 4, "bf16": net.params * 2}
        for name, net in (("G", prof.G), ("D", prof.D))
    }
    return {
        "config": str(args.config),
        "batch_per_gpu": batch,
        "accum": args.accum,
        "step_time_source": source,
        "single_gpu_step_ms": step_s * 1e3,
        "gflop_per_image": prof.flops_per_image / 1e9,
        "phase_gflop_per_image": {k: v / 1e9 for k, v in prof.phases.items()},
        "grad_bytes": bytes_,
        "grad_dtype_note": (
            "distcolor all-reduces fp32 gradients (fp32 parameters under torch.autocast); "
            "bf16 is what a DDP bf16 compression hook or DeepSpeed bf16 would send"
        ),
        "buckets_mb": {
            name: [round(b.nbytes / 1e6, 3) for b in net.buckets]
            for name, net in (("G", prof.G), ("D", prof.D))
        },
        "overlap_window_gflop_per_image": {
            "D": prof.D.window_flops / 1e9,
            "G": prof.G.window_flops / 1e9,
        },
        "ring_traffic_per_gpu_mb": {
            name: {str(n): round(traffic_per_gpu(b["fp32"], n)["ring"] / 1e6, 2) for n in counts}
            for name, b in bytes_.items()
        },
        "constants": {
            "gpus_per_node": GPUS_PER_NODE,
            "nvlink_busbw_gb_s": args.nvlink_busbw,
            "ib_efficiency": args.ib_efficiency,
            "ib_busbw_gb_s": {k: f.net_busbw / 1e9 for k, f in fabrics.items() if f.net_busbw},
            "latency_us": {
                "base": BASE_LATENCY * 1e6,
                "nvlink_step": NVLINK_STEP_LATENCY * 1e6,
                "net": (NET_TREE_LATENCY if args.net_latency == "tree" else NET_RING_LATENCY) * 1e6,
                "net_model": args.net_latency,
            },
            "bucket_mb": args.bucket_mb,
        },
        "model_busbw_gb_s_at_32mib": {
            key: {
                str(n): round(model_busbw(32 * MiB, n, f) / 1e9, 1)
                for n in counts[1:]
                if f.reaches(n)
            }
            for key, f in fabrics.items()
        },
        "efficiency": table,
        "predictions": rows,
        "loader": loader,
    }


def print_tables(result: dict) -> None:
    print(f"config {result['config']}: {result['gflop_per_image']:.1f} GFLOP/image")
    print(
        f"single-GPU step: {result['single_gpu_step_ms']:.2f} ms at batch "
        f"{result['batch_per_gpu']} x {result['accum']} ({result['step_time_source']})"
    )
    for name, b in result["grad_bytes"].items():
        print(
            f"{name}: {b['params']:,} params, all-reduce {b['fp32'] / 1e6:.1f} MB fp32 / "
            f"{b['bf16'] / 1e6:.1f} MB bf16 per step; DDP buckets (MB, ready order) "
            f"{result['buckets_mb'][name]}"
        )
    print(result["grad_dtype_note"])
    counts = sorted({r["gpus"] for r in result["predictions"]} - {1})
    print()
    print(f"{'fabric':8} {'grads':5} " + " ".join(f"{n:>16}" for n in counts))
    print(f"{'':14} " + " ".join(f"{'eff (exposed ms)':>16}" for _ in counts))
    for fabric, dtypes in result["efficiency"].items():
        for dtype in dtypes:
            cells = []
            for n in counts:
                r = next(
                    (
                        r
                        for r in result["predictions"]
                        if (r["fabric"], r["grad_dtype"], r["gpus"]) == (fabric, dtype, n)
                    ),
                    None,
                )
                exposed = r and r["exposed_ms"]["D"] + r["exposed_ms"]["G"]
                cells.append(f"{r['efficiency']:.3f} ({exposed:.2f})" if r else "-")
            print(f"{fabric:8} {dtype:5} " + " ".join(f"{c:>16}" for c in cells))
    print("\nthe model's all-reduce bus bandwidth at 32 MiB, GB/s (compare nccl-tests):")
    for fabric, by_n in result["model_busbw_gb_s_at_32mib"].items():
        print(f"  {fabric:8} " + ", ".join(f"{n} GPUs {v:g}" for n, v in by_n.items()))
    loader = result["loader"]
    if "cores_per_gpu" in loader:
        print(
            f"\nloader: {loader['images_per_s_per_gpu']:.0f} images/s per GPU at "
            f"{loader['images_per_core_s']:.0f} per core = {loader['cores_per_gpu']:.2f} cores "
            f"per GPU ({loader['source']})"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    if not args.json:
        print_tables(result)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    run_main(main)
