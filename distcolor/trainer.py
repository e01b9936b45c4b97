"""The GAN training loop: one discriminator update, then one generator update, per step.

    fake = G(L)                                   # (B, 2, H, W) chroma from lightness
    D step: D(L, ab) -> 1, D(L, fake.detach()) -> 0          (LSGAN)
    G step: D(L, fake) -> 1  +  l1_weight * |fake - ab|      (D's weights frozen)

Both models go through `accelerator.prepare` (DDP when several processes run); the
optimizers, loss scalers and the step itself are `distcolor/step.py`'s; the data loader
is never prepared (each rank reads its own shards).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from distcolor import __version__
from distcolor.async_checkpoint import CheckpointWriter
from distcolor.backends import backend_class, build_backend, join_process_group
from distcolor.checkpoint import (
    is_complete,
    latest_checkpoint,
    list_checkpoints,
    restore,
)
from distcolor.color import lab_inputs
from distcolor.config import Config, config_to_yaml
from distcolor.data.batching import recycle_batches
from distcolor.data.catalog import read_manifest, shard_list
from distcolor.data.loader import LoaderState, build_eval_loader, build_train_loader
from distcolor.data.shards import ensure_shards
from distcolor.deepspeed_config import resolve_backend
from distcolor.distributed import (
    broadcast_buffers,
    build_accelerator,
    check_replicas,
    rank_and_world,
    shutdown,
    step_seed,
)
from distcolor.ema import GeneratorEMA
from distcolor.errors import UserError
from distcolor.evaluation import HeldOut
from distcolor.evaluation import scalars as evaluation_scalars
from distcolor.flops import peak_flops, step_flops
from distcolor.locks import run_lock
from distcolor.losses import GANObjective
from distcolor.lottery import LotteryTicket
from distcolor.models import build_models, count_parameters, init_seed
from distcolor.monitor import log_monitoring
from distcolor.optim import set_learning_rates
from distcolor.precision import Precision
from distcolor.preemption import StopRequest
from distcolor.preflight import check_image_size, check_memory, check_resume_step, check_run_paths
from distcolor.tracking import Tracker, sample_grid, trim_metrics
from distcolor.train.gan_step import GANStep

SAMPLE_IMAGES = 8  # columns of the sample grid


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


@torch.no_grad()
def _samples(generator: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    """Sample grid from the *unwrapped* generator: a DDP forward is a collective (buffer
    broadcast) and only rank 0 draws samples."""
    was_training = generator.training
    generator.eval()
    lightness, _ = lab_inputs(batch, device)
    chroma = generator(lightness).float()
    generator.train(was_training)
    return sample_grid(lightness, chroma, batch["rgb"])


def _prepare_data(accelerator: Accelerator, cfg: Config, log) -> dict:
    """The shard manifest on every rank; synthetic data is built once per filesystem.

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
    return read_manifest(folder)


def _total(accelerator: Accelerator, count: int) -> int:
    """Sum of a per-rank count over all ranks (a collective: every rank must call it)."""
    return int(accelerator.reduce(torch.tensor(count, device=accelerator.device), "sum").item())


def _mix(accelerator: Accelerator, state: LoaderState, sources: list[str]) -> dict[str, float]:
    """Share of the training images so far from each source, over all ranks (a collective)."""
    counts = torch.tensor([state.mix[s] for s in sources], dtype=torch.float64)
    counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
    total = max(counts.sum().item(), 1.0)
    return {s: counts[i].item() / total for i, s in enumerate(sources)}


def data_order(cfg: Config, world: int) -> dict:
    """Everything that fixes which sample each reader reads when: a resumed run continues
    the saved positions only if all of it is unchanged."""
    d = cfg.data
    return {
        "world_size": world,
        "num_workers": d.num_workers,
        "batch_size": d.batch_size,
        "shuffle_buffer": d.shuffle_buffer,
        "sampling": d.sampling,
        "source_weights": d.source_weights,
        "train_urls": d.train_urls,
        "seed": cfg.run.seed,
    }


