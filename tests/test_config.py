from pathlib import Path

import pytest
import yaml

from distcolor.config import Config, ConfigError, config_to_yaml, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_file_is_valid():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg.data.synthetic is not None and cfg.data.synthetic.count >= 1000
    assert cfg.data.image_size % 2**cfg.model.generator.depth == 0


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        ROOT / "configs/default.yaml",
        [
            "train.max_steps=50",
            "data.batch_size=8",
            "train.betas=[0.9, 0.99]",
            "train.lr_g=1e-3",
            "run.name=exp1",
        ],
    )
    assert cfg.train.max_steps == 50 and cfg.data.batch_size == 8
    assert cfg.train.betas == [0.9, 0.99] and cfg.train.lr_g == 1e-3
    assert cfg.run_dir == Path("runs/exp1")


def test_synthetic_section_can_be_set_from_overrides_when_null():
    cfg = load_config(None, ["data.synthetic.count=100"])
    assert cfg.data.synthetic.count == 100


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "data.batch_size=0",
            "data.batch_size: input should be greater than or equal to 1 (got 0)",
        ),
        ("data.batchsize=8", "data.batchsize: unknown key"),
        ("trian.max_steps=5", "trian: unknown key"),
        ("train.max_steps=ten", "train.max_steps: input should be a valid integer (got 'ten')"),
        ("train.max_steps=1.5", "train.max_steps: input should be a valid integer"),
        ("train.max_steps=true", "train.max_steps: input should be a valid integer"),
        (
            "train.mixed_precision=fp8",
            "train.mixed_precision: input should be 'no', 'bf16' or 'fp16'",
        ),
        ("train.betas=[0.5, 1.5]", "train.betas: each must be in [0, 1)"),
        (
            "data.image_size=48",
            "data.image_size: 48 is not divisible by 2**model.generator.depth = 64",
        ),
        (
            "model.discriminator.layers=6",
            "data.image_size: 64 px is too small for a 6-layer discriminator "
            "(model.discriminator.layers = 6 needs >= 192 px)",
        ),
        ("run.name=a/b", "run.name: string should match pattern"),
        ("data.batch_size.x=1", "data.batch_size: is not a section"),
        ("train.max_steps", "override 'train.max_steps': expected section.key=value"),
        ("run.seed=100000000000000000000000", "run.seed: input should be less than"),
        ("train.lr_g=.inf", "train.lr_g: input should be a finite number"),
        ("data.shards=", "data.shards: string should have at least 1 character"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs/default.yaml", [override])
    message = str(err.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="--config: .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    bad.write_text("data: {batch_size: [}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("model:\n  g_widht: 3\n")
    with pytest.raises(ConfigError, match=r"^model\.g_widht: unknown key$"):
        load_config(bad)


def test_yaml_round_trip_gives_the_same_config():
    cfg = load_config(ROOT / "configs/default.yaml", ["train.max_steps=7"])
    again = Config.model_validate(yaml.safe_load(config_to_yaml(cfg)))
    assert again == cfg


def test_bare_yaml_no_means_no_mixed_precision(tmp_path):
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(path).train.mixed_precision == "no"
    assert load_config(None, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"
