"""Overhead of the full trainer over a bare PyTorch loop doing the same D and G updates.

    python benchmarks/bench_loop.py [--quick] [--steps N] [--warmup N] [--repeats N]
        [--no-separate] [--no-multiprocess] [--dump FILE] [--config FILE] [key=value ...]

Both sides train the same networks (`build_models`, same seed), with the same optimizers
(`make_optimizer`), the same loss (`GANObjective`) and the same in-memory uint8 batches
(a few real crops from tiny synthetic shards built into a temp folder, converted to Lab
each step by `color.lab_inputs`, as the trainer does), in the same process, with the
same thread count and the same warm-up:

- trainer: `distcolor.train.loop.train(cfg, batches=...)` with everything on: progress
  bar, metrics (TensorBoard + metrics.jsonl), sample grids, checkpoints, the EMA,
  `GANStep`'s gradient norms, finite checks and batch-norm snapshots. Only the final
  evaluation is off (`train.eval_images=0`; it runs after the last step anyway);
- bare: fake = G(L); D loss, backward, step; G loss (D frozen), backward, step; the EMA
  update when the config has one (it is part of what is trained, not bookkeeping). No
  metrics, no `.item()`, no logging.

How the time is taken: the trainer's batch iterator (`TimedBatches`) records
`perf_counter()` whenever a batch is requested, i.e. at the start of every step. With
W warm-up steps and N timed ones a run lasts W + N + 1 steps, and the window is steps
W + 1 .. W + N, each from its batch request to the next: every step with all the
bookkeeping that follows it, and none of the trainer's setup (Accelerator, models,
TensorBoard writer, fixed sample images) or teardown (final step, final checkpoint,
summary). Interleaved (the headline): inside each batch request, before handing the
batch over, the iterator runs one bare step on its own copy of the networks and times
it; the trainer's step is then the time from handing over to the next request. Bare
and trainer steps alternate one by one, so a burst of load from other tenants (on this
shared machine a 0.17 s step can take 5 s for a while) hits both sides alike. The
trainer's background threads (TensorBoard's writer, the progress bar's refresh) may run
during a bare step: that much of the overhead is counted on the bare side. With
--separate, whole trainer runs and bare runs also alternate (T B, B T, ...), a cross-check
without that caveat. On a GPU the device is synchronised around each bare step and at
the window's ends.

Statistics: for each step index of the window, the median over the repeats (a step
index has the same bookkeeping in every repeat), summed over the window and divided by
N: `trainer_s_per_step`, `bare_s_per_step`, `overhead_ratio` = their ratio. Also: the
median single step of each side (the per-step overhead alone), the median extra seconds
of the trainer at plain, log and checkpoint/sample steps, and each run's plain window
mean (noisy).

Bookkeeping inside the window: the config's log_every / sample_every / ckpt_every
(default 10 / 100 / 100) when the window holds at least one of each (the default N = 100
with W = 10 does: 10 logs, 1 sample grid and 1 checkpoint at step 100, the default
cadence); otherwise the intervals are lowered to fit the window and `intervals_scaled`
says so (--quick samples and checkpoints every 20 steps, 5x the default rate, so it
overstates the overhead). The JSON lists the intervals and the events in the window.

Multi-process: the trainer alone, launched as `python -m torch.distributed.run` (gloo,
`ACCELERATE_USE_CPU=1`) as 2 processes x 1 thread, 1 process x all cores and 1 x 1
(OMP_NUM_THREADS), same per-process batch, same window, layouts alternating; global
images/s = processes x batch x N / rank 0's window (DDP's all-reduce keeps the ranks in
lockstep), median over --mp-repeats. Skipped by --quick (which stays under a minute on
2 idle cores).

The last stdout line is one JSON object: trainer_s_per_step, bare_s_per_step,
overhead_ratio (trainer / bare), the other figures above, and the multi-process ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from distcolor.cli.common import add_config_arguments, config_from_args
from distcolor.color import lab_inputs
from distcolor.config import Config, load_config
from distcolor.data.catalog import read_manifest, shard_list
from distcolor.data.loader import build_train_loader
from distcolor.data.shard_build import build_shards
from distcolor.errors import UserError, run_main
from distcolor.models import build_models, count_parameters, init_seed
from distcolor.train.ema import GeneratorEMA
from distcolor.train.losses import GANObjective
from distcolor.train.optim import make_optimizer
from distcolor.train.precision import Precision, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
DISTINCT_BATCHES = 4  # pre-built batches cycled through (in memory)
EVENTS = {"log": "log_every", "sample": "sample_every", "checkpoint": "ckpt_every"}


# -- data -------------------------------------------------------------------------------------


def build_tiny_shards(folder: Path, image_size: int, batch_size: int) -> Path:
    """Synthetic scenes stored at 1.125x the crop (no per-crop resize, as the default's):
    enough train images for a few distinct batches and test images for the sample grid."""
    side = round(image_size * 1.125)
    count = max(48, DISTINCT_BATCHES * batch_size * 4 // 3 + 16)
    build_shards(
        folder,
        synthetic=count,
        synthetic_size=side,
        size=side,
        shard_size=max(count // 4, 8),
        test_fraction=0.25,
        log=lambda *_: None,
    )
    return folder


def loader_batches(cfg: Config, shards: Path) -> list[dict]:
    """A few loader-format batches (uint8 gray/rgb from the real loader, no workers) with
    the fields the trainer's LoaderState bookkeeping reads."""
    manifest = read_manifest(shards)
    data = cfg.data.model_copy(update={"num_workers": 0, "shuffle_buffer": 8})
    loader = build_train_loader(
        shard_list(shards, manifest, "train"), data, seed=0, rank=0, world_size=1
    )
    out = []
    for batch in loader:
        out.append(
            {
                "gray": batch["gray"].clone(),
                "rgb": batch["rgb"].clone(),  # NCHW view of NHWC memory, as the loader's
                "worker": 0,
                "position": {},
                "skipped": 0,
                "sources": Counter({"synthetic": int(batch["gray"].shape[0])}),
            }
        )
        if len(out) == DISTINCT_BATCHES:
            return out
    raise RuntimeError("the benchmark shards gave too few batches")


class TimedBatches:
    """Endless iterator over in-memory batches that stamps the time of every request.

    requested[i] is when batch i + 1 was asked for, i.e. when step i + 1 started. With
    `between`, that function (a bare step) runs on the batch before it is handed over, and
    handed[i] stamps its end: the trainer's step i + 1 then runs from handed[i] to
    requested[i + 1]. On a GPU the device is synchronised around `between`, and otherwise
    at the steps listed in `sync_at` (1-based) only."""

    def __init__(
        self,
        batches: list[dict],
        device: torch.device,
        sync_at: set[int],
        between: Callable[[int, dict], None] | None = None,
    ) -> None:
        self.batches, self.device, self.sync_at = batches, device, sync_at
        self.between = between
        self.requested: list[float] = []
        self.handed: list[float] = []
        self.threads: int | None = None
        self.world_size = 1  # processes training together, seen at the first request

    def __iter__(self) -> TimedBatches:
        return self

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __next__(self) -> dict:
        step = len(self.requested) + 1
        if self.between is not None or step in self.sync_at:
            self._sync()
        self.requested.append(time.perf_counter())
        if self.threads is None:
            self.threads = torch.get_num_threads()
            if dist.is_available() and dist.is_initialized():
                self.world_size = dist.get_world_size()
        batch = self.batches[(step - 1) % len(self.batches)]
        if self.between is not None:
            self.between(step, batch)
            self._sync()
        self.handed.append(time.perf_counter())
        return batch

    def window(self, warmup: int, steps: int) -> dict:
        """Seconds of steps warmup+1 .. warmup+steps of the consumer (in total and one by
        one) and, with `between`, of the bare steps run in between."""
        first, last = warmup, warmup + steps  # requested[first]: start of step warmup + 1
        if len(self.requested) <= last:
            have = len(self.requested)
            raise RuntimeError(f"only {have} batches were requested, need {last + 1}")
        steps_s = [self.requested[i + 1] - self.handed[i] for i in range(first, last)]
        result = {"window_s": sum(steps_s), "per_step": steps_s}
        if self.between is not None:
            bare_s = [self.handed[i] - self.requested[i] for i in range(first, last)]
            result["bare"] = {"window_s": sum(bare_s), "per_step": bare_s}
        return result


# -- configuration ------------------------------------------------------------------------


def window_plan(cfg: Config, warmup: int, steps: int) -> tuple[dict, bool, dict]:
    """(intervals, scaled, events in the window): the config's log/sample/ckpt intervals,
    lowered to `steps` where the window (warmup, warmup + steps] would hold none."""
    intervals, scaled = {}, False
    for key in EVENTS.values():
        every = getattr(cfg.train, key)
        if every > steps:
            every, scaled = steps, True
        intervals[key] = every
    hist = getattr(cfg.train, "hist_every", None)
    if hist is not None:
        intervals["hist_every"] = hist
    events = {
        name: sum(1 for s in range(warmup + 1, warmup + steps + 1) if s % intervals[key] == 0)
        for name, key in {**EVENTS, "histogram": "hist_every"}.items()
        if key in intervals
    }
    return intervals, scaled, events


def run_overrides(shards: Path, out_dir: Path, name: str, intervals: dict, last: int) -> list:
    return [
        f"run.out_dir={out_dir}",
        f"run.name={name}",
        f"data.shards={shards}",
        "data.synthetic=null",
        "train.eval_images=0",
        f"train.max_steps={last}",
        *(f"train.{key}={value}" for key, value in intervals.items()),
    ]


# -- the two loops ----------------------------------------------------------------------------


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; each in-process run starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


class BareLoop:
    """Plain PyTorch: the same networks, optimizers, loss, EMA and Lab conversion."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        tc = cfg.train
        self.device = device
        self.precision = Precision(resolve_precision(tc.mixed_precision), device)
        if self.precision.mode == "fp16":
            raise UserError(
                "train.mixed_precision: the bare loop has no loss scaler; use no or bf16"
            )
        self.G, self.D = build_models(cfg.model, seed=init_seed(cfg))
        self.G.to(device).train()
        self.D.to(device).train()
        self.opt_g = make_optimizer(self.G.parameters(), lr=tc.lr_g, cfg=tc)
        self.opt_d = make_optimizer(self.D.parameters(), lr=tc.lr_d, cfg=tc)
        self.objective = GANObjective(gan_loss=tc.gan_loss, l1_weight=tc.l1_weight)
        self.ema = None
        if tc.ema_half_life is not None:
            self.ema = GeneratorEMA(self.G, half_life=tc.ema_half_life, rampup=tc.ema_rampup)
        self.fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        self.step_images = cfg.data.batch_size

    def __call__(self, step: int, batch: dict) -> None:
        G, D, autocast = self.G, self.D, self.precision.autocast
        L, ab = lab_inputs(batch, self.device)
        L, ab = L.contiguous(memory_format=self.fmt), ab.contiguous(memory_format=self.fmt)
        with autocast():
            fake = G(L)
            d = self.objective.discriminator(D, L, ab, fake)
        d["total"].backward()
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        D.requires_grad_(False)
        with autocast():
            g = self.objective.generator(D, L, ab, fake)
        g["total"].backward()
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        D.requires_grad_(True)
        if self.ema is not None:
            images_seen = (step - 1) * self.step_images
            self.ema.update(G, images_seen=images_seen, step_images=self.step_images)


def train_device() -> torch.device:
    from accelerate import PartialState

    device = PartialState().device
    reset_accelerate()
    return device


def run_trainer(
    cfg: Config, batches: list[dict], warmup: int, steps: int, *, interleave: bool = False
) -> dict:
    """One full `train()`; with `interleave`, a bare step on a separate copy of the networks
    runs (and is timed) inside each batch request, just before the trainer's step."""
    from distcolor.train.loop import train

    device = train_device()
    bare = BareLoop(cfg, device) if interleave else None
    timed = TimedBatches(batches, device, {warmup + 1, warmup + steps + 1}, between=bare)
    gc.collect()
    start = time.perf_counter()
    train(cfg, batches=timed)
    end = time.perf_counter()
    reset_accelerate()
    result = timed.window(warmup, steps)
    result["setup_s"] = timed.requested[0] - start
    result["after_window_s"] = end - timed.requested[warmup + steps]
    result["threads"], result["world_size"] = timed.threads, timed.world_size
    return result


def run_bare(cfg: Config, batches: list[dict], warmup: int, steps: int) -> dict:
    device = train_device()
    bare = BareLoop(cfg, device)
    timed = TimedBatches(batches, device, {warmup + 1, warmup + steps + 1})
    gc.collect()
    for step in range(1, warmup + steps + 2):
        bare(step, next(timed))
    result = timed.window(warmup, steps)
    result["threads"] = timed.threads
    return result


# -- multi-process ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child(args: argparse.Namespace) -> None:
    """One trainer run under torch.distributed.run; rank 0 writes its window to a file."""
    cfg = load_config(args.config, args.overrides)
    batches = loader_batches(cfg, Path(cfg.data.shards))
    warmup, steps = args.warmup, args.steps
    result = run_trainer(cfg, batches, warmup, steps)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.child).write_text(json.dumps(result))


