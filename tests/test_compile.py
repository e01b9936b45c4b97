"""train.compile: compiled networks train as eager ones do, and checkpoints cross over.

The tests compile with the aot_eager backend: Dynamo captures the same forward graphs and
AOT autograd the same joint forward/backward graphs as with inductor, in about a second
instead of a minute or two on 2 CPU cores. Inductor itself (the speed) is checked by the
GPU suite (benchmarks/gpu_suite.py) and by a gpu test.
"""

import json

import pytest
import torch
from torch._dynamo.utils import counters

from distcolor.backends.deepspeed import deepspeed_step
from distcolor.checkpoint import latest_checkpoint, load_checkpoint
from distcolor.config import load_config
from distcolor.errors import ConfigError, UserError
from distcolor.models import build_models
from distcolor.train.loop import train
from tests.conftest import reset_accelerate, tiny_overrides

COMPILED = {"train.compile": "true", "train.compile_backend": "aot_eager"}
# Stated tolerance: compiled and eager losses agree to 1e-5 relative per step (the graphs
# run the same kernels; only the order of a few reductions may differ).
LOSS_RTOL = 1e-5


def _run(tmp_path, shards, name, *, steps, resume=False, **extra):
    common = {"train.max_steps": steps, "train.eval_images": 0, "run.name": name}
    cfg = load_config(None, tiny_overrides(tmp_path, shards, **common, **extra))
    train(cfg, resume=resume)
    reset_accelerate()
    return cfg.run_dir


def _losses(run_dir) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = ("loss/D/total", "loss/G/adv", "loss/G/l1")
    return {r["step"]: {k: r[k] for k in keys} for r in rows if "loss/G/l1" in r}


def _assert_tracks(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for step in a:
        for key, value in a[step].items():
            assert b[step][key] == pytest.approx(value, rel=LOSS_RTOL), (step, key)


def _final_weights(run_dir) -> dict:
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))


def test_compiled_runs_track_eager_resume_across_compile_and_save_clean_names(
    tmp_path, tiny_shards
):
    ema = {"train.ema_half_life": 100}
    eager = _run(tmp_path, tiny_shards, "eager", steps=4, **ema)
    graphs = counters["stats"]["unique_graphs"]
    compiled = _run(tmp_path, tiny_shards, "compiled", steps=4, **ema, **COMPILED)
    # G, D trainable, D frozen, G in eval mode for samples (a single process: no DDP wrapper)
    assert counters["stats"]["unique_graphs"] - graphs >= 3
    _assert_tracks(_losses(eager), _losses(compiled))
    a, b = _final_weights(eager), _final_weights(compiled)
    for net in ("G", "D", "G_ema"):
        # The same parameter names as an eager model: no `_orig_mod.` prefix.
        assert list(a[net]) == list(b[net]), net
        for name, tensor in a[net].items():
            torch.testing.assert_close(b[net][name], tensor, rtol=1e-4, atol=1e-6)
    g, _ = build_models(load_config(compiled / "config.yaml").model, seed=0)
    g.load_state_dict(b["G"])  # a compiled run's generator loads into a plain one

    # Resume both ways: compiled -> eager and eager -> compiled track the straight run.
    for name, first, then in (("c-to-e", COMPILED, {}), ("e-to-c", {}, COMPILED)):
        _run(tmp_path, tiny_shards, name, steps=2, **ema, **first)
        resumed = _run(tmp_path, tiny_shards, name, steps=4, resume=True, **ema, **then)
        _assert_tracks(_losses(eager), _losses(resumed))
        assert _final_weights(resumed)["step"] == 4


def test_compile_with_deepspeed_is_one_line(tmp_path):
    # named in the config: refused when it is read
    with pytest.raises(ConfigError, match=r"^train.compile: not supported with .*deepspeed"):
        load_config(None, ["train.compile=true", "train.backend=deepspeed"])
    # chosen by the launcher (accelerate launch with a DeepSpeed config): refused before
    # DeepSpeed starts
    cfg = load_config(None, ["train.compile=true"])
    g, d = build_models(cfg.model, seed=0)
    with pytest.raises(UserError, match=r"^train.compile: not supported with .*deepspeed"):
        deepspeed_step(cfg, g, d, world=1, precision=None)