def _loader_resume(state: dict, *, rank: int, world: int, cfg: Config, log) -> LoaderState:
    """This rank's loader position from a checkpoint (every rank's is saved in it)."""
    saved = state.get("loader") or []
    positions = LoaderState(cfg.data.num_workers)
    before, now = state.get("data_order", {}), data_order(cfg, world)
    if before == now and len(saved) == world:
        positions.load_state_dict(saved[rank])
        return positions
    # Another split of the data: continue with fresh rounds rather than repeat old ones.
    changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in now.items() if before.get(k) != v)
    log(f"warning: data order changed since the checkpoint ({changed}); continuing with new epochs")
    for rank_state in saved:
        old = LoaderState(1)
        old.load_state_dict(rank_state)
        for tag, round_ in old.next_rounds().items():
            positions.first_round[tag] = max(positions.first_round.get(tag, 0), round_)
        if rank == 0:  # totals so far carry over once (the logs sum them over ranks)
            positions.skipped += old.skipped
            positions.mix.update(old.mix)
    return positions


def train(
    cfg: Config, *, resume: bool | str | None = None, batches: Iterable[dict] | None = None
) -> dict:
    """Train on `cfg`; returns the final held-out metrics (also printed and saved).

    resume: None/False starts a run; "latest" (or True) continues from the newest complete
    checkpoint; "auto" does so if there is one and starts otherwise; any other string is
    a checkpoint folder to continue from.
    batches: loader-format batches (uint8 `gray` and `rgb`, plus `worker`, `position`,
    `skipped`, `sources`) to train on instead of the shard stream (benchmarks).
    """
    check_run_paths(cfg, resume)  # one line for a bad path, before the lock is taken
    with run_lock(cfg.run_dir):  # one trainer per run folder, before anything is written
        return _train(cfg, resume=resume, batches=batches)


