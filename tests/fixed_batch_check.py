"""Train on one fixed batch per rank under torchrun and write the losses per step.

    torchrun --nproc_per_node N tests/fixed_batch_check.py OUT_JSON SHARDS k=v ...

The batch is the first of this rank's share of SHARDS' train split, repeated, so a
working optimizer step must drive the generator's L1 down (a fixed-batch overfit).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import Counter
from pathlib import Path

from distcolor.config import load_config
from distcolor.data.catalog import read_manifest, shard_list
from distcolor.data.loader import build_train_loader
from distcolor.train.loop import train


def main() -> None:
    out, shards, *overrides = sys.argv[1:]
    cfg = load_config(None, overrides)
    loader = build_train_loader(
        shard_list(Path(shards), read_manifest(Path(shards)), "train"),
        cfg.data.model_copy(update={"num_workers": 0, "shuffle_buffer": 8}),
        seed=0,
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )
    first = next(iter(loader))
    batch = {
        "gray": first["gray"].clone(),
        "rgb": first["rgb"].clone(),
        "worker": 0,
        "position": {},
        "skipped": 0,
        "sources": Counter({"synthetic": int(first["gray"].shape[0])}),
    }
    train(cfg, batches=itertools.repeat(batch))
    if int(os.environ.get("RANK", 0)) == 0:  # rank 0 writes the metrics
        rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
        losses = {r["step"]: r["loss/G/l1"] for r in rows if "loss/G/l1" in r}
        Path(out).write_text(json.dumps(losses))


if __name__ == "__main__":
    main()
