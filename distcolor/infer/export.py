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
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
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
from distcolor.config import ModelConfig
from distcolor.deepspeed_checkpoint import consolidated_state, is_deepspeed_checkpoint
from distcolor.durable import fsync_path
from distcolor.errors import UserError, first_line
from distcolor.model_checks import (
    StoredConfig,
    TensorSpec,
    built_generator,
    check_specs,
    checked_step,
    checkpoint_config,
    expected_tensors,
    export_model,
    refuse,
)
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
    if not path.is_dir():  # a FIFO or a device: reading it could block for ever
        raise UserError(f"checkpoint {path} is neither a folder nor a regular file")
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


def select_weights(state: dict, weights: str, source: Path) -> tuple[object, str, str | None]:
    """The generator state dict to export, "ema" or "live", as stored (`model_checks`
    checks it), and a note on a fallback. (A DeepSpeed checkpoint's live G is in its
    shards: only the chosen one must be here.)"""
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {source} is not a distcolor training checkpoint (no 'G')")
    used, note = weights, None
    if weights == "ema" and state.get("G_ema") is None:
        used, note = "live", "the run kept no EMA of the generator; exported its live weights"
    chosen = state.get("G_ema" if used == "ema" else "G")
    if not isinstance(chosen, dict):
        raise UserError(f"checkpoint {source} is not a distcolor training checkpoint (no 'G')")
    return chosen, used, note


@dataclass
class CheckpointGenerator:
    """A checkpoint's generator and what the checkpoint says about it, all checked."""

    generator: UNetGenerator
    tensors: dict[str, torch.Tensor]  # the generator's own, as exported
    state: dict  # the whole checkpoint
    source: Path  # the checkpoint folder or file used
    stored: StoredConfig
    step: int
    weights: str  # "ema" or "live"
    note: str | None  # why the weights asked for were not used


def checkpoint_generator(path: Path, weights: str) -> CheckpointGenerator:
    """The generator of a checkpoint (`resolve_checkpoint` decides which), its stored config
    and tensors checked (`model_checks`) before anything is consolidated or built."""
    source = resolve_checkpoint(path)
    state = load_checkpoint(source)
    where = f"checkpoint {source}"
    stored = checkpoint_config(state, where)
    step = checked_step(state.get("step", 0), where)
    if is_deepspeed_checkpoint(state) and (weights == "live" or state.get("G_ema") is None):
        folder = source if source.is_dir() else source.parent
        state["G"] = consolidated_state(folder, "G")  # the live weights live in the shards
    chosen, used, note = select_weights(state, weights, source)
    generator, tensors = built_generator(stored.model, chosen, where)
    return CheckpointGenerator(generator, tensors, state, source, stored, step, used, note)


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


# --- reading an export ----------------------------------------------------------------


# safetensors' dtype names (its header) -> torch's; any other cannot be a generator's.
_HEADER_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {str(dtype).removeprefix("torch."): dtype for dtype in _HEADER_DTYPES.values()}


def _header_specs(f, path: Path) -> dict[str, TensorSpec]:
    """Every stored tensor's shape and dtype, from the header alone (nothing read yet)."""
    specs = {}
    for name in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
        part = f.get_slice(name)
        dtype = _HEADER_DTYPES.get(part.get_dtype())
        if dtype is None:
            raise refuse(path, f"tensor {name!r} has dtype {part.get_dtype()}, never a generator's")
        specs[name] = TensorSpec(tuple(part.get_shape()), dtype)
    return specs


def _encoding(meta: dict[str, str], path: Path) -> dict[str, TensorSpec]:
    """The `encoded` metadata (each compact tensor's dense shape and dtype), well formed."""
    try:
        info = json.loads(meta.get("encoded", "{}"))
    except (ValueError, RecursionError):
        raise refuse(
            path, "damaged compact encoding (its `encoded` metadata is not JSON)"
        ) from None
    if not isinstance(info, dict):
        raise refuse(path, "damaged compact encoding (`encoded` is not an object)")
    specs = {}
    for name, entry in info.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        dtype = _DTYPE_NAMES.get(entry.get("dtype")) if isinstance(entry, dict) else None
        if (
            not isinstance(shape, list)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
            or dtype is None
        ):
            raise refuse(path, f"damaged compact encoding (entry {name!r} is {entry!r})")
        specs[name] = TensorSpec(tuple(shape), dtype)
    return specs


def _decoded_specs(
    header: dict[str, TensorSpec], encoded: dict[str, TensorSpec], path: Path
) -> dict[str, TensorSpec]:
    """What the file's tensors are once decoded, from its header: an encoded tensor needs
    1-D values of its dtype, no more than its entries, and a uint8 bitmap of a bit each."""
    parts = {name + suffix for name in encoded for suffix in (_VALUES, _BITMAP)}
    specs = {name: spec for name, spec in header.items() if name not in parts}
    for name, dense in encoded.items():
        values, bitmap = header.get(name + _VALUES), header.get(name + _BITMAP)
        count = math.prod(dense.shape)
        if name in specs or values is None or bitmap is None:
            raise refuse(path, f"damaged compact encoding ({name}: not stored as values + bitmap)")
        if values.dtype != dense.dtype or len(values.shape) != 1 or values.shape[0] > count:
            raise refuse(
                path, f"damaged compact encoding ({name}: values {values} for a {dense} tensor)"
            )
        if bitmap != TensorSpec(((count + 7) // 8,), torch.uint8):
            raise refuse(
                path, f"damaged compact encoding ({name}: a bitmap {bitmap} for {count} entries)"
            )
        specs[name] = dense
    return specs


def _read_export(
    path: Path, *, with_model: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str], ModelConfig | None]:
    """The dense tensors, metadata and (with_model) checked model config of an exported
    file. Everything the header claims is checked before a tensor is read; with_model,
    the tensors must also be exactly those of the generator the model config describes."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise UserError(f"{path} {what}")
    model = None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            found = meta.get("format")
            if found != FORMAT:
                raise refuse(path, f"not a {FORMAT} export (its format is {found!r})")
            encoded = _encoding(meta, path)
            specs = _decoded_specs(_header_specs(f, path), encoded, path)
            if with_model:
                model = export_model(meta.get("model"), path)
                check_specs(specs, expected_tensors(model), path)
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise refuse(path, f"not a readable safetensors file ({first_line(err)})") from None
    plain = {
        name: {"shape": list(s.shape), "dtype": str(s.dtype)[6:]} for name, s in encoded.items()
    }
    try:
        return expand_tensors(tensors, plain), meta, model
    except (ValueError, KeyError, TypeError) as err:
        raise refuse(path, f"damaged compact encoding ({first_line(err)})") from None


def load_compact(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The dense state dict and the metadata (strings) of an exported file, either form."""
    state, meta, _ = _read_export(path, with_model=False)
    return state, meta


def load_exported(path: Path) -> UNetGenerator:
    """The generator from an export folder (its dense file, else its compact one) or
    either exported file, built from the embedded config once every claim of the file is
    checked (`model_checks`), in eval mode."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in (DENSE, COMPACT) if (path / name).is_file()]
        if not found:
            raise UserError(f"{path} holds neither {DENSE} nor {COMPACT}")
        path = found[0]
    state, _, model = _read_export(path, with_model=True)
    generator, _ = built_generator(model, state, path)
    return generator.eval()
