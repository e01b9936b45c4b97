"""What a model file claims, checked before any network is built.

A checkpoint or an export comes from outside: its stored config (or export metadata) says
which generator to build, and a lie there (a huge width, a damaged config) would make
building it allocate whatever the lie says, long before `load_state_dict` noticed that
the tensors do not fit. So a file is read in this order:

1. its model config is validated by the config schema (distcolor/config/) and held to
   bounds (`checked_model`): the schema's own limits plus the caps below;
2. the generator it describes is built on the meta device (shapes only, no memory), and
   every stored tensor's name, shape and dtype is compared with it (`expected_tensors`,
   `check_specs`, `checked_weights`); stored tensors must also own the bytes they claim
   (no stride-0 or repeated views that would expand when copied);
3. only then is the generator made, holding exactly the checked tensors
   (`generator_holding`): its size is the file's.

Every problem is one `UserError` line naming the file and what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import ValidationError

from distcolor.config import ModelConfig, config_from_dict
from distcolor.errors import UserError, first_line
from distcolor.models.build import build_generator
from distcolor.models.unet import UNetGenerator
from distcolor.sizes import unet_multiple

MAX_PARAMETERS = 2**31
"""Generator tensor entries a stored config may claim: 8 GiB of float32, about 40x the
paper's 54M-parameter generator (width 64, depth 8)."""

MAX_WIDTH = 8192
"""model.generator.width a stored config may claim (the schema has no upper bound). Even a
depth-2 generator this wide is beyond MAX_PARAMETERS; checked first so that the shape
arithmetic of the meta build stays small."""

MAX_IMAGE_SIZE = 4096
"""data.image_size a stored config may claim: it becomes the render size of colorize and
the crop of evaluate, so a lie there would allocate its square. 16x the paper's 256 px."""

MESSAGE_LIMIT = 300  # characters of a stored value quoted in an error: a file cannot flood


def one_line(text: object) -> str:
    """`text` as one short line (a stored key or value may hold newlines or be huge)."""
    line = " ".join(str(text).split())
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 3] + "..."


def refuse(source: object, problem: str) -> UserError:
    return UserError(one_line(f"{source}: {problem}"))


@dataclass(frozen=True)
class TensorSpec:
    """What a tensor is, without its data: shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{list(self.shape)} {str(self.dtype).removeprefix('torch.')}"


# --- the claimed config ---------------------------------------------------------------


def checked_model(model: ModelConfig, source: object) -> ModelConfig:
    """`model` (already schema-valid) if the generator it describes is within the caps."""
    width = model.generator.width
    if width > MAX_WIDTH:
        raise refuse(
            source, f"its config claims a generator width of {width} (at most {MAX_WIDTH})"
        )
    count = sum(math.prod(spec.shape) for spec in expected_tensors(model).values())
    if count > MAX_PARAMETERS:
        raise refuse(
            source,
            f"its config claims a generator of {count:,} entries (at most {MAX_PARAMETERS:,})",
        )
    return model


@dataclass(frozen=True)
class StoredConfig:
    """What a training checkpoint says about its generator, checked."""

    model: ModelConfig
    image_size: int  # the training crop (2**depth when the checkpoint does not say)
    l1_weight: float


def checkpoint_config(state: object, source: object) -> StoredConfig:
    """The model config, training size and L1 weight of a checkpoint's state. The whole run
    config is validated; if only its model section does (a checkpoint from an older
    distcolor whose other settings changed), the other two are checked on their own."""
    if not isinstance(state, dict):
        raise refuse(source, "not a distcolor training checkpoint (not a dictionary of parts)")
    tree = state.get("config")
    if not isinstance(tree, dict):
        raise refuse(source, "holds no run config")
    try:
        cfg = config_from_dict(tree)
    except (UserError, RecursionError) as err:
        model = _model_section(tree, source, err)
        depth = model.generator.depth
        data, train = tree.get("data"), tree.get("train")
        size = data.get("image_size") if isinstance(data, dict) else None
        l1 = train.get("l1_weight", 100.0) if isinstance(train, dict) else 100.0
        return StoredConfig(
            model=model,
            image_size=_checked_size(unet_multiple(depth) if size is None else size, depth, source),
            l1_weight=_checked_l1(l1, source),
        )
    model = checked_model(cfg.model, source)
    size = _checked_size(cfg.data.image_size, model.generator.depth, source)
    return StoredConfig(model=model, image_size=size, l1_weight=cfg.train.l1_weight)


def export_model(text: object, source: object) -> ModelConfig:
    """The model config in an export's metadata (JSON text), validated and checked."""
    if not isinstance(text, str) or not text:
        raise refuse(source, "its metadata holds no model config")
    try:
        model = ModelConfig.model_validate_json(text)
    except (ValidationError, RecursionError) as err:
        raise refuse(source, f"its model config is not valid ({_schema_problem(err)})") from None
    return checked_model(model, source)


