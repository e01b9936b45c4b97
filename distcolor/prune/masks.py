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

Masks are applied in place to gradients before the optimizer step and to weights after
it (see `Masks`), rather than through `torch.nn.utils.prune`'s
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

PRUNABLE_LAYERS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
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


def magnitude_keys(values: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """int32 keys that sort like |values| (non-negative float32 bit patterns do); 0 where
    not alive."""
    keys = values.detach().abs().float().reshape(-1).view(torch.int32)
    if int(torch.count_nonzero(alive)) < alive.numel():
        keys = torch.where(alive, keys, 0)
    return keys


def key_to_float(key: int) -> float:
    return torch.tensor(key, dtype=torch.int32).view(torch.float32).item()


def keep_largest(
    pieces: list[tuple[torch.Tensor, torch.Tensor]], prune: int
) -> tuple[list[torch.Tensor], float]:
    """Of the alive entries of all ranks' pieces, all but the `prune` smallest in magnitude;
    returns (per piece, a bool keep-mask; the threshold magnitude). A collective when a
    process group is up: every rank calls it with the pieces it owns (`pieces`: (values,
    alive) pairs of 1-D tensors on one device).

    Dead entries get key 0 and are taken out of bin 0's count while the digits chosen so
    far are all 0, so they never count as candidates; everything stays one pass over the
    weights plus passes over the few candidates left after the first digit."""
    rank, world = _world()
    device = pieces[0][0].device
    keys = [magnitude_keys(v, a) for v, a in pieces]
    dead = sum(a.numel() - int(torch.count_nonzero(a)) for _, a in pieces)
    prefix, wanted = 0, prune  # wanted: the rank (1-based) of the last key to prune
    candidates = None
    for shift, bits in _PASSES:
        if candidates is None:  # the first digit: k >> 20 is below 2**11 (bit 31 is 0)
            digits = [k >> shift for k in keys]
            hist = sum(torch.bincount(d, minlength=1 << bits) for d in digits)
        else:
            digits = (candidates >> shift) & ((1 << bits) - 1)
            hist = torch.bincount(digits, minlength=1 << bits)
        if prefix == 0:
            hist[0] -= dead
        hist = _all_reduce_sum(hist)
        below = hist.cumsum(0)
        if not 0 <= wanted <= int(below[-1]):
            raise ValueError(f"cannot prune {prune} entries: {int(below[-1])} are alive")
        if wanted == 0:
            return [a.clone() for _, a in pieces], 0.0
        digit = int(torch.searchsorted(below, torch.tensor(wanted, device=device)))
        wanted -= int(below[digit - 1]) if digit else 0
        prefix |= digit << shift
        if candidates is None:
            candidates = torch.cat([k[d == digit] for k, d in zip(keys, digits, strict=True)])
        else:
            candidates = candidates[digits == digit]
    # Keys above the threshold stay; of those equal to it, `wanted` go: the first ones in
    # (rank, piece, position) order. Candidates now hold exactly the keys equal to it.
    ties = candidates.numel() - (dead if prefix == 0 else 0)
    before = ties
    if world > 1:
        counts = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(world)]
        dist.all_gather(counts, torch.tensor(ties, dtype=torch.int64, device=device))
        before = sum(int(c) for c in counts[: rank + 1])
    # Ties of this rank that go: those within the first `wanted` of all ranks' ties.
    go = min(max(wanted - (before - ties), 0), ties)
    out = []
    for k, (_, alive) in zip(keys, pieces, strict=True):
        keep = k > prefix
        if go < ties:  # some of this rank's ties stay
            tie = (k == prefix) & alive
            keep |= tie & (tie.cumsum(0) > go)
            go = max(go - int(torch.count_nonzero(tie)), 0)
            ties -= int(torch.count_nonzero(tie))
        out.append(keep)
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
    alive_now = sum(int(torch.count_nonzero(m)) for m in keep.values())
    ranges = {n: owned_range(w.numel(), rank=rank, world=world) for n, w in weights.items()}
    pieces = [
        (w.detach().reshape(-1)[slice(*ranges[n])], keep[n].reshape(-1)[slice(*ranges[n])])
        for n, w in weights.items()
    ]
    local, threshold = keep_largest(pieces, alive_now - alive_after_round)
    return _gather_slices(local, weights), threshold


