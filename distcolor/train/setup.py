"""Everything a run is made of, set up in order: checks that can fail for a user first,
then the process group, data, networks, backend, restored state, loaders and writers.

The order of what draws random numbers or joins a collective is part of the result: a
resumed or multi-rank run is bit-identical only if every rank does the same in the same
order (tests/test_golden.py holds it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from distcolor.backends import Backend, build_backend, chosen_precision, join_process_group
from distcolor.backends.deepspeed_config import deepspeed_config, resolve_backend
from distcolor.backends.distributed import build_accelerator, rank_and_world
from distcolor.config import Config, config_to_yaml
from distcolor.data.catalog import Shard, read_manifest, shard_list
from distcolor.data.loader import (
    LoaderState,
    build_eval_loader,
    build_train_loader,
    check_train_split,
)
from distcolor.data.shards import ensure_shards
from distcolor.errors import UserError
from distcolor.evaluate.heldout import HeldOut
from distcolor.models import build_models, count_parameters, init_seed
from distcolor.models.flops import peak_flops, step_flops
from distcolor.preflight import check_image_size, check_memory
from distcolor.prune.lottery import LotteryTicket
from distcolor.tracking import Tracker, trim_metrics
from distcolor.train.async_checkpoint import CheckpointWriter
from distcolor.train.checkpointing import code_version
from distcolor.train.ema import GeneratorEMA
from distcolor.train.resume import (
    Resume,
    loader_positions,
    read_resume,
    restore_rng,
    resume_candidates,
    resume_ema,
)
from distcolor.train.telemetry import SAMPLE_IMAGES
from distcolor.train.ticket import lottery_ticket, probe_losses


@dataclass
class TrainingRun:
    """A run's parts, as the loop uses them."""

    cfg: Config
    accelerator: Accelerator
    backend: Backend
    rank: int
    world: int
    log: object  # print on rank 0, silent elsewhere
    start_step: int
    seed: int  # of the initial weights
    positions: LoaderState  # this rank's place in the data
    sources: list[str]
    loader: Iterable[dict]
    fixed: dict | None  # the held-out batch of every sample grid (rank 0)
    held_out: HeldOut | None
    ema: GeneratorEMA | None
    ticket: LotteryTicket | None
    probe: object  # held-out losses before and after a pruning round
    facts: dict  # parameters and FLOPs, for model.json and TensorBoard
    flops: dict
    peak: float | None  # the device's peak FLOP/s, for MFU
    tracker: Tracker
    checkpoints: CheckpointWriter
    version: str

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def ckpt_dir(self) -> Path:
        return self.cfg.run_dir / "checkpoints"

    @property
    def sampler(self) -> nn.Module:
        """Samples and evaluation use the averaged generator when there is one."""
        return self.ema.module if self.ema is not None else self.backend.local_g

    @property
    def replicas(self) -> dict[str, nn.Module]:
        """What must be the same on every rank (checked before each checkpoint)."""
        nets = {"G": self.backend.generator, "D": self.backend.discriminator}
        return nets | ({"G_ema": self.ema.module} if self.ema is not None else {})

    @property
    def histogrammed(self) -> dict[str, nn.Module]:
        nets = {"G": self.backend.local_g, "D": self.backend.local_d}
        return nets | ({"G_ema": self.ema.module} if self.ema is not None else {})


