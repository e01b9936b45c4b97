"""Pruning and rewinding on ZeRO's rank-local fp32 master weights (DeepSpeed stages 1-3).

Under ZeRO the optimizer updates fp32 *master* weights that each rank holds only a piece
of; the module's own parameters are low-precision copies refreshed from them in
`engine.step()` (stage 1/2: a full copy on every rank; stage 3: a partition per rank, and
an empty placeholder between forwards). Masks therefore go onto the masters, their
gradients and optimizer state, through DeepSpeed's fragment API, and onto the copies.

    piece of p on this rank        offset in p.view(-1)
    stage 1/2  p._hp_mapping.get_hp_fragment()    p._hp_mapping.lp_fragment_address.start
    stage 3    safe_get_local_fp32_param(p)       rank * p.ds_tensor.ds_numel (padded)

A stage-3 partition is exactly the slice `pruning.owned_range` gives a rank under DDP,
so the threshold search ranks the same pieces in the same order and chooses the same
masks as DDP on the same weights, without any rank holding a whole weight. The keep-masks
themselves are kept whole on every rank (one byte per prunable weight; weights, gradients
and optimizer state stay sharded), so checkpoints, fingerprints and sparsity reports are
the same as DDP's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_local_grad, safe_set_local_grad
from torch import nn

from distcolor.prune.masks import Masks, keep_largest, prunable_weights

OPTIMIZER_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_var")  # Adam's and AdaBelief's moments


def comm_device() -> torch.device:
    """Where collective buffers must live: NCCL takes GPU tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class ZeroNetwork:
    """One DeepSpeed engine's parameters seen piecewise: this rank's master pieces, their
    gradients and optimizer state, and the low-precision copies the forward uses."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.module: nn.Module = engine.module
        self.stage = engine.zero_optimization_stage()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    # -- shapes of possibly partitioned parameters
    def shape(self, p: nn.Parameter) -> torch.Size:
        return p.ds_shape if self.stage == 3 else p.shape

    def numel(self, p: nn.Parameter) -> int:
        return p.ds_numel if self.stage == 3 else p.numel()

    # -- this rank's piece of the masters (or of an optimizer state)
    def span(self, p: nn.Parameter) -> tuple[int, int]:
        """[start, stop) of p.view(-1) whose master values live on this rank."""
        if self.stage == 3:
            start = min(self.rank * p.ds_tensor.ds_numel, p.ds_numel)
            return start, min(start + p.ds_tensor.ds_numel, p.ds_numel)
        frag = p._hp_mapping
        if frag is None:  # no element of p is on this rank
            return 0, 0
        start = frag.lp_fragment_address.start
        return start, start + frag.lp_fragment_address.numel

    def piece(self, p: nn.Parameter, key: str | None = None) -> torch.Tensor:
        """This rank's fp32 piece (1-D, span's length) of p's masters or optimizer state."""
        start, stop = self.span(p)
        if stop == start:
            return torch.zeros(0)
        if self.stage == 3:
            return p._z3_optimizer.get_local_fp32_param(p, key).view(-1)[: stop - start]
        return p._hp_mapping.get_hp_fragment(key).view(-1)

    def update(self, p: nn.Parameter, fn: Callable, key: str | None = None) -> None:
        """Replace this rank's piece x (masters or optimizer state `key`) by fn(x, start)."""
        start, stop = self.span(p)
        if stop == start:
            return
        if self.stage == 3:
            # A view on the GPU, a copy when offloaded: always write back through the API.
            whole = p._z3_optimizer.get_local_fp32_param(p, key).view(-1).clone()
            whole[: stop - start] = fn(whole[: stop - start], start)
            p._z3_optimizer.set_local_hp_param(whole, p, key)
        else:
            target = p._hp_mapping.get_hp_fragment(key).view(-1)
            target.copy_(fn(target, start))

    def grad_piece(self, p: nn.Parameter) -> torch.Tensor | None:
        """This rank's piece of p's reduced gradient (after the boundary backward)."""
        start, stop = self.span(p)
        if stop == start:
            return None
        if self.stage == 3:
            return safe_get_local_grad(p).view(-1)
        grad = p._hp_mapping.get_lp_grad_fragment(p._index_in_param_group).view(-1)
        # bf16 keeps a whole-parameter accumulation buffer on every rank
        return grad[start:stop] if grad.numel() == p.numel() != stop - start else grad

    def scale_grad(self, p: nn.Parameter, factor: torch.Tensor) -> None:
        grad = self.grad_piece(p)
        if grad is None:
            return
        start, stop = self.span(p)
        if self.stage == 3:
            grad[: stop - start] *= factor.to(grad)
            safe_set_local_grad(p, grad)
        else:
            grad.mul_(factor.to(grad))

    # -- the low-precision copies
    def copies(self, p: nn.Parameter) -> list[tuple[torch.Tensor, int]]:
        """(1-D tensor, offset) of each low-precision copy of p this rank holds: the whole
        parameter (stages 1/2; stage 3's persistent small parameters) and, stage 3, this
        rank's partition."""
        found = []
        if self.stage != 3 or p.data.numel() == p.ds_numel:
            found.append((p.data.view(-1), 0))
        if self.stage == 3:
            start, stop = self.span(p)
            found.append((p.ds_tensor.data.view(-1)[: stop - start], start))
        return found

    # -- whole weights, for rewinding (collectives)
    def snapshot(self) -> dict[str, torch.Tensor]:
        """Every parameter (fp32, from the masters) and buffer, whole, on the CPU."""
        params = list(self.module.named_parameters())
        flat = torch.zeros(sum(self.numel(p) for _, p in params), device=comm_device())
        offset, spans = 0, []
        for _, p in params:
            start, stop = self.span(p)
            flat[offset + start : offset + stop] = self.piece(p).detach()
            spans.append((offset, self.numel(p)))
            offset += self.numel(p)
        dist.all_reduce(flat)  # pieces are disjoint: the sum assembles them
        flat = flat.cpu()
        state = {
            name: flat[o : o + n].reshape(self.shape(p)).clone()
            for (name, p), (o, n) in zip(params, spans, strict=True)
        }
        state.update({k: v.detach().to("cpu", copy=True) for k, v in self.module.named_buffers()})
        return state

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Set masters, copies and buffers from a whole state (each rank takes its pieces)."""
        for name, p in self.module.named_parameters():
            whole = state[name].reshape(-1)
            self.update(p, lambda x, start, w=whole: w[start : start + x.numel()].to(x))
            for copy, start in self.copies(p):
                copy.copy_(whole[start : start + copy.numel()])
        for name, buffer in self.module.named_buffers():
            buffer.copy_(state[name])

    def reset_optimizer(self, _optimizer=None) -> None:
        """Fresh optimizer state: moments and step counts to zero, in place (DeepSpeed's
        fragment views point into these tensors; replacing them would cut the link)."""
        inner = self.engine.optimizer.optimizer
        for state in inner.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()

    def masks(self, *, keep_first_last: bool) -> ZeroMasks:
        return ZeroMasks(self, prunable_weights(self.module, keep_first_last=keep_first_last))


class ZeroMasks(Masks):
    """`Masks` whose enforcement reaches ZeRO's masters, gradients and optimizer state."""

    def __init__(self, network: ZeroNetwork, weights: dict[str, nn.Parameter]) -> None:
        self.network, self.weights = network, weights
        # Whole masks on the CPU (they change only at rounds); this rank's pieces as 0/1.
        self.keep = {n: torch.ones(network.shape(w), dtype=torch.bool) for n, w in weights.items()}
        self._local: dict[str, torch.Tensor] = {}  # empty while nothing is pruned

    def set(self, keep: dict[str, torch.Tensor]) -> None:
        net = self.network
        self.keep = {n: keep[n].cpu().reshape(net.shape(w)) for n, w in self.weights.items()}
        self._local = {}
        for n, w in self.weights.items():
            start, stop = net.span(w)
            self._local[n] = self.keep[n].reshape(-1)[start:stop].float()

    @property
    def active(self) -> bool:
        return bool(self._local)

    def select(self, *, alive_after_round: int) -> tuple[dict[str, torch.Tensor], float]:
        """The round's new masks from this rank's master pieces (a collective)."""
        net, device = self.network, comm_device()
        pieces = []
        for n, w in self.weights.items():
            start, stop = net.span(w)
            alive = self.keep[n].reshape(-1)[start:stop].to(device)
            pieces.append((net.piece(w).detach().to(device), alive))
        local, threshold = keep_largest(pieces, self.alive() - alive_after_round)
        sizes = [net.numel(w) for w in self.weights.values()]
        flat = torch.zeros(sum(sizes), dtype=torch.uint8, device=device)
        offset = 0
        for w, mask, size in zip(self.weights.values(), local, sizes, strict=True):
            start, stop = net.span(w)
            flat[offset + start : offset + stop] = mask.to(torch.uint8)
            offset += size
        dist.all_reduce(flat)  # each weight has one owner: the sum assembles the masks
        masks, offset = {}, 0
        for (n, w), size in zip(self.weights.items(), sizes, strict=True):
            masks[n] = flat[offset : offset + size].bool().cpu().reshape(net.shape(w))
            offset += size
        return masks, threshold

    @torch.no_grad()
    def zero_grads(self) -> None:
        """Call between the boundary backward and `engine.step()`."""
        if self.active:
            for n, w in self.weights.items():
                self.network.scale_grad(w, self._local[n])

    @torch.no_grad()
    def enforce_weights(self) -> None:
        if self.active:
            self._apply(lambda x, keep: x * keep.to(x))

    @torch.no_grad()
    def zero_weights(self) -> None:
        if self.active:
            self._apply(lambda x, keep: x.masked_fill(keep.to(x.device) == 0, 0.0))

    def _apply(self, fn: Callable) -> None:
        net = self.network
        for n, w in self.weights.items():
            local, whole = self._local[n], self.keep[n].reshape(-1)
            net.update(w, lambda x, _start, k=local: fn(x, k))
            for copy, start in net.copies(w):
                copy.copy_(fn(copy, whole[start : start + copy.numel()]))

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer=None) -> None:
        """Zero the moments at pruned positions (`optimizer` is the engine's own)."""
        if not self.active:
            return
        net = self.network
        for n, w in self.weights.items():
            for key in OPTIMIZER_KEYS:
                try:
                    net.update(
                        w,
                        lambda x, _s, k=self._local[n]: x.masked_fill(k.to(x.device) == 0, 0.0),
                        key,
                    )
                except (KeyError, ValueError, TypeError, AttributeError):
                    continue  # this optimizer has no such state (yet)
