"""DeepSpeed checkpoints inside the trainer's step folders.

    checkpoints/step-00001000/
        state.pt      step, RNG, loader positions, EMA, pruning masks, config (rank 0)
        G/engine/     the generator engine's own checkpoint: module states plus one file of
        D/engine/     ZeRO-partitioned optimizer state (and, stage 3, weights) per rank
        COMPLETE

Every rank writes its shards into the same staging folder, then rank 0 writes state.pt
and the marker and renames the folder (distcolor/checkpoint.py): one checkpoint, as atomic
as the DDP one. A whole fp32 generator comes from DeepSpeed's standard tool
(`get_fp32_state_dict_from_zero_checkpoint`, what `zero_to_fp32.py` runs), so export and
colorize read DeepSpeed checkpoints without DeepSpeed's process group.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch

from distcolor.checkpoint import load_failure
from distcolor.errors import UserError, first_line

DS_TAG = "engine"  # the tag of each engine's checkpoint inside a step folder
BACKEND_KEY = "backend"  # in state.pt: "deepspeed" for these checkpoints


def import_deepspeed():
    try:
        import deepspeed
    except ImportError as err:
        raise UserError(
            f"train.backend=deepspeed needs DeepSpeed: pip install -e '.[deepspeed]' ({err})"
        ) from None
    return deepspeed


def is_deepspeed_checkpoint(state: dict) -> bool:
    return isinstance(state, dict) and state.get(BACKEND_KEY) == "deepspeed"


def save_engines(engines: dict, folder: Path) -> None:
    """Each engine's checkpoint under folder/<name>/ (a collective: every rank calls it)."""
    for name, engine in engines.items():
        engine.save_checkpoint(str(Path(folder) / name), tag=DS_TAG, save_latest=True)


def load_engines(engines: dict, folder: Path) -> None:
    """Weights, optimizer state, loss scale and skip count of each engine (collective)."""
    for name, engine in engines.items():
        path = Path(folder) / name
        try:
            loaded, _ = engine.load_checkpoint(
                str(path), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
            )
        except (RuntimeError, KeyError, ValueError, FileNotFoundError, AssertionError) as err:
            raise UserError(f"--resume: {path} does not fit this run ({first_line(err)})") from None
        if loaded is None:
            raise UserError(f"--resume: {path} holds no DeepSpeed checkpoint")


class _WeightsOnlyTorch:
    """`torch` as DeepSpeed's checkpoint reader sees it, with every `torch.load` forced to
    the weights-only unpickler: it would otherwise unpickle arbitrary objects."""

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return torch.load(*args, **kwargs)


def _deepspeed_safe_globals() -> list:
    """The few plain DeepSpeed classes its checkpoint files hold besides tensors."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def consolidated_state(folder: Path, name: str = "G") -> dict[str, torch.Tensor]:
    """Network `name`'s whole fp32 state dict from a DeepSpeed step folder (any stage),
    buffers included, on the CPU, without a process group; read weights-only."""
    path = Path(folder) / name
    if not (path / DS_TAG).is_dir():  # before importing DeepSpeed: that takes seconds
        raise UserError(f"checkpoint {folder} has no DeepSpeed {name} engine folder ({path})")
    import_deepspeed()
    from deepspeed.utils import zero_to_fp32

    quiet = logging.getLogger("DeepSpeed")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs a line per shard it reads
    zero_to_fp32.torch = _WeightsOnlyTorch()
    chatter = io.StringIO()  # it prints a few lines and a progress bar per network
    try:
        with (
            torch.serialization.safe_globals(_deepspeed_safe_globals()),
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
        ):
            state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DS_TAG)
    except Exception as err:  # a damaged shard can fail anywhere in DeepSpeed's reader
        raise UserError(f"checkpoint {path} cannot be consolidated: {load_failure(err)}") from None
    finally:
        zero_to_fp32.torch = torch
        quiet.setLevel(level)
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
