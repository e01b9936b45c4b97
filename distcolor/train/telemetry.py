"""What a training run reports while it runs and when it ends: scalars and the progress
line every train.log_every steps, sample grids and colour-drift monitors, the held-out
evaluation, the closing summary. Rank 0 writes; the sums over ranks are collectives that
every rank joins at the same steps."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from distcolor.backends.distributed import broadcast_buffers
from distcolor.data.loader import LoaderState
from distcolor.evaluate.heldout import HeldOut
from distcolor.evaluate.heldout import scalars as evaluation_scalars
from distcolor.monitor import log_monitoring
from distcolor.tracking import Tracker, draw_sample_grid

SAMPLE_IMAGES = 8  # columns of the sample grid


def total(accelerator: Accelerator, count: int) -> int:
    """Sum of a per-rank count over all ranks (a collective: every rank must call it)."""
    return int(accelerator.reduce(torch.tensor(count, device=accelerator.device), "sum").item())


def source_mix(accelerator: Accelerator, state: LoaderState, sources: list[str]) -> dict:
    """Share of the training images so far from each source, over all ranks (a collective)."""
    counts = torch.tensor([state.mix[s] for s in sources], dtype=torch.float64)
    counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
    whole = max(counts.sum().item(), 1.0)
    return {s: counts[i].item() / whole for i, s in enumerate(sources)}


class StepLog:
    """The per-step scalars: losses, gradient norms, learning rates, throughput and MFU,
    data wait, skipped samples and steps, loss scales, the source mix."""

    def __init__(self, run, *, step_images: int) -> None:
        self.run, self.step_images = run, step_images
        self.t_last, self.step_last = time.perf_counter(), run.start_step
        self.waited = self.computed = 0.0  # seconds since the last log: data wait, the rest

    def time(self, wait: float, elapsed: float) -> None:
        self.waited, self.computed = self.waited + wait, self.computed + elapsed - wait

    def __call__(self, step: int, metrics: dict[str, torch.Tensor]) -> None:
        run, tc = self.run, self.run.cfg.train
        if not (step % tc.log_every == 0 or step == tc.max_steps):
            run.tracker.advance(step)
            return
        now = time.perf_counter()
        steps_done = step - self.step_last
        images_per_s = steps_done * self.step_images / (now - self.t_last)
        self.t_last, self.step_last = now, step
        flops_per_image = run.flops["train_flops_per_image"]
        update_g, update_d = run.backend.step.update_g, run.backend.step.update_d
        scalars = {k: v.item() for k, v in metrics.items() if not k.startswith("stepped/")}
        skipped = total(run.accelerator, run.positions.skipped)
        mix = source_mix(run.accelerator, run.positions, run.sources)
        scalars.update({f"data/mix/{name}": share for name, share in mix.items()})
        scalars.update(
            {
                "lr/G": update_g.optimizer.param_groups[0]["lr"],
                "lr/D": update_d.optimizer.param_groups[0]["lr"],
                "perf/images_per_s": images_per_s,
                "perf/tflop_per_s": images_per_s * flops_per_image / 1e12,
                "perf/data_wait_s_per_step": self.waited / steps_done,
                "perf/compute_s_per_step": self.computed / steps_done,
                "data/skipped": float(skipped),
                "steps/skipped_G": float(update_g.skipped),
                "steps/skipped_D": float(update_d.skipped),
            }
        )
        self.waited = self.computed = 0.0
        for name, update in (("G", update_g), ("D", update_d)):
            if update.loss_scale() is not None:
                scalars[f"amp/loss_scale_{name}"] = update.loss_scale()
        if run.peak is not None:  # model FLOP utilisation of all devices together
            scalars["perf/mfu"] = images_per_s * flops_per_image / (run.peak * run.world)
        run.tracker.log_scalars(step, scalars)
        run.tracker.advance(
            step,
            f"D {scalars['loss/D/total']:.3f}  G {scalars['loss/G/adv']:.3f} + "
            f"L1 {scalars['loss/G/l1']:.4f}  {images_per_s:.0f} img/s",
        )


def log_pictures(run, step: int) -> None:
    """Sample grids every train.sample_every steps; colour-drift monitors and weight
    histograms every train.hist_every (and both at the last step)."""
    tc = run.cfg.train
    last = step == tc.max_steps
    sample_due = step % tc.sample_every == 0 or last
    hist_due = step % tc.hist_every == 0 or last
    if sample_due or hist_due:
        run.backend.refresh()
    if not run.is_main or run.fixed is None:
        return
    if sample_due:
        run.tracker.log_samples(step, draw_sample_grid(run.sampler, run.fixed, run.device))
    if hist_due:
        # Drift to grey or sepia shows here first: colourfulness, hue spread and chroma
        # histograms of the fixed samples, plus weight histograms.
        log_monitoring(
            run.tracker,
            step,
            sampler=run.sampler,
            batch=run.fixed,
            device=run.device,
            models=run.histogrammed,
        )


def evaluate_held_out(held_out: HeldOut, sampler: nn.Module, tracker: Tracker, step: int) -> dict:
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


def model_facts_table(facts: dict) -> str:
    """The run's model facts as a markdown table for TensorBoard."""
    rows = "\n".join(f"| {key} | {value:,.0f} |" for key, value in facts.items())
    return "| | |\n|---|---|\n" + rows


def print_report(run_dir: Path, result: dict) -> None:
    """eval.json, and the closing lines: held-out scores, skipped samples, where things are."""
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
