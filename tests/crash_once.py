"""Run scripts/train.py with one rank dying on the first attempt of an elastic run.

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 ACCELERATE_USE_CPU=1 torchrun --max-restarts 1 \
        --nproc_per_node 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:29500 \
        tests/crash_once.py --crash-rank 1 --crash-at-step 4 scripts/train.py --resume auto ...

The trainer calls `GANStep.__call__` once per optimizer step. On the first attempt
(TORCHELASTIC_RESTART_COUNT == "0") the chosen rank exits with status 1 as it enters step
`--crash-at-step` (so steps before it are done, and their checkpoints written), without
any clean-up, like a killed process. Restarts run the script unchanged. No production code
is modified: the step is wrapped here, then the script runs as __main__ via runpy.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash-rank", type=int, default=1)
    parser.add_argument("--crash-at-step", type=int, required=True)
    # Our options come before the script; everything after it is the script's own.
    split = next(i for i, a in enumerate(sys.argv) if i > 0 and a.endswith(".py"))
    args = parser.parse_args(sys.argv[1:split])
    script, rest = sys.argv[split], sys.argv[split + 1 :]

    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    rank = int(os.environ.get("RANK", "0"))
    if first_attempt and rank == args.crash_rank:
        from distcolor.train.gan_step import GANStep

        original = GANStep.__call__
        calls = 0

        def crashing_call(self, *a, **kw):
            nonlocal calls
            calls += 1
            if calls == args.crash_at_step:
                print(
                    f"crash_once: rank {rank} exits on entering step {calls}",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)
            return original(self, *a, **kw)

        GANStep.__call__ = crashing_call

    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
