import pytest
import torch

from distcolor.checkpoint import (
    MARKER,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from distcolor.errors import UserError


def save(directory, step, **keep):
    keep = {"keep_last": 2, **keep}
    return save_checkpoint(
        {"step": step, "w": torch.full((2,), float(step))}, directory, step=step, **keep
    )


def test_keep_last_and_latest(tmp_path):
    assert latest_checkpoint(tmp_path / "none") is None
    for step in (5, 10, 100, 20):
        save(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020", "step-00000100"]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step-00000100" and (latest / MARKER).is_file()
    state = load_checkpoint(latest)
    assert state["step"] == 100 and torch.equal(state["w"], torch.full((2,), 100.0))


def test_keep_every_keeps_milestones_beyond_the_last_k(tmp_path):
    for step in range(10, 110, 10):
        save(tmp_path, step, keep_last=2, keep_every=30)
    steps = [int(p.name[5:]) for p in list_checkpoints(tmp_path)]
    assert steps == [30, 60, 90, 100]


def test_a_folder_without_the_marker_is_never_listed_or_loaded(tmp_path):
    save(tmp_path, 10)
    # A crash between writing the state and the marker: the data is there, the marker not.
    partial = checkpoint_path(tmp_path, 20)
    partial.mkdir()
    torch.save({"step": 20}, partial / "state.pt")
    (tmp_path / ".step-00000030.tmp").mkdir()  # a crash mid-write
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010"]
    with pytest.raises(UserError, match="incomplete"):
        load_checkpoint(partial)
    save(tmp_path, 40)
    assert not (tmp_path / ".step-00000030.tmp").exists()  # stale temp folders are cleared
    assert partial.is_dir()  # but a folder we did not write is left alone


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save(tmp_path, 10)
    save_checkpoint({"step": 10, "w": torch.zeros(1)}, tmp_path, step=10, keep_last=2)
    assert torch.equal(load_checkpoint(checkpoint_path(tmp_path, 10))["w"], torch.zeros(1))


def test_checkpoints_never_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = checkpoint_path(tmp_path, 1)
    folder.mkdir()
    torch.save({"x": Evil()}, folder / "state.pt")
    (folder / MARKER).write_text("{}")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(latest_checkpoint(tmp_path))
