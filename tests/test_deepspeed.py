"""train.backend=deepspeed: two ZeRO engines on 2 real CPU processes (gloo, loopback).

The strongest check is equality: in fp32 on the same data, ZeRO stages 1, 2 and 3 train
the same weights as DDP, bit for bit, through two pruning rounds with rewinding and an EMA.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("deepspeed")

from distcolor.checkpoint import load_checkpoint  # noqa: E402
from distcolor.deepspeed_checkpoint import (  # noqa: E402
    _deepspeed_safe_globals,
    consolidated_state,
)
from distcolor.errors import UserError  # noqa: E402
from distcolor.infer.export import export_generator  # noqa: E402
from distcolor.infer.exported import load_exported  # noqa: E402
from distcolor.models import build_models  # noqa: E402
from tests.conftest import tiny_overrides  # noqa: E402
from tests.helpers import assert_bitwise_equal, copy_stopped_at  # noqa: E402
from tests.test_distributed import ROOT, free_port, torchrun  # noqa: E402

STEPS = 6
RUN = {
    "train.max_steps": STEPS,
    "train.ckpt_every": 3,
    "train.eval_images": 8,
    "train.ema_half_life": 50,
    "prune.at_steps": "[2,4]",
    "prune.rate": 0.5,
    "prune.discriminator": "true",
}
LAST = f"checkpoints/step-{STEPS:08d}"


def ds_args(tmp_path, shards, name, stage=None, *, prune=True, **extra):
    run = RUN if prune else {k: v for k, v in RUN.items() if not k.startswith("prune.")}
    settings = {**run, "run.name": name, **extra}
    if stage is not None:
        settings.update(
            {
                "train.backend": "deepspeed",
                "deepspeed.config": f"configs/deepspeed/zero{stage}.json",
            }
        )
    return tiny_overrides(tmp_path, shards, **settings)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_shards):
    """The same 6-step pruned run under DDP and under ZeRO-1, -2 and -3 (2 processes)."""
    root = tmp_path_factory.mktemp("ds")
    for name, stage in (("ddp", None), ("zero1", 1), ("zero2", 2), ("zero3", 3)):
        proc = torchrun(2, "scripts/train.py", *ds_args(root, tiny_shards, name, stage))
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    return root / "runs"


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_zero_stage_trains_the_same_weights_as_ddp(runs, stage):
    ddp = load_checkpoint(runs / "ddp" / LAST)
    folder = runs / f"zero{stage}" / LAST
    state = load_checkpoint(folder)
    assert state["backend"] == "deepspeed" and "G" not in state  # weights are in the shards
    # Sharded: one optimizer file per rank for each engine, written with the step folder.
    for net in ("G", "D"):
        files = sorted(p.name for p in (folder / net / "engine").iterdir())
        assert sum("optim_states" in f for f in files) == 2, files
    assert_bitwise_equal(consolidated_state(folder, "G"), ddp["G"], "G")
    assert_bitwise_equal(consolidated_state(folder, "D"), ddp["D"], "D")
    assert_bitwise_equal(state["G_ema"], ddp["G_ema"], "G_ema")
    assert_bitwise_equal(state["prune"]["masks"], ddp["prune"]["masks"], "masks")
    assert state["prune"]["round"] == 2
    # Losses: finite at every step, and the same as DDP's.
    rows = [
        json.loads(x)
        for x in (runs / f"zero{stage}" / "metrics.jsonl").read_text().split("\n")
        if x
    ]
    ddp_rows = [
        json.loads(x) for x in (runs / "ddp" / "metrics.jsonl").read_text().split("\n") if x
    ]
    losses = [r["loss/G/l1"] for r in rows if "loss/G/l1" in r]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))
    assert losses == [r["loss/G/l1"] for r in ddp_rows if "loss/G/l1" in r]


def test_pruned_positions_stay_zero_in_the_masters_and_the_export(runs, tmp_path):
    folder = runs / "zero3" / LAST
    masks = load_checkpoint(folder)["prune"]["masks"]
    weights = {"G": consolidated_state(folder, "G"), "D": consolidated_state(folder, "D")}
    for net, keep in masks.items():
        for name, mask in keep.items():
            assert not weights[net][name][~mask].any(), f"{net}.{name} moved off zero"
    result = export_generator(folder, tmp_path / "export", weights="live")
    assert result["sparsity"] == pytest.approx(0.75, abs=0.01)
    exported = load_exported(tmp_path / "export" / "generator.compact.safetensors")
    plain, _ = build_models(exported_config(folder), seed=0)
    plain.load_state_dict(weights["G"])
    exported.eval(), plain.eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(exported(x), plain(x))  # the export is the consolidated G


def exported_config(folder):
    from distcolor.config import config_from_dict

    return config_from_dict(load_checkpoint(folder)["config"]).model


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_from_a_deepspeed_checkpoint_is_bitwise_exact(runs, tmp_path, tiny_shards, stage):
    straight = runs / f"zero{stage}"
    resumed = tmp_path / "runs" / "resumed"
    copy_stopped_at(straight, resumed, drop_steps=[STEPS])
    proc = torchrun(
        2, "scripts/train.py", "--resume", *ds_args(tmp_path, tiny_shards, "resumed", stage)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step-00000003 (step 3)" in proc.stdout
    a, b = straight / LAST, resumed / LAST
    for net in ("G", "D"):
        assert_bitwise_equal(consolidated_state(a, net), consolidated_state(b, net), net)
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    for key in ("G_ema", "prune", "loader", "rng"):
        assert_bitwise_equal(sa[key], sb[key], key)
    # Optimizer moments and fp32 masters too: every tensor of every rank's shard file.
    for net in ("G", "D"):
        for rank in range(2):
            name = f"engine/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
            ta, tb = shard_tensors(a / net / name), shard_tensors(b / net / name)
            assert ta and ta.keys() == tb.keys()
            assert_bitwise_equal(ta, tb, f"{net} {name}")


def shard_tensors(path) -> dict:
    """Every tensor in a DeepSpeed shard file, by its path in the nested containers."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        state = torch.load(path, weights_only=True)
    found = {}

    def walk(obj, where):
        if torch.is_tensor(obj):
            found[where] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{where}/{k}")
        elif isinstance(obj, list | tuple):
            for k, v in enumerate(obj):
                walk(v, f"{where}/{k}")

    walk(state, "")
    return found


