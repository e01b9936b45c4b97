"""The held-out report: metrics against both baselines, per source, the figures, the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from distcolor.color import lab_inputs
from distcolor.config import load_config
from distcolor.data.catalog import read_manifest, shard_list
from distcolor.data.loader import build_eval_loader
from distcolor.evaluate.heldout import METHODS, evaluate, mean_chroma
from distcolor.infer.export import export_generator
from distcolor.train.loop import train
from tests.conftest import tiny_overrides
from tests.helpers import run_script, scene_samples, write_sample_shards

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("psnr", "ssim", "ciede2000", "colorfulness", "ab_hist_js", "auc", "l1")


def two_source_shards(folder: Path) -> Path:
    """Train and test shards of two sources ('lakes', 'hills'), 40 px scenes."""
    scenes = scene_samples(40, size=40)
    write_sample_shards(
        folder, {"lakes": scenes[:12], "hills": scenes[12:24]}, shard_size=4, split="train"
    )
    train_manifest = json.loads((folder / "manifest.json").read_text())
    write_sample_shards(
        folder, {"lakes": scenes[24:30], "hills": scenes[30:40]}, shard_size=4, split="test"
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"] = train_manifest["splits"]["train"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step tiny run on two sources, evaluated every 2 steps."""
    root = tmp_path_factory.mktemp("evaluate")
    shards = two_source_shards(root / "shards")
    extra = {"train.max_steps": 4, "train.eval_every": 2, "train.ema_half_life": 100}
    result = train(load_config(None, tiny_overrides(root, shards, **extra)))
    return root / "runs" / "tiny", shards, result


def evaluate_cli(*args) -> subprocess.CompletedProcess:
    return run_script("scripts/evaluate.py", *args)


def test_cli_reports_every_metric_for_model_and_baselines_per_source(run, tmp_path):
    run_dir, shards, _ = run
    out = tmp_path / "report"
    proc = evaluate_cli("--checkpoint", run_dir, "--shards", shards, "--out", out, "--workers", 0)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((out / "metrics.json").read_text()) == report
    for method in METHODS:
        assert report[method]["images"] == 16
        for name in METRICS:
            assert isinstance(report[method][name], float), (method, name)
        per_source = report[method]["per_source"]
        assert sorted(per_source) == ["hills", "lakes"]
        assert per_source["hills"]["images"] == 10 and per_source["lakes"]["images"] == 6
        # Per-image means: the overall value is the image-weighted mean of the sources'.
        mixed = (10 * per_source["hills"]["ciede2000"] + 6 * per_source["lakes"]["ciede2000"]) / 16
        assert report[method]["ciede2000"] == pytest.approx(mixed, rel=1e-9)
    gray = report["baseline_gray"]
    assert gray["colorfulness"] < 0.5 and gray["colorfulness_original"] > 10
    protocol = report["protocol"]
    assert protocol["resolution"] == 32 and protocol["images"] == 16
    assert "crop" in protocol and "colour_space" in protocol
    grid = Image.open(out / "grid.png")
    assert grid.size == (8 * 32, 3 * 32)  # 8 columns, rows gray / output / original
    assert Image.open(out / "losses.png").size[0] > 600
    assert report["checkpoint"]["step"] == 4 and report["checkpoint"]["weights"] == "ema"


def test_the_trained_run_logged_the_same_metrics_every_eval_every_steps(run):
    run_dir, _, result = run
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for method in METHODS:
        for name in ("psnr", "ssim", "ciede2000", "colorfulness", "auc"):
            tag = f"eval/{method}/{name}"
            assert [r["step"] for r in rows if tag in r] == [2, 4], tag
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["report"]["model"]["ciede2000"] == result["report"]["model"]["ciede2000"]


def test_a_perfect_colorizer_beats_both_baselines(run):
    """A stand-in generator that returns each crop's true chroma: every score must say so."""
    _, shards, _ = run
    manifest = read_manifest(shards)
    test = shard_list(shards, manifest, "test")
    loader = build_eval_loader(
        test, image_size=32, batch_size=5, num_workers=0, rank=0, world_size=1
    )
    batches = list(loader)
    truths = iter([lab_inputs(b, torch.device("cpu"))[1] for b in batches])

    class Oracle(torch.nn.Module):
        def forward(self, lightness):
            return next(truths)

    mean_ab = mean_chroma(
        build_eval_loader(
            shard_list(shards, manifest, "train"),
            image_size=32,
            batch_size=8,
            num_workers=0,
            rank=0,
            world_size=1,
        ),
        torch.device("cpu"),
    )
    report = evaluate(
        Oracle(), batches, sources=["hills", "lakes"], mean_ab=mean_ab, device=torch.device("cpu")
    )
    model, gray, mean = (report[m] for m in METHODS)
    assert model["l1"] == 0.0
    for baseline in (gray, mean):
        assert model["ciede2000"] < baseline["ciede2000"] / 3
        assert model["psnr"] > baseline["psnr"] and model["ssim"] > baseline["ssim"]
        assert model["auc"] > baseline["auc"] and model["auc"] > 0.95
        assert model["ab_hist_js"] < baseline["ab_hist_js"]
    # Output lightness is the grayscale's, not the original's: near, not equal.
    assert model["colorfulness_ratio"] == pytest.approx(1.0, abs=0.15)
    assert model["ab_hist_js"] < 0.05
    assert mean_ab.norm() > 0.01  # the scenes are not gray on average


def test_an_export_is_evaluated_without_a_loss_plot(run, tmp_path):
    run_dir, shards, _ = run
    export_generator(run_dir, tmp_path / "export")
    out = tmp_path / "report"
    proc = evaluate_cli(
        "--checkpoint", tmp_path / "export", "--shards", shards, "--out", out, "--workers", 0,
        "--images", 6, "--grid", 0,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["model"]["images"] == 6 and report["protocol"]["resolution"] == 32
    assert "losses.png not drawn" in report["notes"][0]
    assert not (out / "losses.png").exists() and not (out / "grid.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shards", "nowhere"], "--shards: folder nowhere does not exist"),
        (["--image-size", "48"], "divisible by 2**depth = 32"),
        (["--images", "0"], "--images must be at least 1"),
    ],
)
def test_cli_mistakes_are_one_line(run, tmp_path, args, message):
    run_dir, shards, _ = run
    base = {"--checkpoint": run_dir, "--shards": shards, "--out": tmp_path / "r"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    proc = evaluate_cli(*[x for pair in base.items() for x in pair], "--workers", 0)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