def _gather_slices(
    local: list[torch.Tensor], weights: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Full masks from every rank's owned slices (one all-gather of a uint8 buffer)."""
    rank, world = _world()
    names = list(weights)
    if world == 1:
        return {n: m.reshape(weights[n].shape) for n, m in zip(names, local, strict=True)}
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
    device = next(m for net in masks.values() for m in net.values()).device
    if dist.get_backend() == "nccl" and device.type != "cuda":  # NCCL takes GPU tensors only
        device = torch.device("cuda", torch.cuda.current_device())
    mine = torch.tensor(
        [masks_fingerprint(m) for m in masks.values()], dtype=torch.int64, device=device
    )
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    every = [e.cpu() for e in every]
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
    """One network's keep-masks, enforced in place.

    Every step multiplies the gradients by the mask before the optimizer sees them, so no
    momentum builds up at pruned positions (Adam's and AdaBelief's updates there are then
    exactly +0.0, weight decay included), and the weights by it after the step, which
    keeps them zero whatever an optimizer does. Both are one vectorised multiply by a
    0/1 copy of the mask in each weight's dtype and layout (a bool `masked_fill_` is about
    9x slower on a CPU). A round's new zeros are written with `masked_fill_`, which gives
    +0.0 where a multiply would leave -0.0 for negative weights (export keeps signed zeros).
    """

    def __init__(self, weights: dict[str, nn.Parameter]) -> None:
        self.weights = weights
        self.keep = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        self._factors: list[torch.Tensor] = []  # keep as 0/1; empty while nothing is pruned

    def set(self, keep: dict[str, torch.Tensor]) -> None:
        self.keep = {n: keep[n].to(w.device) for n, w in self.weights.items()}
        self._factors = [
            torch.empty_like(w, requires_grad=False).copy_(self.keep[n])
            for n, w in self.weights.items()
        ]

    @property
    def active(self) -> bool:
        return bool(self._factors)

    def select(self, *, alive_after_round: int) -> tuple[dict[str, torch.Tensor], float]:
        """A round's new masks: the `alive_after_round` largest alive weights stay (a
        collective); returns (masks, threshold)."""
        return compute_global_masks(self.weights, self.keep, alive_after_round=alive_after_round)

    @torch.no_grad()
    def zero_grads(self) -> None:
        if not self.active:
            return
        pairs = [
            (w.grad, f)
            for w, f in zip(self.weights.values(), self._factors, strict=True)
            if w.grad is not None
        ]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [f for _, f in pairs])

    @torch.no_grad()
    def enforce_weights(self) -> None:
        if self.active:
            torch._foreach_mul_(list(self.weights.values()), self._factors)

    @torch.no_grad()
    def zero_weights(self) -> None:
        if self.active:
            for name, w in self.weights.items():
                w.masked_fill_(~self.keep[name], 0.0)

    @torch.no_grad()
    def zero_in(self, module: nn.Module) -> None:
        """Zero the pruned positions of the same-named weights of another copy (the EMA)."""
        if self.active:
            params = dict(module.named_parameters())
            for name in self.weights:
                params[name].masked_fill_(~self.keep[name], 0.0)

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every per-weight state tensor (Adam's moments) at pruned positions."""
        if not self.active:
            return
        for name, w in self.weights.items():
            for value in optimizer.state.get(w, {}).values():
                if torch.is_tensor(value) and value.shape == w.shape:
                    value.masked_fill_(~self.keep[name], 0.0)

    def sparsity(self) -> tuple[float, dict[str, float]]:
        """(overall share of pruned weights, share per layer)."""
        per_layer = {n: 1.0 - int(torch.count_nonzero(m)) / m.numel() for n, m in self.keep.items()}
        return 1.0 - self.alive() / max(self.total(), 1), per_layer

    def alive(self) -> int:
        return sum(int(torch.count_nonzero(m)) for m in self.keep.values())

    def total(self) -> int:
        return sum(m.numel() for m in self.keep.values())
