"""scripts/train.py with deterministic kernels, for runs compared bit for bit on a GPU.

    torchrun --standalone --nproc_per_node 1 tests/deterministic_train.py [train.py args]

On a GPU, two runs that should agree bit for bit (one straight, one resumed) only do if
every kernel is deterministic and chosen the same way in both processes. Before anything
touches CUDA this sets what PyTorch's reproducibility notes ask for:

    CUBLAS_WORKSPACE_CONFIG=:4096:8              cuBLAS GEMMs with a fixed workspace
    torch.use_deterministic_algorithms(True, warn_only=True)
                                                 deterministic kernels where they exist; an op
                                                 without one warns (on stderr) instead of failing
    torch.backends.cudnn.deterministic = True    deterministic cuDNN algorithms only
    torch.backends.cudnn.benchmark = False       no timing-based choice, which can differ
                                                 between processes
    torch.utils.deterministic.fill_uninitialized_memory = False
                                                 keep torch.empty as in a normal run

The trainer sets cudnn.benchmark itself from `train.cudnn_benchmark` where the config has
that key, so the run also gets `train.cudnn_benchmark=false` then. On the CPU (the dry run)
the flags change nothing that matters.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

torch.use_deterministic_algorithms(True, warn_only=True)
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False
torch.utils.deterministic.fill_uninitialized_memory = False

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from distcolor.config import TrainConfig

    args = sys.argv[1:]
    if "cudnn_benchmark" in TrainConfig.model_fields:
        args.append("train.cudnn_benchmark=false")
    script = ROOT / "scripts" / "train.py"
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
