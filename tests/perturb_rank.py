"""Run scripts/train.py with one rank's generator nudged off its replicas after a step.

    torchrun --nproc_per_node 2 tests/perturb_rank.py RANK STEP scripts/train.py [overrides]

Simulates what a bad GPU or a rank-local bug does: after optimizer step STEP, rank RANK adds
one ulp to one generator weight. No production code changes: the step is wrapped here and
the script runs as __main__ via runpy.
"""

from __future__ import annotations

import os
import runpy
import sys

import torch

from distcolor.train.gan_step import GANStep


def main() -> None:
    bad_rank, bad_step, script, *rest = sys.argv[1:]
    original, calls = GANStep.__call__, {"n": 0}

    def nudged(self, micro_batches):
        metrics = original(self, micro_batches)
        calls["n"] += 1
        if calls["n"] == int(bad_step) and int(os.environ["RANK"]) == int(bad_rank):
            weight = next(self.update_g.module.parameters())
            with torch.no_grad():
                weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(9.0))
        return metrics

    GANStep.__call__ = nudged
    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
