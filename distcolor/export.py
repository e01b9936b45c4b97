"""Export a trained generator: dense safetensors, and a compact form for pruned ones.

    out/
      generator.safetensors           every tensor of the generator, as trained
      generator.compact.safetensors   the same, each floating tensor that gets smaller so
                                      stored as its entries that are not +0.0
                                      (`NAME.__values`, 1-D, row-major, same dtype) plus a
                                      presence bitmap (`NAME.__bitmap`, uint8; entry i is
                                      bit i % 8, least significant first, of byte i // 8:
                                      numpy's `packbits(bitorder="little")`)
      config.json                     model config, step, which weights, sparsity

Both files carry in their metadata the format (`format`), the model config (`model`,
JSON), `step` and `weights` (ema | live); the compact one adds `encoded`, a JSON object
giving each encoded tensor's shape and dtype. Either file alone rebuilds the network
(`load_exported`). Presence is decided on the bit pattern, so a -0.0 is kept as a value
and the round trip is bit-exact. safetensors holds only tensors and a JSON header:
loading an export cannot run code, unlike a pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from distcolor.checkpoint import (
    MARKER,
    STATE,
    is_complete,
    latest_checkpoint,
    load_checkpoint,
)
from distcolor.config import ModelConfig, config_from_dict
from distcolor.deepspeed_checkpoint import consolidated_state, is_deepspeed_checkpoint
from distcolor.errors import UserError, first_line
from distcolor.models.build import build_generator
from distcolor.models.unet import UNetGenerator

DENSE, COMPACT, CONFIG = "generator.safetensors", "generator.compact.safetensors", "config.json"
FORMAT = "distcolor-generator/1"
WEIGHTS = ("ema", "live")
_VALUES, _BITMAP = ".__values", ".__bitmap"
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# --- the compact encoding -------------------------------------------------------------


def bit_pattern(tensor: torch.Tensor) -> torch.Tensor:
    """The entries' bits as same-width integers, flat: +0.0 is 0, -0.0 is not."""
    flat = tensor.reshape(-1)
    return flat.view(_INT_OF_SIZE[flat.element_size()])


def pack_bits(present: torch.Tensor) -> torch.Tensor:
    """Bool entries -> uint8, 8 per byte: entry i is bit i % 8 of byte i // 8."""
    flat = present.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])  # (8 * bytes,)
    shifts = torch.arange(8, dtype=torch.uint8)
    return (flat.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)  # bits are disjoint


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The inverse of `pack_bits`: the first `count` entries, as bools."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed.reshape(-1, 1) >> shifts) & 1).bool().reshape(-1)[:count]


