"""One prepared run of every GPU check and measurement, for a machine we hold for minutes.

    python benchmarks/gpu_suite.py --out DIR [--wheelhouse WHEELS] [--budget-s 480]
    python benchmarks/gpu_suite.py --out DIR --tiny        # the same parts on a CPU, < 3 min

Parts, in order; each runs in its own process group under a time limit, writes DIR/<part>.json
(and DIR/<part>.log), and a failure or a timeout is recorded and the next part runs:

  env          device, versions, and the two ceilings measured on the chip: a large bf16
               matrix product (TFLOP/s) and a device-to-device copy (GB/s)
  gpu_tests    pytest -m gpu (the CUDA tests; skipped without CUDA)
  step         bench_step on the paper config at 256 px: fp32, bf16, bf16 + channels_last,
               each up a ladder of batch sizes until memory runs out; images/s, TFLOP/s, MFU
               against the datasheet peak and against the measured matrix product
  compile      bf16 + channels_last + train.compile at the ladder's best batch size
  train        an end-to-end run from synthetic 286-px shards built here (loader workers on
               the CPU cores, ~200 steps): images/s against bench_step's, data-wait share
  zero         DeepSpeed ZeRO-2 (bf16) against DDP on one GPU: images/s, peak memory
  colorize     photos/s on 1-megapixel photos with the paper generator, time outside it
  evaluate     scripts/evaluate.py on the training run's checkpoint: images/s
  scaling      benchmarks/scaling_model.py with the measured single-GPU step

DIR/summary.json holds every part's status, duration and headline figures, with the
issue's targets checked; it is also the last stdout line. --tiny runs every part end to end
on tiny models and data (compile with the aot_eager backend), so that the suite is tested
on CPU and never rots. --wheelhouse installs the wheels a GPU image lacks (see
docs/offline_install.md) into a temporary folder first and puts it on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil  # a dependency of accelerate

ROOT = Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "configs" / "paper.yaml")
# Targets of issue 17 (ratios measured in one run on one GPU).
TARGETS = {"mfu": 0.40, "train_vs_step": 0.9, "data_wait_share": 0.02, "zero2_vs_ddp": 0.85}
# Tiny models and data: every part runs end to end on 2 CPU cores in seconds.
TINY_MODEL = [
    "model.generator.width=8",
    "model.generator.depth=5",
    "model.discriminator.width=8",
    "data.image_size=32",
    "model.channels_last=false",
]
QUIET = [f"train.{k}=1000000" for k in ("sample_every", "hist_every")]


class PartError(RuntimeError):
    """A command of a part failed; `stdout` holds what it printed before."""

    def __init__(self, message: str, stdout: str) -> None:
        super().__init__(message)
        self.stdout = stdout


def watch(proc: subprocess.Popen, limit: float) -> dict:
    """Wait for `proc` up to `limit` seconds, noting its descendants as they appear."""
    seen: dict[int, psutil.Process] = {}
    end = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < end:
        seen.update(descendants(proc.pid))
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    seen.update(descendants(proc.pid))
    return seen


def descendants(pid: int) -> dict:
    try:
        return {c.pid: c for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def end_tree(proc: subprocess.Popen, seen: dict) -> None:
    """Kill `proc`'s process group and every descendant seen (psutil checks a pid was not
    reused before it signals it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for child in seen.values():
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(seen.values()), timeout=10)


