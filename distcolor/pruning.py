"""Global magnitude pruning masks, identical on every rank by construction.

A round keeps the `keep` largest-magnitude weights among the alive ones of a network, over
all its conv and transposed-conv weights together (half the U-Net is transposed convs).

The threshold is an exact distributed selection on integer keys: a non-negative float's
bit pattern read as an int32 sorts like the float, so three histogram passes over 11, 10
and 10 bits (each an integer all-reduce, exact in any order) find the k-th smallest
magnitude without any rank holding all the weights. Each rank ranks only the part of each
tensor it owns (a slice of it under DDP, its shard under ZeRO-3), so per-rank float noise
cannot make ranks disagree: there is one owner per weight. Ties at the threshold are
broken by (rank, tensor, position), so exactly the asked number is pruned. Under DDP the
owners' masks are then all-gathered, so every rank applies the same full masks.

Masks are applied in place (`masked_fill_`, which writes +0.0) to gradients before the
optimizer step and to weights after it, rather than through `torch.nn.utils.prune`'s
reparametrisation: DDP and DeepSpeed see ordinary parameters, and the state dict keeps
its names.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.distributed as dist
from torch import nn

from distcolor.errors import UserError

PRUNABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
# Digit widths of the three selection passes over a non-negative float32's 31 bits.
_PASSES = ((20, 11), (10, 10), (0, 10))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _world()[1] > 1:
        dist.all_reduce(t)
    return t


def prunable_weights(model: nn.Module, *, keep_first_last: bool = False) -> dict[str, nn.Parameter]:
    """Weights that pruning may remove, by parameter name: conv, transposed-conv and linear
    weights (norms and biases never); without the first and last layer if asked (the
    model's `edge_layers` name them in forward order)."""
    edges = set(getattr(model, "edge_layers", ())) if keep_first_last else set()
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_LAYERS) and name not in edges
    }


def alive_after(total: int, *, rate: float, rounds: int) -> int:
    """Weights alive after `rounds` rounds at `rate`: round(total * (1 - rate)**rounds), so
    the sparsity is 1 - (1 - rate)**r to within half a weight, whatever happened between."""
    return round(total * (1.0 - rate) ** rounds)


def magnitude_keys(values: torch.Tensor) -> torch.Tensor:
    """int32 keys that sort like |values| (non-negative float32 bit patterns do)."""
    return values.detach().abs().float().reshape(-1).view(torch.int32)


def key_to_float(key: int) -> float:
    return torch.tensor(key, dtype=torch.int32).view(torch.float32).item()


def select_smallest(
    pieces: list[tuple[torch.Tensor, torch.Tensor]], count: int
) -> tuple[list[torch.Tensor], float]:
    """Mark exactly `count` of the alive entries of all ranks' pieces, the smallest in
    magnitude; returns (per piece, a bool tensor of the entries to prune; the threshold
    magnitude). A collective when a process group is up: every rank calls it, each with the
    pieces it owns (`pieces`: (values, alive) pairs of 1-D tensors)."""
    rank, world = _world()
    device = pieces[0][0].device if pieces else torch.device("cpu")
    keys = [magnitude_keys(v) for v, _ in pieces]
    if count <= 0:
        return [torch.zeros_like(a) for _, a in pieces], 0.0
    candidates = (
        torch.cat([k[a] for k, (_, a) in zip(keys, pieces, strict=True)])
        if pieces
        else (torch.zeros(0, dtype=torch.int32, device=device))
    )
    # Radix selection: the digit of the count-th smallest key, most significant first.
    prefix, wanted = 0, count  # wanted: the rank (1-based) of the target within candidates
    for shift, bits in _PASSES:
        digits = (candidates >> shift) & ((1 << bits) - 1)
        hist = _all_reduce_sum(torch.bincount(digits, minlength=1 << bits))
        below = hist.cumsum(0)
        if wanted > int(below[-1]):
            raise ValueError(f"cannot prune {count} entries: only {int(below[-1])} are alive")
        digit = int(torch.searchsorted(below, torch.tensor(wanted, device=below.device)))
        wanted -= int(below[digit - 1]) if digit else 0
        prefix |= digit << shift
        candidates = candidates[digits == digit]
    # Everything below the threshold goes, and `wanted` of the entries equal to it: the
    # first ones in (rank, piece, position) order.
    ties = [(k == prefix) & a for k, (_, a) in zip(keys, pieces, strict=True)]
    mine = torch.tensor(sum(int(t.sum()) for t in ties), dtype=torch.int64, device=device)
    per_rank = [mine.clone() for _ in range(world)]
    if world > 1:
        dist.all_gather(per_rank, mine)
    allowance = min(max(wanted - sum(int(c) for c in per_rank[:rank]), 0), int(mine))
    out = []
    for k, (_, alive), tie in zip(keys, pieces, ties, strict=True):
        first = tie & (tie.cumsum(0) <= allowance)
        allowance -= int(first.sum())
        out.append(((k < prefix) & alive) | first)
    return out, key_to_float(prefix)


def owned_range(numel: int, *, rank: int, world: int) -> tuple[int, int]:
    """The slice [start, stop) of a flattened tensor that `rank` ranks (ZeRO-style chunks)."""
    chunk = math.ceil(numel / world)
    return min(rank * chunk, numel), min((rank + 1) * chunk, numel)


