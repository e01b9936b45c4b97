"""The benchmarks run and end with one JSON line (their figures are not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_bench_loop_reports_trainer_overhead_and_process_scaling():
    cmd = [
        sys.executable,
        "benchmarks/bench_loop.py",
        "--quick",
        "--steps",
        "4",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--separate",
        "--multiprocess",
        "--mp-repeats",
        "1",
        "data.batch_size=2",
        "model.generator.width=8",
        "model.discriminator.width=8",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["batch_size"] == 2 and result["steps"] == 4 and result["threads"] >= 1
    # A window of 4 steps holds at least one of each kind of bookkeeping (intervals scaled).
    assert result["intervals_scaled"] is True
    assert all(result["events_in_window"][k] >= 1 for k in ("log", "sample", "checkpoint"))
    for figures in (result, result["separate_runs"]):
        trainer, bare = figures["trainer_s_per_step"], figures["bare_s_per_step"]
        assert trainer > 0 and bare > 0
        assert abs(figures["overhead_ratio"] - trainer / bare) < 1e-3 * trainer / bare
        assert len(figures["window_runs_ratio"]) == 2
    mp = result["multiprocess"]
    assert set(mp["global_images_per_s"]) >= {"2x1", "1x1"}
    assert all(v > 0 for v in mp["global_images_per_s"].values())
    assert result["images_per_s_2proc"] > 0 and result["images_per_s_1proc"] > 0
    ratio = result["images_per_s_2proc"] / result["images_per_s_1proc"]
    assert abs(result["ratio_2proc_vs_1proc"] - ratio) < 1e-2 * ratio


def test_bench_prune_times_a_round_and_the_mask_enforcement():
    cmd = [
        sys.executable,
        "benchmarks/bench_prune.py",
        "--quick",
        "--batch",
        "2",
        "--rounds",
        "2",
        "data.image_size=64",
        "model.generator.width=8",
        "model.generator.depth=6",
        "model.discriminator.width=8",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["round_s"]) == 2 and result["prune_round_s"] > 0
    assert result["sparsity"] == round(1 - 0.8**2, 4)
    fraction = result["mask_enforce_s"] / result["step_s"]
    assert abs(result["mask_overhead_fraction"] - fraction) < 0.01 * fraction + 1e-5


def test_bench_checkpoint_compares_the_synchronous_and_the_background_pause(tmp_path):
    cmd = [
        sys.executable,
        "benchmarks/bench_checkpoint.py",
        "--quick",
        "--batch",
        "2",
        "--repeats",
        "2",
        "--steps",
        "1",
        "data.image_size=32",
        "model.generator.width=8",
        "model.generator.depth=5",
        "model.discriminator.width=8",
        "prune.at_steps=[10]",
        f"run.out_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # G, G's average, D, both Adam states and the rewind snapshots, all copied
    assert result["snapshot_bytes"] == result["state_bytes"] > 0
    assert result["file_bytes"] >= result["state_bytes"]
    assert len(result["sync_save_s_all"]) == len(result["async_pause_s_all"]) == 2
    assert result["async_pause_s"] > 0 and result["async_write_s"] > 0
    ratio = result["sync_save_s"] / result["async_pause_s"]
    assert abs(result["pause_ratio_sync_vs_async"] - ratio) < 0.01 * ratio + 0.01
    assert 0 < result["fraction_async_at_gpu_step"] < 1
    assert list(tmp_path.iterdir()) == []  # the scratch checkpoints are gone


@pytest.mark.slow
def test_gpu_suite_tiny_runs_every_part_end_to_end_on_cpu(tmp_path):
    """The GPU suite's --tiny mode: every part runs on CPU, so the suite never rots."""
    out = tmp_path / "suite"
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "--out", str(out), "--tiny"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    parts = ("env", "gpu_tests", "step", "compile", "train", "zero", "colorize", "evaluate")
    assert {k: v["status"] for k, v in summary["parts"].items()} == {
        name: "ok" for name in (*parts, "scaling")
    }, (summary["parts"], proc.stderr[-2000:])
    assert proc.returncode == 0
    assert json.loads((out / "summary.json").read_text()) == summary
    result = {name: json.loads((out / f"{name}.json").read_text()) for name in summary["parts"]}
    assert result["env"]["matmul_bf16_tflops"] > 0 and result["env"]["copy_gb_per_s"] > 0
    # No CUDA here: every gpu test is collected and skipped, none fails.
    tests = result["gpu_tests"]
    assert tests["tests"] > 0 and tests["skipped"] == tests["tests"] and tests["failures"] == 0
    rung = result["step"]["ladders"]["bf16"]["runs"][0]
    assert rung["images_per_s"] > 0
    ratio = rung["flops_per_s"] / 1e12 / result["env"]["matmul_bf16_tflops"]
    assert abs(rung["mfu_measured_matmul"] - ratio) < 1e-3 * ratio + 1e-4
    assert result["compile"]["compile"] is True and result["compile"]["images_per_s"] > 0
    train = result["train"]
    assert train["images_per_s"] > 0 and 0 <= train["data_wait_share"] <= 1
    ratio = train["images_per_s"] / train["bench_step_images_per_s"]
    assert abs(train["vs_bench_step"] - ratio) < 1e-2 * ratio
    backends = result["zero"]["backends"]
    assert backends["ddp"]["images_per_s"] > 0 and backends["zero2"]["images_per_s"] > 0
    assert result["colorize"]["images_per_s"] > 0
    assert result["evaluate"]["images"] > 0 and result["evaluate"]["ciede2000_model"] > 0
    assert summary["headline"]["best_images_per_s"] == result["step"]["best"]["images_per_s"]


def test_gpu_suite_records_a_failing_part_and_exits_non_zero(tmp_path):
    out = tmp_path / "suite"
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "--out", str(out), "--tiny"]
    proc = subprocess.run(
        [*cmd, "--only", "evaluate,scaling"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["parts"]["evaluate"]["status"] == "failed"
    assert "no training run" in summary["parts"]["evaluate"]["error"]
    assert summary["parts"]["scaling"]["status"] == "failed"  # ran after the failure
    assert json.loads((out / "evaluate.json").read_text())["status"] == "failed"


def test_gpu_suite_kills_a_timed_out_part_with_the_processes_it_left_its_group(tmp_path):
    """A part past its limit ends with everything it started, also a child in a session of
    its own (as torchrun starts its workers), which a process-group kill would miss."""
    import importlib.util

    import psutil

    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks/gpu_suite.py")
    suite_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite_module)
    suite = suite_module.Suite(tmp_path, tiny=True, budget_s=60, env=dict(os.environ))
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(120)\n"
    )
    with pytest.raises(suite_module.PartError, match="timed out after 3 s") as err:
        suite.command("hang", [sys.executable, "-c", script], limit=3)
    assert "started" in err.value.stdout
    child = int(pidfile.read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    assert "started" in (tmp_path / "hang.log").read_text()
