"""CUDA tests: what only a GPU can show (`python -m pytest -m gpu -q tests/test_gpu.py`).

Skipped without CUDA. `DISTCOLOR_GPU_TESTS_ON_CPU=1` runs them anyway, as a dry run of
their logic: the device is then the CPU, process groups use gloo instead of NCCL and the
host-sync check is skipped, so on a GPU only CUDA behaviour itself can still surprise.

    precision      bf16 and fp16 GAN steps (the trainer's GANStep) on the device, one
                   GradScaler per network, and a NaN batch skipped there
    layout         model.channels_last end to end, against the default layout
    data           pinned loader batches, non_blocking copies, worker buffers reused
    host syncs     GANStep's synchronising calls counted under torch.cuda's sync debug mode
    collectives    pruning rounds, mask fingerprints and the replica check in a real
                   NCCL group (tests/gpu_collectives.py, one rank plus a simulated one)
    runs           trainer runs in subprocesses (torchrun, one process): DDP backend in
                   fp32 and DeepSpeed ZeRO-2 / ZeRO-3 in bf16, each pruned, stopped and
                   resumed, compared bit for bit with the straight run
    in-process     the trainer in bf16/fp16; EMA and evaluation on the device; colorize
                   on the device against the CPU

Bitwise resume on a GPU needs deterministic kernels. The compared runs set
`train.deterministic=true`, the trainer's switch (distcolor.backends.distributed.set_kernel_flags),
which before anything touches CUDA sets
    CUBLAS_WORKSPACE_CONFIG=:4096:8              (also in the launch environment here)
    torch.use_deterministic_algorithms(True)     (an op without a deterministic kernel raises)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False       (no timing-based algorithm choice, which
                                                 can differ between two processes)
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from torch import nn

from distcolor.backends.ddp import ddp_step
from distcolor.color import lab_inputs
from distcolor.config import load_config
from distcolor.models import build_models
from distcolor.prune.masks import Masks, alive_after, prunable_weights
from distcolor.train.gan_step import GANStep
from distcolor.train.precision import DTYPES, Precision
from tests.conftest import reset_accelerate, tiny_overrides

ON_CPU = os.environ.get("DISTCOLOR_GPU_TESTS_ON_CPU") == "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (ON_CPU or torch.cuda.is_available()),
        reason="needs CUDA (DISTCOLOR_GPU_TESTS_ON_CPU=1: a dry run on the CPU)",
    ),
]
BACKEND = "gloo" if ON_CPU else "nccl"
ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.generator.width=8", "model.generator.depth=5", "model.discriminator.width=8"]
LOSSES = ("loss/D/total", "loss/D/real", "loss/D/fake", "loss/G/total", "loss/G/adv", "loss/G/l1")


@pytest.fixture
def device(monkeypatch) -> torch.device:
    """cuda; the CPU in a dry run (DISTCOLOR_GPU_TESTS_ON_CPU=1)."""
    if ON_CPU:
        monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # in-process trainers too
        return torch.device("cpu")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    return torch.device("cuda")


def make_step(device: torch.device, precision: str = "no", *overrides: str) -> GANStep:
    cfg = load_config(None, [*SMALL, *overrides])
    accelerator = Accelerator(cpu=device.type == "cpu")
    g, d = build_models(cfg.model, seed=0)
    return ddp_step(cfg, accelerator, g, d, Precision(precision, accelerator.device))


def batch(device: torch.device, seed: int = 0, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lightness = torch.rand(n, 1, 32, 32, generator=gen) * 2 - 1
    chroma = (torch.rand(n, 2, 32, 32, generator=gen) - 0.5) * 0.5
    return lightness.to(device), chroma.to(device)


def state_of(module: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in (*module.parameters(), *module.buffers())]


def same(before: list[torch.Tensor], module: nn.Module) -> bool:
    after = (*module.parameters(), *module.buffers())
    return all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


# -- precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_run_on_the_device_with_one_scaler_per_network(device, precision):
    step = make_step(device, precision)
    assert {p.device.type for net in (step.G, step.D) for p in net.parameters()} == {device.type}
    probe = copy.deepcopy(step.G).eval()
    with torch.no_grad(), step.autocast():
        assert probe(batch(device)[0]).dtype == DTYPES[precision]  # autocast on this device
    stepped = {"G": 0, "D": 0}
    for n in range(12):  # fp16 starts at 2**16, which may overflow: the scaler backs off
        metrics = step([batch(device, seed=n)])
        for key in LOSSES:
            value = metrics[key]
            assert value.dtype == torch.float32 and value.device.type == device.type, key
            assert torch.isfinite(value), (n, key, value)
        for net in stepped:
            stepped[net] += int(metrics[f"stepped/{net}"])
        if n >= 3 and all(stepped.values()):
            break
    assert all(stepped.values()), stepped  # both networks did train
    updates = (step.update_g, step.update_d)
    if precision == "bf16":
        assert all(u.scaler is None and u.skipped == 0 for u in updates)
        return
    s_g, s_d = step.update_g.scaler, step.update_d.scaler
    assert s_g is not None and s_d is not None and s_g is not s_d
    for update in updates:
        assert update.scaler._scale.device.type == device.type  # the scale lives on the device
        # Halved once per skipped (overflowing) step and never grown (growth every 2000).
        assert update.loss_scale() == 2.0**16 * 0.5**update.skipped, update.skipped
        assert update.state_dict()["scaler"]["scale"] == update.loss_scale() > 0


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_a_nan_batch_skips_both_updates_and_keeps_weights_and_statistics(device, precision):
    step = make_step(device, precision)
    if precision == "fp16":  # a scale this model does not overflow at (tests/test_step.py)
        for update in (step.update_g, step.update_d):
            update.scaler = torch.amp.GradScaler(device.type, init_scale=256.0)
    assert step([batch(device, seed=1)])["stepped/G"] == 1
    scales = [u.loss_scale() for u in (step.update_g, step.update_d)]
    before = {"G": state_of(step.G), "D": state_of(step.D)}
    lightness, chroma = batch(device, seed=2)
    lightness[0, 0, 0, 0] = float("nan")  # one corrupt pixel poisons both losses
    metrics = step([(lightness, chroma)])
    assert metrics["stepped/G"] == 0 and metrics["stepped/D"] == 0
    assert not torch.isfinite(metrics["grad_norm/G"]) and not torch.isfinite(metrics["grad_norm/D"])
    assert same(before["G"], step.G) and same(before["D"], step.D)  # BN statistics included
    assert step.update_g.skipped == step.update_d.skipped == 1
    if precision == "fp16":
        after = [u.loss_scale() for u in (step.update_g, step.update_d)]
        assert after == [s * 0.5 for s in scales]  # each scaler backed off once
    assert step([batch(device, seed=3)])["stepped/G"] == 1  # the next good batch trains
    assert all(torch.isfinite(t).all() for t in (*step.G.parameters(), *step.G.buffers()))


# -- channels_last --------------------------------------------------------------------------


def is_nhwc(t: torch.Tensor) -> bool:
    return t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_trains_in_nhwc_end_to_end_and_matches_the_default_layout(device):
    # No dropout: its random masks need not follow the same element order in both layouts.
    nhwc = make_step(device, "no", "model.generator.dropout=0", "model.channels_last=true")
    nchw = make_step(device, "no", "model.generator.dropout=0")
    for net in (nhwc.G, nhwc.D):
        assert all(is_nhwc(p) for p in net.parameters())
    seen = []

    def record(module, inputs, output, name):
        seen.append((name, is_nhwc(inputs[0]), is_nhwc(output)))

    convs = (nn.Conv2d, nn.ConvTranspose2d)
    hooks = [
        m.register_forward_hook(lambda m, i, o, name=f"{tag}.{name}": record(m, i, o, name))
        for tag, net in (("G", nhwc.G), ("D", nhwc.D))
        for name, m in net.named_modules()
        if isinstance(m, convs)
    ]
    try:
        for n in range(3):
            micro = [batch(device, seed=n)]
            a, b = nhwc(micro), nchw(micro)
            for key in LOSSES:
                torch.testing.assert_close(a[key], b[key], rtol=1e-2, atol=1e-3, msg=key)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) > 10
    # Every conv's output is NHWC, and so is every input but D's first: torch.cat of the
    # one-channel L (whose NHWC strides are the NCHW ones) and ab in GANObjective comes
    # out NCHW, and that conv converts it.
    assert all(y for _, _, y in seen), sorted({name for name, _, y in seen if not y})
    not_nhwc = {name for name, x, _ in seen if not x}
    assert not_nhwc <= {"D.net.0"}, f"conv inputs not channels_last: {sorted(not_nhwc)}"
    for mine, theirs in ((nhwc.G, nchw.G), (nhwc.D, nchw.D)):
        assert all(is_nhwc(p) for p in mine.parameters())  # still NHWC after the updates
        for (name, p), q in zip(mine.named_parameters(), theirs.parameters(), strict=True):
            # Adam moves each weight by at most about lr (2e-4) per step, whatever the
            # gradient's last bits: three steps stay within 2e-3.
            torch.testing.assert_close(p, q, rtol=0, atol=2e-3, msg=name)


# -- data transfer --------------------------------------------------------------------------


def test_loader_batches_arrive_pinned_convert_on_the_device_and_reuse_worker_buffers(
    device, tiny_shards
):
    """The loader pins its batches whenever CUDA is there (DataLoader pin_memory), and
    `color.lab_inputs` copies them with non_blocking=True. Each worker fills shared-memory
    buffers that `recycle_batches` hands back when the next batch is drawn, so a batch is
    valid until then. The device tensors are new for every batch (the caching allocator's);
    the code promises no device-side buffer reuse."""
    from distcolor.config import DataConfig
    from distcolor.data.batching import recycle_batches
    from distcolor.data.catalog import read_manifest, shard_list
    from distcolor.data.loader import build_train_loader

    loader = build_train_loader(
        shard_list(tiny_shards, read_manifest(tiny_shards), "train"),
        DataConfig(image_size=32, batch_size=4, num_workers=1, shuffle_buffer=8),
        seed=0,
        rank=0,
        world_size=1,
    )
    pinned = torch.cuda.is_available()
    cpu = torch.device("cpu")
    slots, converted, expected = [], [], []
    for batch_ in recycle_batches(loader):
        assert batch_["gray"].is_pinned() == pinned and batch_["rgb"].is_pinned() == pinned
        slots.append(batch_["buffer"])
        copies = {"gray": batch_["gray"].clone(), "rgb": batch_["rgb"].clone()}
        expected.append(lab_inputs(copies, cpu))
        converted.append(lab_inputs(batch_, device))  # asynchronous from pinned memory
        if len(slots) == 12:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    # Each copy holds its own batch, though the buffers behind them were refilled since.
    for n, ((lightness, chroma), (l_cpu, ab_cpu)) in enumerate(
        zip(converted, expected, strict=True)
    ):
        assert lightness.device.type == chroma.device.type == device.type
        assert torch.equal(lightness.cpu(), l_cpu), n  # a table lookup: exact
        # kornia's sRGB -> XYZ matrix is an F.conv2d on GPUs (einsum on the CPU): TF32 by
        # default there, about 5e-4 off in scaled chroma (emulated on the CPU).
        torch.testing.assert_close(chroma.cpu(), ab_cpu, rtol=0, atol=2e-3, msg=f"batch {n}")
    assert None not in slots, slots  # every batch came from a kept worker buffer
    assert len(set(slots)) < len(slots), slots  # and buffers were filled again


# -- host syncs -----------------------------------------------------------------------------


def count_syncs(fn) -> int:
    """Calls that synchronise the host with the device while `fn` runs (CUDA's sync debug
    mode warns once per call)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing CUDA operation" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "precision, pruned", [("no", False), ("bf16", False), ("fp16", False), ("no", True)]
)
def test_a_step_synchronises_the_host_only_where_step_py_says(device, precision, pruned):
    """backends/ddp.py: `bool(torch.isfinite(norm))` in NetworkUpdate.step is "the one device sync
    of the update", so 2 per GANStep call (D's and G's update); in fp16 each GradScaler.step
    may add one (`found_inf.item()` with a foreach optimizer; none with a fused one).
    Pruning masks and clipping must add none. More is a regression."""
    extra = ["train.max_grad_norm=1.0"] if pruned else []
    step = make_step(device, precision, *extra)
    if pruned:
        masks = Masks(prunable_weights(step.G))
        keep, _ = masks.select(alive_after_round=alive_after(masks.total(), rate=0.2, rounds=1))
        masks.set(keep)
        masks.zero_weights()
        step.update_g.masks = masks
    micro = [[batch(device, seed=n)] for n in range(5)]
    for warm in micro[:2]:  # first calls allocate optimizer state, pick kernels
        step(warm)
    if device.type != "cuda":
        pytest.skip("sync debug mode needs CUDA (dry run on the CPU)")
    torch.cuda.synchronize()
    assert count_syncs(lambda: torch.ones(2, device=device).sum().item()) >= 1  # the counter

    def three_steps():
        for m in micro[2:]:
            step(m)

    syncs = count_syncs(three_steps)
    limit = 3 * (2 + (2 if precision == "fp16" else 0))
    assert syncs <= limit, f"{syncs} host syncs in 3 steps; backends/ddp.py says at most {limit}"