def compact_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Each floating tensor that gets smaller as values + bitmap is stored so; returns the
    tensors to save and `{name: {"shape", "dtype"}}` of the encoded ones."""
    out, encoded = {}, {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()  # row-major, whatever the memory format
        if not tensor.is_floating_point() or tensor.numel() == 0:
            out[name] = tensor
            continue
        present = bit_pattern(tensor) != 0
        alive = int(torch.count_nonzero(present))
        if alive * tensor.element_size() + (tensor.numel() + 7) // 8 >= tensor.nbytes:
            out[name] = tensor
            continue
        out[name + _VALUES] = tensor.reshape(-1)[present]  # (alive,)
        out[name + _BITMAP] = pack_bits(present)  # (ceil(numel / 8),)
        encoded[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]}
    return out, encoded


def expand_tensors(tensors: dict[str, torch.Tensor], encoded: dict) -> dict[str, torch.Tensor]:
    """The inverse of `compact_tensors`: dense tensors, bit for bit. ValueError if the
    parts do not agree (a damaged or hand-edited file)."""
    parts = {name + suffix for name in encoded for suffix in (_VALUES, _BITMAP)}
    state = {name: t for name, t in tensors.items() if name not in parts}
    for name, info in encoded.items():
        values, bitmap = tensors.get(name + _VALUES), tensors.get(name + _BITMAP)
        if values is None or bitmap is None:
            raise ValueError(f"{name}: its values or bitmap are missing")
        shape = [int(side) for side in info["shape"]]
        count = int(torch.Size(shape).numel())
        if str(values.dtype).split(".")[-1] != info["dtype"] or bitmap.dtype != torch.uint8:
            raise ValueError(f"{name}: values are {values.dtype}, the header says {info['dtype']}")
        if bitmap.numel() != (count + 7) // 8:
            raise ValueError(f"{name}: a bitmap of {bitmap.numel()} bytes for {count} entries")
        present = unpack_bits(bitmap, count)
        marked = int(torch.count_nonzero(present))
        if marked != values.numel():
            raise ValueError(f"{name}: {values.numel()} values for {marked} marked entries")
        dense = torch.zeros(count, dtype=values.dtype)  # +0.0 wherever nothing was stored
        dense[present] = values
        state[name] = dense.reshape(shape)
    return state


# --- reading the checkpoint -----------------------------------------------------------


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, its state.pt, a run folder or its checkpoints/ folder (then
    the newest complete checkpoint); UserError for anything else or a partial one."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if path.is_file():
        if path.parent.name.startswith("step-") and not is_complete(path.parent):
            raise UserError(f"checkpoint {path.parent} is incomplete (no {MARKER} marker)")
        return path
    if is_complete(path):
        return path
    if (path / STATE).exists():
        raise UserError(f"checkpoint {path} is incomplete (no {MARKER} marker)")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    newest = latest_checkpoint(folder)
    if newest is not None:
        return newest
    if folder != path or any(p.name.startswith("step-") for p in path.iterdir()):
        raise UserError(f"checkpoint: {folder} holds no complete checkpoint")
    raise UserError(f"checkpoint {path} is not a checkpoint folder, a {STATE} or a run folder")


def select_weights(
    state: dict, weights: str, source: Path
) -> tuple[dict[str, torch.Tensor], str, str | None]:
    """The generator state dict to export, "ema" or "live", and a note on a fallback.
    (A DeepSpeed checkpoint's live G is in its shards: only the chosen one must be here.)"""
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {source} is not a distcolor training checkpoint (no 'G')")
    used, note = weights, None
    if weights == "ema" and state.get("G_ema") is None:
        used, note = "live", "the run kept no EMA of the generator; exported its live weights"
    chosen = state.get("G_ema" if used == "ema" else "G")
    if not isinstance(chosen, dict):
        raise UserError(f"checkpoint {source} is not a distcolor training checkpoint (no 'G')")
    if not all(isinstance(t, torch.Tensor) for t in chosen.values()):
        raise UserError(f"checkpoint {source}: its {used} generator holds non-tensor entries")
    return {name: t.detach().cpu().contiguous() for name, t in chosen.items()}, used, note


def model_config_of(state: dict, source: Path) -> ModelConfig:
    """The run's model config; only the model section if the whole run config no longer
    validates (a checkpoint from an older distcolor whose other settings changed)."""
    tree = state.get("config")
    if not isinstance(tree, dict):
        raise UserError(f"checkpoint {source} holds no run config")
    try:
        return config_from_dict(tree).model
    except UserError as err:
        if not isinstance(tree.get("model"), dict):
            raise UserError(f"checkpoint {source}: its config is not valid ({err})") from None
        try:
            return ModelConfig.model_validate(tree["model"])
        except ValidationError:
            raise UserError(f"checkpoint {source}: its config is not valid ({err})") from None


def fitted_generator(model_cfg: ModelConfig, weights: dict, source: object) -> UNetGenerator:
    """The generator of `model_cfg` holding `weights` (strictly: every name and shape)."""
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: no side effect
        generator = build_generator(model_cfg)
    try:
        generator.load_state_dict(weights)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:300]
        raise UserError(f"{source}: the weights do not fit their model config ({reason})") from None
    return generator


def _prune_info(prune: object) -> tuple[int | None, dict[str, torch.Tensor] | None]:
    """Rounds done and the generator's keep-masks, each None when the checkpoint does not
    say (no pruning, or an older layout)."""
    if not isinstance(prune, dict):
        return None, None
    rounds = prune.get("round")
    rounds = int(rounds) if isinstance(rounds, int | torch.Tensor) else None
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


# --- writing --------------------------------------------------------------------------


def _stage(path: Path, write: Callable[[Path], object]) -> Path:
    """Write through a hidden temporary file in the same folder, on disk before it is
    renamed into place (the caller renames); nothing is left behind on failure."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its files private
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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
    source = resolve_checkpoint(checkpoint)
    state = load_checkpoint(source)
    if is_deepspeed_checkpoint(state):  # the live weights are in the engine's shards
        state["G"] = consolidated_state(source if source.is_dir() else source.parent, "G")
    generator_state, used, note = select_weights(state, weights, source)
    model_cfg = model_config_of(state, source)
    generator = fitted_generator(model_cfg, generator_state, f"checkpoint {source}")
    rounds, masks = _prune_info(state.get("prune"))
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
    step = int(state.get("step", 0))
    model_json = model_cfg.model_dump_json()
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


# --- reading an export ----------------------------------------------------------------


def load_compact(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The dense state dict and the metadata (strings) of an exported file, either form."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({first_line(err)})") from None
    found = meta.get("format")
    if found != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} export (its format is {found!r})")
    try:
        return expand_tensors(tensors, json.loads(meta.get("encoded", "{}"))), meta
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: damaged compact encoding ({first_line(err)})") from None


def load_exported(path: Path) -> UNetGenerator:
    """The generator from an export folder (its dense file, else its compact one) or
    either exported file, built from the embedded config, weights loaded strictly, in
    eval mode."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in (DENSE, COMPACT) if (path / name).is_file()]
        if not found:
            raise UserError(f"{path} holds neither {DENSE} nor {COMPACT}")
        path = found[0]
    state, meta = load_compact(path)
    try:
        model_cfg = ModelConfig.model_validate_json(meta.get("model", ""))
    except ValidationError as err:
        reason = first_line(err)
        raise UserError(f"{path}: its model config is missing or not valid ({reason})") from None
    return fitted_generator(model_cfg, state, path).eval()
