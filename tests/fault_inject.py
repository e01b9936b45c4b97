"""Run a script (scripts/train.py, scripts/make_shards.py) with one fault injected at a
chosen moment, in the real process: nothing is mocked, the fault happens where it would.

    python tests/fault_inject.py [--rank R] [--record FILE] [--ckpts DIR] FAULT \
        scripts/train.py [its arguments]
    torchrun --nproc_per_node 2 tests/fault_inject.py --rank 1 --step-raise 3 scripts/train.py ...

FAULT (one or more):
  --step-raise N       raise RuntimeError on entering optimizer step N (an unexpected error)
  --step-kill N        kill -9 this process on entering step N
  --step-hang N        sleep for ever on entering step N (a hung peer)
  --step-slow N:S      from step N on, each step first sleeps S seconds (a slow step: time
                       to send a second Ctrl-C while the first one waits for the step)
  --save-kill N        kill -9 half-way through writing checkpoint N's file (torch.save)
  --save-kill-after N  kill -9 right after checkpoint N's file is written, before its marker
  --save-enospc N      checkpoint N's write fails with ENOSPC (an injected full disk)
  --rename-kill REGEX[@K]
                       kill -9 on the K-th (default 1st) os.replace/os.rename whose
                       destination matches REGEX, before it happens (a checkpoint's final
                       rename, make_shards' publish)
  --rename-slow REGEX@S
                       sleep S seconds before each os.replace/os.rename whose destination
                       matches REGEX (a slow build, so that a second one can meet it)

The trainer calls `GANStep.__call__` once per optimizer step; the step faults wrap it.
Checkpoint files are written by `torch.save` into a staging folder named after the step
(`.step-0000000N.tmp/`); the save faults wrap `torch.save` and match `step-0000000N` in the
path. Only the rank `--rank` (RANK, default 0 when unset) gets the fault; with --rank -1
every rank does.

Before a kill, a raise or a hang, `--record FILE` gets one JSON object: the fault, the pid,
the time, and every complete checkpoint in `--ckpts DIR` with the sha256 of its state.pt
(what must survive the fault).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import os
import re
import runpy
import signal
import sys
import time
from pathlib import Path


def complete_checkpoints(ckpts: str | None) -> dict[str, str]:
    """{folder name: sha256 of state.pt} of the complete checkpoints in `ckpts`."""
    if not ckpts:
        return {}
    from distcolor.checkpoint import STATE, list_checkpoints

    found = {}
    for path in list_checkpoints(Path(ckpts)):
        try:
            found[path.name] = hashlib.sha256((path / STATE).read_bytes()).hexdigest()
        except OSError:  # pruned while we looked
            pass
    return found


def _split_at(text: str | None, default: str) -> tuple[str, str]:
    """'REGEX@VALUE' -> (REGEX, VALUE); 'REGEX' -> (REGEX, default)."""
    if not text:
        return "", default
    if "@" not in text:
        return text, default
    pattern, _, value = text.rpartition("@")
    return pattern, value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--record", default=None)
    parser.add_argument("--ckpts", default=None)
    parser.add_argument("--step-raise", type=int)
    parser.add_argument("--step-kill", type=int)
    parser.add_argument("--step-hang", type=int)
    parser.add_argument("--step-slow", default=None)
    parser.add_argument("--save-kill", type=int)
    parser.add_argument("--save-kill-after", type=int)
    parser.add_argument("--save-enospc", type=int)
    parser.add_argument("--rename-kill", default=None)
    parser.add_argument("--rename-slow", default=None)
    # Our options come before the script; everything after it is the script's own.
    split = next(i for i, a in enumerate(sys.argv) if i > 0 and a.endswith(".py"))
    args = parser.parse_args(sys.argv[1:split])
    script, rest = sys.argv[split], sys.argv[split + 1 :]
    rank = int(os.environ.get("RANK", "0"))

    def record(event: str, **detail) -> None:
        print(f"fault_inject: rank {rank}: {event}", file=sys.stderr, flush=True)
        if args.record:
            row = {"event": event, "rank": rank, "pid": os.getpid(), "time": time.time()}
            row.update(detail, complete=complete_checkpoints(args.ckpts))
            path = Path(args.record)
            if args.rank == -1:  # one record per rank
                path = path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
            path.write_text(json.dumps(row))

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never reached: SIGKILL cannot be caught

    if args.rank not in (-1, rank):
        sys.argv = [script, *rest]
        runpy.run_path(script, run_name="__main__")
        return

    step_faults = (args.step_raise, args.step_kill, args.step_hang, args.step_slow)
    if any(f is not None for f in step_faults):
        from distcolor.train.gan_step import GANStep

        original_call = GANStep.__call__
        calls = {"n": 0}
        slow_from, slow_s = map(float, args.step_slow.split(":")) if args.step_slow else (None, 0.0)

        def faulty_call(self, *a, **kw):
            calls["n"] += 1
            n = calls["n"]
            if n == args.step_raise:
                record("raise", step=n)
                raise RuntimeError(f"fault_inject: injected failure on entering step {n}")
            if n == args.step_kill:
                record("kill -9", step=n)
                die()
            if n == args.step_hang:
                record("hang", step=n)
                while True:
                    time.sleep(3600)
            if slow_from is not None and n >= slow_from:
                time.sleep(slow_s)
            return original_call(self, *a, **kw)

        GANStep.__call__ = faulty_call

    save_faults = (args.save_kill, args.save_kill_after, args.save_enospc)
    if any(f is not None for f in save_faults):
        import torch

        original_save = torch.save

        def matches(f, step) -> bool:
            return (
                step is not None
                and isinstance(f, (str, os.PathLike))
                and f"step-{step:08d}" in str(f)
            )

        def faulty_save(obj, f, *a, **kw):
            if matches(f, args.save_enospc):
                record("ENOSPC", step=args.save_enospc, file=str(f))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
            if matches(f, args.save_kill):
                buffer = io.BytesIO()
                original_save(obj, buffer, *a, **kw)
                data = buffer.getvalue()
                with open(f, "wb") as out:  # half the file is on disk, then the kill
                    out.write(data[: len(data) // 2])
                    out.flush()
                    os.fsync(out.fileno())
                record("kill -9 mid-write", step=args.save_kill, file=str(f))
                die()
            result = original_save(obj, f, *a, **kw)
            if matches(f, args.save_kill_after):
                record("kill -9 after the state file", step=args.save_kill_after, file=str(f))
                die()
            return result

        torch.save = faulty_save

    if args.rename_kill or args.rename_slow:
        pattern, nth = _split_at(args.rename_kill, "1")
        kill_regex = re.compile(pattern) if args.rename_kill else None
        wanted, seen = int(nth), {"n": 0}
        pattern, seconds = _split_at(args.rename_slow, "0")
        slow_regex = re.compile(pattern) if args.rename_slow else None

        def wrap(original):
            def renamer(src, dst, *a, **kw):
                if kill_regex is not None and kill_regex.search(str(dst)):
                    seen["n"] += 1
                    if seen["n"] == wanted:
                        record("kill -9 before a rename", src=str(src), dst=str(dst))
                        die()
                if slow_regex is not None and slow_regex.search(str(dst)):
                    time.sleep(float(seconds))
                return original(src, dst, *a, **kw)

            return renamer

        os.replace = wrap(os.replace)
        os.rename = wrap(os.rename)

    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