def test_resuming_across_backends_is_a_one_line_error(runs, tmp_path, tiny_shards):
    copy_stopped_at(runs / "zero2", tmp_path / "runs" / "other", drop_steps=[])
    args = ds_args(tmp_path, tiny_shards, "other")  # backend ddp
    proc = torchrun(1, "scripts/train.py", "--resume", *args)
    assert proc.returncode != 0
    assert "error: --resume: the checkpoint was written by train.backend=deepspeed" in proc.stderr
    assert "Traceback" not in proc.stderr.split("error: --resume")[0]  # (torchrun's comes after)


@pytest.mark.parametrize("stage", [1, 3])
def test_losses_fall_on_a_fixed_batch(tmp_path, tiny_shards, stage):
    out = tmp_path / "losses.json"
    args = ds_args(
        tmp_path,
        tiny_shards,
        "fixed",
        stage,
        prune=False,
        **{
            "train.max_steps": 12,
            "train.eval_images": 0,
            "train.ckpt_every": 100,
            "train.lr_g": 2e-3,
            "train.mixed_precision": "bf16",
            "model.channels_last": "true",  # bf16 NHWC weights: DeepSpeed broadcasts bytes
        },
    )
    proc = torchrun(2, "tests/fixed_batch_check.py", str(out), str(tiny_shards), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = list(json.loads(out.read_text()).values())
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_cpu_offload_with_adabelief_trains_like_without(tmp_path, tiny_shards):
    extra = {"train.optimizer": "adabelief", "train.max_steps": 3, "prune.at_steps": "[2]"}
    for name, offload in (("plain", "none"), ("offload", "cpu")):
        args = ds_args(
            tmp_path, tiny_shards, name, 2, **extra, **{"deepspeed.offload_optimizer": offload}
        )
        proc = torchrun(2, "scripts/train.py", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    last = "checkpoints/step-00000003"
    a = consolidated_state(tmp_path / "runs/plain" / last)
    b = consolidated_state(tmp_path / "runs/offload" / last)
    assert_bitwise_equal(a, b, "G")


def test_accelerate_launch_with_a_deepspeed_config_runs_two_zero_ranks(tmp_path, tiny_shards):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    config = (ROOT / "configs/accelerate/deepspeed_cpu_2proc.yaml").read_text()
    config = config.replace("main_process_port: 0", f"main_process_port: {free_port()}")
    (tmp_path / "acc.yaml").write_text(config)
    args = tiny_overrides(tmp_path, tiny_shards, **{"train.max_steps": 2, "train.eval_images": 0})
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(tmp_path / "acc.yaml"),
        "scripts/train.py",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "runs/tiny/checkpoints/step-00000002"
    assert load_checkpoint(folder)["backend"] == "deepspeed"  # no train.backend given
    shards = sorted(p.name for p in (folder / "G" / "engine").iterdir() if "optim" in p.name)
    assert len(shards) == 2, shards


def test_consolidating_a_damaged_shard_is_a_one_line_error(runs, tmp_path):
    import shutil

    folder = tmp_path / "step"
    shutil.copytree(runs / "zero2" / LAST, folder)
    shard = folder / "G/engine/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match="cannot be consolidated"):
        consolidated_state(folder, "G")


def test_colorize_and_evaluate_read_a_deepspeed_checkpoint(runs, tmp_path, tiny_shards):
    from PIL import Image

    from distcolor.evaluate.report import write_report
    from distcolor.infer.colorizer import Colorizer
    from distcolor.infer.weights import load_generator

    folder = runs / "zero3" / LAST
    live = load_generator(folder, weights="live")  # consolidated from the shards, weights-only
    assert_bitwise_equal(live.generator.state_dict(), consolidated_state(folder, "G"), "G")
    ema = load_generator(runs / "zero3", weights="ema")  # the run folder: its newest step
    assert ema.weights == "ema" and ema.step == STEPS
    assert_bitwise_equal(ema.generator.state_dict(), load_checkpoint(folder)["G_ema"], "G_ema")
    gray = Image.new("L", (50, 37), 120)
    out = Colorizer.from_checkpoint(folder, weights="live", device="cpu")(gray)
    assert out.size == (50, 37) and out.mode == "RGB"
    report = write_report(folder, tiny_shards, tmp_path / "report", num_workers=0)
    assert report["model"]["images"] == 12 and (tmp_path / "report" / "losses.png").is_file()
