"""ONNX export and serving (infer/onnx_export.py, infer/onnx_generator.py, export --onnx,
colorize --checkpoint generator.onnx): parity with PyTorch, the metadata, refusals of
damaged or foreign files, a missing extra, and the torch-free snippet in docs/colorize.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distcolor.checkpoint import save_checkpoint
from distcolor.data.synthetic import render_scene
from distcolor.errors import UserError
from distcolor.infer.colorizer import Colorizer
from distcolor.infer.exported import COMPACT, DENSE
from distcolor.infer.weights import load_generator
from tests.helpers import run_script
from tests.hostile_models import good_state

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from distcolor.infer import onnx_export  # noqa: E402 (after the extra is known to be there)
from distcolor.infer.onnx_export import PARITY_TOLERANCE, export_onnx  # noqa: E402
from distcolor.infer.onnx_generator import ONNX_FORMAT, ONNX_NAME, OnnxGenerator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # max |chroma difference|, scaled a*b* in [-1, 1], fp32
assert PARITY_TOLERANCE <= TOLERANCE
ONE_LINE = re.compile(r"^error: [^\n]+\n$")


def sparse_state(step: int) -> dict:
    """hostile_models' tiny checkpoint state (80% of conv weights zero) made to look
    trained: weights large enough for outputs well away from 0, and batch-norm statistics
    that are not the identity, so both matter to the parity checked below."""
    state = good_state(step=step)
    torch.manual_seed(step)
    for weights in (state["G"], state["G_ema"]):
        for name, tensor in weights.items():
            if name.endswith("weight") and tensor.dim() == 4:
                tensor.mul_(25.0)
            elif name.endswith("running_mean"):
                tensor.normal_()
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
    return state


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A sparse tiny run (width 4, depth 3, 80% of conv weights zero, trained at 32 px)
    exported by `scripts/export.py --onnx`: dense, compact and ONNX side by side."""
    root = tmp_path_factory.mktemp("onnx")
    save_checkpoint(sparse_state(4), root / "run" / "checkpoints", step=4, keep_last=3)
    done = run_script(
        "scripts/export.py", "--checkpoint", root / "run", "--out", root / "exp", "--onnx"
    )
    assert done.returncode == 0, done.stderr
    return {"root": root, "run": root / "run", "out": root / "exp", "cli": done}