def launch(procs: int, threads: int, child_args: list[str], result: Path, timeout: int) -> dict:
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(procs),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(Path(__file__).resolve()),
        "--child",
        str(result),
        *child_args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{procs}-process run failed:\n{proc.stderr[-3000:]}")
    out = json.loads(result.read_text())
    if out["world_size"] != procs:
        raise RuntimeError(f"asked for {procs} processes, rank 0 saw {out['world_size']}")
    return out


def multiprocess(
    args: argparse.Namespace,
    tmp: Path,
    shards: Path,
    intervals: dict,
    warmup: int,
    steps: int,
    batch: int,
) -> dict:
    """Global images/s of the trainer: 2 processes x 1 thread vs 1 x all cores vs 1 x 1."""
    cores = os.cpu_count() or 1
    layouts = {"2x1": (2, 1), f"1x{cores}": (1, cores), "1x1": (1, 1)}
    rates: dict[str, list[float]] = {name: [] for name in layouts}
    threads: dict[str, int] = {}
    for repeat in range(args.mp_repeats):
        order = list(layouts) if repeat % 2 == 0 else list(reversed(layouts))
        for name in order:
            procs, nthreads = layouts[name]
            run = f"mp-{name}-{repeat}"
            child_args = [
                "--config",
                str(args.config),
                "--warmup",
                str(warmup),
                "--steps",
                str(steps),
                *args.overrides,
                *run_overrides(shards, tmp / "runs", run, intervals, warmup + steps + 1),
            ]
            out = launch(procs, nthreads, child_args, tmp / f"{run}.json", timeout=600)
            rates[name].append(procs * batch * steps / out["window_s"])
            threads[name] = out["threads"]
    med = {name: statistics.median(r) for name, r in rates.items()}
    one = f"1x{cores}"
    return {
        "layouts": "processes x threads per process (OMP_NUM_THREADS)",
        "global_images_per_s": {name: round(v, 2) for name, v in med.items()},
        "runs_images_per_s": {name: [round(v, 2) for v in r] for name, r in rates.items()},
        "threads_seen": threads,
        "repeats": args.mp_repeats,
        "ratio_2proc_vs_1proc": round(med["2x1"] / med[one], 4),
        "ratio_2proc_vs_1proc_1thread": round(med["2x1"] / med["1x1"], 4),
    }


