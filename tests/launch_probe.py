"""What a launcher gave this process: `python tests/launch_probe.py OUT_DIR` writes
OUT_DIR/rank-<rank>.json with the world size and backend of the process group the
Accelerator built, and the mixed precision the trainer would use."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
from accelerate import PartialState

from distcolor.train.precision import resolve_precision


def main() -> None:
    out = Path(sys.argv[1])
    state = PartialState()
    up = dist.is_available() and dist.is_initialized()
    facts = {
        "rank": dist.get_rank() if up else state.process_index,
        "world_size": dist.get_world_size() if up else state.num_processes,
        "backend": dist.get_backend_config() if up else None,
        "device": str(state.device),
        "accelerate_mixed_precision": os.environ.get("ACCELERATE_MIXED_PRECISION"),
        "trainer_precision": resolve_precision(None),
    }
    (out / f"rank-{facts['rank']}.json").write_text(json.dumps(facts))
    if up:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