def set_up(cfg: Config, *, resume, batches: Iterable[dict] | None) -> TrainingRun:
    """Check, then build, a run (every rank; collectives inside)."""
    tc, data = cfg.train, cfg.data
    ckpt_dir = cfg.run_dir / "checkpoints"
    candidates = resume_candidates(resume, ckpt_dir)
    accelerator = build_accelerator(cfg)
    backend_name = resolve_backend(tc.backend)
    join_process_group(backend_name, accelerator, cfg)
    rank, world = rank_and_world(accelerator)
    log = print if accelerator.is_main_process else (lambda *_: None)
    restored = _preflight(cfg, accelerator, backend_name, world, resume, candidates, log)

    train_shards, test_shards = _shards(accelerator, cfg, log)
    if batches is None:  # enough shards for every rank and worker, before any network
        check_train_split(train_shards, data, world_size=world)
    seed = init_seed(cfg)  # the same initial weights on every rank
    generator, discriminator = build_models(cfg.model, seed=seed)
    if cfg.model.sync_batchnorm:
        generator, discriminator = _sync_batchnorm(generator, discriminator, accelerator, world)
    start_step, seed, positions = _starting_point(cfg, restored, seed, rank, world, log)
    flops = step_flops(cfg, batch_size=data.batch_size)
    facts = _facts(cfg, generator, discriminator, seed=seed, flops=flops, world=world, log=log)

    ema = _new_ema(cfg, generator)  # a float32 copy, made before DeepSpeed casts G
    backend = build_backend(
        backend_name, cfg, accelerator, generator, discriminator, world=world, seed=seed
    )
    if restored is not None:
        backend.load(restored.state, restored.path, restored.changed)
    if ema is not None:  # copied from G before the step moved G to the device
        ema.module.to(accelerator.device)
    if accelerator.is_main_process:
        _write_run_files(cfg, facts, resumed_at=start_step if restored is not None else None)
    state = restored.state if restored is not None else None
    ticket = lottery_ticket(cfg, *backend.pruning_networks(), backend.step, state)
    if ema is not None and restored is not None:
        with backend.gathered(backend.generator):
            resume_ema(ema, restored.state, backend.generator, log)
    peak = peak_flops(accelerator.device, backend.precision.mode, tc.peak_flops)
    loader = (
        batches
        if batches is not None
        else _train_loader(cfg, train_shards, positions, rank=rank, world=world)
    )
    fixed = _fixed_batch(cfg, test_shards or train_shards) if accelerator.is_main_process else None
    version = code_version()
    probe = _probe(backend, fixed, accelerator.device)
    held_out = _held_out(cfg, accelerator, train_shards, test_shards, rank=rank, world=world)
    tracker, checkpoints = _writers(cfg, accelerator, start_step, log)
    return TrainingRun(
        cfg=cfg,
        accelerator=accelerator,
        backend=backend,
        rank=rank,
        world=world,
        log=log,
        start_step=start_step,
        seed=seed,
        positions=positions,
        sources=sorted({shard.source for shard in train_shards}),
        loader=loader,
        fixed=fixed,
        held_out=held_out,
        ema=ema,
        ticket=ticket,
        probe=probe,
        facts=facts,
        flops=flops,
        peak=peak,
        tracker=tracker,
        checkpoints=checkpoints,
        version=version,
    )


def _starting_point(cfg: Config, restored: Resume | None, seed: int, rank, world, log):
    """(first step, seed of the initial weights, loader positions): fresh, or the resumed
    checkpoint's, with this rank's random state restored."""
    if restored is None:
        return 0, seed, LoaderState(cfg.data.num_workers)
    restore_rng(restored.state, rank, world)
    positions = loader_positions(restored.state, rank=rank, world=world, cfg=cfg, log=log)
    # The seed that made the checkpoint's initial weights.
    return restored.step, restored.state.get("init_seed", seed), positions


def _new_ema(cfg: Config, generator: nn.Module) -> GeneratorEMA | None:
    tc = cfg.train
    if tc.ema_half_life is None:
        return None
    return GeneratorEMA(generator, half_life=tc.ema_half_life, rampup=tc.ema_rampup)


def _probe(backend: Backend, fixed: dict | None, device: torch.device):
    """Losses of the fixed batch through both rank-local float32 copies (telemetry)."""
    return partial(
        probe_losses, backend.local_g, backend.local_d, backend.step.objective, fixed,
        device, backend.precision, backend.refresh,
    )  # fmt: skip


def _writers(cfg: Config, accelerator: Accelerator, start_step: int, log):
    """The progress/TensorBoard tracker (main process) and the checkpoint writer."""
    tc = cfg.train
    tracker = Tracker(
        cfg.run_dir, enabled=accelerator.is_main_process, total_steps=tc.max_steps,
        start_step=start_step,
    )  # fmt: skip
    checkpoints = CheckpointWriter(  # leaving its block waits for its last write
        cfg.run_dir / "checkpoints", keep_last=tc.keep_last, keep_every=tc.keep_every,
        background=tc.async_checkpoint, log=log,
    )  # fmt: skip
    return tracker, checkpoints


def _preflight(
    cfg: Config, accelerator: Accelerator, backend: str, world: int, resume, candidates, log
) -> Resume | None:
    """Before data is built or a weight allocated: data.image_size within reach of the
    shards, one step's memory within what the device has, and the checkpoint to resume
    (read and checked), if any."""
    check_image_size(cfg)
    check_memory(cfg, accelerator.device, world=world, backend=backend)
    if backend == "deepspeed":  # the JSON file read now, not once the networks exist
        deepspeed_config(cfg, world=world, precision=chosen_precision(cfg.train))
    if resume == "auto" and not candidates:
        ckpt_dir = cfg.run_dir / "checkpoints"
        log(f"--resume auto: no checkpoint in {ckpt_dir} yet; starting the run")
    if not candidates:
        return None
    return read_resume(
        candidates, cfg, log, backend=backend, world=world, requeued=resume == "auto"
    )