# -- collectives in a real process group ----------------------------------------------------


def launch(logs: Path, *args: str, threads: int = 2) -> tuple[subprocess.Popen, Path]:
    """`torchrun --standalone --nproc_per_node 1 ARGS` from the checkout (a free port of its
    own, so several run at once), on the device (NCCL) or, in a dry run, the CPU (gloo).
    Output goes to files `logs`.{out,err}: pipes could fill while another run is awaited."""
    env = {
        **os.environ,
        # the checkout first, then whatever the suite put there (a wheelhouse's packages)
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(threads),
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    }
    for name in ("ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_DEEPSPEED"):
        env.pop(name, None)
    if ON_CPU:
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:
        proc = subprocess.Popen([*cmd, *args], cwd=ROOT, env=env, stdout=out, stderr=err)
    return proc, logs


def end_tree(proc: subprocess.Popen) -> None:
    """Kill a launched torchrun and its workers (which run in sessions of their own)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.kill()
    proc.wait()
    psutil.wait_procs(children, timeout=10)


def finish(procs: dict, timeout: float = 300 if ON_CPU else 100) -> dict:
    """Wait for every launched process, all of them within `timeout` seconds (a hung NCCL
    call must not eat the GPU session's time); name -> (returncode, stdout, stderr)."""
    deadline = time.monotonic() + timeout
    done = {}
    for name, (proc, logs) in procs.items():
        note = ""
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            end_tree(proc)
            note = f"\n[killed: not done after {timeout} s]"
        out, err = Path(f"{logs}.out").read_text(), Path(f"{logs}.err").read_text()
        done[name] = (proc.returncode, out, err + note)
    return done


def ok(result: tuple) -> str:
    """The stdout of a finished process, after asserting it succeeded."""
    code, out, err = result
    assert code == 0, f"exit {code}\n{out[-2000:]}\n{err[-5000:]}"
    return out


STEPS = 4
RUNS = {
    # name: (backend settings, precision)
    "ddp": ({}, "no"),
    "zero2": (
        {"train.backend": "deepspeed", "deepspeed.config": "configs/deepspeed/zero2.json"},
        "bf16",
    ),
    "zero3": (
        {"train.backend": "deepspeed", "deepspeed.config": "configs/deepspeed/zero3.json"},
        "bf16",
    ),
}


def run_args(root: Path, shards: Path, name: str) -> list[str]:
    backend, precision = RUNS[name]
    settings = {
        "run.name": name,
        "train.max_steps": STEPS,
        "train.ckpt_every": 2,
        "train.eval_images": 0,
        "train.mixed_precision": precision,
        "train.deterministic": "true",
        "prune.at_steps": "[1,3]",
        "prune.discriminator": "true",
        **backend,
    }
    return tiny_overrides(root, shards, **settings)


def has_deepspeed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tiny_shards):
    """All subprocesses, started together: the collectives script and the straight runs
    (DDP fp32, ZeRO-2 and ZeRO-3 bf16: pruned at steps 1 and 3, checkpoints at 2 and 4);
    then each run stopped after step 2 (its step-4 checkpoint removed) and resumed."""
    from tests.helpers import copy_stopped_at

    root = tmp_path_factory.mktemp("gpu-runs")
    names = [n for n in RUNS if n == "ddp" or has_deepspeed()]
    script = "scripts/train.py"
    first = {n: launch(root / n, script, *run_args(root, tiny_shards, n)) for n in names}
    first["collectives"] = launch(
        root / "collectives", "tests/gpu_collectives.py", BACKEND, str(root / "coll.json")
    )
    results = finish(first)
    again = {}
    for n in names:
        if results[n][0] == 0:
            copy_stopped_at(root / "runs" / n, root / "runs" / f"{n}-resumed", drop_steps=[STEPS])
            args = run_args(root, tiny_shards, n) + [f"run.name={n}-resumed"]
            again[f"{n}-resumed"] = launch(root / f"{n}-resumed", script, "--resume", *args)
    results.update(finish(again))
    return root, results


