"""The loss plot of a run (Figure 2 of the original project), drawn from its TensorBoard logs.

Two panels side by side: the discriminator's loss (total, on real images, on generated
images; total = (real + fake) / 2) and the generator's (total, adversarial part and the
weighted L1 part, drawn as `l1_weight x L1` so the two parts add up to the total).

It reads `runs/NAME/tb/`, the event files the trainer writes (distcolor/tracking.py), rather
than metrics.jsonl: the figure then shows the same numbers the user watched in TensorBoard,
with TensorBoard's own handling of resumed runs (a resume starts a new event file whose
SessionLog.START drops the steps it will redo). Drawing uses matplotlib's Figure and Agg
directly, never pyplot: no global state, no GUI, safe on a cluster node.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from distcolor.errors import UserError

Series = Mapping[str, tuple[list[int], list[float]]]

D_TAGS = ("loss/D/total", "loss/D/real", "loss/D/fake")
G_TAGS = ("loss/G/total", "loss/G/adv", "loss/G/l1")


def read_scalars(tb_dir: Path, tags: Iterable[str]) -> dict[str, tuple[list[int], list[float]]]:
    """The scalars `tags` from every event file in tb_dir, as {tag: (steps, values)}.

    Steps are sorted and unique: where a step was logged more than once (a resumed run
    restating steps), the value with the newest wall_time wins. Every point is kept (no
    reservoir sampling). Tags with no points are left out.
    """
    from tensorboard.backend.event_processing import event_accumulator  # heavy: only here

    accumulator = event_accumulator.EventAccumulator(
        str(tb_dir),
        size_guidance={
            event_accumulator.SCALARS: 0,  # 0 = keep all
            event_accumulator.IMAGES: 1,  # not needed here: keep as little as possible
            event_accumulator.HISTOGRAMS: 1,
            event_accumulator.TENSORS: 1,
        },
    )
    accumulator.Reload()
    available = set(accumulator.Tags().get("scalars", []))
    result: dict[str, tuple[list[int], list[float]]] = {}
    for tag in tags:
        if tag not in available:
            continue
        newest: dict[int, tuple[float, float]] = {}  # step -> (wall_time, value)
        for event in accumulator.Scalars(tag):
            seen = newest.get(event.step)
            if seen is None or event.wall_time >= seen[0]:
                newest[event.step] = (event.wall_time, event.value)
        if newest:
            steps = sorted(newest)
            result[tag] = (steps, [newest[step][1] for step in steps])
    return result


def smooth_values(values: Iterable[float], window: int) -> np.ndarray:
    """Centred moving average over `window` points; the window shrinks at the ends (no bias
    towards zero) and non-finite values (a diverged step) are skipped rather than spread."""
    array = np.asarray(list(values), dtype=np.float64)
    n = array.size
    if window <= 1 or n == 0:
        return array
    finite = np.isfinite(array)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, array, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    index = np.arange(n)
    lo = np.clip(index - window // 2, 0, n)
    hi = np.clip(index - window // 2 + window, 0, n)
    count = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (sums[hi] - sums[lo]) / count, np.nan)


def loss_figure(
    series: Series,
    *,
    l1_weight: float = 100.0,
    title: str = "",
    smooth: int | None = None,
) -> Figure:
    """The 1x2 figure from {tag: (steps, values)}: axes[0] discriminator, axes[1] generator.

    `smooth` is the moving-average window in points; None picks max(1, n // 50) per curve.
    Smoothed curves are drawn over their raw values (faint, without a legend entry).
    """
    fig = Figure(figsize=(12, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    panels = (
        (
            left,
            "Discriminator",
            [(D_TAGS[0], "total", 1.0), (D_TAGS[1], "real", 1.0), (D_TAGS[2], "fake", 1.0)],
        ),
        (
            right,
            "Generator",
            [
                (G_TAGS[0], "total", 1.0),
                (G_TAGS[1], "adversarial", 1.0),
                (G_TAGS[2], f"L1 × {l1_weight:g}", float(l1_weight)),
            ],
        ),
    )  # (tag, legend label, scale): the generator's parts add up to its total
    for ax, name, curves in panels:
        drawn = 0
        for index, (tag, label, scale) in enumerate(curves):
            if tag not in series or not series[tag][0]:
                continue
            steps, values = series[tag]
            y = np.asarray(values, dtype=np.float64) * scale
            window = max(1, len(y) // 50) if smooth is None else max(1, int(smooth))
            colour = f"C{index}"
            if window > 1:
                ax.plot(steps, y, color=colour, alpha=0.25, linewidth=0.8, label="_raw")
                y = smooth_values(y, window)
            ax.plot(steps, y, color=colour, linewidth=1.5, label=label)
            drawn += 1
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(loc="upper right")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    return fig


def plot_losses(
    tb_dir: Path, out_png: Path, *, l1_weight: float = 100.0, smooth: int | None = None
) -> Path:
    """Read a run's losses from tb_dir (runs/NAME/tb) and write the loss figure to out_png.

    The title is the run's name (tb_dir's parent folder). The PNG is written to a temporary
    name beside out_png and renamed into place, so a reader never sees half a file.
    """
    tb_dir, out_png = Path(tb_dir), Path(out_png)
    if not tb_dir.is_dir():
        raise UserError(f"no TensorBoard folder {tb_dir} (expected runs/NAME/tb)")
    series = read_scalars(tb_dir, D_TAGS + G_TAGS)
    if not series:
        raise UserError(f"no loss/D/* or loss/G/* scalars in {tb_dir}")
    fig = loss_figure(series, l1_weight=l1_weight, title=tb_dir.parent.name, smooth=smooth)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out_png)
    finally:
        tmp.unlink(missing_ok=True)
    return out_png