def _schema_problem(err: Exception) -> str:
    """The first problem the schema found, as `key: what` (pydantic's own text spans
    several lines and starts with a count)."""
    if not isinstance(err, ValidationError) or not err.errors():
        return first_line(err)
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _model_section(tree: dict, source: object, err: Exception) -> ModelConfig:
    section = tree.get("model")
    try:
        if not isinstance(section, dict):
            raise ValueError("no model section")
        model = ModelConfig.model_validate(section)
    except (ValidationError, ValueError, RecursionError):
        raise refuse(source, f"its config is not valid ({err})") from None
    return checked_model(model, source)


def _checked_size(size: object, depth: int, source: object) -> int:
    multiple = unet_multiple(depth)
    if (
        not isinstance(size, int)
        or isinstance(size, bool)
        or not multiple <= size <= MAX_IMAGE_SIZE
        or size % multiple
    ):
        raise refuse(
            source,
            f"its config claims a training image size of {one_line(repr(size))[:40]} (a "
            f"multiple of 2**depth = {multiple}, at most {MAX_IMAGE_SIZE} px)",
        )
    return size


def _checked_l1(value: object, source: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < math.inf:
        raise refuse(source, f"its config's train.l1_weight is {one_line(repr(value))[:40]}")
    return float(value)


def checked_step(value: object, source: object) -> int:
    """A checkpoint's step: an integer (or a one-entry integer tensor) >= 0."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise refuse(source, f"its step is {one_line(repr(value))[:40]}, not a count of steps")
    return value


# --- the stored tensors ---------------------------------------------------------------


def expected_tensors(model: ModelConfig) -> dict[str, TensorSpec]:
    """Name -> shape and dtype of every tensor the generator of `model` holds."""
    with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
        generator = build_generator(model)
    return {name: TensorSpec(tuple(t.shape), t.dtype) for name, t in generator.state_dict().items()}


def check_specs(
    found: dict[str, TensorSpec], expected: dict[str, TensorSpec], source: object
) -> None:
    """UserError unless `found` names exactly the `expected` tensors with their shapes
    and dtypes."""
    missing = [name for name in expected if name not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise refuse(source, f"tensor {missing[0]} of its model config is missing{more}")
    unexpected = [name for name in found if name not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise refuse(
            source, f"tensor {unexpected[0]!r} is not part of its model config's generator{more}"
        )
    for name, want in expected.items():
        if found[name] != want:
            raise refuse(source, f"tensor {name} is {found[name]}; its model config says {want}")


def checked_weights(
    tensors: object, expected: dict[str, TensorSpec], source: object
) -> dict[str, torch.Tensor]:
    """The generator tensors of a loaded state dict once they match `expected` and own the
    bytes they claim: plain dense CPU tensors, each contiguous and on its own storage."""
    if not isinstance(tensors, dict):
        raise refuse(source, "its generator weights are not a dictionary of tensors")
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise refuse(source, f"generator entry {name!r} is not a named tensor")
        if t.layout != torch.strided or t.device.type != "cpu" or t.is_quantized or t.is_nested:
            raise refuse(source, f"tensor {name} is not a plain dense tensor ({t.layout})")
    check_specs(
        {n: TensorSpec(tuple(t.shape), t.dtype) for n, t in tensors.items()}, expected, source
    )
    # A tensor may be a view (stride 0, or one storage behind several names) claiming more
    # entries than its storage holds: copying it would allocate what the file does not have.
    claimed = sum(t.numel() * t.element_size() for t in tensors.values())
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors.values()
    }
    stored = sum(storages.values())
    if claimed > stored:
        raise refuse(
            source,
            f"its generator tensors claim {claimed:,} bytes but hold {stored:,}: they repeat "
            "or overlap their data",
        )
    return {name: _own_copy(t) for name, t in tensors.items()}


def _own_copy(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when it is contiguous and alone on its storage, else a compact copy (a
    view into a larger storage would keep all of it alive with the generator)."""
    t = t.detach()
    if t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def generator_holding(model: ModelConfig, weights: dict[str, torch.Tensor]) -> UNetGenerator:
    """The generator of `model` with `weights` (already `checked_weights`) as its tensors:
    built on the meta device and given them, so nothing is allocated or drawn twice."""
    with torch.device("meta"):
        generator = build_generator(model)
    generator.load_state_dict(weights, assign=True)  # exact names and shapes: checked
    return generator


def built_generator(
    model: ModelConfig, tensors: object, source: object
) -> tuple[UNetGenerator, dict[str, torch.Tensor]]:
    """Check `tensors` against `model` (already `checked_model`), then the generator
    holding them and the checked tensors."""
    weights = checked_weights(tensors, expected_tensors(model), source)
    return generator_holding(model, weights), weights
