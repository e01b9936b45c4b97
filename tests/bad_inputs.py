"""Run many command lines of scripts/*.py in one process (torch is imported once, not once
per case): `python tests/bad_inputs.py CASES.json`. CASES.json is a list of
{"name", "argv": [script, args...]}; prints one JSON list of {"name", "status", "stdout",
"stderr", "seconds"}, status being the exit status the script's `run_main` chose, or
"traceback" when an exception escaped it (the traceback is then in stderr).

Each case runs the script as `__main__` with its own argv and captured output, as
`python script args...` would, so tests can check a hundred mistakes in seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_case(argv: list[str]) -> tuple[int | str, str, str]:
    out, err = io.StringIO(), io.StringIO()
    sys.argv = list(argv)
    status: int | str = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
        except SystemExit as stop:
            code = stop.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
            if isinstance(code, str):
                err.write(code + "\n")
        except BaseException:  # noqa: BLE001 (what escaped is the finding)
            status = "traceback"
            err.write(traceback.format_exc())
    return status, out.getvalue(), err.getvalue()


def main() -> None:
    from tests.conftest import reset_accelerate

    cases = json.loads(Path(sys.argv[1]).read_text())
    results = []
    for case in cases:
        start = time.perf_counter()
        status, out, err = run_case(case["argv"])
        reset_accelerate()  # a training case leaves Accelerate's process-wide state
        results.append(
            {
                "name": case["name"],
                "status": status,
                "stdout": out[-4000:],
                "stderr": err[-4000:],
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
