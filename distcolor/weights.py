"""A trained generator from whatever the user points at: a run folder, a checkpoint (DDP
or DeepSpeed), or an export. Shared by `evaluate` and `colorize`.

Nothing here unpickles arbitrary objects: checkpoints are read with
`torch.load(weights_only=True)` (DeepSpeed's shards too), exports are safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distcolor.checkpoint import load_checkpoint
from distcolor.deepspeed_checkpoint import consolidated_state, is_deepspeed_checkpoint
from distcolor.errors import UserError
from distcolor.export import (
    COMPACT,
    DENSE,
    WEIGHTS,
    fitted_generator,
    load_exported,
    model_config_of,
    resolve_checkpoint,
    select_weights,
)
from distcolor.models.unet import UNetGenerator
from distcolor.sizes import unet_multiple


@dataclass
class TrainedGenerator:
    """The generator (float32, CPU, eval mode) and what is known of its training."""

    generator: UNetGenerator
    source: Path
    weights: str  # "ema" or "live"
    step: int | None
    image_size: int  # the training crop size; 2**depth when the source does not say
    run_dir: Path | None  # the run folder (tb/, config.yaml), when the source is in one
    l1_weight: float = 100.0
    note: str | None = None

    @property
    def multiple(self) -> int:
        """Input sides must be divisible by this (2**depth)."""
        return unet_multiple(self.generator.depth)


def is_export(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix == ".safetensors"
    return path.is_dir() and any((path / name).is_file() for name in (DENSE, COMPACT))


def load_generator(path: Path, *, weights: str = "ema") -> TrainedGenerator:
    """The generator in `path`: an export (folder or .safetensors file) or a checkpoint
    (run folder = its newest complete checkpoint, step folder, state.pt; DDP or DeepSpeed).
    weights: "ema" (the average, when the run kept one) or "live"; exports hold one."""
    if weights not in WEIGHTS:
        raise UserError(f"--weights: {weights!r} is not one of {', '.join(WEIGHTS)}")
    path = Path(path)
    if not path.exists():
        raise UserError(f"--checkpoint: {path} does not exist")
    if is_export(path):
        generator = load_exported(path)
        folder = path if path.is_dir() else path.parent
        return TrainedGenerator(
            generator=generator,
            source=path,
            weights="export",
            step=None,
            image_size=unet_multiple(generator.depth),
            run_dir=None,
            note=f"{folder} is an export: no training size or logs; rendering at 2**depth",
        )
    source = resolve_checkpoint(path)
    state = load_checkpoint(source)
    folder = source if source.is_dir() else source.parent
    if is_deepspeed_checkpoint(state) and (weights == "live" or state.get("G_ema") is None):
        state["G"] = consolidated_state(folder, "G")  # the live weights live in the shards
    chosen, used, note = select_weights(state, weights, source)
    model_cfg = model_config_of(state, source)
    generator = fitted_generator(model_cfg, chosen, f"checkpoint {source}").eval()
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    data, train = config.get("data") or {}, config.get("train") or {}
    run_dir = folder.parent.parent if folder.parent.name == "checkpoints" else None
    return TrainedGenerator(
        generator=generator,
        source=source,
        weights=used,
        step=int(state.get("step", 0)),
        image_size=int(data.get("image_size") or unet_multiple(generator.depth)),
        run_dir=run_dir,
        l1_weight=float(train.get("l1_weight", 100.0)),
        note=note,
    )
