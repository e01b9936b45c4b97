"""A trained generator from whatever the user points at: a run folder, a checkpoint (DDP
or DeepSpeed), an export, or an ONNX export (run by onnxruntime: infer/onnx_generator.py).
Shared by `evaluate` and `colorize`.

Nothing here unpickles arbitrary objects: checkpoints are read with
`torch.load(weights_only=True)` (DeepSpeed's shards too), exports are safetensors. What a
file claims (its config, its tensors' shapes) is checked before the generator is built
(distcolor/model_checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from distcolor.config import ModelConfig
from distcolor.errors import UserError
from distcolor.infer.exported import COMPACT, DENSE, load_exported
from distcolor.infer.from_checkpoint import WEIGHTS, checkpoint_generator
from distcolor.infer.onnx_generator import ONNX_NAME, OnnxGenerator  # onnx imported on use
from distcolor.model_checks import export_model
from distcolor.models.unet import UNetGenerator
from distcolor.sizes import unet_multiple


@dataclass
class TrainedGenerator:
    """The generator (float32, CPU, eval mode; an OnnxGenerator for an .onnx file) and
    what is known of its training."""

    generator: UNetGenerator | OnnxGenerator
    model: ModelConfig
    source: Path
    weights: str  # "ema" or "live"
    step: int | None
    image_size: int  # the training crop size; 2**depth when the source does not say
    run_dir: Path | None  # the run folder (tb/, config.yaml), when the source is in one
    l1_weight: float = 100.0
    note: str | None = None
    image_size_known: bool = True  # False: image_size is 2**depth, the source did not say

    @property
    def multiple(self) -> int:
        """Input sides must be divisible by this (2**depth)."""
        return unet_multiple(self.generator.depth)


def is_export(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix == ".safetensors"
    return path.is_dir() and any((path / name).is_file() for name in (DENSE, COMPACT))


def is_onnx(path: Path) -> bool:
    """An .onnx file, or a folder whose only generator is generator.onnx (a folder that
    also holds safetensors is read as a PyTorch export: name the .onnx file to run it)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".onnx"
    return path.is_dir() and (path / ONNX_NAME).is_file() and not is_export(path)


def _onnx_generator(path: Path) -> TrainedGenerator:
    generator = OnnxGenerator(path / ONNX_NAME if path.is_dir() else path)
    meta, size = generator.metadata, generator.image_size
    step = meta.get("step", "")
    return TrainedGenerator(
        generator=generator,
        model=generator.model,
        source=generator.path,
        weights=meta.get("weights") or "export",
        step=int(step) if step.isdigit() else None,
        image_size=size or unet_multiple(generator.depth),
        run_dir=None,
        note=None if size else f"{path}: no training size recorded; rendering at 2**depth",
        image_size_known=size is not None,
    )


def _export_model(path: Path) -> ModelConfig:
    """The model config of an export (already checked by `load_exported`): header only."""
    if path.is_dir():
        path = next(path / name for name in (DENSE, COMPACT) if (path / name).is_file())
    with safe_open(str(path), framework="pt") as f:
        return export_model((f.metadata() or {}).get("model"), path)


def load_generator(path: Path, *, weights: str = "ema") -> TrainedGenerator:
    """The generator in `path`: an export (folder or .safetensors file) or a checkpoint
    (run folder = its newest complete checkpoint, step folder, state.pt; DDP or DeepSpeed)
    or an ONNX export (.onnx file, or a folder holding only generator.onnx).
    weights: "ema" (the average, when the run kept one) or "live"; exports hold one."""
    if weights not in WEIGHTS:
        raise UserError(f"--weights: {weights!r} is not one of {', '.join(WEIGHTS)}")
    path = Path(path)
    if not path.exists():
        raise UserError(f"--checkpoint: {path} does not exist")
    if not path.is_dir() and not path.is_file():  # a FIFO or a device would block or never end
        raise UserError(f"--checkpoint: {path} is neither a folder nor a regular file")
    if is_onnx(path):
        return _onnx_generator(path)
    if is_export(path):
        generator = load_exported(path)
        folder = path if path.is_dir() else path.parent
        return TrainedGenerator(
            generator=generator,
            model=_export_model(path),
            source=path,
            weights="export",
            step=None,
            image_size=unet_multiple(generator.depth),
            run_dir=None,
            note=f"{folder} is an export: no training size or logs; rendering at 2**depth",
            image_size_known=False,
        )
    loaded = checkpoint_generator(path, weights)
    folder = loaded.source if loaded.source.is_dir() else loaded.source.parent
    run_dir = folder.parent.parent if folder.parent.name == "checkpoints" else None
    return TrainedGenerator(
        generator=loaded.generator.eval(),
        model=loaded.stored.model,
        source=loaded.source,
        weights=loaded.weights,
        step=loaded.step,
        image_size=loaded.stored.image_size,
        run_dir=run_dir,
        l1_weight=loaded.stored.l1_weight,
        note=loaded.note,
    )