class Suite:
    def __init__(self, out: Path, *, tiny: bool, budget_s: float, env: dict) -> None:
        self.out, self.tiny, self.env = out, tiny, env
        self.deadline = time.monotonic() + budget_s
        self.results: dict[str, dict] = {}
        self.compile_modes = ["default"]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def command(self, part: str, cmd: list[str], *, limit: float) -> dict:
        """Run `cmd` under `limit` seconds (or the suite's deadline); its stderr and stdout
        go to DIR/<part>.log. Returns the last stdout line's JSON object, or raises
        PartError (with the stdout so far) naming what went wrong. Every process it started
        is gone when this returns: its process group, and any descendant that left it
        (torchrun starts its workers in sessions of their own)."""
        limit = max(1.0, min(limit, self.left()))
        captured = self.out / f".{part}.stdout"
        with open(self.out / f"{part}.log", "a") as log, open(captured, "w+") as stdout:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=stdout, stderr=log, text=True,
                start_new_session=True,
            )  # fmt: skip
            seen = watch(proc, limit)
            timed_out = proc.poll() is None
            end_tree(proc, seen)
            stdout.seek(0)
            text = stdout.read()
            log.write(text)
        captured.unlink()
        what = " ".join(cmd[1:3])
        if timed_out:
            raise PartError(f"timed out after {limit:.0f} s: {what}", text)
        if proc.returncode != 0:
            raise PartError(f"exit code {proc.returncode}: {what} (see {part}.log)", text)
        lines = [line for line in text.splitlines() if line.strip()]
        try:
            return json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            return {}

    def part(self, name: str, fn, *, minimum_s: float) -> dict:
        """Run one part, record its status and result in DIR/<name>.json."""
        start = time.monotonic()
        if self.left() < minimum_s:
            result = {"status": "skipped", "error": f"under {minimum_s:.0f} s of budget left"}
        else:
            try:
                result = {"status": "ok", **fn()}
            except Exception as err:  # recorded; the next part still runs
                result = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        result["seconds"] = round(time.monotonic() - start, 1)
        (self.out / f"{name}.json").write_text(json.dumps(result, indent=2))
        self.results[name] = result
        print(f"{name:10s} {result['status']:8s} {result['seconds']:7.1f} s", flush=True)
        return result

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]


# ----------------------------------------------------------------------------- parts


def ceilings(tiny: bool) -> dict:
    """Device facts and two ceilings: bf16 matrix product and device-to-device copy."""
    import platform

    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    facts = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "capability": list(torch.cuda.get_device_capability(device)) if cuda else None,
        "gpu_memory_gib": (
            round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
            if cuda
            else None
        ),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    from importlib import import_module
    from importlib.metadata import version

    facts["import_errors"] = {}
    for package in ("accelerate", "deepspeed", "webdataset", "kornia", "pydantic"):
        try:  # imported, not only found: a wheel too new for the image fails here, first
            import_module(package)
            facts[package] = version(package)
        except Exception as err:
            facts[package] = None
            facts["import_errors"][package] = f"{type(err).__name__}: {err}".splitlines()[0]

    def timed(fn, repeats: int) -> float:
        for _ in range(3):
            fn()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / repeats
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t) / repeats

    n = 512 if tiny else 8192
    # Random data: a product of zeros runs faster than real data does (device README).
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = timed(lambda: a @ b, 3 if tiny else 10)
    facts["matmul_n"] = n
    facts["matmul_bf16_tflops"] = 2 * n**3 / seconds / 1e12
    elements = (2**22 if tiny else 2**30) // 2  # bf16: 8 MiB tiny, 1 GiB on a GPU
    src = torch.randn(elements, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), 3 if tiny else 20)
    facts["copy_gb_per_s"] = 2 * src.numel() * 2 / seconds / 1e9  # bytes read + written
    return facts


def part_env(suite: Suite) -> dict:
    args = ["--ceilings"] + (["--tiny"] if suite.tiny else [])
    facts = suite.command("env", suite.python(__file__, *args), limit=120)
    broken = {k: v for k, v in facts["import_errors"].items() if k != "deepspeed"}
    if broken:  # every other part needs these
        raise RuntimeError(f"cannot import {broken}")
    return facts


