"""Run under torchrun by tests/test_distributed.py: each rank streams its part of the data
with a collective per step (as DDP does) and writes what it read to OUT/rank-N.json."""

import itertools
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from distcolor.config import DataConfig
from distcolor.data.batching import recycle_batches
from distcolor.data.catalog import read_manifest, shard_list
from distcolor.data.loader import build_train_loader


def main() -> None:
    shards_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    steps, sampling = int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    shards = shard_list(shards_dir, read_manifest(shards_dir), "train")
    data = DataConfig(
        image_size=32, batch_size=2, num_workers=1, shuffle_buffer=4, sampling=sampling
    )
    loader = build_train_loader(shards, data, seed=0, rank=rank, world_size=world)
    keys, done = [], torch.zeros(1)
    for batch in itertools.islice(recycle_batches(loader), steps):
        keys.append(batch["keys"])
        done += 1
        dist.all_reduce(done.clone())  # a collective every step: a rank that stops would hang
    total = done.clone()
    dist.all_reduce(total)
    (out / f"rank-{rank}.json").write_text(json.dumps({"keys": keys, "total_steps": total.item()}))
    del loader
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":  # loader workers re-import this file
    main()
