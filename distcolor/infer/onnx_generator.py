"""A generator exported to ONNX (infer/onnx_export.py), run by onnxruntime where
`Colorizer` runs the PyTorch one.

    generator.onnx   one self-contained file (weights inside, no external data):
                     input `lightness` (B, 1, H, W) float32 -> output `chroma` (B, 2, H, W),
                     B, H and W dynamic (H and W multiples of 2**depth); metadata_props:
                     format, opset, depth, multiple, model (config JSON), source, weights,
                     step and, when the source knew it, image_size (the training size)

Everything is checked before onnxruntime sees the file: that it is an ONNX model, holds our
metadata, takes and gives the tensors above, and keeps its weights inside (an external-data
reference would make the runtime open other files by name). A file that fails is refused
with one line naming it. onnx and onnxruntime are the `onnx` extra, imported only here and
only when an .onnx file is used.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from distcolor.config import ModelConfig
from distcolor.errors import UserError, first_line
from distcolor.model_checks import export_model
from distcolor.sizes import unet_multiple

ONNX_NAME = "generator.onnx"
ONNX_FORMAT = "distcolor-generator-onnx/1"
INPUT, OUTPUT = "lightness", "chroma"
EXTRA = "pip install 'distcolor[onnx]'"
_FLOAT = 1  # onnx.TensorProto.FLOAT


def require(module: str, purpose: str):
    """`module` (onnx, onnxscript, onnxruntime) imported, or one line naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(
            f"{purpose} needs the `onnx` extra ({module} cannot be imported: "
            f"{first_line(err)}): {EXTRA}"
        ) from None


def _refuse(path: Path, why: str) -> UserError:
    return UserError(f"--checkpoint: {path} is not a usable distcolor ONNX generator: {why}")


def _integer(meta: dict[str, str], key: str, path: Path, *, required: bool = True) -> int | None:
    text = meta.get(key)
    if text is None and not required:
        return None
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise _refuse(path, f"its metadata {key!r} is {text!r}, not a whole number") from None
    if value < 0:
        raise _refuse(path, f"its metadata {key!r} is {value}, below 0")
    return value


def _check_metadata(meta: dict[str, str], path: Path) -> tuple[ModelConfig, int | None]:
    """The model config and training size the metadata claims, each claim checked."""
    if meta.get("format") != ONNX_FORMAT:
        raise _refuse(path, f"its metadata format is {meta.get('format')!r}, not {ONNX_FORMAT!r}")
    model = export_model(meta.get("model"), path)
    depth = _integer(meta, "depth", path)
    if depth != model.generator.depth or _integer(meta, "multiple", path) != unet_multiple(depth):
        raise _refuse(path, "its metadata depth, multiple and model config disagree")
    size = _integer(meta, "image_size", path, required=False)
    if size is not None and (size == 0 or size % unet_multiple(depth)):
        raise _refuse(path, f"its image_size {size} is not a multiple of 2**depth")
    return model, size


def _check_value(value, name: str, channels: int, path: Path) -> None:
    """A graph input or output: float32, rank 4, `channels` channels."""
    tensor = value.type.tensor_type
    dims = tensor.shape.dim
    if value.name != name or tensor.elem_type != _FLOAT or len(dims) != 4:
        raise _refuse(path, f"its graph's {name!r} is not a float32 (B, C, H, W) tensor")
    if dims[1].HasField("dim_value") and dims[1].dim_value != channels:
        raise _refuse(path, f"its {name!r} has {dims[1].dim_value} channels, not {channels}")


def _check_graph(model, path: Path) -> None:
    graph = model.graph
    stored = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in stored]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise _refuse(path, f"its graph must take one input {INPUT!r} and give one {OUTPUT!r}")
    _check_value(inputs[0], INPUT, 1, path)
    _check_value(graph.output[0], OUTPUT, 2, path)
    if any(tensor.data_location == 1 for tensor in _every_tensor(graph)):  # EXTERNAL
        raise _refuse(path, "its weights are stored outside the file (external data)")