def compute_global_masks(
    weights: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], *, alive_after_round: int
) -> tuple[dict[str, torch.Tensor], float]:
    """New keep-masks for replicated `weights` (DDP): of the weights alive under `keep`,
    the `alive_after_round` largest magnitudes stay. Each rank ranks its own slices, then
    the slices are all-gathered, so the masks are the same on every rank even if the
    replicas differ in their last bits. Returns (masks, threshold)."""
    rank, world = _world()
    alive_now = sum(int(m.sum()) for m in keep.values())
    ranges = {n: owned_range(w.numel(), rank=rank, world=world) for n, w in weights.items()}
    pieces = [
        (w.detach().reshape(-1)[slice(*ranges[n])], keep[n].reshape(-1)[slice(*ranges[n])])
        for n, w in weights.items()
    ]
    prune, threshold = select_smallest(pieces, alive_now - alive_after_round)
    local = [alive & ~p for (_, alive), p in zip(pieces, prune, strict=True)]
    return _gather_slices(local, weights), threshold


def _gather_slices(
    local: list[torch.Tensor], weights: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Full masks from every rank's owned slices (one all-gather of a uint8 buffer)."""
    rank, world = _world()
    names = list(weights)
    if world == 1:
        return {n: m.reshape(weights[n].shape).clone() for n, m in zip(names, local, strict=True)}
    chunks = [math.ceil(weights[n].numel() / world) for n in names]
    buffer = torch.zeros(sum(chunks), dtype=torch.uint8, device=local[0].device)
    offset = 0
    for m, chunk in zip(local, chunks, strict=True):
        buffer[offset : offset + m.numel()] = m.to(torch.uint8)
        offset += chunk
    every = [torch.empty_like(buffer) for _ in range(world)]
    dist.all_gather(every, buffer)
    masks, offset = {}, 0
    for n, chunk in zip(names, chunks, strict=True):
        parts = torch.cat([b[offset : offset + chunk] for b in every])[: weights[n].numel()]
        masks[n] = parts.bool().reshape(weights[n].shape)
        offset += chunk
    return masks


def masks_fingerprint(masks: dict[str, torch.Tensor]) -> int:
    """A 63-bit hash of the masks' names, shapes and bits (position-sensitive)."""
    digest = hashlib.blake2b(digest_size=8)
    for name, mask in masks.items():
        digest.update(f"{name}{tuple(mask.shape)}".encode())
        digest.update(mask.detach().to("cpu", torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def check_masks_agree(masks: dict[str, dict[str, torch.Tensor]], *, when: str) -> None:
    """Stop the run if any rank's masks differ from rank 0's (a collective)."""
    rank, world = _world()
    if world == 1:
        return
    mine = torch.tensor([masks_fingerprint(m) for m in masks.values()], dtype=torch.int64)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    differ = {
        name: [r for r in range(world) if every[r][i] != every[0][i]]
        for i, name in enumerate(masks)
    }
    detail = "; ".join(f"{name} on rank(s) {ranks}" for name, ranks in differ.items() if ranks)
    if detail:
        raise UserError(
            f"pruning masks differ between ranks {when} ({detail}); the run stops: resume "
            "from the last checkpoint"
        )


class Masks:
    """One network's keep-masks, enforced in place: gradients at pruned positions are zeroed
    before each optimizer step (so no momentum builds up there) and weights after it (so
    nothing an optimizer does, weight decay or eps terms, can regrow them)."""

    def __init__(self, weights: dict[str, nn.Parameter]) -> None:
        self.weights = weights
        self.keep = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        self._pruned: list[torch.Tensor] = []  # ~keep, cached; empty while nothing is pruned

    def set(self, keep: dict[str, torch.Tensor]) -> None:
        self.keep = {n: keep[n].to(self.weights[n].device) for n in self.weights}
        self._pruned = [~m for m in self.keep.values()]

    @property
    def active(self) -> bool:
        return bool(self._pruned)

    @torch.no_grad()
    def zero_grads(self) -> None:
        for w, pruned in zip(self.weights.values(), self._pruned, strict=False):
            if w.grad is not None:
                w.grad.masked_fill_(pruned, 0.0)

    @torch.no_grad()
    def zero_weights(self) -> None:
        for w, pruned in zip(self.weights.values(), self._pruned, strict=False):
            w.masked_fill_(pruned, 0.0)

    @torch.no_grad()
    def zero_in(self, module: nn.Module) -> None:
        """Zero the pruned positions of the same-named weights of another copy (the EMA)."""
        params = dict(module.named_parameters())
        for (name, _), pruned in zip(self.weights.items(), self._pruned, strict=False):
            params[name].masked_fill_(pruned, 0.0)

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every per-weight state tensor (Adam's moments) at pruned positions."""
        for w, pruned in zip(self.weights.values(), self._pruned, strict=False):
            for value in optimizer.state.get(w, {}).values():
                if torch.is_tensor(value) and value.shape == w.shape:
                    value.masked_fill_(pruned, 0.0)

    def sparsity(self) -> tuple[float, dict[str, float]]:
        """(overall share of pruned weights, share per layer)."""
        total = sum(m.numel() for m in self.keep.values())
        alive = sum(int(m.sum()) for m in self.keep.values())
        per_layer = {n: 1.0 - int(m.sum()) / m.numel() for n, m in self.keep.items()}
        return 1.0 - alive / max(total, 1), per_layer

    def alive(self) -> int:
        return sum(int(m.sum()) for m in self.keep.values())

    def total(self) -> int:
        return sum(m.numel() for m in self.keep.values())