def _train(cfg: Config, *, resume: bool | str | None, batches: Iterable[dict] | None) -> dict:
    run_dir, ckpt_dir = cfg.run_dir, cfg.run_dir / "checkpoints"
    candidates = _resume_candidates(resume, ckpt_dir)
    accelerator = build_accelerator(cfg)
    backend_name = resolve_backend(cfg.train.backend)
    join_process_group(backend_name, accelerator, cfg)
    rank, world = rank_and_world(accelerator)
    is_main = accelerator.is_main_process
    log = print if is_main else (lambda *_: None)
    _check_resources(cfg, accelerator.device, world=world, backend=backend_name)

    manifest = _prepare_data(accelerator, cfg, log)
    folder = Path(cfg.data.shards)
    train_shards = shard_list(folder, manifest, "train", urls=cfg.data.train_urls)
    test_shards = shard_list(folder, manifest, "test", urls=cfg.data.test_urls)
    if not train_shards:
        raise UserError(f"data.shards: {cfg.data.shards} has no train shards")
    sources = sorted({shard.source for shard in train_shards})

    seed = init_seed(cfg)  # the same initial weights on every rank
    generator, discriminator = build_models(cfg.model, seed=seed)
    if cfg.model.sync_batchnorm:
        generator, discriminator = _sync_batchnorm(generator, discriminator, accelerator, world)
    start_step, positions = 0, LoaderState(cfg.data.num_workers)
    if resume == "auto" and not candidates:
        log(f"--resume auto: no checkpoint in {ckpt_dir} yet; starting the run")
    requeued, resume = resume == "auto", bool(candidates)
    if resume:
        state, ckpt_path = restore(candidates, models={}, log=log)
        changed = _check_resumable(state, cfg, log, backend=backend_name, world=world)
        check_resume_step(state, cfg, requeued=requeued, log=log)
        _restore_rng(state, rank, world)
        seed = state.get("init_seed", seed)  # the seed that made these weights
        start_step = int(state["step"])
        positions = _loader_resume(state, rank=rank, world=world, cfg=cfg, log=log)
    flops = step_flops(cfg, batch_size=cfg.data.batch_size)
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
    data, tc = cfg.data, cfg.train
    ema = None
    if tc.ema_half_life is not None:  # a float32 copy, made before DeepSpeed casts G
        ema = GeneratorEMA(generator, half_life=tc.ema_half_life, rampup=tc.ema_rampup)
    backend = build_backend(
        backend_name, cfg, accelerator, generator, discriminator, world=world, seed=seed
    )
    if resume:
        backend.load(state, ckpt_path, changed)
    step_fn, precision = backend.step, backend.precision
    if ema is not None:  # copied from G before the step moved G to the device
        ema.module.to(accelerator.device)
    opt_g, opt_d = step_fn.optimizers

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
        (run_dir / "model.json").write_text(json.dumps(facts, indent=2))
        if resume:
            trim_metrics(run_dir, start_step)

    ticket = _lottery_ticket(cfg, *backend.pruning_networks(), step_fn, state if resume else None)
    if ema is not None and resume:
        with backend.gathered(backend.generator):
            _resume_ema(ema, state, backend.generator, log)
    # Samples and evaluation use the averaged generator when there is one.
    sampler = ema.module if ema is not None else backend.local_g
    peak = peak_flops(accelerator.device, precision.mode, tc.peak_flops)
    loader = (
        batches
        if batches is not None
        else build_train_loader(
            train_shards,
            image_size=data.image_size,
            batch_size=data.batch_size,
            num_workers=data.num_workers,
            shuffle_buffer=data.shuffle_buffer,
            seed=cfg.run.seed,
            rank=rank,
            world_size=world,
            sampling=data.sampling,
            source_weights=data.source_weights,
            state=positions.state_dict(),
        )
    )
    # The same held-out images in every sample grid, so progress is visible.
    fixed = None
    if is_main:
        fixed_loader = build_eval_loader(
            test_shards or train_shards,
            image_size=data.image_size,
            batch_size=SAMPLE_IMAGES,
            num_workers=0,
            rank=0,
            world_size=1,
            limit=SAMPLE_IMAGES,
        )
        fixed = next(iter(fixed_loader), None)

    device = accelerator.device
    version = code_version()
    replicas = {"G": backend.generator, "D": backend.discriminator}
    histogrammed = {"G": backend.local_g, "D": backend.local_d}
    if ema is not None:
        replicas["G_ema"] = histogrammed["G_ema"] = ema.module
    probe = partial(
        _probe_losses,
        backend.local_g,
        backend.local_d,
        step_fn.objective,
        fixed,
        device,
        precision,
        backend.refresh,
    )
    held_out = None
    if tc.eval_images > 0 and test_shards:
        held_out = HeldOut(
            test_shards,
            train_shards,
            image_size=data.image_size,
            batch_size=data.batch_size,
            num_workers=min(data.num_workers, 2),
            rank=rank,
            world=world,
            images=tc.eval_images,
            mean_images=tc.eval_mean_images,
            device=device,
            reduce=partial(accelerator.reduce, reduction="sum"),
        )
    stopped_at = None
    tracker = Tracker(run_dir, enabled=is_main, total_steps=tc.max_steps, start_step=start_step)
    checkpoints = CheckpointWriter(  # leaving the block below waits for its last write
        ckpt_dir,
        keep_last=tc.keep_last,
        keep_every=tc.keep_every,
        background=tc.async_checkpoint,
        log=log,
    )
    with tracker, StopRequest(log=log) as stop_request, checkpoints:
        tracker.log_text("model", _model_facts(facts), start_step)
        batches = recycle_batches(loader)  # each batch is converted on arrival
        step_images = data.batch_size * tc.grad_accum * world
        t_last, step_last = time.perf_counter(), start_step
        waited = computed = 0.0  # seconds since the last log: waiting for data, the rest
        bad_steps = 0
        for step in range(start_step + 1, tc.max_steps + 1):
            t0 = time.perf_counter()
            wait, micro = 0.0, []
            for _ in range(tc.grad_accum):
                t = time.perf_counter()
                batch = next(batches)
                # Data wait is the loader's alone: the conversion can wait for the GPU to
                # finish the last step (kornia copies its constants there, blocking).
                wait += time.perf_counter() - t
                positions.update(batch)
                micro.append(lab_inputs(batch, device))
            torch.manual_seed(step_seed(cfg.run.seed, step, rank))
            set_learning_rates(opt_g, opt_d, step, tc)
            metrics = step_fn(micro)
            if ema is not None:
                restart = ticket.ema_restart_step() if ticket is not None else 0
                with backend.gathered(backend.generator):
                    ema.update(
                        backend.generator,
                        images_seen=(step - 1 - restart) * step_images,
                        step_images=step_images,
                    )
            if ticket is not None:
                ticket.snapshot_if_due(step)
                if ticket.round_due(step):
                    _prune_round(
                        ticket,
                        step,
                        optimizers={"G": opt_g, "D": opt_d},
                        ema=ema,
                        probe=probe,
                        tracker=tracker,
                    )
            elapsed = time.perf_counter() - t0
            waited, computed = waited + wait, computed + elapsed - wait
            bad_steps = 0 if metrics["stepped/G"] and metrics["stepped/D"] else bad_steps + 1
            if bad_steps >= tc.max_bad_steps:
                checkpoints.wait()  # the message names the newest checkpoint on disk
                raise UserError(_diverged_message(step, bad_steps, ckpt_dir))

            if step % tc.log_every == 0 or step == tc.max_steps:
                now = time.perf_counter()
                steps_done = step - step_last
                images_per_s = steps_done * step_images / (now - t_last)
                t_last, step_last = now, step
                scalars = {k: v.item() for k, v in metrics.items() if not k.startswith("stepped/")}
                skipped = _total(accelerator, positions.skipped)
                mix = _mix(accelerator, positions, sources)
                scalars.update({f"data/mix/{name}": share for name, share in mix.items()})
                scalars.update(
                    {
                        "lr/G": opt_g.param_groups[0]["lr"],
                        "lr/D": opt_d.param_groups[0]["lr"],
                        "perf/images_per_s": images_per_s,
                        "perf/tflop_per_s": images_per_s * flops["train_flops_per_image"] / 1e12,
                        "perf/data_wait_s_per_step": waited / steps_done,
                        "perf/compute_s_per_step": computed / steps_done,
                        "data/skipped": float(skipped),
                        "steps/skipped_G": float(step_fn.update_g.skipped),
                        "steps/skipped_D": float(step_fn.update_d.skipped),
                    }
                )
                waited = computed = 0.0
                for name, update in (("G", step_fn.update_g), ("D", step_fn.update_d)):
                    if update.loss_scale() is not None:
                        scalars[f"amp/loss_scale_{name}"] = update.loss_scale()
                if peak is not None:  # model FLOP utilisation of all devices together
                    scalars["perf/mfu"] = (
                        images_per_s * flops["train_flops_per_image"] / (peak * world)
                    )
                tracker.log_scalars(step, scalars)
                tracker.advance(
                    step,
                    f"D {scalars['loss/D/total']:.3f}  "
                    f"G {scalars['loss/G/adv']:.3f} + "
                    f"L1 {scalars['loss/G/l1']:.4f}  {images_per_s:.0f} img/s",
                )
            else:
                tracker.advance(step)

            last = step == tc.max_steps
            sample_due = step % tc.sample_every == 0 or last
            hist_due = step % tc.hist_every == 0 or last
            if sample_due or hist_due:
                backend.refresh()
            if is_main and fixed is not None and sample_due:
                tracker.log_samples(step, _samples(sampler, fixed, device))
            if is_main and fixed is not None and hist_due:
                # Drift to grey or sepia shows here first: colourfulness, hue spread and
                # chroma histograms of the fixed samples, plus weight histograms.
                log_monitoring(
                    tracker, step, sampler=sampler, batch=fixed, device=device, models=histogrammed
                )

            if held_out is not None and tc.eval_every and step % tc.eval_every == 0 and not last:
                backend.refresh()
                _evaluate(held_out, sampler, tracker, step)

            stop = stop_request.agreed(device)
            if step % tc.ckpt_every == 0 or last or stop:
                # Every rank's loader position and RNG state go into rank 0's checkpoint,
                # after every rank has checked it holds the same weights (collectives).
                check_replicas(replicas, step=step, device=device)
                per_rank = gather_object([{"loader": positions.state_dict(), "rng": _rng_state()}])
                nets = [backend.generator, backend.discriminator] + ([ema.module] if ema else [])
                state = {
                    "step": step,
                    "init_seed": seed,
                    "backend": backend.name,
                    "G_ema": ema.state_dict() if ema is not None else None,
                    "prune": ticket.state_dict() if ticket is not None else None,
                    "steps": backend.state_dict(),
                    "loader": [r["loader"] for r in per_rank],
                    "rng": [r["rng"] for r in per_rank],
                    "config": cfg.model_dump(mode="json"),
                    "code_version": version,
                    "world_size": world,
                    "data_order": data_order(cfg, world),
                }
                # Batch-norm statistics can turn non-finite even when every bad update was
                # skipped; never let such a state replace a good checkpoint.
                if not _all_finite(accelerator, nets):
                    log(f"warning: step {step}: non-finite weights or statistics; not saved")
                else:
                    backend.save(state, ckpt_dir=ckpt_dir, step=step, writer=checkpoints, wait=stop)
                accelerator.wait_for_everyone()
            if stop:
                stopped_at = step
                log(
                    f"{stop_request.signal_name or 'signal on another rank'}: stopped at step "
                    f"{step} with a checkpoint; continue with --resume"
                )
                break

        result = {
            "steps": stopped_at or tc.max_steps,
            "skipped_samples": _total(accelerator, positions.skipped),
            "source_mix": _mix(accelerator, positions, sources),
        }
        if stopped_at is not None:
            result["stopped_by_signal"] = True
        elif held_out is not None:
            backend.refresh()
            result.update(_evaluate(held_out, sampler, tracker, tc.max_steps))
    if is_main and stopped_at is None:
        _report(run_dir, result)
    backend.close()
    del batches, loader, step_fn, backend, generator, discriminator, opt_g, opt_d
    shutdown(accelerator)
    return result


