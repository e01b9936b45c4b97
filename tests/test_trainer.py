import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from distcolor.backends.ddp import ddp_step
from distcolor.backends.distributed import build_accelerator
from distcolor.checkpoint import latest_checkpoint, load_checkpoint
from distcolor.config import load_config
from distcolor.errors import UserError
from distcolor.models import build_models
from distcolor.train import loop as loop_module
from distcolor.train import telemetry as telemetry_module
from distcolor.train.loop import train
from distcolor.train.precision import Precision
from tests.conftest import reset_accelerate, tiny_overrides
from tests.helpers import TRAINING_STATE, assert_bitwise_equal, run_script

ROOT = Path(__file__).resolve().parents[1]


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss/G/l1" in r}


def test_one_step_changes_both_models():
    cfg = load_config(
        None,
        ["model.generator.width=8", "model.generator.depth=5", "model.discriminator.width=8"],
    )
    accelerator = build_accelerator(cfg)
    g, d = build_models(cfg.model, seed=0)
    before_g = [p.detach().clone() for p in g.parameters()]
    before_d = [p.detach().clone() for p in d.parameters()]
    step = ddp_step(cfg, accelerator, g, d, Precision("no", accelerator.device))
    losses = step([(torch.rand(4, 1, 32, 32) * 2 - 1, torch.rand(4, 2, 32, 32) - 0.5)])
    assert all(torch.isfinite(v) for v in losses.values())
    changed_g = [not torch.equal(a, b) for a, b in zip(before_g, g.parameters(), strict=True)]
    changed_d = [not torch.equal(a, b) for a, b in zip(before_d, d.parameters(), strict=True)]
    assert all(changed_g), "every generator tensor gets a gradient"
    assert all(changed_d), "every discriminator tensor gets a gradient"
    assert all(p.requires_grad for p in d.parameters())  # restored after the G step


def test_run_writes_config_checkpoints_tensorboard_samples(tmp_path, tiny_shards):
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards))
    result = train(cfg)
    run = cfg.run_dir
    assert load_config(run / "config.yaml") == cfg
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == [
        "step-00000002",
        "step-00000003",
    ]
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["step"] == 3 and state["config"] == cfg.model_dump(mode="json")
    assert {"G", "D", "steps", "code_version"} <= state.keys()
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step-00000002.png",
        "step-00000003.png",
    ]
    grid = Image.open(run / "samples" / "step-00000003.png")
    assert grid.size == (8 * 32, 3 * 32)  # 8 columns; rows gray / output / original
    assert sorted(metrics(run)) == [1, 2, 3]
    # Colour drift monitoring at the last step (train.hist_every is 500 here).
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    colour = [r for r in rows if "colour/ratio_output_to_original" in r]
    assert [r["step"] for r in colour] == [3] and colour[0]["chroma/hue_spread_real"] > 0
    assert result["images"] == 12 and result["l1_no_colour"] > 0
    assert json.loads((run / "eval.json").read_text()) == result


def test_resume_continues_exactly(tmp_path, tiny_shards):
    common = {"data.num_workers": 2, "train.max_steps": 5, "train.eval_images": 0}
    straight = load_config(
        None, tiny_overrides(tmp_path, tiny_shards, **common, **{"run.name": "straight"})
    )
    train(straight)
    reset_accelerate()
    interrupted = load_config(
        None,
        tiny_overrides(
            tmp_path, tiny_shards, **{**common, "train.max_steps": 2, "run.name": "resumed"}
        ),
    )
    train(interrupted)
    reset_accelerate()
    resumed = load_config(
        None, tiny_overrides(tmp_path, tiny_shards, **common, **{"run.name": "resumed"})
    )
    train(resumed, resume=True)
    a, b = metrics(straight.run_dir), metrics(resumed.run_dir)
    for step in (3, 4, 5):
        for key in ("loss/D/total", "loss/G/adv", "loss/G/l1"):
            assert abs(a[step][key] - b[step][key]) < 1e-6, (step, key)
    # Bit for bit: weights, averages, both optimizers' states, RNG and loader positions.
    sa = load_checkpoint(latest_checkpoint(straight.run_dir / "checkpoints"))
    sb = load_checkpoint(latest_checkpoint(resumed.run_dir / "checkpoints"))
    for key in (*TRAINING_STATE, "rng", "loader"):
        assert_bitwise_equal(sa[key], sb[key], key)


def test_cli_user_errors_are_one_line(tmp_path):
    bad = run_script("scripts/train.py", "data.batch_size=0")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: data.batch_size: input should be greater than or equal to 1 (got 0)"
    )
    missing = run_script(
        "scripts/train.py",
        f"data.shards={tmp_path / 'nowhere'}",
        "data.synthetic=null",
        f"run.out_dir={tmp_path}",
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().startswith("error: data.shards: folder ")
    shards = run_script("scripts/make_shards.py", "--out", str(tmp_path / "o"))
    assert shards.returncode == 2
    assert shards.stderr.strip() == (
        "error: nothing to shard: give --source NAME=DIR and/or --synthetic N"
    )
    resume = run_script(
        "scripts/train.py",
        "--resume",
        f"run.out_dir={tmp_path}",
        f"data.shards={tmp_path / 's'}",
        "data.synthetic.count=20",
        "data.synthetic.shard_size=4",
    )
    assert resume.returncode == 2 and "error: --resume: no complete checkpoint in" in resume.stderr


def test_cli_builds_synthetic_shards_then_trains_and_resumes(tmp_path):
    shards = tmp_path / "shards"
    synthetic = {
        "data.synthetic.count": 40,
        "data.synthetic.size": 40,
        "data.synthetic.shard_size": 4,
    }
    first = run_script(
        "scripts/train.py", *tiny_overrides(tmp_path, shards, **synthetic, **{"train.max_steps": 2})
    )
    assert first.returncode == 0, first.stderr
    assert "building synthetic dataset: 40 scenes" in first.stdout
    assert "held-out on" in first.stdout and "CIEDE2000" in first.stdout
    assert "vs no colour" in first.stdout and "vs mean colour" in first.stdout
    assert "step 2/2  D " in first.stdout  # plain log lines when stdout is not a terminal
    assert (shards / "manifest.json").is_file()
    again = run_script(
        "scripts/train.py",
        "--resume",
        *tiny_overrides(tmp_path, shards, **synthetic, **{"train.max_steps": 4}),
    )
    assert again.returncode == 0, again.stderr
    assert "building synthetic" not in again.stdout
    assert "resuming from" in again.stdout and "step-00000002" in again.stdout
    assert (tmp_path / "runs/tiny/checkpoints/step-00000004/COMPLETE").is_file()


def test_dry_run_prints_the_resolved_config_from_any_directory(tmp_path):
    out = run_script(str(ROOT / "scripts/train.py"), "--dry-run", "train.max_steps=7", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["train"]["max_steps"] == 7
    assert cfg["data"]["synthetic"]["count"] == 3000  # configs/default.yaml was found
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_resume_with_a_different_model_is_a_clear_error(tmp_path, tiny_shards):
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **{"train.max_steps": 1})))
    reset_accelerate()
    wider = load_config(
        None, tiny_overrides(tmp_path, tiny_shards, **{"model.generator.width": 16})
    )
    with pytest.raises(UserError, match=r"^--resume: .*step-00000001 does not fit"):
        train(wider, resume=True)


def test_fresh_run_refuses_to_mix_with_an_old_runs_checkpoints(tmp_path, tiny_shards):
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **{"train.max_steps": 1}))
    train(cfg)
    reset_accelerate()
    with pytest.raises(
        UserError, match="^run.name: .*tiny already holds checkpoints; pass --resume"
    ):
        train(cfg)


def test_unreadable_latest_checkpoint_falls_back_and_resume_stays_exact(
    tmp_path, tiny_shards, capsys
):
    cfg = load_config(
        None,
        tiny_overrides(tmp_path, tiny_shards, **{"train.max_steps": 5, "train.eval_images": 0}),
    )
    train(cfg)
    before = metrics(cfg.run_dir)
    ckpts = cfg.run_dir / "checkpoints"
    (ckpts / "step-00000005" / "state.pt").write_bytes(b"damaged on disk")
    reset_accelerate()
    capsys.readouterr()
    train(cfg, resume=True)
    out = capsys.readouterr().out
    assert "step-00000005 cannot be read" in out and "trying the previous checkpoint" in out
    assert "resuming from" in out and "step-00000004 (step 4)" in out
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss/G/l1" in r]
    assert steps == [1, 2, 3, 4, 5]  # step 5 was redone, not logged twice
    after = metrics(cfg.run_dir)
    assert abs(after[5]["loss/G/l1"] - before[5]["loss/G/l1"]) < 1e-6


