"""Shared fixtures: tiny synthetic shard folders and a tiny, fast training config."""

from __future__ import annotations

from pathlib import Path

import pytest

from distcolor.data.shard_build import build_shards


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gpu: needs a CUDA device (tests/test_gpu.py; skipped without one, "
        "DISTCOLOR_GPU_TESTS_ON_CPU=1 dry-runs them on the CPU)",
    )
    config.addinivalue_line(
        "markers",
        "faults: slow fault-injection runs (kills, full disks, lost ranks), left out of the "
        "default run; `python -m pytest -m faults` runs them",
    )
    config.addinivalue_line(
        "markers",
        "slow: end-to-end runs of whole benchmark suites (a minute or more), left out of the "
        "default run to keep it under 10 minutes; `python -m pytest -m slow` runs them",
    )


TINY_SHARDS = dict(synthetic=48, synthetic_size=40, size=40, shard_size=6, test_fraction=0.25)


def tiny_overrides(tmp_path: Path, shards: Path, **extra: object) -> list[str]:
    """Dotted overrides for a seconds-long CPU run on `shards`."""
    base = {
        "run.out_dir": str(tmp_path / "runs"),
        "run.name": "tiny",
        "data.shards": str(shards),
        "data.synthetic": "null",  # prebuilt shards; extra data.synthetic.* keys re-enable it
        "data.image_size": 32,
        "data.batch_size": 4,
        "data.num_workers": 0,
        "data.shuffle_buffer": 8,
        "model.generator.width": 8,
        "model.generator.depth": 5,
        "model.discriminator.width": 8,
        "train.max_steps": 3,
        "train.log_every": 1,
        "train.sample_every": 2,
        "train.ckpt_every": 2,
        "train.eval_images": 16,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 synthetic scenes at 40 px in shards of 6 (read-only: copy before changing)."""
    out = tmp_path_factory.mktemp("shards") / "tiny"
    build_shards(out, **TINY_SHARDS)
    return out


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; in-process runs need a clean slate."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    reset_accelerate()
