"""Checkpoints written in the background: a CPU snapshot now, the file write on a thread.

At GPU speed a step takes milliseconds and writing a checkpoint seconds (the paper config's
state is about 0.9 GB: G, D, both Adam states and the pruning rewind snapshot). The trainer
therefore only *copies* the state to host memory at a checkpoint step and carries on; a
thread writes the copy with `save_checkpoint` (staging folder, fsync, COMPLETE marker last,
rename, pruning: the same sequence and guarantees as a synchronous save), so a crash at any
moment of the write leaves nothing that looks complete.

    writer = CheckpointWriter(ckpt_dir, keep_last=3, keep_every=None, background=True)
    with writer:
        ...
        writer.save(state, step=step)   # waits for the previous write, snapshots, returns
        ...
    # leaving the block waits for the last write; a failed write is a UserError

The snapshot copies every tensor (CPU ones are cloned: training updates them in place) and
rebuilds every container, keeping which tensors share storage and which objects are the
same object, so `torch.save` writes the very same bytes it would have written from the live
state (on CUDA the only difference is the storages' recorded device: cpu; checkpoints are
always loaded onto the CPU). On CUDA the copies go into pinned buffers, reused from one
checkpoint to the next, with non-blocking copies the writer waits for (a CUDA event), so
the pause is only the time to queue them. The snapshot doubles host memory for the state,
and the buffers stay allocated between checkpoints (fresh memory costs a page fault per
page on first touch).
"""

from __future__ import annotations

import copy
import errno
import shutil
import threading
import time
from pathlib import Path

import torch

from distcolor.checkpoint import save_checkpoint, staging_path
from distcolor.errors import UserError, first_line
from distcolor.failures import disk_full_message, free_bytes

_IMMUTABLE = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device)


class HostBuffers:
    """Host buffers for snapshot copies, handed out in order and reused by the next
    snapshot when the sizes match: fresh memory costs a page fault per page on first touch
    (and pinning it is slower still), reused memory only the copy. Buffers for copies from
    CUDA are pinned (page-locked), so those copies can be non-blocking."""

    def __init__(self) -> None:
        self._buffers: list[tuple[torch.Tensor, bool]] = []  # (buffer, pinned)
        self._next = 0

    def start(self) -> None:
        self._next = 0

    def take(self, nbytes: int, *, pin: bool = False) -> torch.Tensor:
        i, self._next = self._next, self._next + 1
        if i < len(self._buffers):
            old, pinned = self._buffers[i]
            if old.numel() == nbytes and pinned == pin:
                return old
        buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
        if i < len(self._buffers):
            self._buffers[i] = (buffer, pin)
        else:
            self._buffers.append((buffer, pin))
        return buffer

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b, _ in self._buffers)


def _bytes_of(storage: torch.UntypedStorage) -> torch.Tensor:
    """A flat uint8 tensor over the whole of `storage`."""
    flat = torch.empty(0, dtype=torch.uint8, device=storage.device)
    return flat.set_(storage, 0, (storage.nbytes(),), (1,))


class _Snapshot:
    """One snapshot pass: memo of copied objects and storages, the device copies queued."""

    def __init__(self, buffers: HostBuffers | None) -> None:
        self.buffers = buffers
        self.memo: dict[int, object] = {}
        self.storages: dict[int, torch.UntypedStorage] = {}
        self.keep: list[object] = []  # originals stay alive so their ids stay unique
        self.devices: set[torch.device] = set()
        self.nbytes = 0

    def storage(self, source: torch.UntypedStorage) -> torch.UntypedStorage:
        key = source._cdata  # what torch.save tells storages apart by
        if key not in self.storages:
            nbytes, cuda = source.nbytes(), source.device.type == "cuda"
            pinned = cuda and self.buffers is not None
            if self.buffers is not None:
                target = self.buffers.take(nbytes, pin=pinned)
            else:
                target = torch.empty(nbytes, dtype=torch.uint8)
            if pinned:  # queued; ready() waits for it (one CUDA event)
                target.copy_(_bytes_of(source), non_blocking=True)
                self.devices.add(source.device)
            else:  # CPU tensors are cloned: training updates them in place
                target.copy_(_bytes_of(source))
            self.storages[key] = target.untyped_storage()
            self.nbytes += nbytes
        return self.storages[key]

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        if t.layout != torch.strided or t.is_quantized or t.device.type == "meta":
            return t.detach().to("cpu", copy=True)  # not in checkpoints today; plain copy
        storage = self.storage(t.untyped_storage())
        out = torch.empty(0, dtype=t.dtype).set_(storage, t.storage_offset(), t.size(), t.stride())
        if isinstance(t, torch.nn.Parameter):
            return torch.nn.Parameter(out, requires_grad=t.requires_grad)
        return out.requires_grad_(t.requires_grad) if t.requires_grad else out

    def __call__(self, obj: object) -> object:
        if isinstance(obj, _IMMUTABLE):
            return obj
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        self.keep.append(obj)
        if isinstance(obj, torch.Tensor):
            out = self.tensor(obj)
        elif isinstance(obj, dict):
            out = copy.copy(obj)  # the same type, attributes (state_dict's _metadata)
            self.memo[key] = out
            for k, v in obj.items():
                out[k] = self(v)
            for name, value in vars(obj).items() if hasattr(obj, "__dict__") else ():
                setattr(out, name, self(value))
            return out
        elif isinstance(obj, list):
            out = []
            self.memo[key] = out
            out.extend(self(v) for v in obj)
            return out
        elif isinstance(obj, tuple):
            items = [self(v) for v in obj]
            if all(a is b for a, b in zip(items, obj, strict=True)):
                out = obj  # nothing mutable inside
            elif hasattr(obj, "_fields"):
                out = type(obj)(*items)
            else:
                out = type(obj)(items)
        else:
            out = copy.deepcopy(obj)
        self.memo[key] = out
        return out