def test_resume_with_another_data_order_starts_new_epochs_and_keeps_the_totals(
    tmp_path, tiny_shards, capsys
):
    common = {"train.eval_images": 0, "data.shuffle_buffer": 8}
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **common))
    result = train(cfg)
    assert result["source_mix"] == {"synthetic": 1.0}
    assert metrics(cfg.run_dir)[3]["data/mix/synthetic"] == 1.0
    state = load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))
    assert state["data_order"]["sampling"] == "epochs"
    reset_accelerate()
    capsys.readouterr()
    more = {**common, "train.max_steps": 5, "data.sampling": "resampled"}
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **more)), resume=True)
    out = capsys.readouterr().out
    assert "warning: data order changed since the checkpoint (sampling epochs -> resampled)" in out
    state = load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))
    assert sum(state["loader"][0]["mix"].values()) == 5 * 4  # images of all 5 steps, not 2
    assert state["loader"][0]["first_round"]["*"] >= 1  # past every round read before


RECIPE = {
    "train.optimizer": "adabelief",
    "train.gan_loss": "vanilla",
    "train.lr_schedule": "linear_decay",
    "train.ema_half_life": 200,
    "model.generator.down_activation": "penalized_tanh",
    "model.discriminator.activation": "penalized_tanh",
    "model.channels_last": "true",
    "model.init_seed": 7,
    "train.eval_images": 0,
    "train.max_steps": 5,
}


def test_recipe_options_train_and_resume_exactly(tmp_path, tiny_shards):
    straight = load_config(None, tiny_overrides(tmp_path, tiny_shards, **RECIPE))
    train(straight)
    a = metrics(straight.run_dir)
    # linear decay from half-way (step 2): 1, 1, 3/4, 2/4, 1/4 of 2e-4
    lrs = [a[s]["lr/G"] for s in range(1, 6)]
    assert lrs == pytest.approx([2e-4, 2e-4, 1.5e-4, 1e-4, 0.5e-4])
    assert all(a[s]["perf/tflop_per_s"] > 0 for s in a)
    facts = json.loads((straight.run_dir / "model.json").read_text())
    assert facts["init_seed"] == 7 and facts["train_flops_per_image"] > 0
    state = load_checkpoint(latest_checkpoint(straight.run_dir / "checkpoints"))
    assert state["init_seed"] == 7
    opt_g = state["steps"]["update_G"]["optimizer"]
    assert "exp_avg_var" in next(iter(opt_g["state"].values()))  # AdaBelief's state
    ema, live = state["G_ema"], state["G"]
    assert ema.keys() == live.keys()
    assert any(not torch.equal(ema[k], live[k]) for k in live if k.endswith("weight"))

    # Pre-empted after step 2: the same run (same max_steps, so the same schedule) with
    # only its step-2 checkpoint left.
    shutil.copytree(straight.run_dir, tmp_path / "runs" / "resumed")
    for late in ("step-00000004", "step-00000005"):
        shutil.rmtree(tmp_path / "runs/resumed/checkpoints" / late)
    reset_accelerate()
    resumed = load_config(
        None, tiny_overrides(tmp_path, tiny_shards, **{**RECIPE, "run.name": "resumed"})
    )
    train(resumed, resume=True)
    b = metrics(resumed.run_dir)
    for step in (3, 4, 5):
        for key in ("loss/D/total", "loss/G/adv", "loss/G/l1", "lr/G"):
            assert abs(a[step][key] - b[step][key]) < 1e-6, (step, key)
    state_b = load_checkpoint(latest_checkpoint(resumed.run_dir / "checkpoints"))
    for key in TRAINING_STATE:
        assert_bitwise_equal(state[key], state_b[key], key)


def test_evaluation_and_samples_use_the_averaged_generator(tmp_path, tiny_shards, monkeypatch):

    from distcolor.data.catalog import read_manifest, shard_list
    from distcolor.data.loader import build_eval_loader
    from distcolor.evaluate.heldout import evaluate

    cfg = load_config(
        None,
        tiny_overrides(
            tmp_path, tiny_shards, **{"train.ema_half_life": 100, "train.ema_rampup": "null"}
        ),
    )
    sampled = []
    real_samples = telemetry_module.draw_sample_grid

    def spy(generator, batch, device):
        sampled.append(generator)
        return real_samples(generator, batch, device)

    monkeypatch.setattr(telemetry_module, "draw_sample_grid", spy)
    result = train(cfg)
    state = load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))
    shards = shard_list(tiny_shards, read_manifest(tiny_shards), "test")
    sources = sorted({shard.source for shard in shards})

    def score(weights):
        g, _ = build_models(cfg.model, seed=0)
        g.load_state_dict(weights)
        loader = build_eval_loader(
            shards, image_size=32, batch_size=4, num_workers=0, rank=0, world_size=1, limit=16
        )
        cpu = torch.device("cpu")
        report = evaluate(g, loader, sources=sources, mean_ab=torch.zeros(2), device=cpu)
        return report["model"]["l1"]

    assert result["l1_model"] == pytest.approx(score(state["G_ema"]), abs=1e-6)
    assert result["l1_model"] != pytest.approx(score(state["G"]), abs=1e-6)
    assert sampled and all(g is sampled[0] for g in sampled)  # one generator for every grid
    sampled_weights = sampled[0].state_dict()
    assert all(torch.equal(sampled_weights[k], state["G_ema"][k]) for k in state["G_ema"])


