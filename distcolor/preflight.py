"""Checks a training run makes before its first step, so a mistake is one line instead of
a traceback, an allocation of the whole machine or a wrong result:

- paths: run.out_dir, data.shards and a --resume folder usable (`check_run_paths`);
- data: data.image_size not far beyond the size the shards store (`check_image_size`);
- memory: one training step's rough footprint against the memory available
  (`check_memory`);
- resume: the checkpoint's step below train.max_steps (`check_resume_step`).

Each is a plain function of the config (and what it needs), so the trainer calls them
where it has that information.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.autograd.graph import saved_tensors_hooks

from distcolor.config import Config
from distcolor.data.catalog import check_crop_size, stored_size
from distcolor.data.publish import needs_recovery
from distcolor.errors import UserError
from distcolor.models import build_models
from distcolor.paths import input_folder, output_folder
from distcolor.train.losses import GANObjective
from distcolor.train.precision import DTYPES, resolve_precision

OPTIMIZER_COPIES = 3  # gradient + two moments (Adam and AdaBelief alike) per weight


def check_run_paths(cfg: Config, resume: bool | str | None) -> None:
    """run.out_dir / run.name writable (or creatable), data.shards a readable folder (or,
    with data.synthetic, creatable), a --resume PATH a folder; UserError otherwise."""
    output_folder(cfg.run.out_dir, "run.out_dir")
    output_folder(cfg.run_dir, "run.name")
    shards = Path(cfg.data.shards)
    if cfg.data.synthetic is not None and not os.path.lexists(shards):
        output_folder(shards, "data.shards")
    elif not os.path.lexists(shards) and needs_recovery(Path(os.path.realpath(shards))):
        pass  # a publish killed between its renames: ensure_shards puts the set back
    else:
        input_folder(shards, "data.shards")
    if isinstance(resume, str) and resume not in ("auto", "latest"):
        input_folder(resume, "--resume")


def check_image_size(cfg: Config) -> None:
    """data.image_size against the shards in data.shards, or the synthetic set data.synthetic
    will build there (checked before it is built)."""
    try:
        manifest = json.loads((Path(cfg.data.shards) / "manifest.json").read_text())
    except (OSError, ValueError):  # none yet (or unreadable: reading it reports that)
        manifest = None
    stored = stored_size(manifest) if manifest is not None else None
    if manifest is None and cfg.data.synthetic is not None:
        stored = cfg.data.synthetic.size
    check_crop_size(cfg.data.image_size, stored, key="data.image_size", shards=cfg.data.shards)


@dataclass(frozen=True)
class StepMemory:
    """Rough bytes one training step holds at its peak, on one process."""

    activations: int  # tensors saved for backward: G's, plus D's two forwards
    state: int  # weights, gradients and optimizer moments (+ the EMA copy)
    snapshot: int  # host copy of the state for a background checkpoint write

    def on(self, device: torch.device) -> int:
        """What lives in `device`'s memory (the snapshot is always host memory)."""
        return self.activations + self.state + (self.snapshot if device.type == "cpu" else 0)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for backward while `fn` runs."""
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[id(tensor)] = tensor  # held, so an id is never reused within the count
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(t.numel() * t.element_size() for t in saved.values())


def step_memory(cfg: Config, *, world: int = 1, backend: str = "ddp") -> StepMemory:
    """The footprint of one step on `data.batch_size` images, counted on the meta device
    (shapes only: milliseconds, no memory, whatever the config)."""
    batch, side = cfg.data.batch_size, cfg.data.image_size
    with torch.device("meta"):
        generator, discriminator = build_models(cfg.model, seed=0)
        lightness = torch.zeros(batch, cfg.model.generator.in_channels, side, side)
        chroma = torch.zeros(batch, cfg.model.generator.out_channels, side, side)
    objective = GANObjective(gan_loss=cfg.train.gan_loss, l1_weight=cfg.train.l1_weight)
    fake: list[torch.Tensor] = []
    g = _saved_bytes(lambda: fake.append(generator(lightness)))
    d_step = _saved_bytes(lambda: objective.discriminator(discriminator, lightness, chroma, *fake))
    g_step = _saved_bytes(lambda: objective.generator(discriminator, lightness, chroma, *fake))
    activations = g + max(d_step, g_step)  # G's stay alive through both updates
    if resolve_precision(cfg.train.mixed_precision) in DTYPES:
        activations //= 2  # autocast saves most of them in 16 bits
    weights = sum(t.numel() * 4 for net in (generator, discriminator) for t in net.parameters())
    optimizer = weights * OPTIMIZER_COPIES
    if backend == "deepspeed":  # ZeRO partitions optimizer state over the ranks (stage >= 1)
        optimizer //= max(world, 1)
    ema = sum(t.numel() * 4 for t in generator.parameters())
    ema = ema if cfg.train.ema_half_life is not None else 0
    snapshot = weights + optimizer + ema if cfg.train.async_checkpoint else 0
    return StepMemory(activations, weights + optimizer + ema, snapshot)


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes free, what was measured) for `device`: the GPU's free memory, or the host's
    available memory (within a cgroup's limit); None when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return None
    try:
        import psutil

        free = psutil.virtual_memory().available
    except (ImportError, OSError):
        return None
    limit = _cgroup_room()
    if limit is not None and limit < free:
        return limit, "left under this container's memory limit"
    return free, "available host memory"


def _cgroup_room() -> int | None:
    """Bytes left under a cgroup v2 memory limit, if one is set."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        used = int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def gigabytes(size: int) -> str:
    return f"{size / 1e9:,.1f} GB" if size < 1e12 else f"{size / 1e12:,.1f} TB"


