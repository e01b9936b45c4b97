"""Stop cleanly on SIGTERM (pre-emption, `scancel`, SLURM's warning signal) or Ctrl-C.

The first signal only raises a flag; the loop finishes its step, every rank agrees to stop
(one tiny all-reduce per step, so ranks that got the signal a step apart stop together),
a checkpoint is written and the process exits 0. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist


class StopRequest:
    """Context manager that turns SIGTERM / SIGINT into a flag while training runs."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, log=print) -> None:
        self.log = log
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, no checkpoint
        self.signal_name = signal.Signals(signum).name
        self.log(f"{self.signal_name}: stopping after this step with a checkpoint")

    def agreed(self, device: torch.device) -> bool:
        """True on every rank once any rank got a signal (a collective when distributed)."""
        flag = self.signal_name is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([float(flag)], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """Loader workers leave SIGTERM to the trainer: SLURM signals the whole process group,
    and a worker killed mid-batch would fail the step the checkpoint is waiting for. (They
    still exit with their parent.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