def part_gpu_tests(suite: Suite) -> dict:
    xml = suite.out / "gpu_tests.xml"
    cmd = suite.python(
        "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests", f"--junitxml={xml}"
    )
    try:  # tests/test_gpu.py bounds its process launches at 2 x 100 s
        suite.command("gpu_tests", cmd, limit=60 if suite.tiny else 260)
    except RuntimeError as err:
        if not xml.is_file():
            raise
        failed = str(err)
    else:
        failed = None
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for node in ET.parse(xml).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += int(node.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if failed:
        raise RuntimeError(f"{failed}; {counts}")
    return counts


def _bench_step(suite: Suite, part: str, batches: list[int], overrides: list[str], limit) -> dict:
    if suite.tiny:
        base = ["--warmup", "1", "--repeats", "2", *TINY_MODEL]
    else:
        base = ["--config", PAPER, "prune=null"]
    cmd = suite.python(
        "benchmarks/bench_step.py", "--batch", ",".join(map(str, batches)), *base, *overrides
    )
    try:
        result = suite.command(part, cmd, limit=limit)
    except PartError as err:
        # Keep the rungs timed before a crash (an allocation failure cuDNN reports as a
        # plain error, a hang): bench_step prints each as a JSON line.
        runs = [json.loads(line) for line in err.stdout.splitlines() if line.startswith("{")]
        runs = [r for r in runs if r.get("benchmark") == "step"]
        if len(batches) == 1 or not runs:
            raise
        best = max(runs, key=lambda r: r["images_per_s"])
        return {"runs": [*runs, {"error": str(err)}], "best": best}
    return {"runs": result["runs"], "best": result["best"]} if "runs" in result else result


def _utilisation(run: dict, matmul_tflops: float | None) -> dict:
    """A bench_step rung with TFLOP/s and MFU against the measured matrix product."""
    if "flops_per_s" not in run:
        return run
    tflops = run["flops_per_s"] / 1e12
    out = {**run, "tflop_per_s": round(tflops, 2), "mfu_datasheet": run.get("mfu")}
    out["mfu_measured_matmul"] = round(tflops / matmul_tflops, 4) if matmul_tflops else None
    return out


def part_step(suite: Suite) -> dict:
    matmul = suite.results.get("env", {}).get("matmul_bf16_tflops")
    ladders = (
        {"bf16": ([2, 4], ["train.mixed_precision=bf16"])}
        if suite.tiny
        else {
            "fp32": ([16, 32, 64], ["train.mixed_precision=no", "model.channels_last=false"]),
            "bf16": (
                [16, 32, 64, 128, 256],
                ["train.mixed_precision=bf16", "model.channels_last=false"],
            ),
            "bf16_channels_last": (
                [16, 32, 64, 128, 256],
                ["train.mixed_precision=bf16", "model.channels_last=true"],
            ),
        }
    )
    out = {}
    for name, (batches, overrides) in ladders.items():
        try:
            result = _bench_step(suite, "step", batches, overrides, limit=40 if suite.tiny else 110)
        except RuntimeError as err:
            out[name] = {"error": str(err)}
            continue
        runs = [_utilisation(r, matmul) for r in result["runs"]]
        best = _utilisation(result["best"], matmul) if result.get("best") else None
        out[name] = {"runs": runs, "best": best}
    bests = [v["best"] for v in out.values() if v.get("best")]
    if not bests:
        raise RuntimeError(f"no variant ran: {out}")
    top = max(bests, key=lambda r: r["images_per_s"])
    return {"ladders": out, "best": top}


def part_compile(suite: Suite) -> dict:
    """bf16 (+ channels_last) compiled, at the ladder's best batch size: torch.compile's
    default mode, then each of --compile-modes (reduce-overhead adds CUDA graphs)."""
    best = suite.results.get("step", {}).get("best") or {}
    batch = best.get("batch_size", 4 if suite.tiny else 64)
    overrides = ["train.mixed_precision=bf16", "train.compile=true"]
    if suite.tiny:
        overrides.append("train.compile_backend=aot_eager")
    else:
        overrides.append("model.channels_last=true")
    matmul = suite.results.get("env", {}).get("matmul_bf16_tflops")
    eager = best.get("images_per_s")
    runs = {}
    for mode in suite.compile_modes:
        try:
            run = _bench_step(
                suite, "compile", [batch], [*overrides, f"train.compile_mode={mode}"],
                limit=60 if suite.tiny else 300,
            )  # fmt: skip
        except RuntimeError as err:
            if not runs:
                raise
            runs[mode] = {"error": str(err)}
            continue
        run = _utilisation(run, matmul)
        run["vs_eager_best"] = round(run["images_per_s"] / eager, 3) if eager else None
        runs[mode] = run
    first = runs[suite.compile_modes[0]]
    return {**first, "modes": runs}


def _reference_ladder(suite: Suite) -> dict:
    """The bench_step ladder the training run is compared with: its own settings."""
    ladders = suite.results.get("step", {}).get("ladders", {})
    return ladders.get("bf16_channels_last") or ladders.get("bf16") or {}


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "perf/images_per_s" in r]


