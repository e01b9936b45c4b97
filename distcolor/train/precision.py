"""Mixed precision: the autocast dtype and, in fp16, one gradient scaler per network.

The trainer runs autocast and loss scaling itself instead of through Accelerate, whose
single GradScaler would be stepped by both optimizers and updated twice per iteration
(PyTorch's AMP notes: with several models and optimizers, scale each loss, step each
optimizer, update each scaler once per iteration).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(configured: str | None) -> str:
    """`train.mixed_precision`, else what `accelerate launch --mixed_precision` (or its
    config file) asked for, else no."""
    if configured is not None:
        return configured
    chosen = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    return chosen if chosen in ("no", *DTYPES) else "no"


class Precision:
    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in ("no", *DTYPES):
            raise ValueError(f"unknown precision {mode!r}")
        self.mode, self.device = mode, device
        self.dtype = DTYPES.get(mode)

    def autocast(self) -> AbstractContextManager:
        """Forward passes in the low-precision dtype where it is safe (torch.autocast)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def new_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for one network in fp16; bf16 has fp32's range and needs none."""
        return torch.amp.GradScaler(self.device.type) if self.mode == "fp16" else None