def test_pruning_rounds_and_mask_fingerprints_in_a_real_process_group(launched):
    root, results = launched
    ok(results["collectives"])
    report = json.loads((root / "coll.json").read_text())
    assert report["backend"] == BACKEND and report["world"] == 1
    device = "cpu" if ON_CPU else "cuda"
    for r, row in enumerate(report["rounds"], start=1):
        assert row["target"] == round(report["total"] * 0.8**r)
        assert row["alive"] == row["target"], row  # the pruned fraction is exact
        # The distributed selection on the device = a plain sort = the selection on the CPU.
        assert row["fingerprint"] == row["alone"] == row["cpu"], row
        assert row["threshold"] == row["cpu_threshold"]
        assert row["pruned_max"] <= row["threshold"] <= row["kept_min"], row
        assert row["zeros_at_pruned"] and row["mask_devices"] == row["weight_devices"] == [device]
    assert report["masks_agree"] is None and report["cpu_masks_agree"] is None
    assert report["masks_differ"] == (
        "UserError: pruning masks differ between ranks in the check (G on rank(s) [1]); "
        "the run stops: resume from the last checkpoint"
    )
    assert report["all_reduce"] == [1, 1, 1]


def test_replica_check_in_a_real_process_group(launched):
    root, results = launched
    ok(results["collectives"])
    report = json.loads((root / "coll.json").read_text())
    assert report["checksum_device"] == ("cpu" if ON_CPU else "cuda")
    for name, (on_device, on_cpu) in report["checksums"].items():
        assert on_device == on_cpu, name  # integer sums: the same on any device
    assert report["replicas_agree"] is None
    assert report["replicas_differ"].startswith(
        "ReplicaMismatch: ranks diverged at step 7: parameters differ from rank 0's "
        "(G on rank(s) [1])"
    ), report["replicas_differ"]


