"""Worker processes that are safe to start from a process already running threads."""

from __future__ import annotations

import functools
import multiprocessing

# Imported once by the fork server, so each worker starts with them loaded. One list for
# every caller: the server starts once per process and ignores later preload changes.
PRELOAD = ["distcolor.data.loader", "distcolor.data.shards"]


@functools.cache
def process_context() -> multiprocessing.context.BaseContext:
    """Start method for worker processes: forkserver, never plain fork.

    A trainer runs threads (gloo's, TensorBoard's writer, the progress bar); a fork()
    copies whatever lock one of them holds and the child can hang before it runs a line
    (seen here: a 2-rank run froze creating its eval loader). The fork server is a fresh
    process that imports PRELOAD once; workers fork from it, so they start fast."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context
