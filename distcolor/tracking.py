"""What a run shows and records, on rank 0 only: progress bar, TensorBoard, metrics.jsonl, PNGs.

Metric names are hierarchical (`loss/G/l1`, `loss/D/real`) so TensorBoard groups them.
On a terminal the progress is a live rich bar (step, elapsed, ETA, the loss and
throughput line); when stdout is not a terminal (a cluster job's log file) each logged
step is one plain line instead:
`step 120/500  D 0.228  G 0.395 + L1 0.0389  98 img/s  elapsed 0:00:21  ETA 0:01:10`.
The numbers behind histograms and colour-drift curves are distcolor/monitor.py's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import torch
from PIL import Image
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from distcolor.color import fit_chroma, lab_inputs, lab_to_srgb
from distcolor.errors import first_line
from distcolor.monitor import chroma_histograms, histogram


def sample_grid(lightness: torch.Tensor, chroma: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Rows gray input / generated colour / original, a column per image -> (3, 3H, B*W) in [0, 1].

    lightness (B, 1, H, W) and chroma (B, 2, H, W) are scaled Lab; rgb is uint8 (B, 3, H, W).
    """
    lightness, chroma = lightness.detach().float().cpu(), chroma.detach().float().cpu()
    gray = lab_to_srgb(lightness, torch.zeros_like(chroma))
    colour = lab_to_srgb(lightness, chroma)
    original = rgb.cpu().float() / 255.0
    rows = [torch.cat(list(images), dim=2) for images in (gray, colour, original)]  # (3, H, B*W)
    return torch.cat(rows, dim=1)


@torch.no_grad()
def draw_sample_grid(generator: torch.nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    """`sample_grid` of `generator` on a loader batch, its colour gamut-fitted as colorize
    and the evaluation report show it: the one way training samples and report figures
    are drawn. Pass an *unwrapped* generator: a DDP forward is a collective (a buffer
    broadcast), and only rank 0 draws samples."""
    was_training = generator.training
    generator.eval()
    lightness, _ = lab_inputs(batch, device)
    chroma = fit_chroma(lightness, generator(lightness))
    generator.train(was_training)
    return sample_grid(lightness, chroma, batch["rgb"])


def save_png(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) float in [0, 1] -> PNG."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path, compress_level=1)  # 4x faster; samples are small


class Tracker:
    """Progress bar + TensorBoard + JSONL for the main process; does nothing elsewhere."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int,
        console: Console | None = None,
    ) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.console = console if console is not None else Console()
        self._writer = None
        self._progress: Progress | None = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: main rank only

        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=start_step + 1)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            refresh_per_second=2,  # the default 10 Hz redraw cost about 1% of a CPU step
        )
        self._total = total_steps
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=start_step, info=""
        )

    def __enter__(self) -> Tracker:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # already failing (a full disk, say): let the first error through
            self.close()
        except Exception as err:
            print(f"warning: logs not closed cleanly: {first_line(err)}", file=sys.stderr)

    def advance(self, step: int, info: str | None = None) -> None:
        if self._progress is None:
            return
        fields = {} if info is None else {"info": info}
        self._progress.update(self._task, completed=step, **fields)
        if info is not None and not self.console.is_terminal:
            # Cluster jobs write to files, where a live bar only shows at the end.
            task = self._progress.tasks[self._task]
            self.console.print(
                f"step {step}/{self._total}  {info}  "
                f"elapsed {_clock(task.elapsed)}  ETA {_clock(task.time_remaining)}",
                highlight=False,
                soft_wrap=True,
            )

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()

    def log_histograms(self, step: int, pairs: Iterable[tuple[str, torch.Tensor]]) -> None:
        """(tag, values) pairs as TensorBoard histograms (binned where the values are, see
        monitor.histogram). `pairs` may be a generator: it is not run when disabled."""
        if not self.enabled:
            return
        for tag, values in pairs:
            self._writer.add_histogram_raw(tag, global_step=step, **histogram(values))

    def log_chroma(self, step: int, predicted_ab: torch.Tensor, real_ab: torch.Tensor) -> None:
        """Histograms of predicted next to real a*, b* and chroma magnitude (CIE units)."""
        self.log_histograms(step, chroma_histograms(predicted_ab, real_ab))

    def log_text(self, tag: str, text: str, step: int) -> None:
        """Markdown text in TensorBoard's Text tab (run facts that are not a curve)."""
        if self.enabled:
            self._writer.add_text(tag, text, step)

    def log_samples(self, step: int, grid: torch.Tensor) -> Path | None:
        if not self.enabled:
            return None
        self._writer.add_image("samples/gray_output_original", grid, step)
        path = self.run_dir / "samples" / f"step-{step:08d}.png"
        save_png(grid, path)
        return path

    def print(self, *objects: object) -> None:
        if self.enabled:
            # A log file has no width: one event, one line.
            self.console.print(*objects, highlight=False, soft_wrap=not self.console.is_terminal)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._writer is not None:
            self._writer.close()
            self._jsonl.close()
            self._writer = None


def _clock(seconds: float | None) -> str:
    """Seconds as rich's bar shows them (0:01:10), or -:--:-- when not known yet."""
    return "-:--:--" if seconds is None else str(timedelta(seconds=max(0, int(seconds))))


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be redone)."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        rows = [r for r in path.read_text().splitlines() if r and json.loads(r)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))
