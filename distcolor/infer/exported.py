"""An export folder's layout and format, and reading an exported file back, checked.

    out/
      generator.safetensors           every tensor of the generator, as trained
      generator.compact.safetensors   the same, pruned tensors in the compact encoding
                                      (infer/compact.py)
      config.json                     model config, step, which weights, sparsity

Both files carry in their metadata the format (`format`), the model config (`model`,
JSON), `step` and `weights` (ema | live); the compact one adds `encoded`, a JSON object
giving each encoded tensor's shape and dtype. Either file alone rebuilds the network
(`load_exported`). Everything a file's header claims is checked before a tensor is read.
safetensors holds only tensors and a JSON header: loading an export cannot run code,
unlike a pickle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from distcolor.config import ModelConfig
from distcolor.errors import UserError, first_line
from distcolor.infer.compact import BITMAP_SUFFIX, VALUES_SUFFIX, expand_tensors
from distcolor.model_checks import (
    TensorSpec,
    built_generator,
    check_specs,
    expected_tensors,
    export_model,
    refuse,
)
from distcolor.models.unet import UNetGenerator

DENSE, COMPACT, CONFIG = "generator.safetensors", "generator.compact.safetensors", "config.json"
FORMAT = "distcolor-generator/1"


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
    parts = {name + suffix for name in encoded for suffix in (VALUES_SUFFIX, BITMAP_SUFFIX)}
    specs = {name: spec for name, spec in header.items() if name not in parts}
    for name, dense in encoded.items():
        values, bitmap = header.get(name + VALUES_SUFFIX), header.get(name + BITMAP_SUFFIX)
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