def _lottery_ticket(
    cfg: Config, generator: nn.Module, discriminator: nn.Module, step_fn: GANStep, state
) -> LotteryTicket | None:
    """The pruning schedule (cfg.prune), its masks attached to both networks' updates; from
    the checkpoint `state` when resuming."""
    saved = (state or {}).get("prune")
    if state is not None and (saved is None) != (cfg.prune is None):
        raise UserError(
            "prune: the checkpoint was trained with pruning; resume it with its prune settings"
            if saved is not None
            else "prune: the checkpoint was trained without pruning; pruning starts with a new run"
        )
    if cfg.prune is None:
        return None
    ticket = LotteryTicket(cfg.prune, generator=generator, discriminator=discriminator)
    step_fn.update_g.masks = ticket.masks["G"]
    step_fn.update_d.masks = ticket.masks.get("D")
    if saved is not None:
        ticket.check_resumable(saved, step=int(state["step"]))
        ticket.load_state_dict(saved)
    else:
        ticket.start()
    return ticket


@torch.no_grad()
def _probe_losses(
    G: nn.Module,
    D: nn.Module,
    objective: GANObjective,
    batch,
    device,
    precision: Precision,
    refresh,
) -> dict[str, float]:
    """Losses on the fixed held-out batch (rank 0), in eval mode so no statistics move.
    Every rank calls it: `refresh` brings G and D up to date (a collective under DeepSpeed)."""
    refresh()
    if batch is None:
        return {}
    modes = G.training, D.training
    G.eval(), D.eval()
    lightness, chroma = lab_inputs(batch, device)
    with precision.autocast():
        fake = G(lightness)
        g = objective.generator(D, lightness, chroma, fake)
        d = objective.discriminator(D, lightness, chroma, fake)
    G.train(modes[0]), D.train(modes[1])
    return {"G/l1": g["l1"].item(), "G/adv": g["adv"].item(), "D/total": d["total"].item()}


