"""Stop cleanly on SIGTERM (pre-emption, `scancel`, SLURM's warning signal) or Ctrl-C.

The first signal only raises a flag; the loop finishes its step, every rank agrees to stop
(one tiny all-reduce per step, so ranks that got the signal a step apart stop together),
a checkpoint is written and the process exits 0. A second Ctrl-C ends the process at once
with status 130 and one line (no traceback, no checkpoint; complete checkpoints are never
touched, a write in flight leaves only its staging folder, and the loader workers follow
their trainer out).
"""

from __future__ import annotations

import os
import signal
import sys
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
            # A second Ctrl-C: stop now. Not by raising KeyboardInterrupt, which could land
            # anywhere (inside a collective, an exit handler) and end in a traceback.
            try:
                sys.stdout.flush()
            except (OSError, RuntimeError):  # interrupted mid-write: the line still goes out
                pass
            os.write(2, b"interrupted (second Ctrl-C): stopped without a checkpoint\n")
            os._exit(130)
        self.signal_name = signal.Signals(signum).name
        again = " (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""
        self.log(f"{self.signal_name}: stopping after this step with a checkpoint{again}")

    def agreed(self, device: torch.device) -> bool:
        """True on every rank once any rank got a signal (a collective when distributed)."""
        flag = self.signal_name is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([float(flag)], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag
