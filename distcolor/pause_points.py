"""Named points where a test stops a real process, to kill it exactly there.

With DISTCOLOR_TEST_PAUSE_AT=NAME, the process that reaches `pause_point(NAME)` prints
`paused at NAME (pid N)` on stderr and sleeps until it is killed. Unset (as always
outside tests), a pause point is one environment look-up. Points: publish,
publish-exchanged, publish-gap, publish-trash (distcolor/data/publish.py).
"""

from __future__ import annotations

import os
import sys
import time

PAUSE_VARIABLE = "DISTCOLOR_TEST_PAUSE_AT"


def pause_point(name: str) -> None:
    if os.environ.get(PAUSE_VARIABLE) != name:
        return
    print(f"paused at {name} (pid {os.getpid()})", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)
