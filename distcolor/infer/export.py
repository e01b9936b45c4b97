"""Export a trained generator: dense and compact safetensors plus config.json, written
from a checkpoint (layout: infer/exported.py). Pruning masks are checked to hold in what
is written, and the sparsity is counted; the three files are renamed into place only
once all are on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from distcolor.durable import fsync_path
from distcolor.errors import UserError
from distcolor.infer.compact import bit_pattern, compact_tensors
from distcolor.infer.exported import COMPACT, CONFIG, DENSE, FORMAT
from distcolor.infer.from_checkpoint import WEIGHTS, checkpoint_generator
from distcolor.model_checks import checked_step


def _prune_info(prune: object) -> tuple[int | None, dict[str, torch.Tensor] | None]:
    """Rounds done and the generator's keep-masks, each None when the checkpoint does not
    say (no pruning, or an older layout)."""
    if not isinstance(prune, dict):
        return None, None
    rounds = prune.get("round")
    try:
        rounds = checked_step(rounds, "prune.round") if rounds is not None else None
    except UserError:  # only reported: a damaged count is not worth refusing the file
        rounds = None
    masks = prune.get("masks")
    masks = masks.get("G") if isinstance(masks, dict) else None
    return rounds, (masks if isinstance(masks, dict) and masks else None)


def _check_masks(weights: dict[str, torch.Tensor], masks: dict, source: Path) -> None:
    """Pruned positions must be zero in what is exported, else the masks were not enforced."""
    for name, keep in masks.items():
        weight = weights.get(name)
        if weight is None or not isinstance(keep, torch.Tensor) or keep.shape != weight.shape:
            raise UserError(f"checkpoint {source}: pruning mask {name} fits no generator weight")
        alive = int(torch.count_nonzero((weight != 0) & ~keep.bool()))
        if alive:
            raise UserError(
                f"checkpoint {source}: {name} has {alive} non-zero weights at pruned positions "
                "(the masks were not enforced); not exporting it"
            )


def _zero_counts(tensors: list[torch.Tensor]) -> tuple[int, int, int]:
    """(entries, entries equal to zero, of which -0.0), counted on the bit patterns (a
    float `count_nonzero` is about 15x slower on a CPU)."""
    total = zeros = negative = 0
    for t in tensors:
        pattern = bit_pattern(t)
        signed = int(torch.count_nonzero(pattern == torch.iinfo(pattern.dtype).min))
        total += t.numel()
        zeros += t.numel() - int(torch.count_nonzero(pattern)) + signed
        negative += signed
    return total, zeros, negative


def _stage(path: Path, write: Callable[[Path], object]) -> Path:
    """Write through a hidden temporary file in the same folder, on disk before it is
    renamed into place (the caller renames); nothing is left behind on failure."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its files private
        fsync_path(tmp)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise UserError(f"cannot write {path}: {err.strerror or err}") from None
        raise
    return tmp


def _check_outputs(out_dir: Path, files: list[Path], *, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output folder {out_dir} is a file")
    existing = [f for f in files if f.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists; pass --overwrite to replace it")


def export_generator(
    checkpoint: Path, out_dir: Path, *, weights: str = "ema", overwrite: bool = False
) -> dict:
    """Write the generator of `checkpoint` (a checkpoint folder, its state.pt or a run
    folder) to `out_dir` as dense and compact safetensors plus config.json.

    weights="ema" exports the generator's average when the run kept one (else its live
    weights, with a `note`), "live" the trained weights. Returns the figures: file sizes
    (`dense_bytes`, `compact_bytes`, `compact_ratio`), `sparsity` (zero fraction of the
    conv and transposed-conv weights), `overall_sparsity` (of all parameters, buffers
    excluded), `weights`, `step`, `files`, ...
    """
    if weights not in WEIGHTS:
        raise UserError(f"--weights: {weights!r} is not one of {', '.join(WEIGHTS)}")
    out_dir = Path(out_dir)
    files = [out_dir / DENSE, out_dir / COMPACT, out_dir / CONFIG]
    _check_outputs(out_dir, files, overwrite=overwrite)  # before the slow part
    loaded = checkpoint_generator(checkpoint, weights)
    generator, generator_state, source = loaded.generator, loaded.tensors, loaded.source
    step, used, note = loaded.step, loaded.weights, loaded.note
    rounds, masks = _prune_info(loaded.state.get("prune"))
    if masks is not None:
        _check_masks(generator_state, masks, source)

    params = [name for name, _ in generator.named_parameters()]
    conv = [
        f"{name}.weight"
        for name, module in generator.named_modules()
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d)
    ]
    conv_total, conv_zeros, _ = _zero_counts([generator_state[n] for n in conv])
    total, zeros, negative = _zero_counts([generator_state[n] for n in params])
    model_json = loaded.stored.model.model_dump_json()
    meta = {"format": FORMAT, "model": model_json, "step": str(step), "weights": used}
    compact, encoded = compact_tensors(generator_state)
    compact_meta = {**meta, "encoded": json.dumps(encoded), "bit_order": "little"}

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {out_dir}: {err.strerror or err}") from None
    staged = [_stage(files[0], lambda p: save_file(generator_state, str(p), metadata=meta))]
    try:
        staged.append(_stage(files[1], lambda p: save_file(compact, str(p), metadata=compact_meta)))
        dense_bytes, compact_bytes = (p.stat().st_size for p in staged)
        result = {
            "checkpoint": str(source),
            "step": step,
            "weights": used,
            **({"note": note} if note else {}),
            "parameters": total,
            "pruning_rounds": rounds,
            "sparsity": conv_zeros / conv_total if conv_total else 0.0,
            "overall_sparsity": zeros / total if total else 0.0,
            "negative_zeros": negative,  # kept as values by the compact form: they cost space
            "encoded_tensors": len(encoded),
            "dense_bytes": dense_bytes,
            "compact_bytes": compact_bytes,
            "compact_ratio": compact_bytes / dense_bytes,
            "files": [str(f) for f in files],
        }
        info = {"format": FORMAT, "model": json.loads(model_json)}
        info.update({k: v for k, v in result.items() if k != "files"})
        text = json.dumps(info, indent=2) + "\n"
        staged.append(_stage(files[2], lambda p: p.write_text(text)))
    except BaseException:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in zip(staged, files, strict=True):  # all written: now three renames
        os.replace(tmp, final)
    return result
