"""Export a trained generator to ONNX: `out/generator.onnx`, one self-contained file any
ONNX runtime can serve (layout and checks: infer/onnx_generator.py).

The graph comes from torch.onnx's dynamo exporter (torch.export, then onnxscript), with a
dynamic batch and sides of any multiple of 2**depth. Before the file is renamed into
place it is run by onnxruntime on a random input and compared with PyTorch: an export that
does not reproduce the network is never left under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from distcolor.durable import fsync_path
from distcolor.errors import UserError, first_line
from distcolor.infer.onnx_generator import (
    INPUT,
    ONNX_FORMAT,
    ONNX_NAME,
    OUTPUT,
    read_onnx,
    require,
)
from distcolor.infer.weights import load_generator
from distcolor.sizes import unet_multiple

DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 18, 23  # the dynamo exporter writes opset 18 and later
PARITY_TOLERANCE = 1e-4
"""Largest |chroma difference| (scaled a*b*, in [-1, 1]) allowed between onnxruntime and
PyTorch, fp32; measured differences are about 1e-7."""
PARITY_SIDE = 256
"""Parity is checked at the training size, capped at this side (the paper's size)."""


def _graph(generator: torch.nn.Module, opset: int):
    """The ONNX ModelProto of `generator`: batch and both sides dynamic, sides in multiples
    of 2**depth (the exporter's progress lines kept off our stdout, whose last line is JSON)."""
    from torch.export import Dim

    multiple = unet_multiple(generator.depth)
    example = torch.zeros(2, 1, 2 * multiple, 3 * multiple)  # shapes only: never run
    dynamic = ({0: Dim("batch"), 2: multiple * Dim("h"), 3: multiple * Dim("w")},)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..."
    with (
        contextlib.redirect_stdout(sys.stderr),
        warnings.catch_warnings(),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        try:
            program = torch.onnx.export(
                generator,
                (example,),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic,
                input_names=[INPUT],
                output_names=[OUTPUT],
                external_data=False,
                verbose=False,
            )
        except Exception as err:  # the exporter's many error types: one line, not a traceback
            raise UserError(
                f"--opset {opset}: the ONNX export failed ({first_line(err)})"
            ) from None
        finally:
            exporter_log.setLevel(level)
    return program.model_proto


def _metadata(trained, opset: int) -> dict[str, str]:
    depth = trained.generator.depth
    meta = {
        "format": ONNX_FORMAT,
        "opset": str(opset),
        "depth": str(depth),
        "multiple": str(unet_multiple(depth)),
        "model": trained.model.model_dump_json(),
        "source": str(trained.source),
        "weights": trained.weights,
        "step": "" if trained.step is None else str(trained.step),
    }
    if trained.image_size_known:  # else colorize renders at 2**depth, as for an export
        meta["image_size"] = str(trained.image_size)
    return meta


def _parity_inputs(multiple: int, image_size: int) -> list[torch.Tensor]:
    """Random lightness in [-1, 1]: a batch of 2 at the render size (capped) and a
    non-square single image, so both dynamic sides and the batch are exercised."""
    side = max(multiple, min(image_size, PARITY_SIDE) // multiple * multiple)
    gen = torch.Generator().manual_seed(0)
    return [
        torch.rand(2, 1, side, side, generator=gen) * 2 - 1,
        torch.rand(1, 1, multiple, 2 * multiple, generator=gen) * 2 - 1,
    ]


def measure_parity(generator: torch.nn.Module, onnx_path: Path) -> float:
    """max |onnxruntime - PyTorch| over the chroma of `_parity_inputs`, on the CPU."""
    from distcolor.infer.onnx_generator import OnnxGenerator

    served = OnnxGenerator(onnx_path)
    worst = 0.0
    with torch.no_grad():
        for x in _parity_inputs(served.size_multiple, served.image_size or 0):
            expected = generator(x).float()
            worst = max(worst, float((served(x) - expected).abs().max()))
    return worst


def _write(data: bytes, tmp: Path) -> None:
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        fsync_path(tmp)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {tmp.parent / ONNX_NAME}: {err.strerror or err}") from None


def check_onnx_target(out: Path, *, opset: int, overwrite: bool) -> Path:
    """out/generator.onnx, once the extra is installed, the opset offered and the file
    free to write (checked before any slow work)."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module, "--onnx")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(
            f"--opset: {opset} is not an opset the exporter offers ({MIN_OPSET} to {MAX_OPSET})"
        )
    final = Path(out) / ONNX_NAME
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out: {out} is a file")
    if final.exists() and not overwrite:
        raise UserError(f"{final} already exists; pass --overwrite to replace it")
    return final


def export_onnx(
    source: Path,
    out: Path,
    *,
    weights: str = "ema",
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> dict:
    """Write `out`/generator.onnx from anything `load_generator` reads (a run folder,
    checkpoint, DeepSpeed checkpoint, dense or compact export; not an ONNX file).

    Returns onnx_file, onnx_bytes, opset, onnx_seconds (export + write + parity),
    parity_max_abs_diff (onnxruntime vs PyTorch on random inputs, fp32), parity_tolerance,
    depth, multiple, image_size (None when the source does not know it), step, weights."""
    out = Path(out)
    final = check_onnx_target(out, opset=opset, overwrite=overwrite)
    start = time.perf_counter()
    trained = load_generator(Path(source), weights=weights)
    if not isinstance(trained.generator, torch.nn.Module):
        raise UserError(f"--checkpoint: {source} is already an ONNX generator")
    generator = trained.generator.float().eval()
    proto = _graph(generator, opset)
    for key, value in _metadata(trained, opset).items():
        proto.metadata_props.add(key=key, value=value)
    data = proto.SerializeToString()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out: cannot create {out}: {err.strerror or err}") from None
    tmp = out / f".{ONNX_NAME}.tmp"
    _write(data, tmp)
    try:
        read_onnx(tmp)  # what the loader will check, checked now
        worst = measure_parity(generator, tmp)
        if not np.isfinite(worst) or worst > PARITY_TOLERANCE:
            raise UserError(
                f"the ONNX export differs from PyTorch by {worst:.3g} (tolerance "
                f"{PARITY_TOLERANCE:g}); {final} was not written"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "onnx_file": str(final),
        "onnx_bytes": final.stat().st_size,
        "opset": opset,
        "onnx_seconds": round(time.perf_counter() - start, 3),
        "parity_max_abs_diff": worst,
        "parity_tolerance": PARITY_TOLERANCE,
        "depth": generator.depth,
        "multiple": unet_multiple(generator.depth),
        "image_size": trained.image_size if trained.image_size_known else None,
        "source": str(trained.source),
        "step": trained.step,
        "weights": trained.weights,
    }