def _prune_round(ticket: LotteryTicket, step: int, *, optimizers, ema, probe, tracker) -> None:
    """One pruning round with its TensorBoard record: sparsity overall and per layer, the
    threshold, and the held-out losses just before and just after."""
    before = probe()
    report = ticket.prune_round(step, optimizers=optimizers, ema=ema)
    after = probe()
    scalars = {"prune/round": float(report["round"])}
    for name in ticket.masks:
        net = report[name]
        scalars[f"prune/sparsity/{name}"] = net["sparsity"]
        scalars[f"prune/threshold/{name}"] = net["threshold"]
        for layer, share in net["layers"].items():
            scalars[f"prune/sparsity/{name}/{layer.removesuffix('.weight')}"] = share
    for key in before:
        scalars[f"prune/loss_before/{key}"] = before[key]
        scalars[f"prune/loss_after/{key}"] = after[key]
    tracker.log_scalars(step, scalars)
    change = f"; held-out L1 {before['G/l1']:.4f} -> {after['G/l1']:.4f}" if before else ""
    sparsity = ", ".join(
        f"{name} {report[name]['sparsity']:.1%} pruned (threshold {report[name]['threshold']:.3g})"
        for name in ticket.masks
    )
    tracker.print(f"step {step}: pruning round {report['round']}: {sparsity}{change}")


