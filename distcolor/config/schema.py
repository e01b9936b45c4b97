"""The whole config: its sections together, and the checks that span more than one."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from distcolor.config.sections import (
    DataConfig,
    DeepSpeedConfig,
    ModelConfig,
    PruneConfig,
    RunConfig,
    Section,
    TrainConfig,
)
from distcolor.sizes import smallest_patchgan_input, unet_multiple


class Config(Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig | None = None
    """Lottery-ticket pruning (null: off)."""
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()

    @model_validator(mode="after")
    def _compile_with_ddp(self) -> Config:
        if self.train.compile and self.train.backend == "deepspeed":
            raise ValueError(
                "train.compile: not supported with train.backend=deepspeed (its engines wrap "
                "and partition the networks); compile with the ddp backend"
            )
        return self

    @model_validator(mode="after")
    def _prune_schedule_fits(self) -> Config:
        prune = self.prune
        if prune is None:
            return self
        if prune.at_steps[-1] > self.train.max_steps:
            raise ValueError(
                f"prune.at_steps: step {prune.at_steps[-1]} is beyond train.max_steps = "
                f"{self.train.max_steps}"
            )
        if prune.rewind == "step" and prune.rewind_step >= prune.at_steps[0]:
            raise ValueError(
                f"prune.rewind_step: {prune.rewind_step} must come before the first round "
                f"(prune.at_steps[0] = {prune.at_steps[0]})"
            )
        return self

    @model_validator(mode="after")
    def _weights_need_resampling(self) -> Config:
        if self.data.source_weights and self.data.sampling != "resampled":
            raise ValueError(
                "data.source_weights: needs data.sampling=resampled (an epoch reads every "
                "sample once, which fixes each source's share)"
            )
        return self

    @model_validator(mode="after")
    def _decay_within_run(self) -> Config:
        start = self.train.lr_decay_start
        if (
            self.train.lr_schedule == "linear_decay"
            and start is not None
            and (start >= self.train.max_steps)
        ):
            raise ValueError(
                f"train.lr_decay_start: {start} must be below train.max_steps = "
                f"{self.train.max_steps}"
            )
        return self

    @model_validator(mode="after")
    def _sizes_fit_networks(self) -> Config:
        size, depth = self.data.image_size, self.model.generator.depth
        if size % unet_multiple(depth):
            raise ValueError(
                f"data.image_size: {size} is not divisible by 2**model.generator.depth = "
                f"{unet_multiple(depth)}"
            )
        layers = self.model.discriminator.layers
        if size < smallest_patchgan_input(layers):
            raise ValueError(
                f"data.image_size: {size} px is too small for a {layers}-layer discriminator "
                f"(model.discriminator.layers = {layers} needs >= "
                f"{smallest_patchgan_input(layers)} px)"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name
