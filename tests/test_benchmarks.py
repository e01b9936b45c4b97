"""The benchmarks run and end with one JSON line (their figures are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_data_prints_its_ratios_as_the_last_line():
    cmd = [sys.executable, "benchmarks/bench_data.py", "--images", "48", "--seconds", "0.2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("decode_only_ips", "loader_ips", "baseline_ips", "make_shards_ips"):
        assert result[key] > 0
    ratio = result["loader_ips"] / result["decode_only_ips"]
    assert abs(result["loader_vs_decode"] - ratio) < 1e-3 * ratio + 1e-3
    ratio = result["loader_ips"] / result["baseline_ips"]
    assert abs(result["loader_vs_baseline"] - ratio) < 1e-3 * ratio + 1e-3


def test_bench_step_times_the_gan_step_and_reports_flops():
    cmd = [
        sys.executable,
        "benchmarks/bench_step.py",
        "--quick",
        "--batch",
        "2",
        "model.generator.width=8",
        "model.discriminator.width=8",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"].startswith("cpu") and result["batch_size"] == 2
    assert result["images_per_s"] > 0
    rate = result["flops_per_step"] / (result["step_ms_median"] / 1e3)
    assert abs(result["flops_per_s"] - rate) < 0.01 * rate
