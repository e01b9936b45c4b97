"""A trained generator from whatever the user points at: a run folder, a checkpoint (DDP
or DeepSpeed), or an export. Shared by `evaluate` and `colorize`.

Nothing here unpickles arbitrary objects: checkpoints are read with
`torch.load(weights_only=True)` (DeepSpeed's shards too), exports are safetensors. What a
file claims (its config, its tensors' shapes) is checked before the generator is built
(distcolor/model_checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distcolor.errors import UserError
from distcolor.infer.exported import COMPACT, DENSE, load_exported
from distcolor.infer.from_checkpoint import WEIGHTS, checkpoint_generator
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
    if not path.is_dir() and not path.is_file():  # a FIFO or a device would block or never end
        raise UserError(f"--checkpoint: {path} is neither a folder nor a regular file")
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
    loaded = checkpoint_generator(path, weights)
    folder = loaded.source if loaded.source.is_dir() else loaded.source.parent
    run_dir = folder.parent.parent if folder.parent.name == "checkpoints" else None
    return TrainedGenerator(
        generator=loaded.generator.eval(),
        source=loaded.source,
        weights=loaded.weights,
        step=loaded.step,
        image_size=loaded.stored.image_size,
        run_dir=run_dir,
        l1_weight=loaded.stored.l1_weight,
        note=loaded.note,
    )
