"""train.deterministic and train.cudnn_benchmark: process-wide kernel choices."""

import json

import torch

from distcolor.backends.distributed import set_kernel_flags
from distcolor.config import load_config
from distcolor.train.loop import train
from tests.conftest import reset_accelerate, tiny_overrides


def test_flags_follow_the_config():
    try:
        set_kernel_flags(load_config(None, ["train.deterministic=true"]).train)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        set_kernel_flags(load_config(None, []).train)
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        set_kernel_flags(load_config(None, ["train.cudnn_benchmark=false"]).train)
        assert not torch.backends.cudnn.benchmark
    finally:
        set_kernel_flags(load_config(None, []).train)


def test_a_deterministic_run_trains_as_the_default_one_on_cpu(tmp_path, tiny_shards):
    """Every op of a run has a deterministic kernel (else PyTorch raises), and on a CPU the
    losses are those of a default run, bit for bit."""
    losses = {}
    for flag in ("false", "true"):
        extra = {"run.name": f"det-{flag}", "train.deterministic": flag, "train.eval_images": 0}
        cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra))
        try:
            train(cfg)
        finally:
            reset_accelerate()
            torch.use_deterministic_algorithms(False)
        rows = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
        losses[flag] = [json.loads(r)["loss/G/l1"] for r in rows if "loss/G/l1" in r]
    assert losses["true"] == losses["false"] and len(losses["true"]) == 3
