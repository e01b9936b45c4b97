"""Prune a U-Net on every rank of a real process group and report what each rank chose.

    torchrun --nproc_per_node N tests/prune_check.py --rounds R [--noise S] [--quantize Q] --out DIR

Every rank builds the same generator; --noise multiplies rank r's weights by
(1 + S * noise_r), so the replicas differ in their last bits the way float reductions
can make them; --quantize rounds the weights to multiples of Q (many ties). Each rank
writes rank<N>.json: per round the fingerprint of the masks it applies, the number of
weights alive, the largest pruned and smallest kept magnitude (of its own weights), and
the fingerprint of the masks it would have chosen alone (sorting its own copy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

from distcolor.errors import UserError
from distcolor.models.unet import UNetGenerator
from distcolor.prune.masks import (
    Masks,
    alive_after,
    check_masks_agree,
    masks_fingerprint,
    prunable_weights,
)


def alone(weights: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], alive: int) -> dict:
    """The masks one process would choose from its own copy: the `alive` largest survivors
    (ties by position), by a plain sort."""
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    was = torch.cat([m.reshape(-1) for m in keep.values()])
    order = torch.argsort(torch.where(was, flat, -1.0), descending=True, stable=True)
    chosen = torch.zeros_like(was)
    chosen[order[:alive]] = True
    out, offset = {}, 0
    for name, w in weights.items():
        out[name] = chosen[offset : offset + w.numel()].reshape(w.shape)
        offset += w.numel()
    return out


def zero3_masks(generator):
    """ZeroMasks of `generator` under a ZeRO-3 engine, and a view of its whole weights that
    follows the engine's shards (for the per-round checks)."""
    import deepspeed

    from distcolor.backends.zero_shards import ZeroNetwork

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=generator, optimizer=optimizer, config=config)
    network = ZeroNetwork(engine)
    masks = network.masks(keep_first_last=False)

    class WholeWeights(dict):  # name -> whole weight, rebuilt from the shards on access
        def values(self):  # a collective: every rank asks at the same points
            state = network.snapshot()
            return [state[name] for name in masks.weights]

        def items(self):
            return list(zip(masks.weights, self.values(), strict=True))

    return masks, WholeWeights(dict.fromkeys(masks.weights))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--quantize", type=float, default=0.0)
    parser.add_argument("--out", required=True, help="folder for rank<N>.json")
    parser.add_argument("--flip-on", type=int, help="then flip one mask bit on this rank")
    parser.add_argument("--zero3", action="store_true", help="masks from ZeRO-3 shards")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    generator = UNetGenerator(width=8, depth=5)
    weights = prunable_weights(generator)
    with torch.no_grad():
        for w in weights.values():
            if args.quantize:
                w.copy_(torch.round(w / args.quantize) * args.quantize)
            if args.noise:
                noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(rank + 1))
                w.mul_(1 + args.noise * noise)
    masks = Masks(weights)
    if args.zero3:  # the same weights partitioned by a ZeRO-3 engine; masks from its shards
        masks, weights = zero3_masks(generator)
    total = masks.total()
    rounds = []
    for r in range(1, args.rounds + 1):
        target = alive_after(total, rate=args.rate, rounds=r)
        solo = alone(weights, masks.keep, target)
        keep, threshold = masks.select(alive_after_round=target)
        masks.set(keep)
        pruned_max = max(
            (
                float(w.detach().abs()[~k].max())
                for w, k in zip(weights.values(), keep.values(), strict=True)
                if (~k).any()
            ),
            default=0.0,
        )
        kept_min = min(
            float(w.detach().abs()[k].min())
            for w, k in zip(weights.values(), keep.values(), strict=True)
            if k.any()
        )
        masks.zero_weights()
        rounds.append(
            {
                "fingerprint": masks_fingerprint(keep),
                "alone": masks_fingerprint(solo),
                "alive": masks.alive(),
                "target": target,
                "threshold": threshold,
                "pruned_max": pruned_max,
                "kept_min": kept_min,
                "zeros_at_pruned": all(
                    bool((w.detach()[~k] == 0).all())
                    for w, k in zip(weights.values(), keep.values(), strict=True)
                ),
            }
        )
    report = {"rank": rank, "total": total, "rounds": rounds}
    if args.flip_on is not None:
        if rank == args.flip_on:
            first = next(iter(masks.keep.values())).view(-1)
            first[0] = ~first[0]
        try:
            check_masks_agree({"G": masks.keep}, when="in the check")
        except UserError as err:
            report["error"] = str(err)
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