def _shards(accelerator: Accelerator, cfg: Config, log) -> tuple[list[Shard], list[Shard]]:
    """The train and test shards, read by every rank; synthetic data is built once per
    filesystem.

    Rank 0 builds first; then each node's local main builds only if its (node-local)
    folder still has nothing; then everyone reads. Barriers are global, so the three
    phases are sequential rather than nested.
    """
    folder = Path(cfg.data.shards)
    if accelerator.is_main_process:
        ensure_shards(folder, cfg.data.synthetic, log=log)
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process and not accelerator.is_main_process:
        ensure_shards(folder, cfg.data.synthetic, log=log)
    accelerator.wait_for_everyone()
    manifest = read_manifest(folder)
    train_shards = shard_list(folder, manifest, "train", urls=cfg.data.train_urls)
    test_shards = shard_list(folder, manifest, "test", urls=cfg.data.test_urls)
    if not train_shards:
        raise UserError(f"data.shards: {cfg.data.shards} has no train shards")
    return train_shards, test_shards


def _sync_batchnorm(generator, discriminator, accelerator: Accelerator, world: int):
    """Both networks with SyncBatchNorm: statistics over the global batch."""
    if world > 1 and accelerator.device.type == "cpu":
        raise UserError(
            "model.sync_batchnorm: PyTorch's SyncBatchNorm runs on GPUs only; set it to false "
            "for CPU runs"
        )
    convert = nn.SyncBatchNorm.convert_sync_batchnorm
    return convert(generator), convert(discriminator)


def _facts(cfg: Config, generator, discriminator, *, seed: int, flops: dict, world: int, log):
    """Parameters and FLOPs of the run, said once."""
    facts = {
        "generator_params": count_parameters(generator),
        "discriminator_params": count_parameters(discriminator),
        "init_seed": seed,
        **flops,
        "train_flops_per_global_step": flops["train_flops_per_step"] * world,
    }
    log(
        f"generator {facts['generator_params']:,} parameters, discriminator "
        f"{facts['discriminator_params']:,}; {flops['train_flops_per_image'] / 1e9:.2f} GFLOP "
        f"per training image at {cfg.data.image_size} px, "
        f"{facts['train_flops_per_global_step'] / 1e12:.3f} TFLOP per step of "
        f"{cfg.data.batch_size} x {world} process(es)"
    )
    return facts


def _write_run_files(cfg: Config, facts: dict, *, resumed_at: int | None) -> None:
    """config.yaml and model.json in the run folder; a resumed run's metrics.jsonl loses
    the rows past its checkpoint (rank 0)."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    (run_dir / "model.json").write_text(json.dumps(facts, indent=2))
    if resumed_at is not None:
        trim_metrics(run_dir, resumed_at)


def _train_loader(cfg: Config, shards: list[Shard], positions: LoaderState, *, rank, world):
    return build_train_loader(
        shards,
        cfg.data,
        seed=cfg.run.seed,
        rank=rank,
        world_size=world,
        state=positions.state_dict(),
    )


def _held_out(cfg: Config, accelerator: Accelerator, train_shards, test_shards, *, rank, world):
    """The held-out evaluation (train.eval_images test images over all ranks), if any."""
    tc, data = cfg.train, cfg.data
    if tc.eval_images <= 0 or not test_shards:
        return None
    return HeldOut(
        test_shards,
        train_shards,
        image_size=data.image_size,
        batch_size=data.batch_size,
        num_workers=min(data.num_workers, 2),
        rank=rank,
        world=world,
        images=tc.eval_images,
        mean_images=tc.eval_mean_images,
        device=accelerator.device,
        reduce=partial(accelerator.reduce, reduction="sum"),
    )


def _fixed_batch(cfg: Config, shards: list[Shard]) -> dict | None:
    """The same held-out images in every sample grid, so progress is visible."""
    loader = build_eval_loader(
        shards,
        image_size=cfg.data.image_size,
        batch_size=SAMPLE_IMAGES,
        num_workers=0,
        rank=0,
        world_size=1,
        limit=SAMPLE_IMAGES,
    )
    return next(iter(loader), None)
