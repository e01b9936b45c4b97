"""Pruning rounds, mask fingerprints and the replica check on the device, in a real process
group (tests/test_gpu.py launches it).

    torchrun --standalone --nproc_per_node 1 tests/gpu_collectives.py BACKEND OUT_JSON

BACKEND is nccl (tensors on cuda:LOCAL_RANK) or gloo (CPU: the dry run). One GPU runs one
NCCL rank (NCCL refuses two ranks on one device), and with one rank the fingerprint and
replica checks return before their all-gather. So a second rank is *simulated*:
`SimulatedPeers` stands in for `torch.distributed` inside distcolor.prune.masks and
distcolor.backends.distributed, runs the real all-gather over the real group (on the device, through
NCCL) and adds what a peer rank would have sent: the same values, or tampered ones. The
checks then run their multi-rank path end to end and must name the differing rank.

Writes OUT_JSON: per pruning round the weights alive and the target, the masks'
fingerprints (distributed selection on the device, a plain sort, the selection on a CPU
copy), their devices, whether pruned weights are +0.0, the threshold against the largest
pruned and smallest kept magnitude; then the outcomes of the simulated two-rank checks.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import distcolor.backends.distributed as distributed_module
import distcolor.prune.masks as pruning_module
from distcolor.backends.distributed import ReplicaMismatch, check_replicas, parameter_checksum
from distcolor.errors import UserError
from distcolor.models.patchgan import PatchDiscriminator
from distcolor.models.unet import UNetGenerator
from distcolor.prune.masks import (
    Masks,
    alive_after,
    check_masks_agree,
    masks_fingerprint,
    prunable_weights,
)
from tests.prune_check import alone


class SimulatedPeers:
    """`torch.distributed` for a process that sees `extra` more ranks than the group has:
    all_gather fills the real ranks' slots over the real group, then each simulated rank's
    slot with rank 0's tensor passed through `tamper` (None: sent unchanged)."""

    def __init__(self, extra: int = 1, tamper=None) -> None:
        self.extra, self.tamper = extra, tamper

    def __getattr__(self, name):
        return getattr(dist, name)

    def get_world_size(self, group=None) -> int:
        return dist.get_world_size() + self.extra

    def all_gather(self, tensor_list, tensor, group=None, async_op=False):
        real = dist.get_world_size()
        dist.all_gather(tensor_list[:real], tensor)
        for slot in tensor_list[real:]:
            sent = tensor_list[0].clone()
            slot.copy_(self.tamper(sent) if self.tamper is not None else sent)


def simulated(peers: SimulatedPeers, check, *args, **kwargs) -> str | None:
    """Run `check` with `peers` standing in for torch.distributed; its error or None."""
    saved = pruning_module.dist, distributed_module.dist
    pruning_module.dist = distributed_module.dist = peers
    try:
        check(*args, **kwargs)
        return None
    except UserError as err:
        return f"{type(err).__name__}: {err}"
    finally:
        pruning_module.dist, distributed_module.dist = saved


def bump_first(t: torch.Tensor) -> torch.Tensor:
    t.view(-1)[0] += 1
    return t


def main() -> None:
    backend, out = sys.argv[1], Path(sys.argv[2])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    report: dict = {"world": dist.get_world_size(), "backend": dist.get_backend()}

    # Pruning rounds on the device: exact counts, the same masks as a sort and as the CPU.
    torch.manual_seed(0)
    generator = UNetGenerator(width=8, depth=5)
    on_cpu = copy.deepcopy(generator)
    generator.to(device)
    weights, cpu_weights = prunable_weights(generator), prunable_weights(on_cpu)
    masks, cpu_masks = Masks(weights), Masks(cpu_weights)
    total = masks.total()
    rounds = []
    for r in (1, 2, 3):
        target = alive_after(total, rate=0.2, rounds=r)
        solo = alone(weights, masks.keep, target)
        keep, threshold = masks.select(alive_after_round=target)
        cpu_keep, cpu_threshold = cpu_masks.select(alive_after_round=target)
        masks.set(keep)
        cpu_masks.set(cpu_keep)
        pairs = list(zip(weights.values(), masks.keep.values(), strict=True))
        pruned = torch.cat([w.detach().abs()[~k] for w, k in pairs])  # before zeroing
        kept = torch.cat([w.detach().abs()[k] for w, k in pairs])
        masks.zero_weights()
        cpu_masks.zero_weights()
        check_masks_agree({"G": masks.keep}, when=f"after round {r}")  # the real group
        rounds.append(
            {
                "target": target,
                "alive": masks.alive(),
                "fingerprint": masks_fingerprint(masks.keep),
                "alone": masks_fingerprint(solo),
                "cpu": masks_fingerprint(cpu_keep),
                "threshold": threshold,
                "cpu_threshold": cpu_threshold,
                "pruned_max": float(pruned.max()),
                "kept_min": float(kept.min()),
                "zeros_at_pruned": all(
                    bool((w.detach()[~k].view(torch.int32) == 0).all()) for w, k in pairs
                ),
                "mask_devices": sorted({m.device.type for m in masks.keep.values()}),
                "weight_devices": sorted({w.device.type for w in weights.values()}),
            }
        )
    report["total"], report["rounds"] = total, rounds

    # Two ranks, one simulated: the fingerprint all-gather on the device (and from CPU
    # masks, which NCCL cannot send: check_masks_agree moves them), then a differing mask.
    cpu_keep = {n: m.cpu() for n, m in masks.keep.items()}
    report["masks_agree"] = simulated(
        SimulatedPeers(), check_masks_agree, {"G": masks.keep}, when="in the check"
    )
    report["cpu_masks_agree"] = simulated(
        SimulatedPeers(), check_masks_agree, {"G": cpu_keep}, when="in the check"
    )
    report["masks_differ"] = simulated(
        SimulatedPeers(tamper=bump_first), check_masks_agree, {"G": masks.keep}, when="in the check"
    )

    # The replica check: integer fingerprints equal on the device and on the CPU (float32
    # and bfloat16 weights), then agreeing and differing replicas.
    torch.manual_seed(1)
    discriminator = PatchDiscriminator(in_channels=3, width=8).to(device)
    replicas = {"G": generator, "D": discriminator}
    report["checksums"] = {
        name: [int(parameter_checksum(m)), int(parameter_checksum(copy.deepcopy(m).cpu()))]
        for name, m in {
            **replicas,
            "G_bf16": copy.deepcopy(generator).to(torch.bfloat16),
        }.items()
    }
    report["checksum_device"] = parameter_checksum(generator).device.type
    report["replicas_agree"] = simulated(
        SimulatedPeers(), check_replicas, replicas, step=7, device=device
    )
    report["replicas_differ"] = simulated(
        SimulatedPeers(tamper=bump_first), check_replicas, replicas, step=7, device=device
    )
    report["replica_error_type"] = ReplicaMismatch.__name__
    # The real group's own collectives on the device still work after all of that.
    probe = torch.ones(3, dtype=torch.int64, device=device)
    dist.all_reduce(probe)
    report["all_reduce"] = probe.tolist()

    out.write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