def losses_of(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    return [r["loss/G/l1"] for r in rows if "loss/G/l1" in r]


def assert_pruned(masks: dict, weights: dict, rounds: int) -> None:
    """Exactly round(N * 0.8**rounds) of each network's N prunable weights alive; every
    pruned weight +0.0."""
    for net, keep in masks.items():
        total = sum(m.numel() for m in keep.values())
        assert sum(int(m.sum()) for m in keep.values()) == round(total * 0.8**rounds), net
        for name, mask in keep.items():
            pruned = weights[net][name][~mask].float()
            assert bool((pruned.view(torch.int32) == 0).all()), (net, name)


def test_ddp_backend_in_fp32_resumes_bit_for_bit_with_deterministic_kernels(launched):
    from distcolor.checkpoint import checkpoint_path, load_checkpoint
    from tests.helpers import TRAINING_STATE, assert_bitwise_equal

    root, results = launched
    ok(results["ddp"])
    resumed_out = ok(results["ddp-resumed"])
    assert "step-00000002 (step 2)" in resumed_out
    straight, resumed = root / "runs/ddp", root / "runs/ddp-resumed"
    a = load_checkpoint(checkpoint_path(straight / "checkpoints", STEPS))
    b = load_checkpoint(checkpoint_path(resumed / "checkpoints", STEPS))
    assert a["prune"]["round"] == 2
    assert_pruned(a["prune"]["masks"], {"G": a["G"], "D": a["D"]}, rounds=2)
    losses = losses_of(straight)
    assert len(losses) == STEPS and all(np.isfinite(losses))
    assert losses_of(resumed) == losses
    for key in (*TRAINING_STATE, "prune", "rng", "loader"):
        assert_bitwise_equal(a[key], b[key], key)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_in_bf16_trains_saves_and_resumes_bit_for_bit(launched, stage):
    if not has_deepspeed():
        pytest.skip("deepspeed is not installed")
    from distcolor.checkpoint import checkpoint_path, load_checkpoint
    from distcolor.deepspeed_checkpoint import consolidated_state
    from tests.helpers import assert_bitwise_equal
    from tests.test_deepspeed import shard_tensors

    root, results = launched
    name = f"zero{stage}"
    ok(results[name])
    assert "step-00000002 (step 2)" in ok(results[f"{name}-resumed"])
    straight, resumed = root / "runs" / name, root / "runs" / f"{name}-resumed"
    a = checkpoint_path(straight / "checkpoints", STEPS)
    b = checkpoint_path(resumed / "checkpoints", STEPS)
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["backend"] == "deepspeed" and "G" not in sa  # the weights are in the shards
    weights = {net: consolidated_state(a, net) for net in ("G", "D")}
    assert sa["prune"]["round"] == 2
    assert_pruned(sa["prune"]["masks"], weights, rounds=2)
    losses = losses_of(straight)
    assert len(losses) == STEPS and all(np.isfinite(losses))
    assert losses_of(resumed) == losses
    for net in ("G", "D"):
        assert_bitwise_equal(weights[net], consolidated_state(b, net), net)
        shards = sorted(p.name for p in (a / net / "engine").glob("*optim_states.pt"))
        assert len(shards) == 1, shards  # bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt
        for shard in shards:
            ta = shard_tensors(a / net / "engine" / shard)
            tb = shard_tensors(b / net / "engine" / shard)
            assert ta and ta.keys() == tb.keys()
            assert_bitwise_equal(ta, tb, f"{net} {shard}")  # fp32 masters and Adam moments
    for key in ("G_ema", "prune", "loader", "rng"):
        assert_bitwise_equal(sa[key], sb[key], key)


# -- the trainer in this process ------------------------------------------------------------


def test_trainer_in_bf16_and_fp16_on_the_device_saves_a_scaler_per_network(
    device, tmp_path, tiny_shards
):
    from distcolor.checkpoint import latest_checkpoint, load_checkpoint
    from distcolor.train.loop import train

    for precision in ("bf16", "fp16"):
        extra = {
            "run.name": precision,
            "train.mixed_precision": precision,
            "train.eval_images": 0,
            "train.max_steps": 2,
        }
        cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra))
        train(cfg)
        reset_accelerate()
        rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in rows if "loss/G/l1" in r][-1]
        assert all(np.isfinite(last[k]) for k in ("loss/G/l1", "loss/D/total", "loss/G/adv"))
        state = load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))
        scalers = [state["steps"][f"update_{n}"]["scaler"] for n in ("G", "D")]
        if precision == "fp16":
            assert all(s["scale"] > 0 for s in scalers) and "amp/loss_scale_D" in last
        else:
            assert scalers == [None, None] and "amp/loss_scale_G" not in last