def test_turning_the_average_on_at_resume_starts_it_from_the_generator(
    tmp_path, tiny_shards, capsys
):
    quick = {"train.max_steps": 1, "train.eval_images": 0}
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **quick)))
    reset_accelerate()
    capsys.readouterr()
    more = {"train.max_steps": 2, "train.eval_images": 0, "train.ema_half_life": 100}
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **more)), resume=True)
    assert "the checkpoint has no generator average; starting it from its weights" in (
        capsys.readouterr().out
    )
    state = load_checkpoint(latest_checkpoint(tmp_path / "runs/tiny/checkpoints"))
    assert state["G_ema"] is not None


def test_resume_refuses_another_optimizer_and_warns_of_changed_model_settings(
    tmp_path, tiny_shards, capsys
):
    quick = {"train.max_steps": 1, "train.eval_images": 0}
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **quick)))
    reset_accelerate()
    switched = {**quick, "train.max_steps": 2, "train.optimizer": "adabelief"}
    with pytest.raises(UserError, match="trained with train.optimizer=adam; this config says"):
        train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **switched)), resume=True)
    reset_accelerate()
    capsys.readouterr()
    changed = {**quick, "train.max_steps": 2, "model.generator.dropout": 0.0}
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **changed)), resume=True)
    assert (
        "warning: resuming with changed model settings: model.generator.dropout 0.5 -> 0.0"
        in capsys.readouterr().out
    )


def test_resume_auto_starts_then_continues_and_skips_a_partial_checkpoint(
    tmp_path, tiny_shards, capsys
):
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **{"train.eval_images": 0}))
    train(cfg, resume="auto")  # nothing to resume: starts
    assert "no checkpoint in" in capsys.readouterr().out
    ckpts = cfg.run_dir / "checkpoints"
    # A pre-emption while step 9's checkpoint was written: its marker never landed.
    shutil.copytree(ckpts / "step-00000003", ckpts / "step-00000009")
    (ckpts / "step-00000009" / "COMPLETE").unlink()
    reset_accelerate()
    longer = load_config(
        None,
        tiny_overrides(tmp_path, tiny_shards, **{"train.eval_images": 0, "train.max_steps": 4}),
    )
    train(longer, resume="auto")
    out = capsys.readouterr().out
    assert "ignoring incomplete checkpoint folder(s)" in out and "step-00000009" in out
    assert "step-00000003 (step 3)" in out
    assert load_checkpoint(latest_checkpoint(ckpts))["step"] == 4
    # An explicit folder resumes from exactly that one.
    reset_accelerate()
    train(longer, resume=str(ckpts / "step-00000002"))
    assert "step-00000002 (step 2)" in capsys.readouterr().out
    with pytest.raises(UserError, match="step-00000009 is not a complete checkpoint folder"):
        train(longer, resume=str(ckpts / "step-00000009"))


def test_mixed_precision_runs_train_and_save_per_network_scalers(tmp_path, tiny_shards):
    for precision in ("bf16", "fp16"):
        extra = {"run.name": precision, "train.mixed_precision": precision, "train.eval_images": 0}
        cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra))
        train(cfg)
        reset_accelerate()
        state = load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))
        rows = metrics(cfg.run_dir)
        assert all(torch.isfinite(torch.tensor(rows[3][k])) for k in ("loss/G/l1", "loss/D/total"))
        scaler = state["steps"]["update_G"]["scaler"]
        if precision == "fp16":
            assert scaler["scale"] > 0 and "amp/loss_scale_G" in rows[3]
        else:
            assert scaler is None and "amp/loss_scale_G" not in rows[3]


