"""The GAN training loop: one discriminator update, then one generator update, per step.

    fake = G(L)                                   # (B, 2, H, W) chroma from lightness
    D step: D(L, ab) -> 1, D(L, fake.detach()) -> 0          (LSGAN)
    G step: D(L, fake) -> 1  +  l1_weight * |fake - ab|      (D's weights frozen)

The run's parts are set up in distcolor/train/setup.py; the step is
distcolor/train/gan_step.py's, run by the backend (DDP or DeepSpeed) the run chose; the
loop below never asks which. Each rank reads its own shards (the loader is never
prepared by Accelerate).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from distcolor.backends.distributed import shutdown, step_seed
from distcolor.checkpoint import latest_checkpoint
from distcolor.color import lab_inputs
from distcolor.config import Config
from distcolor.data.batching import recycle_batches
from distcolor.data.loader import LoaderState
from distcolor.errors import UserError
from distcolor.locks import run_lock
from distcolor.preflight import check_run_paths
from distcolor.train.checkpointing import save_checkpoint
from distcolor.train.optim import set_learning_rates
from distcolor.train.preemption import StopRequest
from distcolor.train.setup import TrainingRun, set_up
from distcolor.train.telemetry import (
    StepLog,
    evaluate_held_out,
    log_pictures,
    model_facts_table,
    print_report,
    source_mix,
    total,
)
from distcolor.train.ticket import prune_round


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
        run = set_up(cfg, resume=resume, batches=batches)
        result = _loop(run)
        # After a failure none of this runs: the ranks may no longer meet (distcolor.errors
        # ends the processes). Here the loader's workers and the networks go before the
        # process group.
        run.backend.close()
        accelerator = run.accelerator
        del run
        shutdown(accelerator)
        return result


def _loop(run: TrainingRun) -> dict:
    cfg, tc, backend = run.cfg, run.cfg.train, run.backend
    step_images = cfg.data.batch_size * tc.grad_accum * run.world
    log_step = StepLog(run, step_images=step_images)
    bad_steps, stopped_at = 0, None
    with run.tracker, StopRequest(log=run.log) as stop_request, run.checkpoints:
        run.tracker.log_text("model", model_facts_table(run.facts), run.start_step)
        batches = recycle_batches(run.loader)  # each batch is converted on arrival
        for step in range(run.start_step + 1, tc.max_steps + 1):
            t0 = time.perf_counter()
            micro, wait = _micro_batches(batches, run.positions, tc.grad_accum, run.device)
            torch.manual_seed(step_seed(cfg.run.seed, step, run.rank))
            set_learning_rates(*backend.step.optimizers, step, tc)
            metrics = backend.step(micro)
            if run.ema is not None:
                _update_average(run, step, step_images)
            if run.ticket is not None:
                _prune_if_due(run, step)
            log_step.time(wait, time.perf_counter() - t0)
            bad_steps = 0 if metrics["stepped/G"] and metrics["stepped/D"] else bad_steps + 1
            if bad_steps >= tc.max_bad_steps:
                run.checkpoints.wait()  # the message names the newest checkpoint on disk
                raise UserError(_diverged_message(step, bad_steps, run.ckpt_dir))
            log_step(step, metrics)
            log_pictures(run, step)
            last = step == tc.max_steps
            if (
                run.held_out is not None
                and tc.eval_every
                and step % tc.eval_every == 0
                and not last
            ):
                backend.refresh()
                evaluate_held_out(run.held_out, run.sampler, run.tracker, step)
            stop = stop_request.agreed(run.device)
            if step % tc.ckpt_every == 0 or last or stop:
                save_checkpoint(run, step, wait=stop)
            if stop:
                stopped_at = step
                run.log(
                    f"{stop_request.signal_name or 'signal on another rank'}: stopped at step "
                    f"{step} with a checkpoint; continue with --resume"
                )
                break
        result = _result(run, stopped_at)
    if run.is_main and stopped_at is None:
        print_report(run.run_dir, result)
    return result


def _micro_batches(
    batches: Iterator[dict], positions: LoaderState, count: int, device: torch.device
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], float]:
    """The next `count` batches as (lightness, chroma) on the device, and the seconds spent
    waiting for the loader. The wait is the loader's alone: the conversion can wait for the
    GPU to finish the last step (kornia copies its constants there, blocking)."""
    wait, micro = 0.0, []
    for _ in range(count):
        t = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t
        positions.update(batch)
        micro.append(lab_inputs(batch, device))
    return micro, wait


def _update_average(run: TrainingRun, step: int, step_images: int) -> None:
    """The generator's EMA, counted from the last rewind of a pruning round."""
    restart = run.ticket.ema_restart_step() if run.ticket is not None else 0
    with run.backend.gathered(run.backend.generator):
        run.ema.update(
            run.backend.generator,
            images_seen=(step - 1 - restart) * step_images,
            step_images=step_images,
        )


def _prune_if_due(run: TrainingRun, step: int) -> None:
    run.ticket.snapshot_if_due(step)
    if run.ticket.round_due(step):
        optimizers = dict(zip("GD", run.backend.step.optimizers, strict=True))
        prune_round(
            run.ticket,
            step,
            optimizers=optimizers,
            ema=run.ema,
            probe=run.probe,
            tracker=run.tracker,
        )


def _result(run: TrainingRun, stopped_at: int | None) -> dict:
    """The run's summary (every rank: the sums are collectives): steps, skipped samples,
    the source mix and, after the last step, the held-out report."""
    result = {
        "steps": stopped_at or run.cfg.train.max_steps,
        "skipped_samples": total(run.accelerator, run.positions.skipped),
        "source_mix": source_mix(run.accelerator, run.positions, run.sources),
    }
    if stopped_at is not None:
        result["stopped_by_signal"] = True
    elif run.held_out is not None:
        run.backend.refresh()
        result.update(
            evaluate_held_out(run.held_out, run.sampler, run.tracker, run.cfg.train.max_steps)
        )
    return result


def _diverged_message(step: int, bad: int, ckpt_dir: Path) -> str:
    last = latest_checkpoint(ckpt_dir)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    return (
        f"training diverged: {bad} consecutive steps (to step {step}) had non-finite losses or "
        f"gradients and were skipped (train.max_bad_steps); {where}. Resume from it with a "
        "lower train.lr_g / train.lr_d, train.max_grad_norm, or train.mixed_precision=bf16"
    )