# -- main -------------------------------------------------------------------------------------


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def step_kind(step: int, intervals: dict) -> str:
    """Which bookkeeping the trainer does after `step` (hist_every is not counted)."""
    if step % intervals["ckpt_every"] == 0 or step % intervals["sample_every"] == 0:
        return "checkpoint_or_sample"
    return "log" if step % intervals["log_every"] == 0 else "plain"


def summary(
    trainer_runs: list[dict], bare_runs: list[dict], warmup: int, steps: int, intervals: dict
) -> dict:
    """Per step index, the median over repeats, summed over the window, per step.

    A step index has the same bookkeeping in every repeat (step 100 always checkpoints),
    so the periodic costs stay in, while a burst of load from other tenants (which makes
    a 0.2 s step take several seconds on this shared machine) is dropped unless it hit
    most repeats at that index. `window_runs_*` are the plain means of each run's window.
    """
    t_idx = [statistics.median(r["per_step"][k] for r in trainer_runs) for k in range(steps)]
    b_idx = [statistics.median(r["per_step"][k] for r in bare_runs) for k in range(steps)]
    trainer_s, bare_s = sum(t_idx) / steps, sum(b_idx) / steps
    t_runs = [r["window_s"] / steps for r in trainer_runs]
    b_runs = [r["window_s"] / steps for r in bare_runs]
    t_step, b_step = statistics.median(t_idx), statistics.median(b_idx)
    extra: dict[str, list[float]] = {}
    for k in range(steps):
        kind = step_kind(warmup + 1 + k, intervals)
        extra.setdefault(kind, []).append(t_idx[k] - b_idx[k])
    return {
        "trainer_s_per_step": round(trainer_s, 6),
        "bare_s_per_step": round(bare_s, 6),
        "overhead_ratio": round(trainer_s / bare_s, 4),
        "overhead_s_per_step": round(trainer_s - bare_s, 6),
        "trainer_step_median_s": round(t_step, 6),
        "bare_step_median_s": round(b_step, 6),
        "step_median_ratio": round(t_step / b_step, 4),
        "extra_s_by_step_kind": {
            kind: {"steps": len(v), "median_extra_s": round(statistics.median(v), 5)}
            for kind, v in sorted(extra.items())
        },
        "window_runs_trainer_s_per_step": [round(x, 6) for x in t_runs],
        "window_runs_bare_s_per_step": [round(x, 6) for x in b_runs],
        "window_runs_ratio": [round(t / b, 4) for t, b in zip(t_runs, b_runs, strict=True)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(p)
    p.add_argument("--quick", action="store_true", help="under a minute on 2 CPU cores")
    p.add_argument("--steps", type=int, help="timed steps per run (default 100; --quick: 20)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10; --quick: 3)")
    p.add_argument("--repeats", type=int, help="runs of each kind (default 5; --quick: 3)")
    p.add_argument(
        "--separate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time trainer and bare loop in separate, alternating runs (default: on, "
        "off with --quick)",
    )
    p.add_argument(
        "--multiprocess",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time 2 processes vs 1 under torch.distributed.run (default: on, off "
        "with --quick)",
    )
    p.add_argument("--mp-repeats", type=int, default=3, help="runs of each layout (default 3)")
    p.add_argument("--dump", help="write every run's per-step seconds to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one run under torchrun
    a = p.parse_args()
    if a.child:
        child(a)
        return
    warmup = a.warmup if a.warmup is not None else (3 if a.quick else 10)
    steps = a.steps if a.steps is not None else (20 if a.quick else 100)
    repeats = a.repeats if a.repeats is not None else (3 if a.quick else 5)
    separate = a.separate if a.separate is not None else not a.quick
    use_mp = a.multiprocess if a.multiprocess is not None else not a.quick
    if steps < 1 or warmup < 0 or repeats < 1 or a.mp_repeats < 1:
        raise UserError("--steps, --repeats and --mp-repeats must be >= 1, --warmup >= 0")
    base = config_from_args(a)
    intervals, scaled, events = window_plan(base, warmup, steps)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench_loop-") as tmp_name:
        tmp = Path(tmp_name)
        shards = build_tiny_shards(tmp / "shards", base.data.image_size, base.data.batch_size)
        last = warmup + steps + 1

        def config(name: str) -> Config:
            runs = run_overrides(shards, tmp / "runs", name, intervals, last)
            return load_config(a.config, [*a.overrides, *runs])

        cfg = config("probe")
        batches = loader_batches(cfg, shards)
        mixed = [
            run_trainer(config(f"i{r}"), batches, warmup, steps, interleave=True)
            for r in range(repeats)
        ]
        split, raw_separate = None, None
        if separate:
            trainer_runs, bare_runs = [], []
            for r in range(repeats):
                for side in ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer"):
                    if side == "trainer":
                        trainer_runs.append(run_trainer(config(f"s{r}"), batches, warmup, steps))
                    else:
                        bare_runs.append(run_bare(cfg, batches, warmup, steps))
            split = summary(trainer_runs, bare_runs, warmup, steps, intervals)
            raw_separate = {"trainer": trainer_runs, "bare": bare_runs}
        mp = None
        if use_mp:
            mp = multiprocess(a, tmp, shards, intervals, warmup, steps, cfg.data.batch_size)

    g, d = build_models(cfg.model, seed=0)
    batch = cfg.data.batch_size
    main_figures = summary(mixed, [r["bare"] for r in mixed], warmup, steps, intervals)
    cores = os.cpu_count() or 1
    result = {
        "benchmark": "loop",
        "device": device_name(),
        "threads": mixed[0]["threads"],
        "image_size": cfg.data.image_size,
        "batch_size": batch,
        "generator_params": count_parameters(g),
        "discriminator_params": count_parameters(d),
        "ema": cfg.train.ema_half_life is not None,
        "warmup": warmup,
        "steps": steps,
        "repeats": repeats,
        "intervals": intervals,
        "intervals_scaled": scaled,
        "events_in_window": events,
        "method": "interleaved (a bare step, then the trainer step, per batch); per step index "
        "the median over repeats, summed over the window",
        **main_figures,
        "trainer_images_per_s": round(batch / main_figures["trainer_s_per_step"], 2),
        "bare_images_per_s": round(batch / main_figures["bare_s_per_step"], 2),
        "trainer_setup_s": round(statistics.median(r["setup_s"] for r in mixed), 3),
        "separate_runs": split,
        "multiprocess": mp,
        "images_per_s_1proc": mp["global_images_per_s"][f"1x{cores}"] if mp else None,
        "images_per_s_2proc": mp["global_images_per_s"]["2x1"] if mp else None,
        "ratio_2proc_vs_1proc": mp["ratio_2proc_vs_1proc"] if mp else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if a.dump:
        raw = {"interleaved": mixed, "separate": raw_separate}
        Path(a.dump).write_text(json.dumps(raw))
    print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