def test_ema_and_evaluation_run_on_the_device(device, tmp_path, tiny_shards, monkeypatch):
    from distcolor.checkpoint import latest_checkpoint, load_checkpoint
    from distcolor.data.catalog import read_manifest, shard_list
    from distcolor.data.loader import build_eval_loader
    from distcolor.evaluate import heldout as evaluation_module
    from distcolor.train import setup as setup_module
    from distcolor.train.ema import GeneratorEMA
    from distcolor.train.loop import train

    made, evaluated = [], []

    class RecordedEMA(GeneratorEMA):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    real_evaluate = evaluation_module.evaluate

    def recorded_evaluate(generator, *args, **kwargs):
        evaluated.append((generator, {p.device.type for p in generator.parameters()}))
        return real_evaluate(generator, *args, **kwargs)

    monkeypatch.setattr(setup_module, "GeneratorEMA", RecordedEMA)
    monkeypatch.setattr(evaluation_module, "evaluate", recorded_evaluate)
    extra = {
        "train.ema_half_life": 100,
        "train.ema_rampup": "null",
        "train.eval_every": 2,
        "train.max_steps": 3,
    }
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra))
    result = train(cfg)
    (ema,) = made
    assert {p.device.type for p in ema.module.parameters()} == {device.type}, "EMA off the device"
    assert len(evaluated) == 2  # at step 2 (train.eval_every) and at the end
    assert all(g is ema.module and kinds == {device.type} for g, kinds in evaluated)
    assert json.loads((cfg.run_dir / "eval.json").read_text()) == result
    assert result["images"] == 12 and np.isfinite(result["l1_model"])
    # The device's report of the saved average = the CPU's, to float (TF32) noise.
    state = load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))
    assert all(torch.isfinite(t).all() for t in state["G_ema"].values() if t.is_floating_point())
    g, _ = build_models(cfg.model, seed=0)
    g.load_state_dict(state["G_ema"])
    shards = shard_list(tiny_shards, read_manifest(tiny_shards), "test")
    loader = build_eval_loader(
        shards, image_size=32, batch_size=4, num_workers=0, rank=0, world_size=1, limit=16
    )
    report = real_evaluate(
        g, loader, sources=["synthetic"], mean_ab=torch.zeros(2), device=torch.device("cpu")
    )
    assert result["l1_model"] == pytest.approx(report["model"]["l1"], abs=2e-3)


