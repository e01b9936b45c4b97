"""colorize: full-resolution output that keeps the input's lightness, every input kind,
the training path's preprocessing, the CLI's file handling and the notebook API."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from kornia.color import lab_to_rgb, rgb_to_lab
from PIL import Image

import distcolor
from distcolor.checkpoint import load_checkpoint
from distcolor.color import (
    fit_chroma,
    fitted_srgb,
    grayscale,
    lab_inputs,
    lab_to_srgb,
    lightness_input,
)
from distcolor.config import load_config
from distcolor.data.batching import eval_view, make_batch
from distcolor.data.synthetic import render_scene
from distcolor.errors import UserError
from distcolor.infer.colorizer import Colorizer
from distcolor.infer.export import export_generator
from distcolor.infer.photos import Unreadable, read_photo
from distcolor.infer.weights import load_generator
from distcolor.models.build import build_generator
from distcolor.train.loop import train
from tests.conftest import tiny_overrides
from tests.helpers import assert_bitwise_equal, run_script
from tests.icc_profiles import cmyk_profile

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.generator.width=8", "model.generator.depth=5"]


def vivid_generator(bias: tuple[float, float] = (1.5, -1.2)) -> torch.nn.Module:
    """An untrained U-Net whose output layer is biased to strong colours (by default a* ~
    +99, b* ~ -84 plus the net's variation: far outside sRGB for most lightness, the hard
    case)."""
    generator = build_generator(load_config(None, TINY).model)
    last = dict(generator.named_modules())[generator.edge_layers[-1]]
    with torch.no_grad():
        last.bias.copy_(torch.tensor(bias))
    return generator.eval()


def lightness_of(image: Image.Image) -> torch.Tensor:
    """L* (H, W) of an image, as sRGB (a gray image as gray sRGB)."""
    rgb = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    return rgb_to_lab(rgb)[0, 0]


def photo_like(width: int, height: int, seed: int = 3) -> Image.Image:
    """A textured landscape (sky, mountains, trees, water), cropped to width x height;
    larger than the scenes' 512 px, it is upscaled and given film grain: fine detail that
    only a full-resolution lightness keeps."""
    side = max(width, height)
    scene = render_scene(seed, size=min(max(side, 32), 512))
    if side > 512:
        grain = np.random.default_rng(seed).normal(0, 8, (side, side, 1))
        big = np.asarray(scene.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float64)
        scene = Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8))
    return scene.crop((0, 0, width, height))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_shards):
    """A 3-step tiny run (checkpoint + TensorBoard logs) and its export."""
    root = tmp_path_factory.mktemp("colorize")
    train(load_config(None, tiny_overrides(root, tiny_shards, **{"train.ema_half_life": 100})))
    run_dir = root / "runs" / "tiny"
    export_generator(run_dir, root / "export")
    return run_dir, root / "export"


# -- full resolution, lightness kept ---------------------------------------------------------


def test_a_large_photo_keeps_its_size_and_lightness_at_full_resolution():
    photo = photo_like(1600, 1200).convert("L")  # a black-and-white photo, 4:3
    colorizer = Colorizer(vivid_generator(), render_size=64, device="cpu")
    out = colorizer(photo)
    assert out.size == photo.size and out.mode == "RGB"
    l_in, l_out = lightness_of(photo), lightness_of(out)
    assert (l_out - l_in).abs().mean() < 1.0  # the bound, in L* units
    assert np.corrcoef(l_out.ravel(), l_in.ravel())[0, 1] >= 0.999
    # The output really is coloured, and vivid chroma clipped in RGB would have broken L*:
    assert np.asarray(out.convert("HSV"))[..., 1].mean() > 40
    lightness, ab = _as_scaled(photo, out, colorizer)
    naive = lab_to_srgb(lightness, ab)  # clip in RGB instead of fitting the chroma
    naive_l = rgb_to_lab(naive)[0, 0]
    assert (naive_l - l_in).abs().mean() > 1.0


def test_the_outputs_grayscale_correlates_with_the_input():
    # PIL's grayscale (601 luma of gamma-encoded RGB) is not L*: at equal L*, strong
    # colours differ in luma, so this is checked at a plausible, still strong, chroma.
    photo = photo_like(1200, 900, seed=8).convert("L")
    colorizer = Colorizer(vivid_generator((0.5, -0.4)), render_size=64, device="cpu")
    out = colorizer(photo)
    assert np.asarray(out.convert("HSV"))[..., 1].mean() > 25  # visibly coloured
    gray_out = np.asarray(grayscale(out), dtype=np.float64).ravel()
    assert np.corrcoef(gray_out, np.asarray(photo, dtype=np.float64).ravel())[0, 1] >= 0.99


def _as_scaled(photo, out, colorizer):
    """The photo's scaled L and the colorizer's unfitted full-size chroma."""
    gray = torch.from_numpy(np.array(photo))[None, None]
    chroma = colorizer.predict([photo])
    full = torch.nn.functional.interpolate(
        chroma, size=photo.size[::-1], mode="bilinear", align_corners=False
    )
    return lightness_input(gray), full


def test_fitted_chroma_stays_in_gamut_keeps_hue_and_only_shrinks():
    torch.manual_seed(0)
    lightness = torch.rand(1, 1, 32, 32) * 2 - 1
    chroma = torch.randn(1, 2, 32, 32) * 0.6
    fitted = fit_chroma(lightness, chroma)
    factor = fitted.norm(dim=1) / chroma.norm(dim=1)
    assert factor.max() <= 1 + 1e-6 and factor.min() >= 0
    # Same hue: the fitted vector is a non-negative multiple of the prediction.
    cross = fitted[:, 0] * chroma[:, 1] - fitted[:, 1] * chroma[:, 0]
    assert cross.abs().max() < 1e-5
    lab = torch.cat([(lightness + 1) * 50, fitted * 110], dim=1)
    rgb = lab_to_rgb(lab, clip=False)
    assert rgb.min() > -1e-3 and rgb.max() < 1 + 1e-3
    mid, in_gamut = lightness * 0.8, chroma * 0.01  # tiny chroma at mid L*: untouched
    assert torch.equal(fit_chroma(mid, in_gamut), in_gamut)


def test_stripes_give_the_whole_image_result(monkeypatch):
    photo = photo_like(203, 157).convert("L")
    colorizer = Colorizer(vivid_generator(), render_size=64, device="cpu")
    whole = np.asarray(colorizer(photo))
    monkeypatch.setattr("distcolor.infer.colorizer.STRIPE_PIXELS", 203 * 10)  # 16 stripes
    striped = np.asarray(colorizer(photo))
    assert np.abs(whole.astype(int) - striped.astype(int)).max() <= 1


def test_saturation_scales_the_colour():
    photo = photo_like(96, 64, seed=5).convert("L")
    colorizer = Colorizer(vivid_generator(), render_size=32, device="cpu", saturation=0.0)
    gray = np.asarray(colorizer(photo)).astype(int)
    assert np.abs(gray - np.asarray(photo)[..., None]).max() <= 1  # no chroma at all
    colorizer.saturation = 0.3
    weak = np.asarray(colorizer(photo).convert("HSV"))[..., 1].mean()
    colorizer.saturation = 1.0
    strong = np.asarray(colorizer(photo).convert("HSV"))[..., 1].mean()
    assert strong > weak * 1.5


# -- one preprocessing path --------------------------------------------------------------


class Recording(torch.nn.Module):
    """Wraps a generator and keeps the input it was given."""

    def __init__(self, generator):
        super().__init__()
        self.generator, self.depth, self.inputs = generator, generator.depth, []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.generator(x)


def test_colorize_feeds_the_network_exactly_what_training_does():
    # A colour photo whose red channel differs from its grayscale: feeding the red channel
    # (the tutorial bug), or any other gray, would not match the loader's input.
    rgb = render_scene(7, size=32)
    red = np.asarray(rgb)[..., 0]
    assert np.abs(red.astype(int) - np.asarray(grayscale(rgb)).astype(int)).mean() > 5
    batch = make_batch([eval_view(rgb, 32)], ["k"], ["s"], 0)
    training_input, _ = lab_inputs(batch, torch.device("cpu"))
    recording = Recording(vivid_generator())
    Colorizer(recording, render_size=32, device="cpu")(rgb)
    assert torch.equal(recording.inputs[0], training_input)


# -- every input kind --------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str, **options) -> Path:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def input_kinds(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray, np.ndarray | None]]:
    """name -> (file, expected upright gray uint8 (H, W), expected alpha or None)."""
    rgb = photo_like(48, 32)
    gray = np.asarray(grayscale(rgb))
    alpha = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (32, 1))
    kinds = {}
    kinds["gray"] = (_write(tmp_path, "gray.png", _encoded(rgb.convert("L"), "PNG")), gray, None)
    kinds["rgb"] = (_write(tmp_path, "rgb.png", _encoded(rgb, "PNG")), gray, None)
    palette = rgb.quantize(64)
    kinds["palette"] = (
        _write(tmp_path, "palette.gif", _encoded(palette, "GIF")),
        np.asarray(grayscale(palette.convert("RGB"))),
        None,
    )
    sixteen = (gray.astype(np.uint16) * 257 + 100).astype(np.uint16)  # full 16-bit range
    kinds["16-bit"] = (
        _write(tmp_path, "deep.png", _encoded(Image.fromarray(sixteen), "PNG")),
        np.clip(np.rint(sixteen / 257.0), 0, 255).astype(np.uint8),
        None,
    )
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(alpha))
    kinds["rgba"] = (_write(tmp_path, "rgba.png", _encoded(rgba, "PNG")), gray, alpha)
    la = Image.merge("LA", [rgb.convert("L"), Image.fromarray(alpha)])
    kinds["gray+alpha"] = (_write(tmp_path, "la.png", _encoded(la, "PNG")), gray, alpha)
    cmyk = rgb.convert("CMYK")
    kinds["cmyk"] = (
        _write(tmp_path, "cmyk.jpg", _encoded(cmyk, "JPEG", quality=100)),
        np.asarray(
            grayscale(Image.open(io.BytesIO(_encoded(cmyk, "JPEG", quality=100))).convert("RGB"))
        ),
        None,
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    sideways = rgb.convert("L").transpose(Image.Transpose.ROTATE_90)  # stored on its side
    kinds["exif-rotated"] = (
        _write(tmp_path, "exif.jpg", _encoded(sideways, "JPEG", quality=100, exif=exif)),
        None,  # filled below: JPEG rounding; checked against the upright decode
        None,
    )
    upright = Image.open(kinds["exif-rotated"][0])
    upright = upright.transpose(Image.Transpose.ROTATE_270)
    kinds["exif-rotated"] = (kinds["exif-rotated"][0], np.asarray(upright), None)
    return kinds


def test_every_input_kind_reads_to_the_expected_gray_and_alpha(tmp_path):
    for name, (path, gray, alpha) in input_kinds(tmp_path).items():
        photo = read_photo(path)
        assert photo.gray.mode == "L", name
        got = np.asarray(photo.gray).astype(int)
        assert got.shape == gray.shape, name
        assert np.abs(got - gray).max() <= 1, name
        if alpha is None:
            assert photo.alpha is None, name
        else:
            assert np.array_equal(np.asarray(photo.alpha), alpha), name


def test_pils_16_bit_convert_would_have_clipped(tmp_path):
    # Why photos.py scales 16-bit values itself: PIL's convert("L") clips them.
    sixteen = np.full((4, 4), 40000, dtype=np.uint16)
    assert np.asarray(Image.fromarray(sixteen).convert("L")).max() == 255
    path = _write(tmp_path, "d.png", _encoded(Image.fromarray(sixteen), "PNG"))
    assert np.asarray(read_photo(path).gray).max() == round(40000 / 257)


def test_a_cmyk_jpeg_with_a_profile_is_converted_through_it(tmp_path):
    # Ink corners mapped to chosen Lab colours: pure cyan ink is a mid-dark blue here.
    corners = {
        corner: (max(0.0, 100 - 30 * sum(corner[:3]) - 60 * corner[3]), 0.0, 0.0)
        for corner in itertools.product((0, 1), repeat=4)
    }
    corners[(1, 0, 0, 0)] = (40.0, -10.0, -40.0)
    profile = cmyk_profile(corners)
    image = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    path = _write(tmp_path, "c.jpg", _encoded(image, "JPEG", quality=100, icc_profile=profile))
    naive = np.asarray(grayscale(Image.open(path).convert("RGB"))).mean()
    managed = np.asarray(read_photo(path).gray).mean()
    assert abs(managed - naive) > 10  # the profile, not PIL's naive formula, decided


def test_colorize_output_keeps_size_mode_and_alpha_for_every_kind(tmp_path):
    colorizer = Colorizer(vivid_generator(), render_size=32, device="cpu")
    for name, (path, gray, alpha) in input_kinds(tmp_path).items():
        out = colorizer(path)
        assert out.size == (gray.shape[1], gray.shape[0]), name
        assert out.mode == ("RGBA" if alpha is not None else "RGB"), name
        if alpha is not None:
            assert np.array_equal(np.asarray(out.getchannel("A")), alpha), name
        l_out = lightness_of(out.convert("RGB"))
        l_in = lightness_of(Image.fromarray(gray))
        assert (l_out - l_in).abs().mean() < 1.0, name


def test_unreadable_inputs_say_why(tmp_path):
    junk = _write(tmp_path, "junk.jpg", b"not an image at all")
    with pytest.raises(Unreadable, match="not an image"):
        read_photo(junk)
    full = _encoded(photo_like(64, 64), "JPEG")
    cut = _write(tmp_path, "cut.jpg", full[: len(full) // 3])
    with pytest.raises(Unreadable):
        read_photo(cut)


# -- loading: checkpoint folder, export, weights only -------------------------------------


def test_a_run_a_checkpoint_and_its_export_colour_alike(run):
    run_dir, export = run
    photo = photo_like(80, 60).convert("L")
    from_run = Colorizer.from_checkpoint(run_dir, device="cpu")
    from_ckpt = Colorizer.from_checkpoint(run_dir / "checkpoints" / "step-00000003", device="cpu")
    from_export = Colorizer.from_checkpoint(export / "generator.compact.safetensors", device="cpu")
    assert from_run.render_size == 32  # the training size, from the checkpoint's config
    images = [np.asarray(c(photo)) for c in (from_run, from_ckpt, from_export)]
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
    state = load_checkpoint(run_dir / "checkpoints" / "step-00000003")
    for weights, key in (("live", "G"), ("ema", "G_ema")):
        trained = load_generator(run_dir, weights=weights)
        assert trained.weights == weights and trained.step == 3
        assert_bitwise_equal(trained.generator.state_dict(), state[key], key)


def test_a_checkpoint_holding_a_pickled_object_is_refused(run, tmp_path):
    run_dir, _ = run
    bad = tmp_path / "bad" / "checkpoints" / "step-00000001"
    bad.mkdir(parents=True)
    torch.save({"G": {"w": torch.zeros(1)}, "evil": Path("x")}, bad / "state.pt")
    (bad / "COMPLETE").write_text("state.pt\n")
    with pytest.raises(UserError) as err:
        load_generator(bad)
    assert "\n" not in str(err.value)


def test_render_size_must_fit_the_network():
    with pytest.raises(UserError, match="multiple of 2\\*\\*depth = 32"):
        Colorizer(vivid_generator(), render_size=48, device="cpu")


def test_notebook_api(run):
    run_dir, _ = run
    photo = photo_like(70, 50).convert("L")
    out = distcolor.colorize(photo, checkpoint=run_dir, device="cpu")
    assert isinstance(out, Image.Image) and out.size == photo.size
    again = distcolor.colorize(photo, checkpoint=run_dir, device="cpu", saturation=0)
    assert np.abs(np.asarray(again).astype(int) - np.asarray(photo)[..., None]).max() <= 1


# -- the CLI -------------------------------------------------------------------------------


def colorize_cli(*args: str) -> subprocess.CompletedProcess:
    return run_script("scripts/colorize.py", *args)


def test_cli_colours_folders_recursively_skips_junk_and_keeps_inputs(run, tmp_path):
    run_dir, _ = run
    photos = tmp_path / "photos"
    (photos / "1950s" / "summer").mkdir(parents=True)
    photo_like(90, 60).convert("L").save(photos / "a.jpg", quality=95)
    photo_like(40, 100, seed=4).save(photos / "1950s" / "summer" / "b.png")
    rgba = photo_like(50, 50, seed=6)
    rgba.putalpha(128)
    rgba.save(photos / "1950s" / "c.jpg.png")
    (photos / "1950s" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (photos / "notes.txt").write_text("not an image, not picked up")
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    out = tmp_path / "coloured"
    proc = colorize_cli("--checkpoint", run_dir, photos, "--out", out, "--side-by-side")
    assert proc.returncode == 1, proc.stderr  # 1: an input (broken.jpg) has no output
    assert proc.stderr.strip().startswith("error: 1 of 4 inputs have no output: 1 skipped")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["written"] == 3 and result["skipped"] == 1
    assert "broken.jpg" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert Image.open(out / "a.jpg").size == (180, 60)  # side by side: twice as wide
    assert Image.open(out / "1950s" / "summer" / "b.png").size == (80, 100)
    assert Image.open(out / "1950s" / "c.jpg.png").mode == "RGBA"
    assert {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()} == before
    # Again: existing outputs are kept, not recomputed or replaced.
    stamp = (out / "a.jpg").stat().st_mtime_ns
    proc = colorize_cli("--checkpoint", run_dir, photos, "--out", out)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["existing"] == 3
    assert (out / "a.jpg").stat().st_mtime_ns == stamp


def test_cli_alpha_that_a_jpeg_cannot_hold_is_written_as_png(run, tmp_path):
    run_dir, _ = run
    la = Image.merge("LA", [photo_like(30, 20).convert("L"), Image.new("L", (30, 20), 200)])
    la.save(tmp_path / "x.jpg", format="PNG")  # named .jpg, holds a PNG with alpha
    proc = colorize_cli("--checkpoint", run_dir, tmp_path / "x.jpg", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "o" / "x.jpg").exists()
    out = Image.open(tmp_path / "o" / "x.jpg.png")
    assert out.format == "PNG" and out.mode == "RGBA" and out.size == (30, 20)
    assert np.asarray(out.getchannel("A")).min() == 200


@pytest.mark.parametrize(
    "mistake, message",
    [
        (["--checkpoint", "nowhere", "IN", "--out", "OUT"], "does not exist"),
        (["--checkpoint", "RUN", "IN", "--out", "IN"], "would overwrite the input"),
        (
            ["--checkpoint", "RUN", "missing.jpg", "--out", "OUT"],
            "input missing.jpg does not exist",
        ),
        (["--checkpoint", "RUN", "IN", "--out", "OUT", "--render-size", "40"], "--render-size"),
    ],
)
def test_cli_mistakes_are_one_line(run, tmp_path, mistake, message):
    run_dir, _ = run
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo_like(40, 30).save(inputs / "p.png")
    names = {"RUN": run_dir, "IN": inputs, "OUT": tmp_path / "out"}
    proc = colorize_cli(*[names.get(a, a) for a in mistake])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert (inputs / "p.png").is_file() and len(list(inputs.iterdir())) == 1


# -- review findings: each once a bug ----------------------------------------------------


def test_an_out_folder_inside_the_input_folder_is_not_read_back(run, tmp_path):
    run_dir, _ = run
    photo_like(40, 30).save(tmp_path / "p.png")
    for _ in range(2):  # the second run must not find coloured/p.png as an input
        proc = colorize_cli("--checkpoint", run_dir, tmp_path, "--out", tmp_path / "coloured")
        assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["existing"] == 1 and result["written"] == 0


def test_inputs_that_differ_only_in_suffix_both_get_outputs(tmp_path):
    from distcolor.infer.files import output_path, plan_jobs

    for name in ("scan.jpg", "scan.tif", "scan.png"):
        photo_like(32, 32).save(tmp_path / name)
    jobs = plan_jobs([tmp_path, tmp_path / "scan.jpg"], tmp_path / "out")  # scan.jpg twice
    assert sorted(j.target.name for j in jobs) == ["scan.jpg", "scan.png", "scan.tif"]
    rgba = Image.new("RGBA", (4, 4))
    assert output_path(tmp_path / "out" / "scan.jpg", rgba)[0].name == "scan.jpg.png"


def test_photos_with_trns_transparency_la_modes_and_bad_profiles(tmp_path):
    gray = Image.new("L", (6, 4), 90)
    gray.info["transparency"] = 90
    gray.save(tmp_path / "t.png", transparency=90)
    photo = read_photo(tmp_path / "t.png")
    assert photo.alpha is not None and np.asarray(photo.alpha).max() == 0
    from distcolor.infer.photos import photo_of

    premultiplied = Image.new("RGBA", (5, 5), (200, 100, 50, 128)).convert("RGBa")
    assert photo_of(premultiplied).alpha is not None
    # An RGB photo carrying a CMYK profile: the profile cannot apply; the photo still reads.
    corners = {c: (50.0, 0.0, 0.0) for c in itertools.product((0, 1), repeat=4)}
    photo_like(32, 32).save(tmp_path / "p.jpg", icc_profile=cmyk_profile(corners))
    assert read_photo(tmp_path / "p.jpg").gray.size == (32, 32)


def test_non_finite_predictions_come_out_gray_with_their_lightness():
    lightness = torch.full((1, 1, 4, 4), 0.2)
    chroma = torch.full((1, 2, 4, 4), float("nan"))
    rgb = fitted_srgb(lightness, chroma)
    assert torch.isfinite(rgb).all()
    assert torch.allclose(rgb, lab_to_srgb(lightness, torch.zeros_like(chroma)), atol=1e-6)


def test_unwritable_outputs_are_skipped_and_a_bad_device_is_one_line(run, tmp_path):
    from distcolor.infer.files import colorize_files, plan_jobs

    (tmp_path / "in").mkdir()
    photo_like(40, 30).save(tmp_path / "in" / "a.png")
    photo_like(40, 30).save(tmp_path / "in" / "b.png")
    jobs = plan_jobs([tmp_path / "in"], tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png.partial").mkdir()  # not a folder we can write a file over
    (tmp_path / "out" / ".a.png.partial").mkdir()
    colorizer = Colorizer(vivid_generator(), render_size=32, device="cpu")
    messages = []
    summary = colorize_files(colorizer, jobs, warn=messages.append)
    assert summary.written == [str(tmp_path / "out" / "b.png")]
    assert "a.png" in next(iter(summary.failed)) and "cannot write" in messages[0]
    assert not summary.skipped and summary.problem().startswith("1 of 2 inputs have no output")
    run_dir, _ = run
    proc = colorize_cli("--checkpoint", run_dir, tmp_path / "in", "--out", tmp_path / "o2",
                        "--device", "gpu")  # fmt: skip
    assert proc.returncode == 2 and "--device: gpu cannot be used" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
