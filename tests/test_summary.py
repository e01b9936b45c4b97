import json
import subprocess
import sys
from pathlib import Path

import pytest

from distcolor.config import load_config
from distcolor.models.flops import peak_flops, step_flops

ROOT = Path(__file__).resolve().parents[1]


def run_summary(*args):
    return subprocess.run(
        [sys.executable, "scripts/summary.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_summary_of_the_paper_config():
    proc = run_summary("--config", "configs/paper.yaml")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["generator_params"] == 54_409_858
    assert facts["discriminator_params"] == 2_765_633
    assert facts["train_flops_per_image"] == pytest.approx(86.0e9, rel=0.01)
    assert "down.7" in proc.stdout and "convT 1024->512" in proc.stdout
    assert "512x1x1" in proc.stdout and "1x30x30" in proc.stdout  # innermost, 30x30 patches


def test_summary_takes_overrides_and_reports_user_errors_in_one_line():
    proc = run_summary("model.generator.width=16", "data.image_size=128")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["image_size"] == 128
    default = json.loads(run_summary().stdout.strip().splitlines()[-1])
    assert facts["generator_params"] < default["generator_params"]
    bad = run_summary("model.generator.depth=7")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: data.image_size: 64 is not divisible by 2**model.generator.depth = 128"
    )


def test_flops_scale_with_batch_and_area_and_count_backward():
    cfg = load_config(None, ["model.generator.width=8", "model.discriminator.width=8"])
    one = step_flops(cfg)
    four = step_flops(cfg, batch_size=4)
    assert four["train_flops_per_step"] == 4 * one["train_flops_per_step"]
    assert four["train_flops_per_image"] == one["train_flops_per_image"]
    double = step_flops(cfg, image_size=128)
    assert double["train_flops_per_image"] == pytest.approx(
        4 * one["train_flops_per_image"], rel=0.05
    )
    # a training step is several forward passes plus backward: well above a G forward
    assert one["train_flops_per_image"] > 4 * one["generator_forward_flops_per_image"]


def test_peak_flops_only_where_known():
    import torch

    cpu = torch.device("cpu")
    assert peak_flops(cpu, "bf16", None) is None
    assert peak_flops(cpu, "no", 1e12) == 1e12
