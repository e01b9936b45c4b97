"""scripts/export.py: dense and compact generators from checkpoints, bit-exact round trips."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distcolor.checkpoint import load_checkpoint, save_checkpoint
from distcolor.config import load_config
from distcolor.errors import UserError
from distcolor.export import (
    COMPACT,
    DENSE,
    compact_tensors,
    expand_tensors,
    export_generator,
    load_compact,
    load_exported,
)
from distcolor.models import build_models
from distcolor.trainer import train
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(
        {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    )


def assert_same_bits(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(bits(a[name]), bits(b[name])), name


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, tiny_shards) -> Path:
    """A tiny run pruned 5 times at 20% (67.2% sparse), with an EMA."""
    tmp = tmp_path_factory.mktemp("export")
    extra = {
        "prune.at_steps": "[1, 2, 3, 4, 5]",
        "train.max_steps": 6,
        "train.ema_half_life": 50,
        "train.eval_images": 0,
        "model.generator.width": 16,  # big enough that headers do not dominate the sizes
    }
    cfg = load_config(None, tiny_overrides(tmp, tiny_shards, **extra))
    train(cfg)
    return cfg.run_dir


def test_compact_round_trip_is_bit_exact_for_every_dtype_and_signed_zeros():
    torch.manual_seed(0)
    sparse = torch.randn(64, 32)
    sparse[torch.rand(64, 32) < 0.8] = 0.0
    sparse[0, :5] = -0.0  # a signed zero is a value, kept as such
    state = {
        "w32": sparse,
        "w16": sparse.half(),
        "wbf": sparse.bfloat16(),
        "w64": sparse.double()[:3, :7],  # odd count: a partial last bitmap byte
        "dense": torch.randn(10),
        "count": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0),
    }
    tensors, encoded = compact_tensors(state)
    assert {"w32", "w16", "wbf", "w64"} <= encoded.keys() and "dense" not in encoded
    assert "w32" not in tensors and tensors["w32.__bitmap"].dtype == torch.uint8
    assert_same_bits(expand_tensors(tensors, encoded), state)


def test_export_of_a_pruned_run_is_small_exact_and_loads(pruned_run, tmp_path):
    result = export_generator(pruned_run, tmp_path / "out")
    state = load_checkpoint(sorted((pruned_run / "checkpoints").glob("step-*"))[-1])
    assert result["step"] == 6 and result["weights"] == "ema" and result["pruning_rounds"] == 5
    assert result["sparsity"] == pytest.approx(1 - 0.8**5, abs=1e-4)
    assert result["compact_bytes"] <= 0.45 * result["dense_bytes"]
    assert result["compact_ratio"] == round(result["compact_bytes"] / result["dense_bytes"], 4)
    dense, meta = load_compact(tmp_path / "out" / DENSE)
    compact, _ = load_compact(tmp_path / "out" / COMPACT)
    assert meta["weights"] == "ema" and meta["step"] == "6"
    assert_same_bits(dense, state["G_ema"])
    assert_same_bits(compact, state["G_ema"])
    # The exported model computes what the checkpoint's does.
    model = load_exported(tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model"]["generator"]["width"] == 16 and cfg["step"] == 6
    generator, _ = build_models(
        load_config(None, ["model.generator.width=16", "model.generator.depth=5"]).model, seed=0
    )
    generator.load_state_dict(state["G_ema"])
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), generator.eval()(x))
    assert torch.equal(load_exported(tmp_path / "out" / COMPACT)(x).detach(), model(x).detach())


def test_live_weights_and_a_checkpoint_folder(pruned_run, tmp_path):
    folder = sorted((pruned_run / "checkpoints").glob("step-*"))[0]
    result = export_generator(folder, tmp_path / "live", weights="live")
    assert result["weights"] == "live" and result["step"] == int(folder.name.split("-")[1])
    dense, _ = load_compact(tmp_path / "live" / DENSE)
    assert_same_bits(dense, load_checkpoint(folder)["G"])


def test_unenforced_masks_are_refused(pruned_run, tmp_path):
    state = load_checkpoint(sorted((pruned_run / "checkpoints").glob("step-*"))[-1])
    name, keep = next(iter(state["prune"]["masks"]["G"].items()))
    state["G_ema"][name].reshape(-1)[(~keep).reshape(-1).nonzero()[0]] = 0.5
    save_checkpoint(state, tmp_path / "ckpts", step=6, keep_last=1)
    with pytest.raises(UserError, match=f"{name} has non-zero weights at pruned positions"):
        export_generator(tmp_path / "ckpts" / "step-00000006", tmp_path / "out")


def run_export(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "scripts/export.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_prints_json_last_and_user_mistakes_are_one_line(pruned_run, tmp_path):
    out = tmp_path / "out"
    proc = run_export("--checkpoint", str(pruned_run), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"dense_bytes", "compact_bytes", "sparsity"} <= result.keys()
    before = (out / DENSE).read_bytes()

    proc = run_export("--checkpoint", str(pruned_run), "--out", str(out))
    assert proc.returncode == 2 and "already exists; pass --overwrite" in proc.stderr
    assert (out / DENSE).read_bytes() == before  # nothing written is lost
    assert (
        run_export("--checkpoint", str(pruned_run), "--out", str(out), "--overwrite").returncode
        == 0
    )

    partial = tmp_path / "partial"
    shutil.copytree(sorted((pruned_run / "checkpoints").glob("step-*"))[-1], partial)
    (partial / "COMPLETE").unlink()
    for path, message in (
        (tmp_path / "missing", "does not exist"),
        (partial, "is incomplete (no COMPLETE marker)"),
    ):
        proc = run_export("--checkpoint", str(path), "--out", str(tmp_path / "x"))
        assert proc.returncode == 2 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_file_that_is_not_an_export_is_a_clear_error(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_compact(tmp_path / "junk.safetensors")
