"""The DeepSpeed config both engines are built from: "auto" filled from the run config,
conflicts refused with one line, the backend chosen from the config or the launcher."""

import json

import pytest

from distcolor.backends.deepspeed_config import deepspeed_config, resolve_backend
from distcolor.config import load_config
from distcolor.errors import UserError


def ds(tmp_path, file: dict | None = None, *, world=2, precision=None, **overrides):
    args = [f"{k}={v}" for k, v in overrides.items()]
    if file is not None:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps({"zero_optimization": {"stage": 2}, **file}))
        args.append(f"deepspeed.config={path}")
    return deepspeed_config(load_config(None, args), world=world, precision=precision)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_shipped_configs_fill_every_auto_from_the_run_config(tmp_path, stage):
    cfg, mode = ds(
        tmp_path,
        **{
            "deepspeed.config": f"configs/deepspeed/zero{stage}.json",
            "data.batch_size": 6,
            "train.grad_accum": 3,
            "train.max_grad_norm": 2.5,
        },
        precision="bf16",
    )
    assert mode == "bf16" and cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["train_micro_batch_size_per_gpu"] == 6
    assert cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 6 * 3 * 2
    assert cfg["gradient_clipping"] == 2.5
    assert "auto" not in json.dumps(cfg)


def test_clipping_is_always_explicit_and_off_when_unset(tmp_path):
    # DeepSpeed clips at 1.0 when the key is missing: never leave it out.
    cfg, mode = ds(tmp_path, {"zero_optimization": {"stage": 1}})
    assert cfg["gradient_clipping"] == 0.0 and mode == "no"


def test_the_file_may_choose_the_precision_when_the_run_does_not(tmp_path):
    cfg, mode = ds(tmp_path, {"fp16": {"enabled": True}})
    assert mode == "fp16" and cfg["fp16"]["enabled"] and not cfg["bf16"]["enabled"]


@pytest.mark.parametrize(
    ("file", "overrides", "precision", "message"),
    [
        ({"bf16": {"enabled": True}}, {}, "fp16", "enables bf16 but train.mixed_precision is fp16"),
        ({"train_micro_batch_size_per_gpu": 8}, {"data.batch_size": 4}, None, "data.batch_size"),
        ({"gradient_accumulation_steps": 2}, {}, None, "train.grad_accum"),
        ({"train_batch_size": 7}, {}, None, "train_batch_size"),
        (
            {"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}},
            {},
            None,
            "optimizer offload needs ZeRO stage 2 or 3",
        ),
        ({"optimizer": {"type": "auto"}}, {}, None, 'cannot fill "auto" for optimizer.type'),
        ({"zero_optimization": {"stage": 0}}, {}, None, "stage must be 1, 2 or 3"),
    ],
)
def test_conflicts_are_one_line_errors(tmp_path, file, overrides, precision, message):
    with pytest.raises(UserError, match=message):
        ds(tmp_path, file, precision=precision, **overrides)


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(UserError, match="deepspeed.config: .*nope.json does not exist"):
        ds(tmp_path, **{"deepspeed.config": str(tmp_path / "nope.json")})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="is not a readable JSON file"):
        ds(tmp_path, **{"deepspeed.config": str(tmp_path / "bad.json")})


def test_overrides_and_the_launchers_settings(tmp_path, monkeypatch):
    cfg, _ = ds(tmp_path, **{"deepspeed.stage": 3, "deepspeed.offload_optimizer": "cpu"})
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert cfg["zero_force_ds_cpu_optimizer"] is False  # our optimizers run on the CPU state
    # Without a file: accelerate launch's zero_stage / offload settings (environment).
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
    cfg, _ = ds(tmp_path)
    assert cfg["zero_optimization"]["stage"] == 1
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "configs/deepspeed/zero3.json")
    cfg, _ = ds(tmp_path)
    assert cfg["zero_optimization"]["stage"] == 3  # the file wins over zero_stage


def test_backend_comes_from_the_config_else_the_launcher(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert resolve_backend(None) == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert resolve_backend(None) == "deepspeed"
    assert resolve_backend("ddp") == "ddp"


def test_a_bad_deepspeed_file_is_refused_before_data_or_networks_exist(tmp_path):
    """Preflight: the JSON is read before synthetic data is built or an engine made."""
    pytest.importorskip("deepspeed")
    from tests.helpers import run_script

    shards, runs = tmp_path / "shards", tmp_path / "runs"
    proc = run_script(
        "scripts/train.py",
        "train.backend=deepspeed",
        f"deepspeed.config={tmp_path / 'missing.json'}",
        f"data.shards={shards}",
        f"run.out_dir={runs}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: deepspeed.config: ") and "missing.json" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not shards.exists() and not (runs / "default" / "config.yaml").exists()
