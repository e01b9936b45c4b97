"""Fault suite (issue 18): injected faults and bad inputs through the real CLIs, counted.

    python benchmarks/fault_suite.py --out fault-report [--quick] [--only REGEX] [--keep-work]

Faults (tests/fault_tools.py, in real processes, loader workers on): kill -9 of the trainer
at several steps, from inside and from outside, and inside a checkpoint write (half the
file written, the file whole but no marker, marked but not renamed); an exception at a
step; ENOSPC injected into a checkpoint write and a real full disk (tmpfs run folders of
24, 40 and 80 MB); SIGINT once and twice and SIGTERM to the process group; a loader worker
killed; a second trainer on a running run; in 2-rank torchrun runs an exception, a kill -9
(inside and from outside), a hung rank (train.collective_timeout_s=10), ENOSPC and SIGTERM
to every process; make_shards --overwrite killed while writing and at each step of its
publish, two make_shards into one folder, make_shards on a full disk. Counted: hangs (the
launched process not gone EXIT_BOUND_S after the fault), orphans (another process of the
run alive then), complete checkpoints (and shard sets) lost, resumes not bitwise
identical to a straight run.

Bad inputs (each CLI run under RLIMIT_AS = 4 GB and a timeout): configs, paths, images,
shards and model files through scripts/train.py, make_shards.py, evaluate.py, export.py
and colorize.py. Counted: tracebacks for a user mistake, allocations beyond the machine
(MemoryError, a failed allocation, killed), hangs, orphans, and wrong outcomes (an error
exit where the input is fine, or exit 0 where it is a mistake).

Logs of every process go to OUT/logs/<kind>/<case>/; OUT/results.json holds everything
and the last stdout line is one JSON object: the counts and every case's result.
--quick runs a handful of each (under a minute when nothing hangs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import fault_tools as ft  # noqa: E402

S, R = ft.SINGLE, ft.RANKS
PY = sys.executable


# -- faults ----------------------------------------------------------------------------

Scenario = Callable[[ft.FaultContext], ft.Case]


def fault_cases() -> list[tuple[str, bool, Scenario]]:
    """(name, in --quick, scenario) for every injected fault."""

    def inj(name, inject, expect, family=S, **kw):
        return name, lambda c: ft.injected(c, family, name, inject, expect=expect, **kw)

    def ext(name, after, family=S, **kw):
        return name, lambda c: ft.external_kill(c, family, name, after, **kw)

    def sig(name, signum, after, family=S, **kw):
        return name, lambda c: ft.stop_signal(c, family, name, signum, after, **kw)

    def pub(name, regex, nth=1, exchange=True):
        return name, lambda c: ft.publish_kill(c, name, regex, nth, exchange=exchange)

    def call(name, scenario, *args, **kw):
        return name, lambda c: scenario(c, *args, **kw)

    quick = {"ckpt-6-mid-write", "raise-step-5", "disk-full-40m"}
    table = [
        inj("kill-self-step-1", ["--step-kill", 1], "kill"),
        inj("kill-self-step-4", ["--step-kill", 4], "kill"),
        inj("kill-self-step-7", ["--step-kill", 7], "kill"),
        ext("kill-outside-after-2", 2),
        ext("kill-outside-after-5", 5),
        inj("ckpt-2-mid-write", ["--save-kill", 2], "kill"),
        inj("ckpt-6-mid-write", ["--save-kill", 6], "kill"),
        inj("ckpt-4-before-marker", ["--save-kill-after", 4], "kill"),
        inj("ckpt-8-before-marker", ["--save-kill-after", 8], "kill"),
        inj("ckpt-4-before-rename", ["--rename-kill", r"/step-00000004$"], "kill"),
        inj("ckpt-8-before-rename", ["--rename-kill", r"/step-00000008$"], "kill"),
        inj("raise-step-2", ["--step-raise", 2], "error"),
        inj("raise-step-5", ["--step-raise", 5], "error", resume=False),
        inj("enospc-ckpt-2", ["--save-enospc", 2], "enospc"),
        inj("enospc-ckpt-6", ["--save-enospc", 6], "enospc"),
        call("disk-full-24m", ft.disk_full, "disk-full-24m", 24),
        call("disk-full-40m", ft.disk_full, "disk-full-40m", 40),
        call("disk-full-80m", ft.disk_full, "disk-full-80m", 80),
        sig("sigint-after-2", signal.SIGINT, 2),
        sig("sigint-after-5", signal.SIGINT, 5),
        sig("sigterm-after-3", signal.SIGTERM, 3),
        sig("sigterm-after-6", signal.SIGTERM, 6),
        sig("sigint-twice-after-3", signal.SIGINT, 3, twice=True),
        sig("sigint-twice-after-5", signal.SIGINT, 5, twice=True),
        ext("kill-loader-worker", 1, target="worker"),
        call("second-trainer-fresh", ft.second_trainer, S, "second-trainer-fresh", resume=False),
        call("second-trainer-resume", ft.second_trainer, S, "second-trainer-resume", resume=True),
        inj("ranks-raise-rank1-step-3", ["--step-raise", 3], "error", R, rank=1),
        inj("ranks-raise-rank0-step-2", ["--step-raise", 2], "error", R, rank=0),
        inj("ranks-kill-self-rank1-step-4", ["--step-kill", 4], "kill", R, rank=1),
        ext("ranks-kill-outside-rank0-after-3", 3, R, rank=0),
        inj("ranks-hang-rank1-step-3", ["--step-hang", 3], "peer", R, rank=1,
            **{"train.collective_timeout_s": 10}),
        inj("ranks-enospc-ckpt-4", ["--save-enospc", 4], "enospc", R, rank=0),
        sig("ranks-sigterm-after-3", signal.SIGTERM, 3, R),
        pub("shards-kill-while-writing", r"\.tar$", 3),
        pub("shards-kill-manifest", r"manifest\.json$"),
        pub("shards-kill-after-exchange", r"\.trash$"),
        pub("shards-kill-no-exchange-old", r"\.old$", exchange=False),
        pub("shards-kill-no-exchange-gap", r"/shards-kill-no-exchange-gap$", exchange=False),
        pub("shards-kill-no-exchange-trash", r"\.trash$", exchange=False),
        call("make-shards-twice", ft.make_shards_twice, "make-shards-twice"),
        call("make-shards-disk-full", ft.make_shards_disk_full, "make-shards-disk-full"),
    ]  # fmt: skip
    return [(name, name in quick, scenario) for name, scenario in table]


SETUP = ("never happened", "never logged", "never reached", "never started", "first build")


def run_fault(ctx: ft.FaultContext, scenario: Scenario) -> ft.Case:
    """A scenario; once more when its fault could not even be set up (the machine is
    shared: a stray kill or a slow start), noted."""
    case = scenario(ctx)
    if any(any(word in p for word in SETUP) for p in case.problems):
        first = case.problems
        case = scenario(ctx)
        case.notes.append(f"retried after a set-up failure: {first}")
    return case


# -- bad inputs --------------------------------------------------------------------------

MEMORY = re.compile(
    r"MemoryError|can't allocate memory|Cannot allocate memory|bad_alloc|out of memory|"
    r"DefaultCPUAllocator",
    re.I,
)


@dataclass
class Bad:
    """One bad input: `build(folder)` makes the files and returns the command's arguments
    after the interpreter; `expect`: error (non-zero with an `error:` line), ok (exit 0) or
    either; `check(folder, proc)` returns a problem or None."""

    name: str
    group: str
    build: Callable[[Path], list]
    expect: str = "error"
    check: Callable[[Path, ft.Proc], str | None] | None = None
    quick: bool = False


@dataclass
class BadResult:
    name: str
    group: str
    expect: str
    rc: int | None = None
    seconds: float | None = None
    peak_rss_mb: float | None = None
    traceback: bool = False
    memory: bool = False
    hang: bool = False
    orphans: list[str] = field(default_factory=list)
    wrong_outcome: str | None = None
    problems: list[str] = field(default_factory=list)
    last_line: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(bad: Bad, folder: Path, proc: ft.Proc, ended: ft.Exit) -> BadResult:
    result = BadResult(bad.name, bad.group, bad.expect, ended.rc, ended.seconds, ended.peak_rss_mb)
    err, out = proc.err, proc.out
    lines = ft.own_lines(err)
    result.last_line = lines[-1][:300] if lines else ""
    if ended.hung:
        result.hang = True
        result.problems.append("hang: not done within the time limit")
    if ended.leftovers:
        result.orphans = ended.leftovers
        result.problems.append(f"orphans: {len(ended.leftovers)}")
    if "Traceback" in err or "Traceback" in out:
        result.traceback = True
        result.problems.append("traceback")
    if MEMORY.search(err) or (not ended.hung and ended.rc in (-signal.SIGKILL, -signal.SIGABRT)):
        result.memory = True
        result.problems.append(f"allocation beyond the limit (rc {ended.rc})")
    if not ended.hung:
        one_error = ended.rc not in (0, None) and any(
            ln.startswith("error:") or ": error: " in ln for ln in lines
        )
        wrong = {
            "error": None if one_error else f"expected a one-line error, got rc {ended.rc}",
            "ok": None if ended.rc == 0 else f"expected success, got rc {ended.rc}",
            "either": None if ended.rc == 0 or one_error else f"rc {ended.rc}, no error line",
        }[bad.expect]
        if wrong:
            result.wrong_outcome = wrong
            result.problems.append(f"wrong outcome: {wrong}")
    if bad.check is not None:
        problem = bad.check(folder, proc)
        if problem:
            result.problems.append(problem)
    return result


class Inputs:
    """Shared material for the bad inputs: tiny shards, a trained run, its export, photos."""

    def __init__(self, ctx: ft.FaultContext) -> None:
        self.ctx, self.root = ctx, ctx.work / "bad"
        self.root.mkdir(parents=True, exist_ok=True)
        self._run: Path | None = None
        self._export: Path | None = None
        self._photos: Path | None = None
        self._readonly: Path | None = None

    @property
    def shards(self) -> Path:
        return self.ctx.shards

    @property
    def run(self) -> Path:
        if self._run is None:
            self._run = self.ctx.reference(S)
        return self._run

    @property
    def checkpoint(self) -> Path:
        return self.run / "checkpoints" / f"step-{S.steps:08d}"

    @property
    def export(self) -> Path:
        if self._export is None:
            from distcolor.infer.export import export_generator

            out = self.root / "export"
            if not (out / "generator.safetensors").exists():
                export_generator(self.run, out)
            self._export = out
        return self._export

    @property
    def photos(self) -> Path:
        if self._photos is None:
            from tests.test_colorize import photo_like

            out = self.root / "photos"
            out.mkdir(exist_ok=True)
            for i in range(2):
                photo_like(40, 32, seed=i).save(out / f"p{i}.png")
            self._photos = out
        return self._photos

    @property
    def readonly(self) -> Path:
        """A folder nothing can be written into, root included (a read-only mount), or a
        path under /proc when mounting is not permitted."""
        if self._readonly is None:
            folder = self.root / "readonly"
            folder.mkdir(exist_ok=True)
            mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                capture_output=True,
            )
            self._readonly = folder if mounted.returncode == 0 else Path("/proc/distcolor")
        return self._readonly

    def close(self) -> None:
        if self._readonly is not None and self._readonly != Path("/proc/distcolor"):
            subprocess.run(["umount", "-l", str(self._readonly)], capture_output=True)

    # -- command lines --

    def train(self, folder: Path, *more: str, **overrides) -> list:
        family = ft.Family("bad", 1, 2, {"data.num_workers": 0})
        args = self.ctx.overrides(family, "bad", out_dir=folder / "runs", **overrides)
        return ["scripts/train.py", *more, *args]

    def evaluate(self, folder: Path, checkpoint=None, shards=None, *more) -> list:
        return [
            "scripts/evaluate.py", "--checkpoint", checkpoint or self.run,
            "--shards", shards or self.shards, "--out", folder / "report", "--workers", "0",
            "--images", "4", "--grid", "0", "--mean-images", "4", *more,
        ]  # fmt: skip

    def export_cli(self, folder: Path, checkpoint=None, *more) -> list:
        return ["scripts/export.py", "--checkpoint", checkpoint or self.run,
                "--out", folder / "export", *more]  # fmt: skip

    def colorize(self, folder: Path, *inputs, checkpoint=None, out=None, more=()) -> list:
        return [
            "scripts/colorize.py", "--checkpoint", checkpoint or self.run,
            *(inputs or [self.photos]), "--out", out or folder / "coloured", "--device", "cpu",
            *more,
        ]  # fmt: skip

    def make_shards(self, folder: Path, *more, out=None) -> list:
        return ["scripts/make_shards.py", "--out", out or folder / "shards", "--size", "32",
                "--shard-size", "4", "--readers", "1", *more]  # fmt: skip


# -- files ---------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path, side: int = 100_000) -> Path:
    """A valid-looking PNG whose header declares side x side pixels (a few bytes of data)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) +
                     _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))  # fmt: skip
    return path