def _every_tensor(graph):
    """Every tensor a graph holds: initializers (sparse ones too) and node attributes,
    in subgraphs (If / Loop bodies) as well: any may point at external data."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            for sparse in attribute.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attribute.HasField("g"):
                yield from _every_tensor(attribute.g)
            for subgraph in attribute.graphs:
                yield from _every_tensor(subgraph)


def read_onnx(path: Path):
    """(file bytes, ModelProto, metadata) of an ONNX generator file: an ONNX model, ours
    (its metadata), and taking and giving what a generator does (its graph)."""
    onnx = require("onnx", f"reading {path}")
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"--checkpoint: cannot read {path}: {err.strerror or err}") from None
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, RecursionError) as err:
        raise _refuse(path, f"not an ONNX model ({first_line(err)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise _refuse(path, "not an ONNX model (no graph)")
    meta = {prop.key: prop.value for prop in model.metadata_props}
    _check_metadata(meta, path)
    _check_graph(model, path)
    return data, model, meta


def providers_for(device: torch.device) -> list[str]:
    """onnxruntime's execution providers for `device`: CUDA first when asked and built in."""
    ort = require("onnxruntime", "running an ONNX generator")
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxGenerator:
    """An ONNX generator behind the interface `Colorizer` and evaluation use: `depth`,
    `.to(device)`, `.eval()`/`.train()`, and `generator(lightness)` on a (B, 1, H, W) float
    tensor giving (B, 2, H, W) float32 chroma on the input's device."""

    def __init__(self, path: Path, *, device: torch.device | str = "cpu") -> None:
        self.path = Path(path)
        self._data, proto, self.metadata = read_onnx(self.path)
        self.model, self.image_size = _check_metadata(self.metadata, self.path)
        self.depth = self.model.generator.depth
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.training = False
        self.device = torch.device("cpu")
        self._session = None
        self.to(device)
        side = self.size_multiple  # one small forward now: a file that gives other tensors
        self(torch.zeros(1, 1, side, side))  # is refused before any photo is read

    @property
    def size_multiple(self) -> int:
        return unet_multiple(self.depth)

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def _start(self, providers: list[str]) -> None:
        ort = require("onnxruntime", "running an ONNX generator")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        # Between batches colorize decodes, composes and encodes on the same cores: threads
        # spinning while they wait for the next batch would slow all of that down.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            self._session = ort.InferenceSession(self._data, options, providers=providers)
        except Exception as err:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
            raise _refuse(self.path, f"onnxruntime cannot load it ({first_line(err)})") from None

    def to(self, device: torch.device | str):
        """Run on `device` from now on (onnxruntime's CUDA provider for a GPU when it has
        one, else its CPU one). On the meta device, where only shapes exist (a memory
        estimate), this is the PyTorch network the file was exported from, without weights."""
        device = torch.device(device)
        if device.type == "meta":
            from distcolor.models.build import build_generator

            with torch.device("meta"):
                return build_generator(self.model).eval()
        providers = providers_for(device)
        if self._session is None or self._session.get_providers() != providers:
            self._start(providers)
        self.device = device
        return self

    def eval(self) -> OnnxGenerator:
        return self  # an exported graph is always in inference mode

    def train(self, mode: bool = True) -> OnnxGenerator:
        if mode:
            raise UserError(f"{self.path}: an ONNX generator cannot be trained")
        return self

    def __deepcopy__(self, memo) -> OnnxGenerator:
        twin = copy.copy(self)  # the session is shared: it is read-only and thread-safe
        memo[id(self)] = twin
        return twin

    def __call__(self, lightness: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) scaled L* -> (B, 2, H, W) scaled a*b*, on lightness's device."""
        if lightness.dim() != 4 or lightness.shape[1] != 1:
            raise ValueError(
                f"expected a (B, 1, H, W) lightness tensor, got {tuple(lightness.shape)}"
            )
        height, width = lightness.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise UserError(
                f"generator input is {height}x{width} px; both sides must be divisible by "
                f"2**depth = {self.size_multiple}"
            )
        feed = np.ascontiguousarray(lightness.detach().to("cpu", torch.float32).numpy())
        (chroma,) = self._session.run([OUTPUT], {INPUT: feed})
        expected = (feed.shape[0], 2, height, width)
        if tuple(chroma.shape) != expected or chroma.dtype != np.float32:
            raise _refuse(
                self.path,
                f"it gives {chroma.dtype} {tuple(chroma.shape)} for a lightness of "
                f"{tuple(feed.shape)}, not float32 {expected}",
            )
        return torch.from_numpy(chroma).to(lightness.device)