def part_train(suite: Suite) -> dict:
    """Synthetic 286-px shards built here, then the paper config trained from them."""
    shards = suite.out / "work" / "shards"
    workers = 2 if suite.tiny else max(1, (os.cpu_count() or 2) - 2)
    count = 48 if suite.tiny else 3200
    size = 36 if suite.tiny else 286
    if not (shards / "manifest.json").is_file():
        suite.command(
            "train",
            suite.python(
                "scripts/make_shards.py",
                "--out",
                str(shards),
                "--synthetic",
                str(count),
                "--synthetic-size",
                str(size),
                "--shard-size",
                "6" if suite.tiny else "100",
                "--workers",
                str(max(1, os.cpu_count() or 1)),
            ),  # fmt: skip
            limit=60 if suite.tiny else 120,
        )
    ladder = _reference_ladder(suite)
    best = ladder.get("best") or {}
    batch = 4 if suite.tiny else min(best.get("batch_size", 64), 128)
    steps = 12 if suite.tiny else 200
    log_every = 3 if suite.tiny else 20
    overrides = [
        f"run.out_dir={suite.out / 'work' / 'runs'}",
        "run.name=e2e",
        f"data.shards={shards}",
        "data.synthetic=null",
        f"data.batch_size={batch}",
        f"data.num_workers={workers}",
        f"train.max_steps={steps}",
        f"train.log_every={log_every}",
        f"train.ckpt_every={steps}",
        "train.eval_images=0",
        "train.eval_every=null",
        "prune=null",
        *QUIET,
    ]
    config = [] if suite.tiny else ["--config", PAPER]
    overrides.append("train.mixed_precision=bf16")  # as the reference ladder
    overrides += TINY_MODEL if suite.tiny else []
    suite.command(
        "train",
        suite.python("scripts/train.py", *config, *overrides),
        limit=60 if suite.tiny else 240,
    )
    rows = _metrics(suite.out / "work" / "runs" / "e2e")[1:]  # the first window warms up
    if not rows:
        raise RuntimeError("no throughput logged")
    wait = sum(r["perf/data_wait_s_per_step"] for r in rows)
    compute = sum(r["perf/compute_s_per_step"] for r in rows)
    images_per_s = sorted(r["perf/images_per_s"] for r in rows)[len(rows) // 2]
    result = {
        "batch_size": batch,
        "steps": steps,
        "loader_workers": workers,
        "image_size": 32 if suite.tiny else 256,
        "images_per_s": round(images_per_s, 2),
        "data_wait_share": round(wait / (wait + compute), 4),
    }
    same = [r for r in ladder.get("runs", []) if r.get("batch_size") == batch]
    if same and "images_per_s" in same[0]:
        result["bench_step_images_per_s"] = same[0]["images_per_s"]
        result["vs_bench_step"] = round(images_per_s / same[0]["images_per_s"], 3)
    return result


def part_zero(suite: Suite) -> dict:
    if suite.tiny:
        args = ["--quick", "--nproc", "1", "--backends", "ddp,zero2"]
    else:
        args = [
            "--device", "cuda", "--nproc", "1", "--backends", "ddp,zero2", "--model", "paper",
            "--precision", "bf16", "--image-size", "256", "--batch", "64", "--steps", "12",
        ]  # fmt: skip
    result = suite.command(
        "zero", suite.python("benchmarks/bench_zero.py", *args), limit=120 if suite.tiny else 240
    )
    backends = result["backends"]
    result["zero2_images_per_s_vs_ddp"] = round(
        backends["zero2"]["images_per_s"] / backends["ddp"]["images_per_s"], 3
    )
    return result


def part_colorize(suite: Suite) -> dict:
    if suite.tiny:
        args = ["--quick", "--models", "small", "--images", "4", "--photo-size", "96x64"]
    else:
        args = [
            "--models", "paper", "--paper-images", "96", "--batch", "16",
            "--photo-size", "1152x864", "--device", "cuda",
        ]  # fmt: skip
    return suite.command(
        "colorize",
        suite.python("benchmarks/bench_colorize.py", *args),
        limit=60 if suite.tiny else 150,
    )


def part_evaluate(suite: Suite) -> dict:
    run = suite.out / "work" / "runs" / "e2e"
    if suite.results.get("train", {}).get("status") != "ok":
        raise RuntimeError("no training run to evaluate (the train part did not succeed)")
    images = 24 if suite.tiny else 640
    start = time.monotonic()
    report = suite.command(
        "evaluate",
        suite.python(
            "scripts/evaluate.py",
            "--checkpoint",
            str(run),
            "--shards",
            str(suite.out / "work" / "shards"),
            "--out",
            str(suite.out / "work" / "report"),
            "--images",
            str(images),
            "--workers",
            "2" if suite.tiny else "8",
        ),  # fmt: skip
        limit=90 if suite.tiny else 150,
    )
    seconds = time.monotonic() - start
    scored = report.get("model", {}).get("images", images)
    return {
        "images": scored,
        "seconds_with_startup": round(seconds, 2),
        "images_per_s_with_startup": round(scored / seconds, 2),
        "ciede2000_model": report.get("model", {}).get("ciede2000"),
    }


def part_scaling(suite: Suite) -> dict:
    best = suite.results.get("step", {}).get("best")
    if not best:
        raise RuntimeError("no measured step (the step part did not run)")
    args = ["--images-per-s", str(best["images_per_s"]), "--batch", str(best["batch_size"])]
    if suite.tiny:
        args += ["--config", str(ROOT / "configs" / "default.yaml")]
    return suite.command("scaling", suite.python("benchmarks/scaling_model.py", *args), limit=60)


PARTS = [  # name, function, least budget worth starting it with (full run)
    ("env", part_env, 20),
    ("gpu_tests", part_gpu_tests, 30),
    ("step", part_step, 60),
    ("compile", part_compile, 90),
    ("train", part_train, 60),
    ("zero", part_zero, 45),
    ("colorize", part_colorize, 30),
    ("evaluate", part_evaluate, 20),
    ("scaling", part_scaling, 5),
]


def headline(results: dict) -> dict:
    """The figures the issue asks for, with its targets checked."""
    step = results.get("step", {}).get("best") or {}
    train = results.get("train", {})
    zero = results.get("zero", {})
    compile_ = results.get("compile", {})
    mfu = step.get("mfu_datasheet")
    out = {
        "device": results.get("env", {}).get("device"),
        "matmul_bf16_tflops": results.get("env", {}).get("matmul_bf16_tflops"),
        "best_images_per_s": step.get("images_per_s"),
        "best_batch": step.get("batch_size"),
        "best_mfu_datasheet": mfu,
        "best_mfu_measured_matmul": step.get("mfu_measured_matmul"),
        "compile_images_per_s": compile_.get("images_per_s"),
        "train_vs_step": train.get("vs_bench_step"),
        "data_wait_share": train.get("data_wait_share"),
        "zero2_vs_ddp": zero.get("zero2_images_per_s_vs_ddp"),
        "colorize_photos_per_s": results.get("colorize", {}).get("images_per_s"),
        "colorize_outside_network": results.get("colorize", {}).get("outside_network_fraction"),
        "gpu_tests": {
            k: results.get("gpu_tests", {}).get(k)
            for k in ("passed", "failures", "errors", "skipped")
        },
    }
    checks = {
        "mfu_at_least_40pct": None if mfu is None else mfu >= TARGETS["mfu"],
        "train_at_least_0.9x_step": None
        if out["train_vs_step"] is None
        else out["train_vs_step"] >= TARGETS["train_vs_step"],
        "data_wait_under_2pct": None
        if out["data_wait_share"] is None
        else out["data_wait_share"] < TARGETS["data_wait_share"],
        "zero2_within_15pct": None
        if out["zero2_vs_ddp"] is None
        else out["zero2_vs_ddp"] >= TARGETS["zero2_vs_ddp"],
    }
    return {**out, "targets_met": checks}


def install_wheels(wheelhouse: Path) -> str:
    """pip-install the wheels of `wheelhouse` (scripts/wheelhouse.py; no index, no
    dependencies) into a temporary folder (removed at exit), for PYTHONPATH after the
    checkout. distcolor's own wheel is left out: the checkout is what is checked."""
    wheels = sorted(str(p) for p in Path(wheelhouse).glob("*.whl") if p.name[:10] != "distcolor-")
    if not wheels:
        raise RuntimeError(f"--wheelhouse: no .whl files in {wheelhouse}")
    site = tempfile.mkdtemp(prefix="distcolor-site-")
    atexit.register(shutil.rmtree, site, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    cmd += ["--no-compile", "--no-cache-dir", "--target", site, *wheels]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"--wheelhouse: pip could not install {wheelhouse}: {why}")
    return site


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="folder for the parts' JSON, logs and summary.json")
    p.add_argument("--tiny", action="store_true", help="tiny models and data: a CPU check (<3 min)")
    p.add_argument("--budget-s", type=float, default=None, help="default 480 (tiny: 600)")
    p.add_argument("--only", help="comma list of parts to run (default: all)")
    p.add_argument("--wheelhouse", type=Path, help="install these wheels first (offline)")
    p.add_argument(
        "--compile-modes",
        default="default",
        help="torch.compile modes to time, comma list (e.g. default,reduce-overhead)",
    )
    p.add_argument("--keep-work", action="store_true", help="keep DIR/work (shards, run, report)")
    p.add_argument("--ceilings", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ceilings:  # the env part, in a process of its own
        print(json.dumps(ceilings(a.tiny)))
        return
    if a.out is None:
        p.error("--out is required")
    a.out = a.out.resolve()  # the parts run from the checkout's root
    a.out.mkdir(parents=True, exist_ok=True)
    for old in [a.out / "work", *a.out.glob("*.json"), *a.out.glob("*.log"), *a.out.glob("*.xml")]:
        # an earlier run's results and work (shards, run) must not pass for this run's
        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    paths = [str(ROOT)]
    if a.wheelhouse:
        try:
            paths.append(install_wheels(a.wheelhouse))
        except RuntimeError as err:  # recorded where the parts' results would be
            summary = {"suite": "gpu_suite", "tiny": a.tiny, "parts": {}, "error": str(err)}
            (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
            print(json.dumps(summary))
            sys.exit(1)
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if a.tiny:
        env.setdefault("ACCELERATE_USE_CPU", "1")
    budget = a.budget_s if a.budget_s is not None else (600 if a.tiny else 480)
    suite = Suite(a.out, tiny=a.tiny, budget_s=budget, env=env)
    suite.compile_modes = a.compile_modes.split(",")
    chosen = set(a.only.split(",")) if a.only else {name for name, *_ in PARTS}
    unknown = chosen - {name for name, *_ in PARTS}
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    for name, fn, minimum_s in PARTS:
        if name in chosen:
            suite.part(name, lambda fn=fn: fn(suite), minimum_s=2 if a.tiny else minimum_s)
    summary = {
        "suite": "gpu_suite",
        "tiny": a.tiny,
        "date": time.strftime("%Y-%m-%d"),
        "parts": {
            k: {
                "status": v["status"],
                "seconds": v["seconds"],
                **({"error": v["error"]} if "error" in v else {}),
            }
            for k, v in suite.results.items()
        },
        "headline": headline(suite.results),
    }
    if not a.keep_work:  # shards and the training run's 1 GB checkpoint
        shutil.rmtree(a.out / "work", ignore_errors=True)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    if any(v["status"] != "ok" for v in suite.results.values()):
        sys.exit(1)  # after the summary: every part's figures are still there


if __name__ == "__main__":
    main()
