"""Real multi-process runs: 2 ranks on CPU (gloo) over loopback, launched by torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distcolor.checkpoint import load_checkpoint
from tests.conftest import tiny_overrides
from tests.helpers import (
    TRAINING_STATE,
    assert_bitwise_equal,
    copy_stopped_at,
    free_port,
    scene_samples,
    write_sample_shards,
)

ROOT = Path(__file__).resolve().parents[1]


COMPILED = {"train.compile": "true", "train.compile_backend": "aot_eager"}


def torchrun(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("nproc", [2, 3])
def test_ranks_read_disjoint_data_and_none_hangs_on_uneven_shards(tmp_path, nproc):
    # 7 shards of 5, 5, 5, 5, 5, 2 and 2 samples: ranks get different amounts per epoch.
    samples = scene_samples(29, size=36)
    by_source = {"a": samples[:25], "b": samples[25:]}
    write_sample_shards(tmp_path / "s", by_source, shard_size={"a": 5, "b": 2})
    for sampling in ("epochs", "resampled"):
        out = tmp_path / f"out-{sampling}"
        out.mkdir()
        args = ["tests/dist_loader_check.py", str(tmp_path / "s"), str(out), "40", sampling]
        proc = torchrun(nproc, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(nproc)]
        assert all(r["total_steps"] == 40 * nproc for r in ranks)  # same steps on every rank
        if sampling == "epochs":
            # The first 2 steps (4 samples) lie inside each rank's first epoch: disjoint.
            firsts = [{k for batch in r["keys"][:2] for k in batch} for r in ranks]
            assert sum(map(len, firsts)) == len(set().union(*firsts)) == 4 * nproc


def test_two_process_gloo_run_trains_and_evaluates_across_ranks(tmp_path, tiny_shards):
    recipe = {
        "train.max_steps": 3,
        "train.eval_every": 2,
        "train.optimizer": "adabelief",
        "train.ema_half_life": 100,
        "model.channels_last": "true",
        "model.generator.up_activation": "penalized_tanh",
    }
    args = tiny_overrides(tmp_path, tiny_shards, **recipe)
    proc = torchrun(2, "scripts/train.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    result = json.loads((run / "eval.json").read_text())
    # 12 test images, split between the two ranks and summed back.
    assert result["images"] == 12
    assert (run / "checkpoints" / "step-00000003" / "COMPLETE").is_file()
    # Only rank 0 writes: one line per logged step, not two.
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/G/l1" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "colour/output" in r] == [3]
    assert [r["step"] for r in rows if "eval/l1_model" in r] == [2, 3]
    assert [r["step"] for r in rows if "eval/baseline_mean/ciede2000" in r] == [2, 3]
    # The report summed over 2 ranks is the one a single process computes from the
    # checkpoint (the same EMA weights and rank 0's batch-norm statistics).
    from distcolor.evaluate.report import write_report

    alone = write_report(
        run / "checkpoints" / "step-00000003", tiny_shards, tmp_path / "report", num_workers=0
    )
    for method in ("model", "baseline_gray", "baseline_mean"):
        for name, value in alone[method].items():
            if isinstance(value, float):
                assert result["report"][method][name] == pytest.approx(value, rel=1e-6), name


def test_two_process_resume_with_accumulation_is_bitwise_exact(tmp_path, tiny_shards):
    extra = {"train.max_steps": 4, "train.grad_accum": 2, "train.eval_images": 0}
    proc = torchrun(2, "scripts/train.py", *tiny_overrides(tmp_path, tiny_shards, **extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Stopped after step 2: the same run with only its step-2 checkpoint left, resumed.
    straight, resumed = tmp_path / "runs/tiny", tmp_path / "runs/resumed"
    copy_stopped_at(straight, resumed, drop_steps=[4])
    args = tiny_overrides(tmp_path, tiny_shards, **extra, **{"run.name": "resumed"})
    proc = torchrun(2, "scripts/train.py", "--resume", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout and "step-00000002 (step 2)" in proc.stdout
    a = load_checkpoint(straight / "checkpoints/step-00000004")
    b = load_checkpoint(resumed / "checkpoints/step-00000004")
    assert len(a["loader"]) == len(a["rng"]) == 2  # every rank's position and generators
    for key in (*TRAINING_STATE, "loader", "rng"):
        assert_bitwise_equal(a[key], b[key], key)


def test_two_process_compiled_run_with_accumulation_trains_as_eager(tmp_path, tiny_shards):
    """train.compile under DDP: the wrapper is compiled (Dynamo splits at its buckets), the
    ranks stay replicas (checked before every checkpoint) and the losses are eager's."""
    losses = {}
    for name, extra in (("eager", {}), ("compiled", COMPILED)):
        recipe = {"train.max_steps": 3, "train.grad_accum": 2, "train.eval_images": 0}
        args = tiny_overrides(tmp_path, tiny_shards, **recipe, **extra, **{"run.name": name})
        proc = torchrun(2, "scripts/train.py", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
        losses[name] = [json.loads(r)["loss/G/l1"] for r in rows if "loss/G/l1" in r]
    assert len(losses["eager"]) == 3
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5)


def test_ranks_that_drift_apart_stop_the_run_naming_the_rank(tmp_path, tiny_shards):
    extra = {"train.max_steps": 4, "train.eval_images": 0}
    args = tiny_overrides(tmp_path, tiny_shards, **extra)
    proc = torchrun(2, "tests/perturb_rank.py", "1", "3", "scripts/train.py", *args)
    assert proc.returncode != 0
    expected = (
        "error: ranks diverged at step 4: parameters differ from rank 0's "
        "(G on rank(s) [1]; G_ema on rank(s) [1])"  # D is still in step
    )
    assert expected in proc.stderr
    ckpts = tmp_path / "runs/tiny/checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step-00000002"]  # the drifted state unsaved


def test_sync_batchnorm_on_several_cpu_processes_is_a_one_line_error(tmp_path, tiny_shards):
    args = tiny_overrides(tmp_path, tiny_shards, **{"model.sync_batchnorm": "true"})
    proc = torchrun(2, "scripts/train.py", *args)
    assert proc.returncode != 0
    assert "error: model.sync_batchnorm: PyTorch's SyncBatchNorm runs on GPUs only" in proc.stderr
    assert "Traceback" not in proc.stderr.split("error: model.sync_batchnorm")[0][-500:]
