"""distcolor/infer/ (export, exported, compact) and scripts/export.py: dense and compact
generators from checkpoints written here by hand (no training), bit-exact round trips,
refusals."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from distcolor.checkpoint import MARKER, STATE, load_checkpoint, save_checkpoint
from distcolor.config import load_config
from distcolor.errors import UserError
from distcolor.infer.compact import compact_tensors, expand_tensors, pack_bits, unpack_bits
from distcolor.infer.export import export_generator
from distcolor.infer.exported import COMPACT, CONFIG, DENSE, FORMAT, load_compact, load_exported
from distcolor.models.build import build_generator

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.generator.width=8", "model.generator.depth=5"]
SPARSITY = 1 - 0.8**5  # five lottery rounds at 20%: 67.232%
RESULT_KEYS = {
    "dense_bytes",
    "compact_bytes",
    "compact_ratio",
    "sparsity",
    "overall_sparsity",
    "weights",
    "step",
    "files",
}


def bits(t: torch.Tensor) -> torch.Tensor:
    flat = t.reshape(-1)
    return flat.view(
        {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    )


def assert_same_bits(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(bits(a[name]), bits(b[name])), name


def conv_names(generator: nn.Module) -> list[str]:
    return [
        f"{name}.weight"
        for name, m in generator.named_modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]


def model_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors as stored (no decoding) and its metadata."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def prune_globally(states: list[dict], names: list[str], fraction: float) -> dict:
    """Zero the `fraction` smallest-magnitude conv weights of states[0] over all layers
    together (as a lottery round does, with +0.0), the same positions in the others;
    returns the keep-masks."""
    magnitudes = torch.cat([states[0][n].abs().reshape(-1) for n in names])
    threshold = magnitudes.kthvalue(round(fraction * magnitudes.numel())).values
    keep = {n: states[0][n].abs() > threshold for n in names}
    for state in states:
        for n in names:
            state[n].masked_fill_(~keep[n], 0.0)
    return keep


def make_state(*, step: int, seed: int = 0, ema: bool = True, fraction: float = SPARSITY) -> dict:
    """A training checkpoint's state as the trainer lays it out: G, G_ema (a different
    copy), config, step and the pruning state (rounds and keep-masks of G)."""
    cfg = load_config(None, TINY)
    torch.manual_seed(seed)
    generator = build_generator(cfg.model)
    with torch.no_grad():
        for name, buf in generator.named_buffers():  # statistics a trained model would have
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                buf.fill_(step)
    live = {k: v.clone() for k, v in generator.state_dict().items()}
    average = {k: v + 0.01 if v.is_floating_point() else v.clone() for k, v in live.items()}
    keep = prune_globally([live, average], conv_names(generator), fraction) if fraction else {}
    return {
        "G": live,
        "G_ema": average if ema else None,
        "D": {},
        "config": cfg.model_dump(mode="json"),
        "step": step,
        "prune": {"round": 5, "masks": {"G": keep, "D": {}}} if fraction else None,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """runs/tiny with complete checkpoints at steps 2 and 4 and a partial one at step 6."""
    run = tmp_path_factory.mktemp("export") / "runs" / "tiny"
    for step in (2, 4):
        save_checkpoint(
            make_state(step=step, seed=step), run / "checkpoints", step=step, keep_last=3
        )
    partial = shutil.copytree(
        run / "checkpoints" / "step-00000004", run / "checkpoints" / "step-00000006"
    )
    (partial / MARKER).unlink()
    return run


def newest(run: Path) -> Path:
    return run / "checkpoints" / "step-00000004"


def test_bitmap_order_is_numpys_little_packbits():
    present = torch.rand(37) < 0.4  # not a multiple of 8: a partial last byte
    packed = pack_bits(present)
    assert packed.dtype == torch.uint8 and packed.numel() == 5
    assert packed.tolist() == np.packbits(present.numpy(), bitorder="little").tolist()
    assert torch.equal(unpack_bits(packed, 37), present)


def test_compact_round_trip_is_bit_exact_for_every_dtype_and_signed_zero(tmp_path):
    torch.manual_seed(0)
    sparse = torch.randn(64, 32)
    sparse[torch.rand(64, 32) < 0.8] = 0.0
    sparse[0, :5] = -0.0  # a signed zero is a value, kept as such
    sparse[1, 0], sparse[1, 1] = float("inf"), float("nan")
    state = {
        "w32": sparse,
        "w16": sparse.half(),
        "wbf": sparse.bfloat16(),
        "w64": sparse.double()[:3, :7].contiguous(),  # 21 entries: a partial last byte
        "nhwc": sparse.reshape(8, 4, 8, 8).to(memory_format=torch.channels_last),
        "dense": torch.randn(10),
        "count": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0),
    }
    tensors, encoded = compact_tensors(state)
    assert encoded.keys() == {"w32", "w16", "wbf", "w64", "nhwc"}
    assert "w32" not in tensors and tensors["w32.__bitmap"].dtype == torch.uint8
    assert tensors["w32.__values"].numel() == int(torch.count_nonzero(bits(sparse)))
    assert tensors["wbf.__values"].dtype == torch.bfloat16
    assert_same_bits(expand_tensors(tensors, encoded), state)
    # And through a file, as `load_compact` reads it.
    meta = {"format": FORMAT, "encoded": json.dumps(encoded)}
    save_file(tensors, str(tmp_path / "c.safetensors"), metadata=meta)
    loaded, found = load_compact(tmp_path / "c.safetensors")
    assert_same_bits(loaded, state)
    assert found["format"] == FORMAT


def test_export_holds_the_checkpoint_weights_bit_for_bit(run, tmp_path):
    result = export_generator(run, tmp_path / "out")  # a run folder: its newest complete one
    state = load_checkpoint(newest(run))
    assert RESULT_KEYS <= result.keys()
    assert result["step"] == 4 and result["weights"] == "ema" and "note" not in result
    assert result["checkpoint"] == str(newest(run)) and result["pruning_rounds"] == 5
    assert result["files"] == [str(tmp_path / "out" / n) for n in (DENSE, COMPACT, CONFIG)]
    assert result["dense_bytes"] == (tmp_path / "out" / DENSE).stat().st_size
    assert result["compact_bytes"] == (tmp_path / "out" / COMPACT).stat().st_size
    assert result["compact_ratio"] == result["compact_bytes"] / result["dense_bytes"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([DENSE, COMPACT, CONFIG])

    dense, meta = load_compact(tmp_path / "out" / DENSE)
    compact, compact_meta = load_compact(tmp_path / "out" / COMPACT)
    assert_same_bits(dense, state["G_ema"])
    assert_same_bits(compact, state["G_ema"])  # num_batches_tracked (int64) included
    assert meta["step"] == "4" and meta["weights"] == "ema" and meta["format"] == FORMAT
    assert json.loads(meta["model"]) == state["config"]["model"]
    assert len(json.loads(compact_meta["encoded"])) == result["encoded_tensors"] > 0

    # Sparsity figures, counted here independently.
    model = build_generator(load_config(None, TINY).model)
    convs = [state["G_ema"][n] for n in conv_names(model)]
    params = [state["G_ema"][n] for n, _ in model.named_parameters()]
    assert result["sparsity"] == sum(int((t == 0).sum()) for t in convs) / sum(
        t.numel() for t in convs
    )
    assert result["sparsity"] == pytest.approx(SPARSITY, abs=1e-4)
    overall = sum(int((t == 0).sum()) for t in params) / sum(t.numel() for t in params)
    assert result["overall_sparsity"] == overall and result["parameters"] == model_params(model)

    info = json.loads((tmp_path / "out" / CONFIG).read_text())
    assert info["model"] == state["config"]["model"] and info["step"] == 4
    assert info["weights"] == "ema" and info["pruning_rounds"] == 5
    assert info["sparsity"] == result["sparsity"] and info["parameters"] == result["parameters"]


def test_loaded_export_computes_what_the_checkpoint_does(run, tmp_path):
    export_generator(newest(run), tmp_path / "out")
    state = load_checkpoint(newest(run))
    reference = build_generator(load_config(None, TINY).model)
    reference.load_state_dict(state["G_ema"])
    x = torch.rand(2, 1, 32, 32) * 2 - 1  # (B, 1, H, W) lightness
    with torch.no_grad():
        expected = reference.eval()(x)
        for path in (tmp_path / "out", tmp_path / "out" / DENSE, tmp_path / "out" / COMPACT):
            rng = torch.get_rng_state()
            model = load_exported(path)
            assert torch.equal(torch.get_rng_state(), rng)  # building it drew no randomness
            assert not model.training
            assert torch.equal(model(x), expected), path


def test_a_pruned_generator_is_under_045_of_dense_and_a_dense_one_is_not_encoded(tmp_path):
    for fraction, name in ((SPARSITY, "pruned"), (0.0, "dense")):
        state = make_state(step=1, fraction=fraction)
        save_checkpoint(state, tmp_path / name, step=1, keep_last=1)
        result = export_generator(tmp_path / name / "step-00000001", tmp_path / f"out-{name}")
        if fraction:
            assert result["compact_bytes"] <= 0.45 * result["dense_bytes"], result
        else:
            assert result["encoded_tensors"] == 0 and result["pruning_rounds"] is None
            assert result["sparsity"] == 0.0 and result["compact_ratio"] < 1.001


def test_live_weights_and_the_fallback_when_the_run_kept_no_ema(run, tmp_path):
    result = export_generator(newest(run), tmp_path / "live", weights="live")
    assert result["weights"] == "live" and "note" not in result
    assert_same_bits(load_compact(tmp_path / "live" / DENSE)[0], load_checkpoint(newest(run))["G"])

    state = make_state(step=3, ema=False)
    save_checkpoint(state, tmp_path / "no-ema", step=3, keep_last=1)
    result = export_generator(tmp_path / "no-ema" / "step-00000003" / STATE, tmp_path / "fallback")
    assert result["weights"] == "live" and "no EMA" in result["note"]
    dense, meta = load_compact(tmp_path / "fallback" / COMPACT)
    assert_same_bits(dense, state["G"])
    assert meta["weights"] == "live"

    with pytest.raises(UserError, match="--weights: 'best' is not one of ema, live"):
        export_generator(newest(run), tmp_path / "bad", weights="best")


def test_checkpoint_paths_resolve_or_are_refused(run, tmp_path):
    for path in (run, run / "checkpoints", newest(run), newest(run) / STATE):
        assert export_generator(path, tmp_path / "out", overwrite=True)["step"] == 4, path
    partial = run / "checkpoints" / "step-00000006"
    for path, message in (
        (partial, "is incomplete"),
        (partial / STATE, "is incomplete"),
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "is not a checkpoint folder"),
    ):
        with pytest.raises(UserError, match=message):
            export_generator(path, tmp_path / "x")


def test_weights_alive_at_pruned_positions_are_refused(run, tmp_path):
    state = load_checkpoint(newest(run))
    name, keep = next(iter(state["prune"]["masks"]["G"].items()))
    pruned = (~keep).view(-1).nonzero()[:2, 0]
    state["G_ema"][name].view(-1)[pruned[0]] = 0.5
    state["G"][name].view(-1)[pruned[1]] = -0.0  # zero, though not +0.0
    save_checkpoint(state, tmp_path / "ckpt", step=4, keep_last=1)
    with pytest.raises(UserError, match=f"{name} has 1 non-zero weights at pruned positions"):
        export_generator(tmp_path / "ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # The live weights were enforced: they export, the -0.0 counted and kept as it is.
    result = export_generator(tmp_path / "ckpt", tmp_path / "out", weights="live")
    assert result["negative_zeros"] == 1
    assert result["sparsity"] == pytest.approx(SPARSITY, abs=1e-4)
    assert_same_bits(load_compact(tmp_path / "out" / COMPACT)[0], state["G"])

    state["prune"]["masks"]["G"][name] = keep[:1]  # masks of another network
    save_checkpoint(state, tmp_path / "other", step=4, keep_last=1)
    with pytest.raises(UserError, match=f"pruning mask {name} fits no generator weight"):
        export_generator(tmp_path / "other", tmp_path / "out2", weights="live")

    state["prune"] = {"round": 2}  # an older layout without masks: nothing to check
    save_checkpoint(state, tmp_path / "nomasks", step=4, keep_last=1)
    assert export_generator(tmp_path / "nomasks", tmp_path / "out3")["pruning_rounds"] == 2


def test_existing_outputs_are_kept_without_overwrite(run, tmp_path):
    out = tmp_path / "out"
    export_generator(newest(run), out, weights="live")
    (out / "notes.txt").write_text("mine")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    with pytest.raises(UserError, match=rf"{DENSE} already exists; pass --overwrite"):
        export_generator(newest(run), out)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before

    (out / DENSE).unlink()
    (out / COMPACT).unlink()
    with pytest.raises(UserError, match=rf"{CONFIG} already exists"):
        export_generator(newest(run), out)

    result = export_generator(newest(run), out, overwrite=True)
    assert result["weights"] == "ema" and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / CONFIG).read_text())["weights"] == "ema"
    assert sorted(p.name for p in out.iterdir()) == sorted([DENSE, COMPACT, CONFIG, "notes.txt"])


def test_files_that_are_not_exports_are_one_line_errors(run, tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    save_file({"w": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    export_generator(newest(run), tmp_path / "out")
    tensors, meta = read_raw(tmp_path / "out" / COMPACT)
    name = next(k for k in tensors if k.endswith(".__bitmap"))
    tensors[name] = tensors[name][:-1]  # a truncated bitmap
    save_file(tensors, str(tmp_path / "damaged.safetensors"), metadata=meta)
    for path, message in (
        (tmp_path / "junk.safetensors", "not a readable safetensors file"),
        (tmp_path / "other.safetensors", f"not a {FORMAT} export"),
        (tmp_path / "damaged.safetensors", "damaged compact encoding"),
        (tmp_path / "missing.safetensors", "does not exist"),
        (tmp_path, f"holds neither {DENSE} nor {COMPACT}"),
    ):
        with pytest.raises(UserError, match=message) as err:
            load_exported(path)
        assert "\n" not in str(err.value)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "export.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_prints_a_summary_then_json_last(run, tmp_path):
    proc = run_cli("--checkpoint", str(run), "--out", str(tmp_path / "out"), "--weights", "live")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert RESULT_KEYS <= result.keys() and result["weights"] == "live" and result["step"] == 4
    assert len(lines) > 1 and "conv weights 67.2% zero" in proc.stdout


@pytest.mark.parametrize("mistake", ["missing", "partial"])
def test_cli_mistakes_exit_2_with_one_line(run, tmp_path, mistake):
    path = {"missing": tmp_path / "nope", "partial": run / "checkpoints" / "step-00000006"}
    proc = run_cli("--checkpoint", str(path[mistake]), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert ("does not exist" if mistake == "missing" else "incomplete") in proc.stderr


def test_cli_refuses_to_overwrite(run, tmp_path, monkeypatch, capsys):
    """In-process (no torch start-up): the same entry point, an existing output."""
    out = tmp_path / "out"
    export_generator(newest(run), out)
    before = (out / DENSE).read_bytes()
    argv = ["export.py", "--checkpoint", str(run), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "scripts" / "export.py"), run_name="__main__")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and len(err.splitlines()) == 1
    assert (out / DENSE).read_bytes() == before