# -- colorize -------------------------------------------------------------------------------


def test_colorize_on_the_device_equals_the_cpu(device, monkeypatch):
    from distcolor.data.synthetic import scene_image
    from distcolor.infer import colorizer as inference
    from distcolor.infer.colorizer import Colorizer

    cfg = load_config(None, SMALL)
    generator, _ = build_models(cfg.model, seed=3)
    on_cpu = Colorizer(copy.deepcopy(generator), render_size=32, device="cpu", saturation=1.3)
    on_device = Colorizer(copy.deepcopy(generator), render_size=32, device=device, saturation=1.3)
    assert {p.device.type for p in on_device.generator.parameters()} == {device.type}
    noise = np.random.default_rng(0).integers(0, 256, size=(45, 70), dtype=np.uint8)
    images = [scene_image(0, size=96, seed=1), Image.fromarray(noise)]
    expected = [np.asarray(on_cpu(image)) for image in images]  # whole images
    monkeypatch.setattr(inference, "STRIPE_PIXELS", 700)  # the device composes in stripes
    for image, want in zip(images, expected, strict=True):
        got = np.asarray(on_device(image))
        assert got.shape == want.shape and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - want.astype(int))
        # Identical up to rounding where the network's float (TF32) noise crosses a level.
        assert diff.max() <= 3 and diff.mean() < 0.1, (diff.max(), diff.mean())