def test_export_onnx_flag_adds_generator_onnx_with_its_metadata(exported):
    out, done = exported["out"], exported["cli"]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [DENSE, COMPACT, "config.json", ONNX_NAME]
    )
    assert summary["onnx_bytes"] == (out / ONNX_NAME).stat().st_size
    assert summary["opset"] == 18 and summary["parity_max_abs_diff"] < TOLERANCE
    assert summary["dense_bytes"] > 0 and summary["sparsity"] > 0.7  # the safetensors too
    assert str(out / ONNX_NAME) in summary["files"]
    model = onnx.load(str(out / ONNX_NAME))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == ONNX_FORMAT and meta["opset"] == "18"
    assert meta["depth"] == "3" and meta["multiple"] == "8" and meta["image_size"] == "32"
    assert meta["step"] == "4" and meta["weights"] == "ema"
    assert meta["source"].endswith("step-00000004")
    assert [o.version for o in model.opset_import if o.domain == ""] == [18]
    assert [i.name for i in model.graph.input] == ["lightness"]
    assert [o.name for o in model.graph.output] == ["chroma"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.fixture(scope="module")
def onnx_files(exported) -> dict[str, tuple[Path, Path]]:
    """source kind -> (the PyTorch source, its ONNX export)."""
    out, root = exported["out"], exported["root"]
    files = {"checkpoint": (exported["run"], out / ONNX_NAME)}
    for kind, name in (("dense", DENSE), ("compact", COMPACT)):
        result = export_onnx(out / name, root / f"onnx-{kind}")
        assert result["image_size"] is None  # an export does not know its training size
        files[kind] = (out / name, Path(result["onnx_file"]))
    return files


@pytest.mark.parametrize("kind", ["checkpoint", "dense", "compact"])
def test_onnxruntime_matches_pytorch_on_random_inputs(onnx_files, kind):
    source, onnx_path = onnx_files[kind]
    reference = load_generator(source).generator
    served = OnnxGenerator(onnx_path)
    assert served.depth == reference.depth == 3
    torch.manual_seed(1)
    for batch, height, width in [(1, 8, 8), (3, 32, 48), (4, 64, 32), (2, 24, 160)]:
        x = torch.rand(batch, 1, height, width) * 2 - 1
        with torch.no_grad():
            expected = reference(x)
        got = served(x)
        assert got.shape == (batch, 2, height, width) and got.dtype == torch.float32
        assert float((got - expected).abs().max()) < TOLERANCE, (kind, batch, height, width)
        assert float(expected.abs().mean()) > 0.05  # a real output, not ~0 on both sides


def test_load_generator_reads_onnx_files_and_folders(onnx_files, exported):
    trained = load_generator(onnx_files["checkpoint"][1])
    assert isinstance(trained.generator, OnnxGenerator)
    assert (trained.step, trained.weights, trained.image_size) == (4, "ema", 32)
    assert trained.image_size_known and trained.note is None
    folder = load_generator(onnx_files["dense"][1].parent)  # a folder holding only the .onnx
    assert isinstance(folder.generator, OnnxGenerator) and folder.image_size == 8
    assert not folder.image_size_known and "2**depth" in folder.note
    # A folder with safetensors too stays a PyTorch export.
    assert not isinstance(load_generator(exported["out"]).generator, OnnxGenerator)


def test_colorizer_with_onnx_gives_the_pytorch_pictures(onnx_files, exported, tmp_path):
    photo = render_scene(3, size=160).convert("L").crop((0, 0, 160, 120))
    onnx_colorizer = Colorizer.from_checkpoint(onnx_files["checkpoint"][1], device="cpu")
    torch_colorizer = Colorizer.from_checkpoint(exported["run"], device="cpu")
    assert onnx_colorizer.render_size == torch_colorizer.render_size == 32
    a = np.asarray(onnx_colorizer(photo), dtype=int)
    b = np.asarray(torch_colorizer(photo), dtype=int)
    assert a.shape == (120, 160, 3) and np.abs(a - b).max() <= 1
    # Sides that are not multiples of 2**depth: one line, from colorize and the generator.
    with pytest.raises(UserError, match=r"^--render-size: 36 must be a positive multiple of .* 8 "):
        Colorizer.from_checkpoint(onnx_files["checkpoint"][1], render_size=36, device="cpu")
    with pytest.raises(UserError, match="divisible by 2\\*\\*depth = 8"):
        OnnxGenerator(onnx_files["checkpoint"][1])(torch.zeros(1, 1, 36, 64))


def test_colorize_cli_runs_an_onnx_file(onnx_files, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        render_scene(i, size=120).convert("L").crop((0, 0, 120, 90)).save(photos / f"p{i}.png")
    onnx_path = onnx_files["checkpoint"][1]
    done = run_script(
        "scripts/colorize.py", "--checkpoint", onnx_path, photos, "--out", tmp_path / "out"
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["written"] == 3 and summary["render_size"] == 32
    image = Image.open(tmp_path / "out" / "p0.png")
    assert image.size == (120, 90) and image.mode == "RGB"


def test_evaluate_scores_an_onnx_file_as_its_checkpoint(onnx_files, tiny_shards, tmp_path):
    from distcolor.evaluate.report import write_report

    source, onnx_path = onnx_files["checkpoint"]
    quiet = {
        "num_workers": 0,
        "log": lambda *_: None,
        "images": 8,
        "mean_images": 8,
        "grid_images": 4,
    }
    served = write_report(onnx_path, tiny_shards, tmp_path / "onnx", **quiet)
    reference = write_report(source, tiny_shards, tmp_path / "torch", **quiet)
    assert served["model"]["images"] == reference["model"]["images"] > 0
    for metric in ("psnr", "ciede2000", "l1"):
        assert served["model"][metric] == pytest.approx(reference["model"][metric], rel=1e-4)
    assert served["checkpoint"] == {"path": str(onnx_path), "weights": "ema", "step": 4}


def blocked_env(tmp_path: Path, module: str) -> dict[str, str]:
    """An environment whose Python cannot import `module` (a sitecustomize marks it
    missing in sys.modules: `import module` raises ImportError, as without the package)."""
    site = tmp_path / f"no-{module}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def test_a_missing_onnxruntime_is_one_line_naming_the_extra(onnx_files, tmp_path):
    module = "onnxruntime"
    photos = tmp_path / "photos"
    photos.mkdir()
    render_scene(0, size=64).convert("L").save(photos / "p.png")
    done = subprocess.run(
        [sys.executable, "scripts/colorize.py", "--checkpoint", str(onnx_files["checkpoint"][1]),
         str(photos), "--out", str(tmp_path / "out")],
        cwd=ROOT, env=blocked_env(tmp_path, module), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and ONE_LINE.match(done.stderr), done.stderr
    assert f"({module} cannot be imported" in done.stderr
    assert "pip install 'distcolor[onnx]'" in done.stderr


def test_export_onnx_without_onnxscript_refuses_before_writing(exported, tmp_path):
    done = subprocess.run(
        [sys.executable, "scripts/export.py", "--checkpoint", str(exported["run"]),
         "--out", str(tmp_path / "exp"), "--onnx"],
        cwd=ROOT, env=blocked_env(tmp_path, "onnxscript"), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and ONE_LINE.match(done.stderr), done.stderr
    assert "onnxscript cannot be imported" in done.stderr and "distcolor[onnx]" in done.stderr
    assert not (tmp_path / "exp").exists()  # not even the safetensors


def foreign_model(path: Path) -> Path:
    """A valid ONNX model of something else: y = x + 1, no distcolor metadata."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def relabelled(good: Path, path: Path, edit) -> Path:
    """Our model with `edit(model)` applied (metadata or graph changed)."""
    model = onnx.load(str(good))
    edit(model)
    onnx.save(model, str(path))
    return path


def set_meta(key: str, value: str):
    def edit(model) -> None:
        for prop in model.metadata_props:
            if prop.key == key:
                prop.value = value

    return edit


def rename_input(model) -> None:
    old = model.graph.input[0].name
    model.graph.input[0].name = "x"
    for node in model.graph.node:
        node.input[:] = ["x" if name == old else name for name in node.input]


def external_weights(model) -> None:
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    init.data_location = onnx.TensorProto.EXTERNAL
    init.external_data.add(key="location", value="../../etc/passwd")
    init.ClearField("raw_data")


def external_constant(model) -> None:
    """A Constant node whose tensor reads a file beside the model (not an initializer)."""
    tensor = onnx.helper.make_tensor("secret", onnx.TensorProto.UINT8, [16], b"\0" * 16, raw=True)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="secret.bin")
    tensor.ClearField("raw_data")
    model.graph.node.append(onnx.helper.make_node("Constant", [], ["peek"], value=tensor))


def half_size_output(model) -> None:
    """The generator's chroma pooled to half size: the declared shapes stay symbolic."""
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["full" if name == out else name for name in node.output]
    model.graph.node.append(
        onnx.helper.make_node("AveragePool", ["full"], [out], kernel_shape=[2, 2], strides=[2, 2])
    )


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


HOSTILE = {
    "random bytes": (lambda good, p: written(p, os.urandom(4096)), "not an ONNX model"),
    "truncated": (
        lambda good, p: written(p, good.read_bytes()[: good.stat().st_size // 2]),
        "not an ONNX model",
    ),
    "empty": (lambda good, p: written(p, b""), "not an ONNX model"),
    "another model": (lambda good, p: foreign_model(p), "metadata format is None"),
    "wrong format": (
        lambda good, p: relabelled(good, p, set_meta("format", "x/1")),
        "metadata format is 'x/1'",
    ),
    "depth lies": (
        lambda good, p: relabelled(good, p, set_meta("depth", "4")),
        "depth, multiple and model config disagree",
    ),
    "bad image size": (
        lambda good, p: relabelled(good, p, set_meta("image_size", "50")),
        "image_size 50 is not a multiple",
    ),
    "renamed input": (lambda good, p: relabelled(good, p, rename_input), "'lightness' is not"),
    "external data": (
        lambda good, p: relabelled(good, p, external_weights),
        "stored outside the file",
    ),
    "external constant": (
        lambda good, p: relabelled(good, p, external_constant),
        "stored outside the file",
    ),
    "half-size output": (
        lambda good, p: relabelled(good, p, half_size_output),
        "not float32 (1, 2,",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_onnx_file_is_refused_in_one_line(onnx_files, tmp_path, name):
    make, expected = HOSTILE[name]
    path = make(onnx_files["checkpoint"][1], tmp_path / f"{name.replace(' ', '-')}.onnx")
    with pytest.raises(UserError) as caught:
        load_generator(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and expected in message, message


def test_colorize_cli_refuses_a_hostile_onnx_with_exit_2(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(os.urandom(2048))
    photos = tmp_path / "photos"
    photos.mkdir()
    render_scene(0, size=64).convert("L").save(photos / "p.png")
    done = run_script("scripts/colorize.py", "--checkpoint", bad, photos, "--out", tmp_path / "out")
    assert done.returncode == 2 and ONE_LINE.match(done.stderr), done.stderr
    assert str(bad) in done.stderr and "not an ONNX model" in done.stderr


def test_export_onnx_refusals(exported, tmp_path):
    onnx_path = exported["out"] / ONNX_NAME
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export_onnx(exported["run"], exported["out"])
    with pytest.raises(UserError, match="--opset: 11 is not an opset"):
        export_onnx(exported["run"], tmp_path / "x", opset=11)
    with pytest.raises(UserError, match="already an ONNX generator"):
        export_onnx(onnx_path, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / ONNX_NAME).exists()


@pytest.mark.slow
def test_an_export_failing_parity_leaves_no_file(exported, tmp_path, monkeypatch):
    """Parity is checked on the written temporary before the rename: a failing export
    leaves nothing under the final name, and no temporary."""
    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", -1.0)  # any difference fails
    with pytest.raises(UserError, match="differs from PyTorch by .*was not written"):
        export_onnx(exported["run"], tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def doc_snippet() -> str:
    """The numpy + onnxruntime block of docs/colorize.md."""
    text = (ROOT / "docs" / "colorize.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "import onnxruntime" in b]
    assert len(found) == 1
    return found[0]


def test_the_docs_torch_free_snippet_colours_as_colorize_does(onnx_files, tmp_path):
    photo = tmp_path / "photo.png"
    render_scene(7, size=200).convert("L").crop((0, 0, 200, 150)).save(photo)
    (tmp_path / "snippet.py").write_text(doc_snippet())
    program = (
        "import sys; sys.modules['torch'] = None\n"  # the snippet must not need torch
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import numpy as np, snippet\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, "
        f"snippet.colorize_onnx({str(onnx_files['checkpoint'][1])!r}, {str(photo)!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    ours = np.load(tmp_path / "out.npy").astype(int)
    reference = np.asarray(
        Colorizer.from_checkpoint(onnx_files["checkpoint"][0], device="cpu")(photo)
    )
    assert ours.shape == reference.shape == (150, 200, 3)
    difference = np.abs(ours - reference.astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.05  # 8-bit rounding apart