def _resume_candidates(resume: bool | str | None, ckpt_dir: Path) -> list[Path]:
    """The checkpoints `resume` may continue from (oldest first; restore takes the newest
    readable one), or [] to start a new run."""
    found = list_checkpoints(ckpt_dir)
    partial = [p for p in ckpt_dir.glob("step-*") if p.is_dir() and not is_complete(p)]
    if resume and partial:
        print(f"warning: ignoring incomplete checkpoint folder(s): {', '.join(map(str, partial))}")
    if not resume:
        if found:
            raise UserError(
                f"run.name: {ckpt_dir.parent} already holds checkpoints; pass --resume to "
                "continue that run, or choose another run.name"
            )
        return []
    if resume == "auto":
        return found
    if resume is True or resume == "latest":
        if not found:
            raise UserError(f"--resume: no complete checkpoint in {ckpt_dir}")
        return found
    path = Path(resume)
    if not path.is_dir() or not is_complete(path):
        raise UserError(f"--resume: {path} is not a complete checkpoint folder")
    return [path]


def _rng_state() -> dict:
    """This rank's random generators (steps reseed from (seed, step, rank) anyway; saved so
    anything drawing outside the step, now or later, resumes exactly too)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_rng(state: dict, rank: int, world: int) -> None:
    saved = state.get("rng") or []
    if len(saved) == world:
        torch.set_rng_state(saved[rank]["torch"])
        if "cuda" in saved[rank] and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved[rank]["cuda"])


def _sync_batchnorm(generator, discriminator, accelerator: Accelerator, world: int):
    """Both networks with SyncBatchNorm: statistics over the global batch."""
    if world > 1 and accelerator.device.type == "cpu":
        raise UserError(
            "model.sync_batchnorm: PyTorch's SyncBatchNorm runs on GPUs only; set it to false "
            "for CPU runs"
        )
    convert = nn.SyncBatchNorm.convert_sync_batchnorm
    return convert(generator), convert(discriminator)


def _all_finite(accelerator: Accelerator, modules: list[nn.Module]) -> bool:
    """Whether every rank's weights and statistics are finite (a collective)."""
    finite = all(
        bool(torch.isfinite(t).all())
        for m in modules
        for t in [*m.parameters(), *m.buffers()]
        if t.is_floating_point()
    )
    bad = torch.tensor(0.0 if finite else 1.0, device=accelerator.device)
    return accelerator.reduce(bad, "sum").item() == 0


def _diverged_message(step: int, bad: int, ckpt_dir: Path) -> str:
    last = latest_checkpoint(ckpt_dir)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    return (
        f"training diverged: {bad} consecutive steps (to step {step}) had non-finite losses or "
        f"gradients and were skipped (train.max_bad_steps); {where}. Resume from it with a "
        "lower train.lr_g / train.lr_d, train.max_grad_norm, or train.mixed_precision=bf16"
    )


def _check_resources(cfg: Config, device: torch.device, *, world: int, backend: str) -> None:
    """Before data is built or a weight allocated: data.image_size within reach of the
    shards, and one step's memory within what the device has (one line otherwise)."""
    check_image_size(cfg)
    check_memory(cfg, device, world=world, backend=backend)


