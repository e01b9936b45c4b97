"""The compact encoding of a pruned generator's tensors, and its inverse, bit for bit.

Each floating tensor that gets smaller so is stored as its entries that are not +0.0
(`NAME.__values`, 1-D, row-major, same dtype) plus a presence bitmap (`NAME.__bitmap`,
uint8; entry i is bit i % 8, least significant first, of byte i // 8: numpy's
`packbits(bitorder="little")`). Presence is decided on the bit pattern, so a -0.0 is kept
as a value and the round trip is bit-exact.
"""

from __future__ import annotations

import torch

# Suffixes of an encoded tensor's two stored parts.
VALUES_SUFFIX, BITMAP_SUFFIX = ".__values", ".__bitmap"
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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
        out[name + VALUES_SUFFIX] = tensor.reshape(-1)[present]  # (alive,)
        out[name + BITMAP_SUFFIX] = pack_bits(present)  # (ceil(numel / 8),)
        encoded[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]}
    return out, encoded


def expand_tensors(tensors: dict[str, torch.Tensor], encoded: dict) -> dict[str, torch.Tensor]:
    """The inverse of `compact_tensors`: dense tensors, bit for bit. ValueError if the
    parts do not agree (a damaged or hand-edited file)."""
    parts = {name + suffix for name in encoded for suffix in (VALUES_SUFFIX, BITMAP_SUFFIX)}
    state = {name: t for name, t in tensors.items() if name not in parts}
    for name, info in encoded.items():
        values, bitmap = tensors.get(name + VALUES_SUFFIX), tensors.get(name + BITMAP_SUFFIX)
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