def check_memory(cfg: Config, device: torch.device, *, world: int = 1, backend: str = "ddp"):
    """UserError when one step's estimate exceeds the memory available to this process.

    Deliberately lenient (it refuses only what cannot fit: an estimate above all free
    memory); processes sharing a host's memory each count (LOCAL_WORLD_SIZE)."""
    room = available_memory(device)
    if room is None:
        return
    free, measured = room
    need = step_memory(cfg, world=world, backend=backend)
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    total = need.on(device) * max(sharing, 1)
    if total <= free:
        return
    each = f" x {sharing} processes" if sharing > 1 else ""
    raise UserError(
        f"data.batch_size: one training step needs about {gigabytes(total)}{each} "
        f"(activations {gigabytes(need.activations)} for {cfg.data.batch_size} images of "
        f"{cfg.data.image_size} px, weights and optimizer state "
        f"{gigabytes(need.state + (need.snapshot if device.type == 'cpu' else 0))}) but "
        f"{gigabytes(free)} is {measured}; lower data.batch_size (train.grad_accum keeps the "
        "images per step), data.image_size or model.generator.width / "
        "model.discriminator.width"
    )


def render_memory(generator: torch.nn.Module, *, batch: int, side: int) -> int:
    """Rough peak bytes of a no-grad generator forward on `batch` images of `side` px:
    the U-Net's skips (held to the end) plus the two largest layer outputs, on a meta copy
    of the network (shapes only)."""
    meta = copy.deepcopy(generator).to("meta")
    skips, largest = [], [0, 0]

    def record(module, _inputs, output) -> None:
        size = output.numel() * output.element_size()
        if module in blocks:
            skips.append(size)
        largest[:] = sorted([*largest, size])[-2:]

    blocks = set(getattr(meta, "down", []))
    hooks = [m.register_forward_hook(record) for m in meta.modules() if m is not meta]
    with torch.no_grad():
        meta(torch.zeros(batch, 1, side, side, device="meta"))
    for hook in hooks:
        hook.remove()
    return sum(skips) + sum(largest)


def check_render_memory(generator: torch.nn.Module, *, batch: int, side: int, device) -> None:
    """UserError when colouring a batch at `side` px cannot fit in `device`'s memory."""
    room = available_memory(torch.device(device))
    if room is None:
        return
    need, (free, measured) = render_memory(generator, batch=batch, side=side), room
    if need > free:
        raise UserError(
            f"--render-size: a batch of {batch} at {side} px needs about {gigabytes(need)} but "
            f"{gigabytes(free)} is {measured}; lower --render-size or --batch-size"
        )


def check_resume_step(state: dict, cfg: Config, *, requeued: bool, log=print) -> None:
    """Refuse a resume with nothing left to train: a checkpoint past train.max_steps, or
    at it, except for a requeued `--resume auto` job that had already finished (it ends
    again: evaluation only, as a job requeued during its final evaluation needs)."""
    step, last = int(state["step"]), cfg.train.max_steps
    if step < last:
        return
    if step == last and requeued:
        log(f"--resume auto: the checkpoint is at train.max_steps = {last}; evaluating only")
        return
    where = "beyond" if step > last else "already at"
    raise UserError(
        f"train.max_steps: the checkpoint is at step {step}, {where} train.max_steps = {last}: "
        f"nothing to train; set train.max_steps above {step} to continue (scripts/evaluate.py "
        "scores the checkpoint as it is)"
    )