def _check_resumable(state: dict, cfg: Config, log, *, backend: str, world: int) -> list[str]:
    """Refuse a resume that cannot work; warn about model settings that changed silently
    (activations, dropout, norms without weights: the saved weights still load). Returns
    those changes (`key old -> new`), for the error if the weights then do not fit."""
    saved = state.get("config", {})
    backend_class(backend).check_resumable(state, world=world)
    before = saved.get("train", {}).get("optimizer", cfg.train.optimizer)
    if before != cfg.train.optimizer:
        raise UserError(
            f"--resume: the checkpoint was trained with train.optimizer={before}; this config "
            f"says {cfg.train.optimizer} (their states differ: start a new run to switch)"
        )
    changed = _changed_keys(saved.get("model", {}), cfg.model.model_dump(mode="json"), "model")
    if changed:
        log(f"warning: resuming with changed model settings: {', '.join(changed)}")
    return changed


def _changed_keys(before: dict, now: dict, prefix: str) -> list[str]:
    """`prefix.key old -> new` for every differing leaf of two nested dicts."""
    changed = []
    for key, value in now.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            changed += _changed_keys(old, value, f"{prefix}.{key}")
        elif old != value:
            changed.append(f"{prefix}.{key} {old} -> {value}")
    return changed


def _model_facts(facts: dict) -> str:
    """The run's model facts as a markdown table for TensorBoard."""
    rows = "\n".join(f"| {key} | {value:,.0f} |" for key, value in facts.items())
    return "| | |\n|---|---|\n" + rows


def _resume_ema(ema: GeneratorEMA, state: dict, generator: nn.Module, log) -> None:
    """The saved average, or (a checkpoint from a run without one) the restored generator."""
    if state.get("G_ema") is not None:
        ema.load_state_dict(state["G_ema"])
    else:
        log("warning: the checkpoint has no generator average; starting it from its weights")
        ema.load_state_dict(generator.state_dict())


def _evaluate(held_out: HeldOut, sampler: nn.Module, tracker: Tracker, step: int) -> dict:
    """The held-out report (every rank), logged as eval/* scalars; returns the run's
    summary of it (the whole report under `report`)."""
    # BN statistics last moved locally on each rank: evaluate rank 0's (the saved) ones.
    broadcast_buffers(sampler)
    report = held_out(sampler)
    if report["model"]["images"] == 0:  # every test sample unreadable (each was warned about)
        tracker.print(f"warning: step {step}: no readable test images; nothing evaluated")
        return {"images": 0}
    summary = {
        "images": report["model"]["images"],
        "l1_model": report["model"]["l1"],
        "l1_no_colour": report["baseline_gray"]["l1"],
        "report": report,
    }
    scalars = evaluation_scalars(report)
    scalars.update(
        {"eval/l1_model": summary["l1_model"], "eval/l1_no_colour": summary["l1_no_colour"]}
    )
    tracker.log_scalars(step, scalars)
    return summary


def _report(run_dir: Path, result: dict) -> None:
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    if "report" in result:
        report = result["report"]
        print(
            f"held-out on {result['images']} test images, CIEDE2000 (lower is better): "
            f"model {report['model']['ciede2000']:.2f} vs no colour "
            f"{report['baseline_gray']['ciede2000']:.2f} vs mean colour "
            f"{report['baseline_mean']['ciede2000']:.2f}; chroma L1 model "
            f"{result['l1_model']:.4f} vs no colour {result['l1_no_colour']:.4f}"
        )
    if result["skipped_samples"]:
        print(f"skipped {result['skipped_samples']} unreadable samples")
    if len(result["source_mix"]) > 1:
        mix = ", ".join(f"{name} {share:.1%}" for name, share in result["source_mix"].items())
        print(f"training images by source: {mix}")
    print(f"samples:     {run_dir / 'samples'}")
    print(f"checkpoints: {run_dir / 'checkpoints'}")
    print(f"tensorboard: tensorboard --logdir {run_dir / 'tb'}")
