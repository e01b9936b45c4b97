"""benchmarks/scaling_model.py: the bytes it counts and the shape of its predictions."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from distcolor.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper.yaml"
G_PARAMS, D_PARAMS = 54_409_858, 2_765_633
COUNTS = [1, 2, 4, 8, 16, 24, 32, 64, 128, 256, 512, 1024, 4096]

_spec = importlib.util.spec_from_file_location(
    "scaling_model", ROOT / "benchmarks" / "scaling_model.py"
)
sm = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("scaling_model", sm)  # dataclasses look their module up there
_spec.loader.exec_module(sm)


@pytest.fixture(scope="module")
def paper():
    return sm.profile_step(load_config(PAPER))


def efficiencies(prof, fabric, *, batch=64, step_s=0.014, grad_dtype="fp32", accum=1):
    return [
        sm.predict(
            prof,
            gpus=n,
            fabric=fabric,
            step_s=step_s,
            batch=batch,
            grad_dtype=grad_dtype,
            accum=accum,
        )["efficiency"]
        for n in COUNTS
    ]


def test_gradient_bytes_are_the_parameters_in_fp32_and_bf16(paper):
    assert (paper.G.params, paper.D.params) == (G_PARAMS, D_PARAMS)
    # DDP's buckets hold every gradient once.
    assert paper.G.grad_bytes_fp32 == G_PARAMS * 4
    assert paper.D.grad_bytes_fp32 == D_PARAMS * 4
    assert sum(paper.phases.values()) == pytest.approx(paper.flops_per_image, rel=1e-6)
    traffic = sm.traffic_per_gpu(G_PARAMS * 4, 8)
    assert traffic["ring"] == traffic["nvlink"] == 2 * 7 / 8 * G_PARAMS * 4
    assert traffic["nic"] == 0


@pytest.mark.parametrize("grad_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("batch", [4, 64])
def test_efficiency_is_one_on_one_gpu_and_never_rises_with_more(paper, grad_dtype, batch):
    for fabric in (sm.Fabric.infiniband(200), sm.Fabric.infiniband(400)):
        for net_latency in ("tree", "ring"):
            fabric = sm.Fabric(fabric.name, net_busbw=fabric.net_busbw, net_latency=net_latency)
            eff = efficiencies(paper, fabric, batch=batch, grad_dtype=grad_dtype)
            assert eff[0] == 1.0
            assert all(later <= earlier for earlier, later in zip(eff, eff[1:], strict=False))
            assert eff[-1] < 1.0
    for accum in (1, 4):
        eff = efficiencies(paper, sm.Fabric.infiniband(400), accum=accum)
        assert eff[0] == 1.0 and eff == sorted(eff, reverse=True)


def test_a_faster_interconnect_never_gives_a_lower_efficiency(paper):
    pairs = [
        (sm.Fabric.infiniband(200), sm.Fabric.infiniband(400)),
        (sm.Fabric.infiniband(400, 0.8), sm.Fabric.infiniband(400, 0.9)),
        (sm.Fabric("slow", nvlink_busbw=300e9), sm.Fabric("fast", nvlink_busbw=450e9)),
    ]
    for batch in (4, 16, 64, 256):
        for slow, fast in pairs:
            for grad_dtype in ("fp32", "bf16"):
                if slow.net_busbw is None:  # one node: up to 8 GPUs
                    counts = [n for n in COUNTS if n <= 8]
                else:
                    counts = COUNTS
                for n in counts:
                    kw = dict(gpus=n, step_s=0.014, batch=batch, grad_dtype=grad_dtype)
                    e_slow = sm.predict(paper, fabric=slow, **kw)["efficiency"]
                    e_fast = sm.predict(paper, fabric=fast, **kw)["efficiency"]
                    assert e_fast >= e_slow
    # Half the bytes (bf16) never hurt either.
    fabric = sm.Fabric.infiniband(200)
    assert all(
        b >= f
        for b, f in zip(
            efficiencies(paper, fabric, grad_dtype="bf16"),
            efficiencies(paper, fabric, grad_dtype="fp32"),
            strict=True,
        )
    )


def test_one_node_fabric_refuses_more_gpus_than_a_node():
    with pytest.raises(ValueError):
        sm.allreduce_seconds(1e6, 16, sm.Fabric("NVLink"))
    assert sm.allreduce_seconds(1e9, 1, sm.Fabric("NVLink")) == 0.0


def test_loader_rate_is_the_median_of_the_recorded_bench_data_runs(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(
        "# Benchmark results\n\n"
        "## bench_throughput.py (64 px)\n\n| loader img/s |\n|---|\n| 5000 |\n\n"
        "## bench_data.py (1 loader worker, 256-px crops from 286-px shards, batch 16)\n\n"
        "| date | decode-only img/s | loader img/s | loader / decode |\n"
        "|---|---|---|---|\n"
        "| d | 1500.6 | 1,073.3 | **0.715** |\n"
        "| d | 1645.4 | 1241.8 | 0.755 |\n"
        "| d | 1593.1 | 1198.2 | |\n\n"
        "## bench_step.py\n\n| loader img/s |\n|---|\n| 1 |\n"
    )
    rate, source = sm.recorded_loader_rate(results)
    assert rate == 1198.2
    assert "3 runs" in source
    assert sm.recorded_loader_rate(tmp_path / "missing.md") is None


def test_cli_prints_tables_then_one_json_line():
    cmd = [sys.executable, "benchmarks/scaling_model.py", "--quick"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) > 5  # the tables come first
    result = json.loads(lines[-1])
    assert result["step_time_source"].startswith("estimate")
    assert result["batch_per_gpu"] == 64
    assert result["grad_bytes"]["G"] == {
        "params": G_PARAMS,
        "fp32": G_PARAMS * 4,
        "bf16": G_PARAMS * 2,
    }
    assert result["grad_bytes"]["D"]["fp32"] == D_PARAMS * 4
    for fabric in ("ib200", "ib400"):
        eff = result["efficiency"][fabric]["fp32"]
        assert set(eff) == {"1", "8", "64", "512"} and eff["1"] == 1.0
        assert 0 < eff["512"] <= eff["64"] <= eff["8"] <= 1.0
    assert set(result["efficiency"]["nvlink"]["fp32"]) == {"1", "8"}


def test_cli_json_only_with_a_measured_step(capsys):
    sm.main(["--step-ms", "50", "--batch", "32", "--gpus", "16", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["step_time_source"].startswith("measured")
    assert result["single_gpu_step_ms"] == 50 and result["batch_per_gpu"] == 32
    assert result["loader"]["images_per_s_per_gpu"] == pytest.approx(32 / 0.050)
    assert set(result["efficiency"]["ib400"]["bf16"]) == {"1", "16"}
