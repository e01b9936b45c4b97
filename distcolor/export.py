"""Export a trained generator: dense safetensors, and a compact form for pruned ones.

    out/
      generator.safetensors           every tensor of the generator, as trained
      generator.compact.safetensors   the same, each sparse tensor stored as its entries
                                      that are not +0.0 (`NAME.__values`, 1-D, row-major)
                                      plus a presence bitmap (`NAME.__bitmap`, uint8; entry
                                      i is bit i % 8, least significant first, of byte i // 8)
      config.json                     model config, step, which weights, sparsity

Both files carry the model config in their metadata, so either alone rebuilds the network
(`load_exported`). Presence is decided on the bit pattern, so a -0.0 is kept as a value and
the round trip is bit-exact. safetensors holds only tensors and a JSON header: loading an
exported model cannot run code, unlike a pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from distcolor.checkpoint import STATE, is_complete, latest_checkpoint, load_checkpoint
from distcolor.config import ModelConfig, config_from_dict
from distcolor.errors import UserError
from distcolor.models.build import build_generator
from distcolor.models.unet import UNetGenerator

DENSE, COMPACT, CONFIG = "generator.safetensors", "generator.compact.safetensors", "config.json"
FORMAT = "distcolor-generator/1"
_VALUES, _BITMAP = ".__values", ".__bitmap"
_BITS = torch.arange(8, dtype=torch.uint8)
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def pack_bits(present: torch.Tensor) -> torch.Tensor:
    """Bool entries -> uint8 bytes, 8 per byte, least significant bit first."""
    flat = present.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return (flat.view(-1, 8) << _BITS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    return ((packed.unsqueeze(1) >> _BITS) & 1).bool().reshape(-1)[:count]


def compact_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Each floating tensor that gets smaller as values + bitmap is stored so; returns the
    tensors to save and the shapes and dtypes of the encoded ones."""
    out, encoded = {}, {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if not tensor.is_floating_point() or tensor.numel() == 0:
            out[name] = tensor
            continue
        flat = tensor.reshape(-1)
        present = flat.view(_INT_OF_SIZE[flat.element_size()]) != 0
        alive = int(torch.count_nonzero(present))
        if alive * flat.element_size() + (flat.numel() + 7) // 8 >= flat.nbytes:
            out[name] = tensor
            continue
        out[name + _VALUES] = flat[present].clone()
        out[name + _BITMAP] = pack_bits(present)
        encoded[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]}
    return out, encoded


def expand_tensors(tensors: dict[str, torch.Tensor], encoded: dict) -> dict[str, torch.Tensor]:
    """The inverse of `compact_tensors`: dense tensors, bit for bit."""
    state = {}
    for name, tensor in tensors.items():
        if name.endswith((_VALUES, _BITMAP)):
            continue
        state[name] = tensor
    for name, info in encoded.items():
        values, bitmap = tensors[name + _VALUES], tensors[name + _BITMAP]
        count = 1
        for side in info["shape"]:
            count *= side
        dense = torch.zeros(count, dtype=values.dtype)
        dense[unpack_bits(bitmap, count)] = values
        state[name] = dense.reshape(info["shape"])
    return state


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, its state.pt, or a run folder (its newest complete checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"--checkpoint: {path} does not exist")
    if (path / "checkpoints").is_dir():
        newest = latest_checkpoint(path / "checkpoints")
        if newest is None:
            raise UserError(f"--checkpoint: {path / 'checkpoints'} has no complete checkpoint")
        return newest
    if (path / STATE).exists() and not is_complete(path):
        raise UserError(f"--checkpoint: {path} is incomplete (no COMPLETE marker)")
    if not is_complete(path):
        raise UserError(f"--checkpoint: {path} is not a checkpoint folder or a run folder")
    return path


def _sparsity(state: dict[str, torch.Tensor], names: list[str]) -> float:
    total = sum(state[n].numel() for n in names)
    zeros = sum(state[n].numel() - int(torch.count_nonzero(state[n])) for n in names)
    return zeros / total if total else 0.0


def _check_masks(weights: dict[str, torch.Tensor], prune: dict | None) -> int | None:
    """Pruned positions must be zero in what is exported; returns the rounds done."""
    if not prune or not prune.get("masks", {}).get("G"):
        return None
    for name, keep in prune["masks"]["G"].items():
        if name in weights and torch.count_nonzero(weights[name][~keep]):
            raise UserError(
                f"checkpoint: {name} has non-zero weights at pruned positions (the masks were "
                "not enforced); not exporting it"
            )
    return int(prune.get("round", 0))


def _write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: all or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its files private
    os.replace(tmp, path)


def export_generator(
    checkpoint: Path, out_dir: Path, *, weights: str = "ema", overwrite: bool = False
) -> dict:
    """Write the generator of `checkpoint` (its EMA when there is one and weights="ema")
    to `out_dir` as dense and compact safetensors plus config.json; returns the figures."""
    source = resolve_checkpoint(checkpoint)
    state = load_checkpoint(source)
    out_dir = Path(out_dir)
    files = [out_dir / DENSE, out_dir / COMPACT, out_dir / CONFIG]
    existing = [f for f in files if f.exists()]
    if existing and not overwrite:
        raise UserError(f"--out: {existing[0]} already exists; pass --overwrite to replace it")
    used = "ema" if weights == "ema" and state.get("G_ema") is not None else "live"
    generator_state = {
        k: v.contiguous() for k, v in state["G_ema" if used == "ema" else "G"].items()
    }
    rounds = _check_masks(generator_state, state.get("prune"))
    model_cfg = config_from_dict(state["config"]).model
    generator = build_generator(model_cfg)
    generator.load_state_dict(generator_state)  # it fits the config it claims
    conv = [n for n, t in generator_state.items() if n.endswith(".weight") and t.dim() == 4]
    params = [n for n, _ in generator.named_parameters()]
    config_json = model_cfg.model_dump_json()
    meta = {"format": FORMAT, "model": config_json, "step": str(state["step"]), "weights": used}
    compact, encoded = compact_tensors(generator_state)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(files[0], lambda p: save_file(generator_state, str(p), metadata=meta))
    _write(
        files[1],
        lambda p: save_file(compact, str(p), metadata={**meta, "encoded": json.dumps(encoded)}),
    )
    dense_bytes, compact_bytes = files[0].stat().st_size, files[1].stat().st_size
    result = {
        "checkpoint": str(source),
        "step": int(state["step"]),
        "weights": used,
        "parameters": sum(generator_state[n].numel() for n in params),
        "pruning_rounds": rounds,
        "sparsity": round(_sparsity(generator_state, conv), 6),
        "overall_sparsity": round(_sparsity(generator_state, params), 6),
        "dense_bytes": dense_bytes,
        "compact_bytes": compact_bytes,
        "compact_ratio": round(compact_bytes / dense_bytes, 4),
        "files": [str(f) for f in files],
    }
    info = {"model": json.loads(config_json), **{k: v for k, v in result.items() if k != "files"}}
    _write(files[2], lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    return result


def load_compact(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A dense state dict and the metadata from an exported file (either form)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a distcolor generator export (format {meta.get('format')})")
    return expand_tensors(tensors, json.loads(meta.get("encoded", "{}"))), meta


def load_exported(path: Path) -> UNetGenerator:
    """The generator from an export folder (its dense file) or either exported file, in
    eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / DENSE if (path / DENSE).exists() else path / COMPACT
    state, meta = load_compact(path)
    generator = build_generator(ModelConfig.model_validate_json(meta["model"]))
    generator.load_state_dict(state)
    return generator.eval()