def snapshot_state(state: dict, buffers: HostBuffers | None = None):
    """A host-memory copy of a checkpoint state that training cannot change, in `buffers`
    (reused: the previous snapshot from them must no longer be needed) or fresh memory;
    returns (copy, ready, nbytes): call `ready()` before reading the copy (it waits for the
    queued device-to-host copies); nbytes is the tensor data copied."""
    if buffers is not None:
        buffers.start()
    snap = _Snapshot(buffers)
    out = snap(state)
    events = []
    for device in snap.devices:  # CUDA devices with copies queued into pinned buffers
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        events.append(event)

    def ready() -> None:
        for event in events:
            event.synchronize()

    return out, ready, snap.nbytes


def _as_user_error(err: BaseException, directory: Path, step: int, state: dict) -> BaseException:
    """A failed write (disk full, permissions, a path taken by a file) as one line; anything
    else (a bug) as itself, with its traceback. torch's zip writer reports a full disk as
    a RuntimeError without an errno ("unexpected pos ..."), so a write that needs more
    than the space left is called disk full by the numbers."""
    if not isinstance(err, (OSError, RuntimeError)):  # torch's zip writer: RuntimeError
        return err
    needed = state_nbytes(state)
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    if full or needed > free_bytes(directory):
        return UserError(disk_full_message(directory, f"the checkpoint of step {step}", needed))
    return UserError(
        f"checkpoint of step {step} could not be written to {directory}: {first_line(err)}"
    )


def state_nbytes(state: object) -> int:
    """Bytes of tensor data in a checkpoint state (shared storages counted once)."""
    seen: dict[int, int] = {}

    def walk(obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            seen[storage.data_ptr() or id(storage)] = storage.nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(state)
    return sum(seen.values())


class CheckpointWriter:
    """Writes checkpoints one at a time, in the background (`background=True`) or inline.

    `save` waits for the previous write (and raises its error, if it failed), then either
    writes the state (inline) or snapshots it to host memory and starts a thread that writes
    the snapshot. `wait` waits for the write in flight and raises its error; leaving the
    `with` block waits too. The thread is not a daemon: even an unexpected exit of the main
    thread lets a started write finish (a kill -9 leaves only a staging folder, never a
    checkpoint that looks complete). Timings of the last save are kept in `last`: pause_s
    (what the caller waited), write_s and write_cpu_s (the write's wall and CPU seconds),
    snapshot_bytes."""

    def __init__(
        self,
        directory: Path,
        *,
        keep_last: int,
        keep_every: int | None = None,
        background: bool = True,
        log=print,
    ) -> None:
        self.directory = Path(directory)
        self.keep_last, self.keep_every = keep_last, keep_every
        self.background = background
        self.log = log
        self.buffers = HostBuffers()
        self.last: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._error: tuple[int, BaseException, dict] | None = None

    def _write(self, state: dict, step: int, ready) -> None:
        try:
            start, cpu = time.perf_counter(), time.thread_time()
            if ready is not None:
                ready()
            save_checkpoint(
                state,
                self.directory,
                step=step,
                keep_last=self.keep_last,
                keep_every=self.keep_every,
            )
            self.last["write_s"] = time.perf_counter() - start
            self.last["write_cpu_s"] = time.thread_time() - cpu  # the core time it took
        except BaseException as err:  # handed to the main thread by wait()
            shutil.rmtree(staging_path(self.directory, step), ignore_errors=True)
            self._error = (step, err, state)

    def save(self, state: dict, *, step: int) -> None:
        """Checkpoint `state` as step `step` (see the class)."""
        self.wait()
        start = time.perf_counter()
        if not self.background:
            self.last = {}
            self._write(state, step, None)
            self.last["pause_s"] = time.perf_counter() - start
            self.wait()
            return
        copied, ready, nbytes = snapshot_state(state, self.buffers)
        self.last = {"pause_s": time.perf_counter() - start, "snapshot_bytes": nbytes}
        self._thread = threading.Thread(
            target=self._write, args=(copied, step, ready), name=f"checkpoint-{step}"
        )
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Wait for the write in flight; raise its error (a UserError for I/O failures)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            step, err, state = self._error
            self._error = None
            raised = _as_user_error(err, self.directory, step, state)
            if raised is err:
                raise err
            raise raised from None

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.wait()
            return
        try:  # already failing: finish the write, but let the first error through
            self.wait()
        except BaseException as err:
            self.log(f"warning: {first_line(err)}")