def jpeg_bomb(side: int = 65_000) -> bytes:
    """A small JPEG whose frame header (SOF0) claims side x side pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def good_jpeg(seed: int = 0) -> bytes:
    from tests.test_colorize import photo_like

    buf = io.BytesIO()
    photo_like(40, 40, seed=seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def photo_folder(folder: Path, extra: Callable[[Path], object] | None, good: int = 4) -> Path:
    """A source folder of `good` colour photos plus whatever `extra(folder)` adds."""
    src = folder / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(good):
        (src / f"good{i}.jpg").write_bytes(good_jpeg(i))
    if extra is not None:
        extra(src)
    return src


def image_kinds(folder: Path) -> dict[str, Path]:
    """tests/test_colorize.py's input kinds (palette, 16-bit, CMYK, ...), reused."""
    from tests.test_colorize import input_kinds

    return {name: path for name, (path, _, _) in input_kinds(folder).items()}


def copy_shards(inputs: Inputs, folder: Path) -> Path:
    out = folder / "shards"
    shutil.copytree(inputs.shards, out)
    return out


def edit_manifest(shards: Path, edit: Callable[[dict], object]) -> Path:
    path = shards / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return shards


def each_tar(shards: Path, split: str, damage: Callable[[Path], object], first_only=False):
    for n, tar in enumerate(sorted(shards.glob(f"{split}-*.tar"))):
        if n and first_only:
            break
        damage(tar)
    return shards


