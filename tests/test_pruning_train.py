"""Pruning inside real training runs: masks in checkpoints, TensorBoard records, exact
resume mid-schedule, one and two processes."""

import json
import re

import pytest
import torch

from distcolor.checkpoint import checkpoint_path, load_checkpoint
from distcolor.config import load_config
from distcolor.errors import UserError
from distcolor.infer.export import export_generator
from distcolor.infer.exported import COMPACT, load_compact
from distcolor.train.loop import train
from tests.conftest import reset_accelerate, tiny_overrides
from tests.helpers import TRAINING_STATE, assert_bitwise_equal, copy_stopped_at
from tests.test_distributed import torchrun
from tests.test_pruning import zero_bits

PRUNED = {
    "prune.at_steps": "[2, 4, 5]",
    "prune.discriminator": "true",
    "prune.rewind": "step",
    "prune.rewind_step": 1,
    "train.ema_half_life": 50,
    "train.max_steps": 6,
    "train.ckpt_every": 3,
    "train.eval_images": 0,
}


def assert_pruned_state(state: dict, rounds: int) -> None:
    """Sparsity exactly 1 - 0.8**rounds; every pruned weight +0.0 in G, G_ema and D."""
    prune = state["prune"]
    assert prune["round"] == rounds
    for net, copies in (("G", ("G", "G_ema")), ("D", ("D",))):
        masks = prune["masks"][net]
        total = sum(m.numel() for m in masks.values())
        alive = sum(int(m.sum()) for m in masks.values())
        assert alive == round(total * 0.8**rounds), net
        for copy in copies:
            for name, keep in masks.items():
                assert zero_bits(state[copy][name][~keep]), (copy, name)


def test_pruned_run_records_rounds_and_resumes_mid_schedule_exactly(tmp_path, tiny_shards):
    straight = load_config(None, tiny_overrides(tmp_path, tiny_shards, **PRUNED))
    train(straight)
    reset_accelerate()
    run = straight.run_dir
    final = load_checkpoint(checkpoint_path(run / "checkpoints", 6))
    assert_pruned_state(final, rounds=3)
    assert_pruned_state(load_checkpoint(checkpoint_path(run / "checkpoints", 3)), rounds=1)
    assert [h["step"] for h in final["prune"]["history"]] == [2, 4, 5]

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if "prune/round" in r]
    assert [r["step"] for r in rounds] == [2, 4, 5]
    assert rounds[0]["prune/sparsity/G"] == pytest.approx(0.2, abs=1e-5)
    assert rounds[2]["prune/sparsity/D"] == pytest.approx(1 - 0.8**3, abs=1e-5)
    assert rounds[1]["prune/threshold/G"] > rounds[0]["prune/threshold/G"] > 0
    assert "prune/sparsity/G/up.0.1" in rounds[0]  # per layer, transposed convs included
    assert {"prune/loss_before/G/l1", "prune/loss_after/G/l1"} <= rounds[0].keys()

    # Stopped at step 3 (between rounds), resumed: the same weights, masks and snapshots.
    resumed = tmp_path / "runs/resumed"
    copy_stopped_at(run, resumed, drop_steps=[6])
    again = load_config(
        None, tiny_overrides(tmp_path, tiny_shards, **PRUNED, **{"run.name": "resumed"})
    )
    train(again, resume=True)
    other = load_checkpoint(checkpoint_path(resumed / "checkpoints", 6))
    for key in (*TRAINING_STATE, "prune", "rng"):
        assert_bitwise_equal(final[key], other[key], key)


def test_resuming_with_other_pruning_settings_is_a_clear_error(tmp_path, tiny_shards):
    def config(name: str, steps: int, **prune) -> object:
        extra = {"run.name": name, "train.max_steps": steps, "train.eval_images": 0, **prune}
        return load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra))

    train(config("dense", 2))
    reset_accelerate()
    with pytest.raises(UserError, match="trained without pruning; pruning starts with a new run"):
        train(config("dense", 4, **{"prune.at_steps": "[3]"}), resume=True)
    reset_accelerate()
    train(config("pruned", 2, **{"prune.at_steps": "[1]"}))
    reset_accelerate()
    with pytest.raises(UserError, match="trained with pruning; resume it with its prune settings"):
        train(config("pruned", 4), resume=True)
    for changed, message in (
        ({"prune.rate": 0.5}, "prune.rate 0.2 -> 0.5"),
        ({"prune.keep_first_last": "true"}, "prune.keep_first_last False -> True"),
        ({"prune.at_steps": "[1, 2]"}, "prune.at_steps [2] (already passed at step 2)"),
        ({"prune.at_steps": "[2, 3]"}, "prune.at_steps (rounds done at [1])"),
    ):
        reset_accelerate()
        with pytest.raises(UserError, match="pruning schedule differs: " + re.escape(message)):
            train(config("pruned", 4, **{"prune.at_steps": "[1, 3]", **changed}), resume=True)
    reset_accelerate()  # a later round may move, to a step still ahead
    train(config("pruned", 4, **{"prune.at_steps": "[1, 4]"}), resume=True)


def test_two_processes_prune_identically_and_resume_mid_schedule_exactly(tmp_path, tiny_shards):
    extra = {**PRUNED, "train.grad_accum": 2}
    proc = torchrun(2, "scripts/train.py", *tiny_overrides(tmp_path, tiny_shards, **extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [line for line in proc.stdout.splitlines() if ": pruning round" in line]
    assert len(rounds) == 3 and all("held-out L1" in line for line in rounds)  # one line each
    assert "pruning round 3: G 48.8% pruned" in rounds[2] and "D 48.8% pruned" in rounds[2]
    straight, resumed = tmp_path / "runs/tiny", tmp_path / "runs/resumed"
    copy_stopped_at(straight, resumed, drop_steps=[6])
    args = tiny_overrides(tmp_path, tiny_shards, **extra, **{"run.name": "resumed"})
    proc = torchrun(2, "scripts/train.py", "--resume", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(checkpoint_path(straight / "checkpoints", 6))
    b = load_checkpoint(checkpoint_path(resumed / "checkpoints", 6))
    assert_pruned_state(a, rounds=3)
    for key in (*TRAINING_STATE, "prune", "rng", "loader"):
        assert_bitwise_equal(a[key], b[key], key)


def test_a_run_pruned_5_times_exports_to_a_compact_file_that_loads_back_exactly(
    tmp_path, tiny_shards
):
    extra = {
        "prune.at_steps": "[1, 2, 3, 4, 5]",
        "train.max_steps": 6,
        "train.ema_half_life": 50,
        "train.eval_images": 0,
        "model.generator.width": 16,
    }
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra))
    train(cfg)
    result = export_generator(cfg.run_dir, tmp_path / "exported")
    assert result["pruning_rounds"] == 5 and result["weights"] == "ema"
    assert result["sparsity"] == pytest.approx(1 - 0.8**5, abs=1e-4)  # 67.2%
    assert result["compact_bytes"] <= 0.45 * result["dense_bytes"]
    saved = load_checkpoint(checkpoint_path(cfg.run_dir / "checkpoints", 6))["G_ema"]
    loaded, _ = load_compact(tmp_path / "exported" / COMPACT)
    assert_bitwise_equal(
        {k: v.view(torch.int32) if v.dtype == torch.float32 else v for k, v in loaded.items()},
        {k: v.view(torch.int32) if v.dtype == torch.float32 else v for k, v in saved.items()},
    )
