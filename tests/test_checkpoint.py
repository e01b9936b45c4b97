import pytest
import torch

from distcolor.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from distcolor.errors import UserError


def test_keep_last_and_latest(tmp_path):
    assert latest_checkpoint(tmp_path / "none") is None
    for step in (5, 10, 100, 20):
        save_checkpoint(
            {"step": step, "w": torch.full((2,), float(step))}, tmp_path, step=step, keep_last=2
        )
    (tmp_path / ".step-00000200.pt.tmp").write_bytes(b"half written")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020.pt", "step-00000100.pt"]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step-00000100.pt"
    state = load_checkpoint(latest)
    assert state["step"] == 100 and torch.equal(state["w"], torch.full((2,), 100.0))


def test_checkpoints_never_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "step-00000001.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(path)