class Exploit:
    """Unpickling runs a command that leaves a file: whether any loader ever unpickles."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def no_sentinel(folder: Path, _proc: ft.Proc) -> str | None:
    return "a pickle payload ran" if (folder / "pwned").exists() else None


def no_unsafe_advice(folder: Path, proc: ft.Proc) -> str | None:
    text = proc.err + proc.out
    if "Re-running `torch.load`" in text or "set to `False`" in text:
        return "quotes torch's advice to load with weights_only=False"
    return no_sentinel(folder, proc)


def shard_with_pickle(inputs: Inputs, folder: Path) -> Path:
    shards = copy_shards(inputs, folder)
    tar = sorted(shards.glob("train-*.tar"))[0]
    with tarfile.open(tar, "a") as t:
        data = pickle.dumps(Exploit(folder / "pwned"))
        info = tarfile.TarInfo("synthetic-9999.pyd")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return shards


def huge_member_tar(tar: Path) -> None:
    """Rewrite `tar` as one member whose header claims 8 GB (its data is 1 KB)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo("synthetic-0000.jpg")
        info.size = 1024
        t.addfile(info, io.BytesIO(b"\xff" * 1024))
    data = bytearray(buf.getvalue())
    data[124:136] = b"77777777777\0"
    data[148:156] = b"        "
    data[148:156] = f"{sum(data[:512]):06o}\0 ".encode()
    tar.write_bytes(bytes(data))


def bomb_tar(tar: Path) -> None:
    with tarfile.open(tar, "w") as t:
        for i, data in enumerate([jpeg_bomb(), good_jpeg()]):
            info = tarfile.TarInfo(f"synthetic-{i:04d}.jpg")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# -- model files ---------------------------------------------------------------------------