def test_consecutive_non_finite_steps_stop_with_the_last_good_checkpoint(
    tmp_path, tiny_shards, monkeypatch
):
    real = loop_module.lab_inputs
    calls = {"n": 0}

    def poisoned_after_step_2(batch, device):
        calls["n"] += 1
        lightness, chroma = real(batch, device)
        return (lightness * float("nan"), chroma) if calls["n"] > 2 else (lightness, chroma)

    monkeypatch.setattr(loop_module, "lab_inputs", poisoned_after_step_2)
    extra = {"train.max_steps": 20, "train.max_bad_steps": 3, "train.ckpt_every": 1}
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra))
    with pytest.raises(UserError, match=r"^training diverged: 3 consecutive steps \(to step 5\)"):
        train(cfg)
    ckpts = cfg.run_dir / "checkpoints"
    # Steps 3 and 4 were skipped (weights unchanged) and saved; no NaN ever reached a file.
    assert [int(p.name[5:]) for p in sorted(ckpts.iterdir())] == [2, 3, 4]
    for path in sorted(ckpts.iterdir()):
        state = load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in state["G"].values() if t.is_floating_point())
    assert_bitwise_equal(
        load_checkpoint(ckpts / "step-00000002")["G"], load_checkpoint(ckpts / "step-00000004")["G"]
    )
    rows = metrics(cfg.run_dir)
    assert rows[4]["steps/skipped_G"] == 2 and rows[2]["steps/skipped_G"] == 0


def test_sigterm_writes_a_checkpoint_exits_0_and_resumes_exactly(tmp_path, tiny_shards):
    extra = {"train.max_steps": 100_000, "train.eval_images": 0, "train.ckpt_every": 1000}
    args = tiny_overrides(tmp_path, tiny_shards, **extra)
    # The same thread count as this process, which runs the rest: float sums are
    # reproducible bit for bit only at the same number of threads.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "scripts/train.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:  # plain lines: one per logged step
        if line.startswith("step 3/"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM: stopped at step" in out
    stopped = int(out.split("SIGTERM: stopped at step ")[1].split()[0])
    ckpts = tmp_path / "runs/tiny/checkpoints"
    assert [p.name for p in ckpts.iterdir()] == [f"step-{stopped:08d}"]
    assert load_checkpoint(ckpts / f"step-{stopped:08d}")["step"] == stopped
    # Resume to stopped + 2 and compare with an uninterrupted run of as many steps.
    end = {**extra, "train.max_steps": stopped + 2}
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **end)), resume=True)
    reset_accelerate()
    straight = {**end, "run.name": "straight"}
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **straight)))
    a = load_checkpoint(ckpts / f"step-{stopped + 2:08d}")
    b = load_checkpoint(tmp_path / f"runs/straight/checkpoints/step-{stopped + 2:08d}")
    for key in (*TRAINING_STATE, "loader"):
        assert_bitwise_equal(a[key], b[key], key)


def test_sync_batchnorm_converts_both_networks_and_keeps_checkpoints_compatible(
    tmp_path, tiny_shards, monkeypatch
):
    seen = {}
    from distcolor.backends import ddp as ddp_module

    real = ddp_module.ddp_step

    def spy(cfg, accelerator, generator, discriminator, precision):
        seen["norms"] = {
            type(m).__name__ for net in (generator, discriminator) for m in net.modules()
        }
        return real(cfg, accelerator, generator, discriminator, precision)

    monkeypatch.setattr(ddp_module, "ddp_step", spy)
    extra = {"model.sync_batchnorm": "true", "train.eval_images": 0, "train.max_steps": 2}
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra))
    train(cfg)
    assert "SyncBatchNorm" in seen["norms"] and "BatchNorm2d" not in seen["norms"]
    # The same state-dict keys as plain batch norm: either setting resumes the other.
    reset_accelerate()
    plain = {**extra, "model.sync_batchnorm": "false", "train.max_steps": 3}
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **plain)), resume=True)


def test_data_wait_is_the_loaders_time_alone(tmp_path, tiny_shards):
    """perf/data_wait_s_per_step counts the time spent waiting for the loader (here a slow
    one that sleeps 0.2 s per batch), not the conversion or the step."""
    import itertools
    import time
    from collections import Counter

    rgb = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    batch = {
        "gray": rgb.float().mean(1, keepdim=True).to(torch.uint8),
        "rgb": rgb,
        "worker": 0,
        "position": {},
        "skipped": 0,
        "sources": Counter({"synthetic": 4}),
    }

    def slow():
        for item in itertools.repeat(batch):
            time.sleep(0.2)
            yield item

    extra = {"train.max_steps": 4, "train.log_every": 2, "train.eval_images": 0}
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra))
    train(cfg, batches=slow())
    rows = [json.loads(r) for r in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    perf = [r for r in rows if "perf/data_wait_s_per_step" in r]
    assert [r["step"] for r in perf] == [2, 4]
    for r in perf:
        assert r["perf/data_wait_s_per_step"] >= 0.2  # every step waited for its batch
        # the rest of the step is counted as compute, not as waiting
        assert r["perf/compute_s_per_step"] > 0
