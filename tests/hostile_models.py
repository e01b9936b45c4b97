"""Model files that lie or are damaged, each made by editing a real tiny one.

`checkpoint_kinds()` and `export_kinds()` map a name to (make, expected): `make(folder)`
writes the hostile file under `folder` and returns the path a user would pass
(`--checkpoint`), `expected` is a regular expression the one-line refusal must match.
Checkpoints are training checkpoints as the trainer lays them out (step folder with
state.pt and the COMPLETE marker); exports are written by `export_generator`.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from distcolor.checkpoint import MARKER, STATE, save_checkpoint
from distcolor.config import load_config
from distcolor.infer.export import export_generator
from distcolor.infer.exported import COMPACT, DENSE
from distcolor.model_checks import expected_tensors
from distcolor.models.build import build_generator

TINY = ["model.generator.width=4", "model.generator.depth=3", "data.image_size=32"]
Make = Callable[[Path], Path]

# A config claim whose generator, built for real, would take about 6 GB (width 2048 at
# depth 3: 1.5e9 entries, under MAX_PARAMETERS): the file backs it with stride-0 views.
HUGE_BUT_ALLOWED = {"width": 2048, "depth": 3}


def good_state(step: int = 5) -> dict:
    """A checkpoint state as the trainer writes it (G, G_ema, D, config, step), with most
    conv weights zero so that the compact export encodes them."""
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    live = build_generator(cfg.model).state_dict()
    for name, tensor in live.items():
        if name.endswith("weight") and tensor.dim() == 4:
            tensor.masked_fill_(torch.rand(tensor.shape) < 0.8, 0.0)
    average = {k: v.clone() for k, v in live.items()}
    return {
        "G": live,
        "G_ema": average,
        "D": {},
        "config": cfg.model_dump(mode="json"),
        "step": step,
    }


def write_checkpoint(folder: Path, state: object) -> Path:
    """`state` saved as folder/checkpoints/step-00000001 (complete); returns the step folder."""
    return save_checkpoint(state, folder / "checkpoints", step=1, keep_last=1)


def raw_checkpoint(folder: Path, data: bytes | None) -> Path:
    """A complete step folder whose state.pt holds `data` (None: state.pt is a folder)."""
    step = folder / "checkpoints" / "step-00000001"
    step.mkdir(parents=True)
    if data is None:
        (step / STATE).mkdir()
    else:
        (step / STATE).write_bytes(data)
    (step / MARKER).write_text(json.dumps({"step": 1, "files": [STATE]}) + "\n")
    return step


def good_checkpoint_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(good_state(), buffer)
    return buffer.getvalue()


# --- checkpoints ----------------------------------------------------------------------


def _edited(edit: Callable[[dict], object]) -> Make:
    """The good state after `edit(state)` (which changes it in place)."""

    def make(folder: Path) -> Path:
        state = good_state()
        edit(state)
        return write_checkpoint(folder, state)

    return make


def _replaced(other: Callable[[dict], object]) -> Make:
    """`other(good state)` saved in its place."""
    return lambda folder: write_checkpoint(folder, other(good_state()))


def _generator_config(**claims) -> Make:
    return _edited(lambda s: s["config"]["model"]["generator"].update(claims))


def _config(section: str, **claims) -> Make:
    return _edited(lambda s: s["config"][section].update(claims))


def _tensor(name: str, change: Callable[[torch.Tensor], object]) -> Make:
    def edit(state: dict) -> None:
        state["G"][name] = change(state["G"][name])
        state["G_ema"][name] = change(state["G_ema"][name])

    return _edited(edit)


def _both(edit: Callable[[dict], None]) -> Make:
    """The same edit to the live and the averaged generator."""

    def both(state: dict) -> None:
        edit(state["G"])
        edit(state["G_ema"])

    return _edited(both)


def _huge_views(state: dict) -> None:
    """The config claims a 6 GB generator; each tensor is a stride-0 view of one entry."""
    state["config"]["model"]["generator"].update(HUGE_BUT_ALLOWED)
    model = load_config(None, [*TINY, "model.generator.width=2048"]).model
    views = {
        name: torch.zeros((), dtype=spec.dtype).expand(spec.shape)
        for name, spec in expected_tensors(model).items()
    }
    state["G"], state["G_ema"] = views, dict(views)


def _storage_pickle(change: Callable[[bytes], bytes]) -> Make:
    """The good state.pt with its pickle (data.pkl) changed by `change`."""

    def make(folder: Path) -> Path:
        import io

        source = zipfile.ZipFile(io.BytesIO(good_checkpoint_bytes()))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
            for info in source.infolist():
                data = source.read(info.filename)
                if info.filename.endswith("data.pkl"):
                    data = change(data)
                target.writestr(info, data)
        return raw_checkpoint(folder, out.getvalue())

    return make


def _storage_claims(numel: int) -> Make:
    """The good state.pt whose pickle says its first storage holds `numel` entries."""

    def change(data: bytes) -> bytes:
        import pickletools

        ops = list(pickletools.genops(data))
        # ('storage', type, key, location, numel) TUPLE ... BINPERSID: the op before the
        # first persistent id's TUPLE is its entry count.
        persid = next(i for i, op in enumerate(ops) if op[0].name == "BINPERSID")
        tup = max(i for i in range(persid) if ops[i][0].name == "TUPLE")
        start, end = ops[tup - 1][2], ops[tup][2]
        return data[:start] + b"J" + struct.pack("<i", numel) + data[end:]

    return _storage_pickle(change)


def _dropped_record(folder: Path) -> Path:
    """A state.pt whose first tensor storage record is missing from the archive."""
    import io

    source = zipfile.ZipFile(io.BytesIO(good_checkpoint_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            if not info.filename.endswith("/data/0"):
                target.writestr(info, source.read(info.filename))
    return raw_checkpoint(folder, out.getvalue())


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _pickled_object(legacy: bool) -> Make:
    def make(folder: Path) -> Path:
        state = good_state()
        state["evil"] = Evil()
        step = folder / "checkpoints" / "step-00000001"
        step.mkdir(parents=True)
        torch.save(state, step / STATE, _use_new_zipfile_serialization=not legacy)
        (step / MARKER).write_text("{}\n")
        return step

    return make


def _bytes(make_bytes: Callable[[], bytes | None]) -> Make:
    return lambda folder: raw_checkpoint(folder, make_bytes())


def _fifo_state(folder: Path) -> Path:
    step = raw_checkpoint(folder, b"")
    (step / STATE).unlink()
    os.mkfifo(step / STATE)  # reading it would block for ever
    return step


def _device_state(folder: Path) -> Path:
    step = raw_checkpoint(folder, b"")
    (step / STATE).unlink()
    (step / STATE).symlink_to("/dev/zero")  # endless zeros
    return step


def _fifo_path(folder: Path) -> Path:
    os.mkfifo(folder / "model.pt")
    return folder / "model.pt"


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


SHAPE = "tensor .* is .*; its model config says"
NOT_OURS = "not a distcolor checkpoint .*do not load it with weights_only=False unless"


def checkpoint_kinds() -> dict[str, tuple[Make, str]]:
    g = "down.1.0.weight"  # a conv weight of the tiny generator: (8, 4, 4, 4)
    return {
        # the stored config lies
        "width far beyond the bound": (_generator_config(width=100_000), "width of 100000"),
        "width beyond the parameter cap": (_generator_config(width=6000), "entries \\(at most"),
        "width not the tensors'": (_generator_config(width=6), SHAPE),
        "width negative": (_generator_config(width=-4), "width"),
        "width zero": (_generator_config(width=0), "width"),
        "width a string": (_generator_config(width="4"), "width"),
        "width a float": (_generator_config(width=4.0), "width"),
        "width a boolean": (_generator_config(width=True), "width"),
        "width 2**70": (_generator_config(width=2**70), "width"),
        "depth beyond the schema": (_generator_config(depth=99), "depth"),
        "depth negative": (_generator_config(depth=-3), "depth"),
        "depth not the tensors'": (_generator_config(depth=4), "missing"),
        "fewer levels than the tensors": (_generator_config(depth=2), "not part of"),
        "norm not the tensors'": (_generator_config(norm="instance"), "missing|not part of"),
        "norm unknown": (_generator_config(norm="magic"), "norm"),
        "in_channels not 1": (_generator_config(in_channels=3), "in_channels"),
        "unknown generator key": (_generator_config(extra_layers=8), "unknown key"),
        "key with a newline": (_generator_config(**{"a\nb": 1}), "unknown key"),
        "image size huge": (_config("data", image_size=2**20), "training image size"),
        "image size negative": (_config("data", image_size=-32), "training image size|image"),
        "image size a string": (_config("data", image_size="32"), "training image size|image"),
        "image size not a multiple": (_config("data", image_size=36), "divisible|image size"),
        "l1 weight not finite": (_config("train", l1_weight=float("nan")), "l1_weight|finite"),
        "config missing": (_edited(lambda s: s.pop("config")), "holds no run config"),
        "config a list": (_edited(lambda s: s.update(config=[1, 2])), "holds no run config"),
        "config a tensor": (_edited(lambda s: s.update(config=torch.zeros(3))), "no run config"),
        "model section missing": (_edited(lambda s: s["config"].pop("model")), SHAPE + "|missing"),
        "model section a string": (_edited(lambda s: s["config"].update(model="x")), "not valid"),
        "model deeply nested": (_edited(lambda s: s["config"].update(model=_nested(200))), "valid"),
        "step a string": (_edited(lambda s: s.update(step="five")), "its step is"),
        "step negative": (_edited(lambda s: s.update(step=-1)), "its step is"),
        "step a tensor of many": (_edited(lambda s: s.update(step=torch.ones(5))), "its step is"),
        "step a float": (_edited(lambda s: s.update(step=2.5)), "its step is"),
        # the tensors disagree with the config
        "tensor missing": (_both(lambda g_: g_.pop("up.0.1.bias")), "up.0.1.bias .*missing"),
        "tensor extra": (_both(lambda g_: g_.update(extra=torch.zeros(3))), "not part of"),
        "tensor transposed": (_tensor(g, lambda t: t.transpose(0, 1).contiguous()), SHAPE),
        "tensor flattened": (_tensor(g, lambda t: t.reshape(-1)), SHAPE),
        "tensor float64": (_tensor(g, lambda t: t.double()), SHAPE),
        "tensor float16": (_tensor(g, lambda t: t.half()), SHAPE),
        "counter float": (_tensor("down.1.1.num_batches_tracked", lambda t: t.float()), SHAPE),
        "tensor a scalar": (_tensor(g, lambda t: torch.tensor(1.0)), SHAPE),
        "tensor empty": (_tensor(g, lambda t: torch.zeros(0)), SHAPE),
        "tensor a stride-0 view": (_tensor(g, lambda t: torch.zeros(1).expand(t.shape)), "repeat"),
        "tensors sharing one": (_both(_shared_running_stats), "repeat|overlap"),
        "tensor sparse": (_tensor(g, lambda t: t.to_sparse()), "not a plain dense tensor"),
        "tensor on the meta device": (_tensor(g, lambda t: t.to("meta")), "plain dense tensor"),
        "tensor a string": (_tensor(g, lambda t: "weights"), "not a named tensor"),
        "tensor None": (_tensor(g, lambda t: None), "not a named tensor"),
        "tensor named by a number": (_both(lambda g_: g_.update({7: torch.zeros(1)})), "named"),
        "huge claim backed by views": (_edited(_huge_views), "repeat|overlap"),
        # the layout is not a checkpoint's
        "state a list": (_replaced(lambda s: [s["G"]]), "not a distcolor training checkpoint"),
        "state a tensor": (_replaced(lambda s: torch.zeros(3)), "not a distcolor training"),
        "state an empty dict": (_replaced(lambda s: {}), "holds no run config"),
        "state a string": (_replaced(lambda s: "G" * 1000), "not a distcolor training"),
        "generator missing": (_edited(lambda s: [s.pop("G"), s.pop("G_ema")]), "no 'G'"),
        "generator a list": (_edited(lambda s: s.update(G=[1], G_ema=None)), "no 'G'"),
        "generator a tensor": (_edited(lambda s: s.update(G=torch.zeros(2), G_ema=None)), "'G'"),
        # the file is damaged or not a checkpoint at all
        "empty file": (_bytes(lambda: b""), "cannot be read"),
        "truncated file": (_bytes(lambda: good_checkpoint_bytes()[:5000]), "cannot be read"),
        "cut at the end": (_bytes(lambda: good_checkpoint_bytes()[:-100]), "cannot be read"),
        "pickle bytes flipped": (_storage_pickle(_flip_middle), "cannot be read"),
        "random bytes": (_bytes(lambda: os.urandom(4096)), "cannot be read"),
        "a text file": (_bytes(lambda: b"G: [1, 2, 3]\n" * 50), "cannot be read"),
        "a safetensors file": (_bytes(_safetensors_bytes), "cannot be read"),
        "a zip of other things": (_bytes(_other_zip), "cannot be read"),
        "state.pt a folder": (_bytes(lambda: None), "not a regular file"),
        "state.pt a FIFO": (_fifo_state, "not a regular file"),
        "state.pt a device": (_device_state, "not a regular file"),
        "path a FIFO": (_fifo_path, "regular file|FIFO|not a file"),
        "storage record shorter than claimed": (_storage_claims(2**30), "cannot be read"),
        "storage record missing": (_dropped_record, "cannot be read"),
        "pickled object": (_pickled_object(legacy=False), NOT_OURS),
        "pickled object, legacy format": (_pickled_object(legacy=True), NOT_OURS),
    }


def _nested(depth: int) -> dict:
    tree: dict = {}
    for _ in range(depth):
        tree = {"x": tree}
    return tree


def _shared_running_stats(generator: dict) -> None:
    """Two names, one tensor (a pickle memo can do this): the data is there once."""
    generator["down.1.1.running_var"] = generator["down.1.1.running_mean"]


def _safetensors_bytes() -> bytes:
    return save_file_bytes({"w": torch.zeros(4)}, {"format": "x"})


def _other_zip() -> bytes:
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return out.getvalue()


# --- exports --------------------------------------------------------------------------


def save_file_bytes(tensors: dict, metadata: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def good_export(folder: Path) -> Path:
    """An export folder (dense + compact) of the good state."""
    write_checkpoint(folder / "run", good_state())
    export_generator(folder / "run", folder / "export", weights="live")
    return folder / "export"


def read_export(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def _export(which: str, edit: Callable[[dict, dict], object]) -> Callable[[Path, Path], Path]:
    """A copy of the good export's `which` file (dense or compact) after `edit(tensors,
    metadata)`, saved as a safetensors file."""

    def make(folder: Path, good: Path) -> Path:
        tensors, meta = read_export(good / which)
        edit(tensors, meta)
        path = folder / ("hostile." + which)
        save_file(tensors, str(path), metadata=meta)
        return path

    return make


def _model_claim(**claims) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        model = json.loads(meta["model"])
        model["generator"].update(claims)
        meta["model"] = json.dumps(model)

    return edit


def _meta(**values) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        for key, value in values.items():
            if value is None:
                meta.pop(key, None)
            else:
                meta[key] = value

    return edit


def _encoded(change: Callable[[dict], None]) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        encoded = json.loads(meta["encoded"])
        change(encoded)
        meta["encoded"] = json.dumps(encoded)

    return edit


def _first_encoded(change: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda encoded: change(encoded[sorted(encoded)[0]])


def _raw(edit_header: Callable[[dict], None] | None, cut: Callable[[bytes], bytes] | None = None):
    """The good dense file with its JSON header edited and/or its bytes cut."""

    def make(folder: Path, good: Path) -> Path:
        data = (good / DENSE).read_bytes()
        if edit_header is not None:
            size = struct.unpack("<Q", data[:8])[0]
            header = json.loads(data[8 : 8 + size])
            edit_header(header)
            text = json.dumps(header).encode()
            text += b" " * (-len(text) % 8)
            data = struct.pack("<Q", len(text)) + text + data[8 + size :]
        if cut is not None:
            data = cut(data)
        path = folder / "hostile.safetensors"
        path.write_bytes(data)
        return path

    return make


def _header_tensor(key: str, value) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        name = sorted(k for k in header if k != "__metadata__")[0]
        header[name][key] = value

    return edit


def _folder_with_dense_dir(folder: Path, good: Path) -> Path:
    out = folder / "export"
    (out / DENSE).mkdir(parents=True)
    return out


def _fifo_export(folder: Path, good: Path) -> Path:
    os.mkfifo(folder / "model.safetensors")
    return folder / "model.safetensors"


DAMAGED = "damaged compact encoding"
UNREADABLE = "not a readable safetensors file"


def export_kinds() -> dict[str, tuple[Callable[[Path, Path], Path], str]]:
    """Like `checkpoint_kinds`, but `make(folder, good_export_folder)`."""
    g = "down.1.0.weight"
    return {
        # the metadata's model config lies
        "width far beyond the bound": (_export(DENSE, _model_claim(width=100_000)), "width"),
        "width beyond the parameter cap": (_export(DENSE, _model_claim(width=6000)), "entries"),
        "width not the tensors'": (_export(DENSE, _model_claim(width=6)), SHAPE),
        "compact width not the tensors'": (_export(COMPACT, _model_claim(width=6)), SHAPE),
        "width negative": (_export(DENSE, _model_claim(width=-4)), "width"),
        "width a string": (_export(DENSE, _model_claim(width="4")), "width"),
        "depth beyond the schema": (_export(DENSE, _model_claim(depth=99)), "depth"),
        "depth not the tensors'": (_export(COMPACT, _model_claim(depth=4)), "missing"),
        "norm not the tensors'": (_export(DENSE, _model_claim(norm="none")), "missing|not part"),
        "model config missing": (_export(DENSE, _meta(model=None)), "no model config"),
        "model config not JSON": (_export(DENSE, _meta(model="{width: 4")), "not valid"),
        "model config a list": (_export(DENSE, _meta(model="[1, 2]")), "not valid"),
        "model config nested deeply": (
            _export(DENSE, _meta(model='{"generator": ' * 300 + "1" + "}" * 300)),
            "not valid",
        ),
        "model config unknown key": (_export(DENSE, _model_claim(heads=3)), "not valid"),
        "format missing": (_export(DENSE, _meta(format=None)), "not a distcolor-generator"),
        "format another": (_export(DENSE, _meta(format="gguf")), "not a distcolor-generator"),
        # the compact encoding lies
        "encoded not JSON": (_export(COMPACT, _meta(encoded="{")), DAMAGED),
        "encoded a list": (_export(COMPACT, _meta(encoded="[]")), DAMAGED),
        "encoded shape negative": (
            _export(COMPACT, _encoded(_first_encoded(lambda e: e.update(shape=[-8, 4, 4, 4])))),
            DAMAGED,
        ),
        "encoded shape huge": (
            _export(COMPACT, _encoded(_first_encoded(lambda e: e.update(shape=[10**12, 8])))),
            DAMAGED,
        ),
        "encoded shape not the model's": (
            _export(COMPACT, _encoded(_first_encoded(lambda e: e["shape"].reverse()))),
            SHAPE + "|" + DAMAGED,
        ),
        "encoded shape a string": (
            _export(COMPACT, _encoded(_first_encoded(lambda e: e.update(shape="8x4")))),
            DAMAGED,
        ),
        "encoded dtype unknown": (
            _export(COMPACT, _encoded(_first_encoded(lambda e: e.update(dtype="object")))),
            DAMAGED,
        ),
        "encoded dtype other": (
            _export(COMPACT, _encoded(_first_encoded(lambda e: e.update(dtype="float64")))),
            DAMAGED,
        ),
        "encoded entry a number": (
            _export(COMPACT, _encoded(lambda e: e.update({sorted(e)[0]: 3}))),
            DAMAGED,
        ),
        "encoded entry for no tensor": (
            _export(
                COMPACT, _encoded(lambda e: e.update(ghost={"shape": [2], "dtype": "float32"}))
            ),
            DAMAGED,
        ),
        "bitmap truncated": (_export(COMPACT, _parts(".__bitmap", lambda t: t[:-1])), DAMAGED),
        "bitmap bits flipped": (_export(COMPACT, _parts(".__bitmap", lambda t: ~t)), DAMAGED),
        "values too many": (
            _export(COMPACT, _parts(".__values", lambda t: t.repeat(10))),
            DAMAGED,
        ),
        "values dropped": (_export(COMPACT, _parts(".__values", lambda t: t[:1])), DAMAGED),
        "values float64": (_export(COMPACT, _parts(".__values", lambda t: t.double())), DAMAGED),
        "values missing": (_export(COMPACT, _drop_parts(".__values")), DAMAGED),
        # the tensors disagree with the config
        "tensor missing": (_export(DENSE, lambda t, m: t.pop("up.0.1.bias")), "missing"),
        "tensor extra": (_export(DENSE, lambda t, m: t.update(x=torch.zeros(2))), "not part of"),
        "tensor transposed": (
            _export(DENSE, lambda t, m: t.update({g: t[g].transpose(0, 1).contiguous()})),
            SHAPE,
        ),
        "tensor float64": (_export(DENSE, lambda t, m: t.update({g: t[g].double()})), SHAPE),
        "tensor bfloat16": (_export(DENSE, lambda t, m: t.update({g: t[g].bfloat16()})), SHAPE),
        "tensor int32": (_export(DENSE, lambda t, m: t.update({g: t[g].int()})), SHAPE),
        "tensor of an odd dtype": (
            _export(DENSE, lambda t, m: t.update({g: t[g].to(torch.float8_e4m3fn)})),
            "never a generator's",
        ),
        # the file itself lies or is damaged
        "header shape beyond its data": (_raw(_header_tensor("shape", [4096, 4096])), UNREADABLE),
        "header shape negative": (_raw(_header_tensor("shape", [-1, 4])), UNREADABLE),
        "header offsets beyond the file": (
            _raw(_header_tensor("data_offsets", [0, 2**40])),
            UNREADABLE,
        ),
        "header dtype unknown": (_raw(_header_tensor("dtype", "Q99")), UNREADABLE),
        "header length huge": (_raw(None, lambda d: struct.pack("<Q", 2**62) + d[8:]), UNREADABLE),
        "header length past the end": (
            _raw(None, lambda d: struct.pack("<Q", len(d)) + d[8:]),
            UNREADABLE,
        ),
        "header not JSON": (_raw(None, lambda d: d[:8] + b"{" * 8 + d[16:]), UNREADABLE),
        "metadata not strings": (
            _raw(lambda h: h["__metadata__"].update(model={"width": 4})),
            UNREADABLE,
        ),
        "truncated": (_raw(None, lambda d: d[: len(d) // 2]), UNREADABLE),
        "empty file": (_raw(None, lambda d: b""), UNREADABLE),
        "eight bytes": (_raw(None, lambda d: d[:8]), UNREADABLE),
        "random bytes": (_raw(None, lambda d: os.urandom(len(d))), UNREADABLE),
        "a torch checkpoint": (_raw(None, lambda d: good_checkpoint_bytes()), UNREADABLE),
        "export folder without a regular file": (
            _folder_with_dense_dir,
            "not a checkpoint folder|neither",
        ),
        "export path a FIFO": (_fifo_export, "regular file|FIFO|not a file"),
    }


def _parts(suffix: str, change: Callable[[torch.Tensor], torch.Tensor]):
    def edit(tensors: dict, meta: dict) -> None:
        name = sorted(k for k in tensors if k.endswith(suffix))[0]
        tensors[name] = change(tensors[name]).contiguous()

    return edit


def _drop_parts(suffix: str):
    def edit(tensors: dict, meta: dict) -> None:
        tensors.pop(sorted(k for k in tensors if k.endswith(suffix))[0])

    return edit
