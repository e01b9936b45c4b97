"""Which backend runs the step, and the DeepSpeed config both engines are built from.

A DeepSpeed JSON file (configs/deepspeed/) may leave the settings the run config already
owns as "auto": the micro-batch (data.batch_size), accumulation (train.grad_accum),
clipping (train.max_grad_norm) and precision (train.mixed_precision). They are filled in
here, so one file serves every run; a value the file does set must agree with the run
config, or the run stops with one line saying which.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from distcolor.config import Config
from distcolor.errors import UserError
from distcolor.paths import read_text_file

AUTO = "auto"
# What a run gets when neither the config nor `accelerate launch` names a DeepSpeed file.
DEFAULT_DS_CONFIG = {"zero_optimization": {"stage": 2}}
PRECISION_KEYS = {"bf16": "bf16", "fp16": "fp16"}


def resolve_backend(configured: str | None) -> str:
    """train.backend, else deepspeed when `accelerate launch` ran with a DeepSpeed config."""
    if configured is not None:
        return configured
    return "deepspeed" if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" else "ddp"


def _find(path: str) -> Path:
    """`path` as given, else among the shipped configs (configs/deepspeed/... from anywhere)."""
    given = Path(path)
    shipped = Path(__file__).resolve().parents[1] / given
    return shipped if not given.exists() and not given.is_absolute() and shipped.exists() else given


def _read_json(path: str) -> dict:
    text = read_text_file(_find(path), "deepspeed.config")  # a FIFO, binary: one line
    try:
        tree = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise UserError(f"deepspeed.config: {path} is not a readable JSON file ({err})") from None
    if not isinstance(tree, dict):
        raise UserError(f"deepspeed.config: {path} is not a JSON object of settings")
    return tree


def _file_precision(ds: dict, source: str) -> str | None:
    """The precision a file enables explicitly ("auto" and false leave it open)."""
    enabled = [m for m in PRECISION_KEYS if ds.get(m, {}).get("enabled") is True]
    if len(enabled) > 1:
        raise UserError(f"{source}: enables both bf16 and fp16")
    return enabled[0] if enabled else None


def _fill(ds: dict, key: str, value, source: str, owner: str) -> None:
    """Set `ds[key]` to `value` where it is missing or "auto"; refuse a different value."""
    current = ds.get(key, AUTO)
    if current == AUTO:
        ds[key] = value
    elif current != value:
        raise UserError(
            f'{source}: {key} is {current!r} but {owner} is {value!r}; set it to "auto" '
            "or make them agree"
        )


def deepspeed_config(cfg: Config, *, world: int, precision: str | None) -> tuple[dict, str]:
    """The engine config for this run and the precision it trains in.

    precision: train.mixed_precision as resolved by the caller, or None when neither the
    config nor the launcher chose one (the file's choice then holds, else full fp32)."""
    section = cfg.deepspeed
    path = section.config or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    source = f"deepspeed.config ({path})" if path else "deepspeed"
    ds = _read_json(path) if path else copy.deepcopy(DEFAULT_DS_CONFIG)
    zero = ds.setdefault("zero_optimization", {})

    stage = section.stage
    if stage is None and not path and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        stage = int(os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    if stage is not None:
        zero["stage"] = stage
    stage = int(zero.get("stage", 0))
    if stage not in (1, 2, 3):
        raise UserError(
            f"{source}: zero_optimization.stage must be 1, 2 or 3 (got {stage}); without ZeRO, "
            "train.backend=ddp does the same job"
        )

    offload = section.offload_optimizer
    if offload is None and not path:
        offload = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE")
    if offload is not None:
        zero["offload_optimizer"] = {"device": offload}
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        if stage < 2:
            raise UserError(f"{source}: optimizer offload needs ZeRO stage 2 or 3 (got {stage})")
        # Our optimizers (Adam, AdaBelief) run on the offloaded CPU state as they are;
        # DeepSpeed otherwise insists on its own CPU Adam.
        ds["zero_force_ds_cpu_optimizer"] = False

    chosen = _file_precision(ds, source)
    if precision is None:
        precision = chosen or "no"
    elif chosen is not None and chosen != precision:
        raise UserError(
            f"{source}: enables {chosen} but train.mixed_precision is {precision}; set the "
            'file\'s "enabled" to "auto" or make them agree'
        )
    for mode, key in PRECISION_KEYS.items():
        ds.setdefault(key, {})["enabled"] = mode == precision

    tc = cfg.train
    _fill(ds, "train_micro_batch_size_per_gpu", cfg.data.batch_size, source, "data.batch_size")
    _fill(ds, "gradient_accumulation_steps", tc.grad_accum, source, "train.grad_accum")
    # Always explicit: DeepSpeed clips at 1.0 when the key is missing; 0 turns clipping off.
    _fill(ds, "gradient_clipping", float(tc.max_grad_norm or 0.0), source, "train.max_grad_norm")
    global_batch = cfg.data.batch_size * tc.grad_accum * world
    _fill(ds, "train_batch_size", global_batch, source, "data.batch_size x grad_accum x ranks")
    left = sorted(_auto_keys(ds))
    if left:
        raise UserError(f'{source}: cannot fill "auto" for {", ".join(left)}')
    # Our optimizers are client optimizers; AdaBelief is not one DeepSpeed has tested.
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)  # our logs report progress
    return ds, precision


def _auto_keys(tree: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in tree.items():
        if isinstance(value, dict):
            found += _auto_keys(value, f"{prefix}{key}.")
        elif value == AUTO:
            found.append(prefix + key)
    return found