def checkpoint_variant(inputs: Inputs, folder: Path, kind: str) -> Path:
    """A copy of the trained run's last checkpoint, damaged or tampered as `kind`."""
    import torch

    ckpt = folder / "run" / "checkpoints" / inputs.checkpoint.name
    shutil.copytree(inputs.checkpoint, ckpt)
    state_file = ckpt / "state.pt"
    raw = state_file.read_bytes()

    def tamper(edit):
        state = torch.load(state_file, weights_only=True)
        edit(state)
        torch.save(state, state_file)

    def set_generator(key, value):
        return lambda s: s["config"]["model"]["generator"].__setitem__(key, value)

    def first_tensor(make):
        def edit(state):
            for weights in ("G", "G_ema"):
                if state.get(weights):
                    name = next(iter(state[weights]))
                    state[weights][name] = make(state[weights][name])

        return edit

    actions = {
        "truncated": lambda: state_file.write_bytes(raw[: len(raw) // 2]),
        "empty": lambda: state_file.write_bytes(b""),
        "directory": lambda: (state_file.unlink(), state_file.mkdir()),
        "random-bytes": lambda: state_file.write_bytes(os.urandom(len(raw))),
        "pickle-payload": lambda: torch.save(
            {"G": {}, "step": 1, "x": Exploit(folder / "pwned")}, state_file
        ),
        "no-marker": lambda: (ckpt / "COMPLETE").unlink(),
        "width-huge": lambda: tamper(set_generator("width", 10_000_000)),
        "width-text": lambda: tamper(set_generator("width", "wide")),
        "depth-negative": lambda: tamper(set_generator("depth", -1)),
        "depth-huge": lambda: tamper(set_generator("depth", 60)),
        "no-config": lambda: tamper(lambda s: s.pop("config")),
        "not-a-dict": lambda: torch.save([torch.zeros(3)], state_file),
        "shape-mismatch": lambda: tamper(first_tensor(lambda t: torch.zeros(3, 3))),
        # A tensor that claims 10^10 entries over one stored number (stride 0).
        "shape-huge-view": lambda: tamper(
            first_tensor(lambda t: torch.zeros(1).expand(100_000, 100_000))
        ),
    }
    actions[kind]()
    return ckpt


CHECKPOINT_KINDS = [
    "truncated", "empty", "directory", "random-bytes", "pickle-payload", "no-marker",
    "width-huge", "width-text", "depth-negative", "depth-huge", "no-config", "not-a-dict",
    "shape-mismatch", "shape-huge-view",
]  # fmt: skip


def export_variant(inputs: Inputs, folder: Path, kind: str) -> Path:
    """A copy of the run's dense export (generator.safetensors), damaged or tampered."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    source = inputs.export / "generator.safetensors"
    path = folder / "generator.safetensors"
    raw = source.read_bytes()
    with safe_open(str(source), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)

    def with_model(key, value):
        model = json.loads(meta["model"])
        model["generator"][key] = value
        save_file(tensors, str(path), metadata={**meta, "model": json.dumps(model)})

    def huge_header_claim():
        header = {
            "w": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 40_000_000_000]},
            "__metadata__": meta,
        }
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 8)

    def shape_mismatch():
        name = next(iter(tensors))
        save_file({**tensors, name: tensors[name].new_zeros(3, 3)}, str(path), metadata=meta)

    def encoded_claim():
        import torch

        from distcolor.infer.compact import pack_bits

        name = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 8)
        t = tensors.pop(name)
        present = torch.ones(t.numel(), dtype=torch.bool)
        tensors[name + ".__values"] = t.reshape(-1)
        tensors[name + ".__bitmap"] = pack_bits(present)
        encoded = {name: {"shape": [100_000, 100_000], "dtype": "float32"}}
        compact = folder / "generator.compact.safetensors"
        save_file(tensors, str(compact), metadata={**meta, "encoded": json.dumps(encoded),
                                                  "bit_order": "little"})  # fmt: skip
        return compact

    actions = {
        "truncated": lambda: path.write_bytes(raw[: len(raw) // 2]),
        "empty": lambda: path.write_bytes(b""),
        "random-bytes": lambda: path.write_bytes(os.urandom(len(raw))),
        "header-size-huge": lambda: path.write_bytes(struct.pack("<Q", 2**60) + raw[8:]),
        "header-claims-huge-tensor": huge_header_claim,
        "width-huge": lambda: with_model("width", 10_000_000),
        "depth-negative": lambda: with_model("depth", -1),
        "depth-huge": lambda: with_model("depth", 60),
        "shape-mismatch": shape_mismatch,
        "no-metadata": lambda: save_file(tensors, str(path)),
        "directory": lambda: path.mkdir(),
    }
    if kind == "encoded-shape-huge":
        return encoded_claim()
    if kind == "empty-folder":
        return folder
    actions[kind]()
    return path


EXPORT_KINDS = [
    "truncated", "empty", "random-bytes", "header-size-huge", "header-claims-huge-tensor",
    "width-huge", "depth-negative", "depth-huge", "shape-mismatch", "no-metadata",
    "directory", "encoded-shape-huge", "empty-folder",
]  # fmt: skip


def nothing_written(folder: Path, _proc: ft.Proc) -> str | None:
    out = folder / "coloured"
    written = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
    return f"wrote {len(written)} output(s) from a bad model" if written else None


# -- the bad input list --------------------------------------------------------------------


def bad_inputs(inputs: Inputs) -> list[Bad]:  # noqa: C901 (a list)
    i = inputs
    cases: list[Bad] = []

    def add(name, group, build, expect="error", check=None, quick=False):
        cases.append(Bad(name, group, build, expect, check, quick))

    # configs: overrides checked by --dry-run (validation only) ...
    for name, override, quick in [
        ("unknown-key", "data.batchsize=8", True),
        ("unknown-section", "trian.max_steps=5", False),
        ("wrong-type", "train.max_steps=ten", False),
        ("float-for-int", "train.max_steps=1.5", False),
        ("bool-for-int", "train.max_steps=true", False),
        ("zero-batch", "data.batch_size=0", False),
        ("negative-depth", "model.generator.depth=-1", False),
        ("depth-huge", "model.generator.depth=60", False),
        ("discriminator-layers-huge", "model.discriminator.layers=1000", False),
        ("infinite-lr", "train.lr_g=.inf", False),
        ("nan-lr", "train.lr_d=.nan", False),
        ("betas-out-of-range", "train.betas=[0.5, 1.5]", False),
        ("name-with-slash", "run.name=a/b", False),
        ("not-a-section", "data.batch_size.x=1", False),
        ("no-equals", "train.max_steps", False),
        ("seed-overflow", "run.seed=100000000000000000000000", False),
        ("empty-shards", "data.shards=", False),
        ("image-not-divisible", "data.image_size=48", False),
        ("precision-fp8", "train.mixed_precision=fp8", False),
        ("zero-steps", "train.max_steps=0", False),
        ("negative-eval-images", "train.eval_images=-1", False),
        ("collective-timeout-zero", "train.collective_timeout_s=0", False),
        ("yaml-flow-garbage", "train.betas=[0.5, {", False),
    ]:
        add(f"override-{name}", "config",
            lambda f, o=override: ["scripts/train.py", "--dry-run", o], quick=quick)  # fmt: skip
    # ... and ones that pass validation but cannot fit the machine: the real trainer.
    for name, extra in [
        ("width-huge", {"model.generator.width": 10_000_000}),
        ("image-size-huge", {"data.image_size": 65_536}),
        ("batch-huge", {"data.batch_size": 100_000_000}),
        ("discriminator-width-huge", {"model.discriminator.width": 10_000_000}),
    ]:
        add(f"resources-{name}", "config", lambda f, e=extra: i.train(f, **e),
            quick=name == "image-size-huge")  # fmt: skip

    # config files
    def config_file(content: bytes | str | Callable[[Path], Path], name="c.yaml"):
        def build(folder: Path) -> list:
            folder.mkdir(parents=True, exist_ok=True)
            if callable(content):
                path = content(folder)
            else:
                path = folder / name
                data = content.encode() if isinstance(content, str) else content
                path.write_bytes(data)
            return ["scripts/train.py", "--config", path, "--dry-run"]

        return build

    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + n)}: &{chr(98 + n)} [*{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, "
        f"*{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}]\n"
        for n in range(8)
    ) + "data:\n  train_urls: *i\n"  # fmt: skip
    for name, content, expect, quick in [
        ("missing", lambda f: f / "nope.yaml", "error", False),
        ("directory", lambda f: f, "error", False),
        ("binary", os.urandom(4096), "error", True),
        ("yaml-list", "- just\n- a list\n", "error", False),
        ("yaml-scalar", "42\n", "error", False),
        ("empty", "", "either", False),
        ("invalid-yaml", "data: {batch_size: [}\n", "error", False),
        ("latin-1", "run:\n  name: caf\xe9\n".encode("latin-1"), "error", False),
        ("dev-zero", lambda f: Path("/dev/zero"), "error", False),
        ("fifo", lambda f: fifo(f / "c.yaml"), "error", False),
        ("section-not-mapping", "data: 5\n", "error", False),
        ("unknown-top-level", "nonsense:\n  a: 1\n", "error", False),
        ("billion-laughs", laughs, "error", False),
        ("deep-nesting", "a: " + "[" * 100_000 + "]" * 100_000 + "\n", "error", False),
        ("bad-date", "run:\n  name: 2020-13-45\n", "error", False),
        ("huge-file", "# " + "x" * 60_000_000 + "\n", "either", False),
        ("name-too-long", lambda f: f / ("c" * 300 + ".yaml"), "error", False),
    ]:
        add(f"config-file-{name}", "config", config_file(content), expect, quick=quick)

    # paths (the trainer, tiny shards)
    def through_file(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "file").write_text("a file")
        return folder / "file" / "below"

    def long_name(folder: Path) -> Path:
        return folder / ("n" * 300)

    def long_path(folder: Path) -> Path:
        return folder.joinpath(*["d" * 200] * 25)

    for name, make, quick in [
        ("out-through-a-file", through_file, True),
        ("out-name-too-long", long_name, False),
        ("out-path-too-long", long_path, False),
        ("out-unwritable", lambda f: i.readonly / "runs", False),
        ("out-is-a-file", lambda f: through_file(f).parent, False),
    ]:
        add(f"train-{name}", "paths", lambda f, m=make: i.train(f, **{"run.out_dir": m(f)}),
            quick=quick)  # fmt: skip
    for name, make in [
        ("missing", lambda f: f / "nowhere"),
        ("a-file", lambda f: through_file(f).parent),
        ("through-a-file", through_file),
        ("name-too-long", long_name),
        ("fifo", lambda f: (f.mkdir(parents=True, exist_ok=True), fifo(f / "s"))[1]),
    ]:
        add(f"train-shards-{name}", "paths", lambda f, m=make: i.train(f, **{"data.shards": m(f)}))
    add("train-resume-missing", "paths", lambda f: i.train(f, "--resume", f / "nowhere"))
    add("train-resume-a-file", "paths",
        lambda f: i.train(f, "--resume", through_file(f).parent))  # fmt: skip

    def resume_below(folder: Path, steps: int) -> list:
        runs = folder / "runs"
        shutil.copytree(i.run, runs / "bad")
        return i.train(folder, "--resume", **{"train.max_steps": steps, "data.num_workers": 2})

    add("train-resume-max-steps-below", "paths", lambda f: resume_below(f, 4))
    add("train-resume-max-steps-equal", "paths", lambda f: resume_below(f, S.steps))

    def resume_other_model(folder: Path) -> list:
        shutil.copytree(i.run, folder / "runs" / "bad")
        return i.train(folder, "--resume", **{"model.generator.width": 16,
                                              "train.max_steps": S.steps + 2})  # fmt: skip

    add("train-resume-other-model", "paths", resume_other_model)

    # shards, through the trainer (and a few through evaluate)
    def shards_case(make: Callable[[Path], Path], tool="train"):
        def build(folder: Path) -> list:
            folder.mkdir(parents=True, exist_ok=True)
            shards = make(folder)
            if tool == "train":
                return i.train(folder, **{"data.shards": shards})
            return i.evaluate(folder, shards=shards)

        return build

    def empty_folder(f):
        (f / "shards").mkdir()
        return f / "shards"

    def without_manifest(f):
        s = copy_shards(i, f)
        (s / "manifest.json").unlink()
        return s

    def manifest_text(text):
        def make(f):
            s = copy_shards(i, f)
            (s / "manifest.json").write_text(text)
            return s

        return make

    def counts(value, split="train"):
        def make(f):
            def edit(m):
                for shard in m["splits"][split]["shards"]:
                    shard["count"] = value
                m["splits"][split]["count"] = value * len(m["splits"][split]["shards"])

            return edit_manifest(copy_shards(i, f), edit)

        return make

    def lost_shard(f):
        s = copy_shards(i, f)
        sorted(s.glob("train-*.tar"))[0].unlink()
        return s

    def traversal(f):
        s = copy_shards(i, f)
        (f / "outside.tar").write_bytes(b"")
        return edit_manifest(
            s, lambda m: m["splits"]["train"]["shards"][0].__setitem__("file", "../outside.tar")
        )

    def damaged(damage, split="train", first_only=False):
        return lambda f: each_tar(copy_shards(i, f), split, damage, first_only)

    def truncate(tar: Path) -> None:
        tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])

    def garbage(tar: Path) -> None:
        tar.write_bytes(os.urandom(tar.stat().st_size))

    def zero(tar: Path) -> None:
        tar.write_bytes(b"")

    def format_1(f):
        return edit_manifest(copy_shards(i, f), lambda m: m.__setitem__("format", 1))

    for name, make, expect, quick in [
        ("empty-folder", empty_folder, "error", False),
        ("missing-manifest", without_manifest, "error", False),
        ("manifest-not-json", manifest_text("{not json"), "error", False),
        ("manifest-a-list", manifest_text("[1, 2, 3]"), "error", False),
        ("manifest-binary", manifest_text("\x00\x01\x02" * 100), "error", False),
        ("manifest-old-format", format_1, "error", False),
        ("manifest-lists-a-missing-shard", lost_shard, "error", False),
        ("manifest-counts-huge", counts(10**12), "either", False),
        ("manifest-counts-zero", counts(0), "either", False),
        ("manifest-counts-negative", counts(-5), "either", False),
        ("manifest-path-traversal", traversal, "either", False),
        ("one-truncated-tar", damaged(truncate, first_only=True), "either", True),
        ("all-truncated-tars", damaged(truncate), "either", False),
        ("all-non-tar", damaged(garbage), "error", False),
        ("all-zero-byte-tars", damaged(zero), "error", False),
        ("pickled-member", lambda f: shard_with_pickle(i, f), "either", False),
        ("tar-member-claims-8gb", damaged(huge_member_tar, first_only=True), "either", False),
        ("jpeg-bomb-in-a-shard", damaged(bomb_tar, first_only=True), "either", False),
    ]:
        check = no_sentinel if name == "pickled-member" else None
        add(f"train-shards-{name}", "shards", shards_case(make), expect, check, quick)
    for name, make, expect in [
        ("empty-folder", empty_folder, "error"),
        ("non-tar-test-shards", damaged(garbage, "test"), "either"),
        ("test-counts-huge", counts(10**12, "test"), "either"),
        ("jpeg-bomb-in-a-test-shard", damaged(bomb_tar, "test", first_only=True), "either"),
        ("missing-manifest", without_manifest, "error"),
    ]:
        add(f"evaluate-shards-{name}", "shards", shards_case(make, "evaluate"), expect)
    add("evaluate-image-size-huge", "shards", lambda f: i.evaluate(f, None, None, "--image-size",
        "65536"))  # fmt: skip
    add("evaluate-batch-huge", "shards", lambda f: i.evaluate(f, None, None, "--batch-size",
        "100000000"), "either")  # fmt: skip
    add("evaluate-images-zero", "shards", lambda f: i.evaluate(f, None, None, "--images", "0"))

    # images and folders through make_shards (4 good photos + the bad input)
    def source_case(extra, expect="ok", *more):
        return lambda f: i.make_shards(f, "--source", f"photos={photo_folder(f, extra)}", *more)

    def write(name: str, data: bytes):
        return lambda src: (src / name).write_bytes(data)

    def kind(name: str):
        def add_kind(src: Path) -> None:
            (src.parent / "kinds").mkdir(exist_ok=True)
            path = image_kinds(src.parent / "kinds")[name]
            shutil.copy(path, src / path.name)

        return add_kind

    cut = good_jpeg(9)[:600]
    for name, extra, quick in [
        ("truncated-jpeg", write("cut.jpg", cut), False),
        ("zero-byte", write("empty.jpg", b""), False),
        ("not-an-image", write("notes.jpg", b"just some text\n" * 20), False),
        ("png-bomb", lambda src: png_bomb(src / "bomb.png"), True),
        ("jpeg-bomb", write("bomb.jpg", jpeg_bomb()), False),
        ("cmyk", kind("cmyk"), False),
        ("16-bit", kind("16-bit"), False),
        ("palette", kind("palette"), False),
        ("rgba", kind("rgba"), False),
        ("directory-named-jpg", lambda src: (src / "folder.jpg").mkdir(), False),
        ("fifo-named-jpg", lambda src: fifo(src / "pipe.jpg"), False),
        ("symlink-loop", lambda src: (src / "loop.jpg").symlink_to(src / "loop.jpg"), False),
        ("broken-symlink", lambda src: (src / "gone.jpg").symlink_to(src / "nowhere"), False),
        ("dev-zero-link", lambda src: (src / "zero.jpg").symlink_to("/dev/zero"), False),
    ]:
        add(f"make-shards-{name}", "images", source_case(extra), "ok", quick=quick)
    only_bad = lambda f: photo_folder(f, write("x.jpg", cut), 0)  # noqa: E731
    add("make-shards-only-bad-images", "images",
        lambda f: i.make_shards(f, "--source", f"photos={only_bad(f)}"))  # fmt: skip
    for name, build in [
        ("out-through-a-file", lambda f: i.make_shards(f, "--synthetic", "8", out=through_file(f))),
        ("out-name-too-long", lambda f: i.make_shards(f, "--synthetic", "8", out=long_name(f))),
        ("out-unwritable", lambda f: i.make_shards(f, "--synthetic", "8",
                                                   out=i.readonly / "s")),
        ("out-is-a-file", lambda f: i.make_shards(f, "--synthetic", "8",
                                                  out=through_file(f).parent)),
        ("source-missing", lambda f: i.make_shards(f, "--source", f"x={f / 'nope'}")),
        ("source-a-file", lambda f: i.make_shards(f, "--source",
                                                  f"x={through_file(f).parent}")),
        ("source-bad-name", lambda f: i.make_shards(f, "--source", "x.y=.")),
        ("synthetic-size-huge", lambda f: i.make_shards(f, "--synthetic", "2",
                                                        "--synthetic-size", "100000")),
        ("quality-zero", lambda f: i.make_shards(f, "--synthetic", "8", "--quality", "0")),
        ("workers-zero", lambda f: i.make_shards(f, "--synthetic", "8", "--workers", "0")),
        ("shard-size-zero", lambda f: i.make_shards(f, "--synthetic", "8", "--shard-size", "0")),
        ("existing-without-overwrite", lambda f: i.make_shards(f, "--synthetic", "8",
                                                               out=copy_shards(i, f))),
    ]:  # fmt: skip
        add(f"make-shards-{name}", "paths", build)
    # --size only ever shrinks (the shorter side down to it): a huge one keeps the inputs.
    add("make-shards-size-huge", "paths",
        lambda f: i.make_shards(f, "--synthetic", "2", "--size", "100000"), "either")  # fmt: skip

    # photos through colorize
    def photos_with(extra, good=1):
        def make(folder: Path) -> Path:
            src = folder / "in"
            src.mkdir(parents=True, exist_ok=True)
            from tests.test_colorize import photo_like

            for n in range(good):
                photo_like(40, 32, seed=n).save(src / f"good{n}.png")
            extra(src)
            return src

        return make

    for name, extra, good, expect, quick in [
        ("only-zero-byte", write("a.png", b""), 0, "error", False),
        ("only-truncated", write("a.jpg", cut), 0, "error", True),
        ("only-not-an-image", write("a.jpg", b"text " * 50), 0, "error", False),
        ("only-png-bomb", lambda s: png_bomb(s / "bomb.png"), 0, "error", False),
        ("good-and-png-bomb", lambda s: png_bomb(s / "bomb.png"), 1, "either", False),
        ("good-and-jpeg-bomb", write("bomb.jpg", jpeg_bomb()), 1, "either", False),
        ("cmyk", kind("cmyk"), 0, "ok", False),
        ("16-bit", kind("16-bit"), 0, "ok", False),
        ("palette", kind("palette"), 0, "ok", False),
        ("good-and-fifo", lambda s: fifo(s / "pipe.png"), 1, "either", False),
        ("good-and-dev-zero-link", lambda s: (s / "z.png").symlink_to("/dev/zero"), 1, "either",
         False),
    ]:  # fmt: skip

        def build(f, e=extra, g=good):
            return i.colorize(f, photos_with(e, g)(f))

        add(f"colorize-{name}", "images", build, expect, quick=quick)
    add("colorize-fifo-argument", "images",
        lambda f: i.colorize(f, i.photos / "p0.png", fifo(f / "p.png")),
        "either")  # fmt: skip
    add("colorize-dev-zero-argument", "images",
        lambda f: i.colorize(f, i.photos / "p0.png", Path("/dev/zero")), "either")  # fmt: skip
    for name, build, expect in [
        ("out-through-a-file", lambda f: i.colorize(f, out=through_file(f)), "error"),
        ("out-name-too-long", lambda f: i.colorize(f, out=long_name(f)), "error"),
        ("out-unwritable", lambda f: i.colorize(f, out=i.readonly / "c"), "error"),
        ("render-size-huge", lambda f: i.colorize(f, more=["--render-size", "65536"]), "error"),
        ("batch-size-huge", lambda f: i.colorize(f, more=["--batch-size", "100000000"]), "either"),
        ("saturation-nan", lambda f: i.colorize(f, more=["--saturation", "nan"]), "error"),
    ]:
        add(f"colorize-{name}", "paths", build, expect)

    # model files: damaged or tampered checkpoints through evaluate, export and colorize ...
    for kind_ in CHECKPOINT_KINDS:
        check = no_unsafe_advice if kind_ == "pickle-payload" else None
        for tool in ("evaluate", "export", "colorize"):
            quick = (kind_, tool) in {("width-huge", "colorize"), ("truncated", "evaluate")}

            def build(f, k=kind_, t=tool):
                ckpt = checkpoint_variant(i, f, k)
                return {"evaluate": lambda: i.evaluate(f, ckpt),
                        "export": lambda: i.export_cli(f, ckpt),
                        "colorize": lambda: i.colorize(f, checkpoint=ckpt)}[t]()  # fmt: skip

            def colorize_check(f, p, c=check):
                return (c and c(f, p)) or nothing_written(f, p)

            chk = colorize_check if tool == "colorize" else check
            add(f"{tool}-checkpoint-{kind_}", "models", build, "error", chk, quick)
    # ... and exports through evaluate and colorize
    for kind_ in EXPORT_KINDS:
        for tool in ("evaluate", "colorize"):

            def build(f, k=kind_, t=tool):
                path = export_variant(i, f / "model", k)
                if t == "evaluate":
                    return i.evaluate(f, path)
                return i.colorize(f, checkpoint=path)

            chk = nothing_written if tool == "colorize" else None
            add(f"{tool}-export-{kind_}", "models", build, "error", chk)
    return cases


def run_bad(inputs: Inputs, bad: Bad, logs: Path, timeout: float) -> BadResult:
    folder = inputs.root / "cases" / bad.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    case_logs = logs / "bad" / bad.group / bad.name
    shutil.rmtree(case_logs, ignore_errors=True)
    try:
        argv = [PY, *map(str, bad.build(folder))]
    except Exception as err:  # noqa: BLE001 (a harness problem, reported as such)
        result = BadResult(bad.name, bad.group, bad.expect)
        result.problems.append(f"harness: could not build the input ({err!r})")
        return result
    proc = ft.Proc("cli", argv, logs=case_logs)
    ended = proc.finish(bound=timeout)
    result = judge(bad, folder, proc, ended)
    if not (folder / "pwned").exists() and not result.problems:
        shutil.rmtree(folder, ignore_errors=True)
    return result


# -- main --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("fault-report"))
    parser.add_argument("--quick", action="store_true", help="a handful of each (< 1 minute)")
    parser.add_argument("--only", default=None, help="only cases whose name matches REGEX")
    parser.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bad-inputs", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bound", type=float, default=ft.EXIT_BOUND_S,
                        help="seconds from a fault to every process gone")  # fmt: skip
    parser.add_argument("--bad-timeout", type=float, default=90.0,
                        help="seconds a bad-input run may take")  # fmt: skip
    parser.add_argument("--keep-work", action="store_true", help="keep OUT/work")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("error: the fault suite finds a run's processes through /proc (Linux)")
    out = args.out.resolve()
    shutil.rmtree(out / "logs", ignore_errors=True)
    shutil.rmtree(out / "work", ignore_errors=True)
    ctx = ft.FaultContext(out / "work", out / "logs", bound=args.bound)
    only = re.compile(args.only) if args.only else None
    started = time.monotonic()
    faults, bads = [], []

    def wanted(name: str, quick: bool) -> bool:
        return (quick or not args.quick) and (only is None or only.search(name) is not None)

    try:
        if args.faults:
            for name, quick, scenario in fault_cases():
                if not wanted(name, quick):
                    continue
                t0 = time.monotonic()
                case = run_fault(ctx, scenario)
                took = time.monotonic() - t0
                faults.append({**case.as_dict(), "took_s": round(took, 1)})
                status = "ok" if case.ok else "FAIL: " + "; ".join(case.problems)
                print(f"fault {name}: {status} ({took:.0f} s)", flush=True)
        if args.bad_inputs:
            inputs = Inputs(ctx)
            try:
                for bad in bad_inputs(inputs):
                    if not wanted(bad.name, bad.quick):
                        continue
                    result = run_bad(inputs, bad, out / "logs", args.bad_timeout)
                    bads.append({**result.__dict__, "ok": result.ok})
                    status = "ok" if result.ok else "FAIL: " + "; ".join(result.problems)
                    print(f"bad input {bad.group}/{bad.name}: {status} ({result.seconds} s)",
                          flush=True)  # fmt: skip
            finally:
                inputs.close()
    finally:
        if not args.keep_work:
            shutil.rmtree(out / "work", ignore_errors=True)

    real = [f for f in faults if not any(n.startswith("skipped") for n in f["notes"])]
    counts = {
        "faults": len(real),
        "faults_skipped": len(faults) - len(real),
        "faults_failed": sum(not f["ok"] for f in real),
        "hangs": sum(f["hang"] for f in real),
        "orphans": sum(bool(f["orphans"]) for f in real),
        "orphan_processes": sum(len(f["orphans"]) for f in real),
        "checkpoints_lost": sum(
            sum(not x.startswith("shard set") for x in f["lost"]) for f in real
        ),
        "shard_sets_lost": sum(sum(x.startswith("shard set") for x in f["lost"]) for f in real),
        "resumes": sum(f["bitwise"] is not None for f in real),
        "resumes_not_bitwise": sum(f["bitwise"] is False for f in real),
        "bad_inputs": len(bads),
        "bad_inputs_failed": sum(not b["ok"] for b in bads),
        "tracebacks": sum(b["traceback"] for b in bads),
        "allocations_beyond_limit": sum(b["memory"] for b in bads),
        "bad_input_hangs": sum(b["hang"] for b in bads),
        "bad_input_orphans": sum(bool(b["orphans"]) for b in bads),
        "wrong_outcomes": sum(b["wrong_outcome"] is not None for b in bads),
    }
    summary = {
        "counts": counts,
        "bound_s": args.bound,
        "memory_limit_bytes": ft.MEMORY_LIMIT,
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "failed": [f["name"] for f in faults if not f["ok"]]
        + [b["name"] for b in bads if not b["ok"]],
        "faults": faults,
        "bad_inputs": bads,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
