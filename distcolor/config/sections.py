"""The config's sections, one pydantic model each: every key, its type, bounds and default.

Each section forbids unknown keys and checks types strictly, so a typo such as
`data.batchsize=8` stops the run with one line naming the key instead of being silently
ignored. Checks that span sections live on `Config` (schema.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    # strict: no "8" -> 8 or true -> 1 coercions; YAML already gives real types.
    model_config = ConfigDict(
        extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False
    )


class RunConfig(Section):
    name: str = Field("default", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    """Run folder name: outputs go to `<out_dir>/<name>/`."""
    out_dir: str = "runs"
    """Parent folder of all runs."""
    seed: int = Field(0, ge=0, lt=2**31)
    """Seeds model initialisation, data order, augmentation and dropout."""


class SyntheticConfig(Section):
    """Procedural scenes built into `data.shards` when that folder has no shards yet."""

    count: int = Field(3000, ge=10)
    """Number of scenes (split train/test by `data.test_fraction`)."""
    size: int = Field(96, ge=32, le=512)
    """Side of each square scene in pixels."""
    seed: int = 0
    """Scene seed: the same seed always gives the same dataset."""
    shard_size: int = Field(100, ge=1)
    """Samples per tar shard."""
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of samples held out for testing (the original project's 80/20 split)."""


class DataConfig(Section):
    shards: str = Field("shards/default", min_length=1)
    """Folder with train-*.tar, test-*.tar and manifest.json (scripts/make_shards.py)."""
    synthetic: SyntheticConfig | None = None
    """If set and `shards` holds no shards, build this synthetic dataset there first."""
    image_size: int = Field(64, ge=16)
    """Side of the square training crop; must be divisible by
    2**model.generator.depth."""
    batch_size: int = Field(16, ge=1)
    """Images per step on each process."""
    num_workers: int = Field(2, ge=0)
    """Loader worker processes per rank (decode + grayscale + crop run there)."""
    shuffle_buffer: int = Field(256, ge=1)
    """Samples held in the per-worker shuffle buffer."""
    train_urls: str | None = None
    """Read train tars from here instead of `shards`: a brace pattern, `::` list or `pipe:`
    URL (e.g. `pipe:aws s3 cp s3://b/set/train-faces-{000000..000009}.tar -`); each must
    name a shard of the manifest in `shards`."""
    test_urls: str | None = None
    """As `train_urls`, for the test split."""
    sampling: Literal["epochs", "resampled"] = "epochs"
    """epochs: every train sample once per epoch, readers disjoint (needs a shard per rank
    x worker). resampled: shards drawn with replacement, endless; allows source_weights."""
    source_weights: dict[str, float] | None = None
    """Share of samples drawn from each source (e.g. {faces: 1, flowers: 1}), whatever
    their sizes; unlisted sources are not used. Needs sampling=resampled."""

    @field_validator("source_weights")
    @classmethod
    def _weights_valid(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is not None and (not weights or any(w < 0 for w in weights.values())):
            raise ValueError(f"weights must be >= 0, at least one source (got {weights})")
        return weights


Activation = Literal["relu", "leaky_relu", "penalized_tanh"]
Norm = Literal["batch", "instance", "none"]


class GeneratorConfig(Section):
    """pix2pix U-Net: `depth` stride-2 encoder blocks, mirrored decoder, skip connections."""

    in_channels: Literal[1] = 1
    """Lightness L; fixed by the Lab pipeline (listed so configs state the whole network)."""
    out_channels: Literal[2] = 2
    """Chroma a, b; fixed by the Lab pipeline."""
    width: int = Field(32, ge=1)
    """Base filters (pix2pix ngf); block k has width * min(2**k, 8). 64 in the paper."""
    depth: int = Field(6, ge=2, le=10)
    """Down-samplings; input sides must be divisible by 2**depth. 8 in the paper (256 px)."""
    norm: Norm = "batch"
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    """Dropout in the inner 8x-wide decoder blocks, as pix2pix."""
    down_activation: Activation = "leaky_relu"
    """Encoder hidden activation (pix2pix: LeakyReLU 0.2)."""
    up_activation: Activation = "relu"
    """Decoder hidden activation (pix2pix: ReLU); the output layer is always tanh."""


class DiscriminatorConfig(Section):
    """pix2pix PatchGAN on (L, a, b): `layers` stride-2 convs, then two stride-1 ones."""

    in_channels: Literal[3] = 3
    """Lightness + chroma pairs (a conditional discriminator); fixed by the Lab pipeline."""
    width: int = Field(32, ge=1)
    """Base filters (pix2pix ndf); 64 in the paper."""
    layers: int = Field(3, ge=1, le=6)
    """Stride-2 layers; 3 gives the 70x70 PatchGAN."""
    norm: Norm = "batch"
    activation: Activation = "leaky_relu"


class ModelConfig(Section):
    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    leaky_slope: float = Field(0.2, ge=0.0, lt=1.0)
    """Negative slope of leaky_relu (pix2pix: 0.2)."""
    tanh_penalty: float = Field(0.25, ge=0.0, le=1.0)
    """`a` of penalized_tanh: tanh(x) for x > 0, a * tanh(x) otherwise (Xu et al. 2016)."""
    init_std: float = Field(0.02, gt=0.0)
    """Conv weights ~ N(0, init_std) and norm scales ~ N(1, init_std), as pix2pix."""
    init_seed: int | None = Field(None, ge=0, lt=2**31)
    """Seed of the initial weights (default: run.seed); recorded in every checkpoint so the
    initial weights can be rebuilt exactly (lottery-ticket rewinding)."""
    channels_last: bool = False
    """NHWC memory format for both networks and their inputs (faster convs on GPUs)."""
    sync_batchnorm: bool = False
    """Batch-norm statistics over the whole global batch (SyncBatchNorm, GPUs only) instead
    of each process's own batch."""


class TrainConfig(Section):
    max_steps: int = Field(300, ge=1)
    """Optimizer steps (each: one D update, one G update)."""
    lr_g: float = Field(2e-4, gt=0.0)
    lr_d: float = Field(2e-4, gt=0.0)
    betas: list[float] = Field(default_factory=lambda: [0.5, 0.999], min_length=2, max_length=2)
    """(beta1, beta2) of both optimizers; pix2pix's low beta1 keeps GAN updates responsive."""
    optimizer: Literal["adam", "adabelief"] = "adam"
    """adam (pix2pix) or adabelief (Zhuang et al. 2020, one of the original experiments)."""
    eps: float | None = Field(None, ge=0.0)
    """Denominator epsilon; default 1e-8 for adam, 1e-16 for adabelief (inside its sqrt)."""
    weight_decay: float = Field(0.0, ge=0.0)
    decoupled_weight_decay: bool = True
    """Decay the weights directly (AdamW style) rather than adding wd * w to the gradient."""
    gan_loss: Literal["lsgan", "vanilla"] = "lsgan"
    """lsgan: MSE on D's scores (the original project); vanilla: BCE with logits."""
    l1_weight: float = Field(100.0, ge=0.0)
    """Lambda of the generator's L1 term (adversarial + lambda * L1)."""
    lr_schedule: Literal["constant", "linear_decay"] = "constant"
    """linear_decay: constant until lr_decay_start, then linearly towards 0 (pix2pix)."""
    lr_decay_start: int | None = Field(None, ge=0)
    """Step after which linear_decay starts (default: half of max_steps)."""
    ema_half_life: float | None = Field(None, gt=0.0)
    """Images (over all ranks) for the generator's weight average to halve an old weight's
    share (StyleGAN2: 10,000); null turns the EMA off. When on, samples and evaluation use
    the averaged generator."""
    ema_rampup: float | None = Field(0.05, gt=0.0)
    """Early on, cap the half-life at this share of the images seen so far (StyleGAN2: 0.05),
    so the average does not drag the random initial weights along."""
    peak_flops: float | None = Field(None, gt=0.0)
    """Peak FLOP/s of one device for the model-FLOP-utilisation log; default: a table of
    known GPUs (dense bf16/fp16), none on CPU."""
    mixed_precision: Literal["no", "bf16", "fp16"] | None = None
    """Autocast dtype of the forward passes (fp16 adds one loss scaler per network); null:
    what `accelerate launch --mixed_precision` chose, else no. Losses reduce in float32."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches of data.batch_size per optimizer step (per process)."""
    max_grad_norm: float | None = Field(None, gt=0.0)
    """Clip each network's gradient norm to this (null: no clipping; the norm is logged)."""
    max_bad_steps: int = Field(20, ge=1)
    """Stop after this many consecutive steps whose loss or gradients were not finite
    (each such step is skipped; fp16 overflows early in a run are normal)."""
    backend: Literal["ddp", "deepspeed"] | None = None
    """ddp (PyTorch DistributedDataParallel) or deepspeed (ZeRO, the `deepspeed` section);
    null: deepspeed when `accelerate launch` was given a DeepSpeed config, else ddp."""
    compile: bool = False
    """torch.compile both networks in place (parameter names, hence checkpoints, stay the
    same, so a run resumes with compile on or off). Pays on GPUs; costs a compile of tens of
    seconds and gave nothing on CPUs here (benchmarks/RESULTS.md). DDP backend only."""
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "default"
    """torch.compile's mode when `compile` is on."""
    compile_backend: Literal["inductor", "aot_eager"] = "inductor"
    """inductor generates fused kernels (the speed); aot_eager only traces forward and
    backward into graphs and runs them eagerly: seconds to compile, no speed-up, a quick
    check that the networks compile (the tests use it)."""
    cudnn_benchmark: bool = True
    """Let cuDNN time its convolution algorithms on the first steps and keep the fastest
    (the input sizes never change in training). GPUs only; `deterministic` turns it off."""
    deterministic: bool = False
    """Bitwise-reproducible GPU runs (a resume equal to not stopping, bit for bit): only
    deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic and not
    benchmarking, CUBLAS_WORKSPACE_CONFIG=:4096:8). Slower on GPUs; CPU runs are
    deterministic already."""

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: object) -> object:
        # YAML 1.1 reads a bare `no` as false; mean the documented "no".
        return "no" if value is False else value

    log_every: int = Field(10, ge=1)
    """Steps between loss/throughput logs."""
    sample_every: int = Field(100, ge=1)
    """Steps between sample grids (TensorBoard + samples/)."""
    ckpt_every: int = Field(100, ge=1)
    """Steps between checkpoints; one is always written at the end."""
    keep_last: int = Field(3, ge=1)
    """Newest checkpoints kept on disk (older ones are deleted, except train.keep_every's)."""
    keep_every: int | None = Field(None, ge=1)
    """Also keep every checkpoint whose step is a multiple of this (null: none), for
    looking back at a long run."""
    async_checkpoint: bool = True
    """Copy the state to host memory at a checkpoint step and write it on a background
    thread while training goes on (the same files, marker and rename; the next checkpoint
    and the end of the run wait for it). Holds a second copy of the state in host memory.
    DDP backend only: DeepSpeed's save is collective and stays synchronous."""
    collective_timeout_s: float = Field(600.0, gt=0.0)
    """Seconds a rank waits in a collective (all-reduce, barrier) for the others before the
    run fails with a line saying a rank stopped answering, instead of waiting for ever: a
    hung or lost peer then ends the whole run (see docs on failures). Must exceed the
    longest time one rank works alone while the others wait (rank 0's checkpoint writes
    and report)."""
    hist_every: int = Field(500, ge=1)
    """Steps between histograms (weights, predicted vs real chroma) and colourfulness logs."""
    eval_images: int = Field(512, ge=0)
    """Held-out images scored (the first N of the test split, in a fixed order), at the end
    of the run and every `eval_every` steps (0 turns evaluation off)."""
    eval_every: int | None = Field(None, ge=1)
    """Steps between held-out evaluations during the run (null: only at the end); each logs
    eval/<method>/<metric> (PSNR, SSIM, CIEDE2000, ...) to TensorBoard."""
    eval_mean_images: int = Field(1024, ge=1)
    """Training images whose mean chroma is the `baseline_mean` colour of the evaluation."""

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: list[float]) -> list[float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each must be in [0, 1) (got {betas})")
        return betas


class PruneConfig(Section):
    """Lottery-ticket pruning of the generator (and optionally the discriminator): after each
    step in `at_steps`, a round removes `rate` of the weights still alive, ranked by magnitude
    across all conv and transposed-conv weights of the network (norms and biases never)."""

    at_steps: list[int] = Field(min_length=1)
    """Steps after which a round prunes, increasing (e.g. [2000, 4000, 6000, 8000, 10000])."""
    rate: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of the alive weights each round removes: r rounds leave (1 - rate)**r alive."""
    discriminator: bool = False
    """Prune the discriminator too, with its own global threshold."""
    keep_first_last: bool = False
    """Leave each network's first and last layer dense (some lottery-ticket work does)."""
    rewind: Literal["none", "init", "step"] = "init"
    """After a round, set the survivors (and norms, biases) back to their values at
    initialisation (Frankle & Carbin), at step `rewind_step` (Frankle et al. 2020), or keep
    training them as they are (none)."""
    rewind_step: int = Field(0, ge=0)
    """The step whose weights `rewind: step` goes back to (0 = initialisation)."""
    reset_discriminator: bool = True
    """When rewinding, also put the discriminator back to its initialisation (Chen et al.
    2021's GAN tickets): a D trained against the unpruned G would overpower the ticket."""

    @field_validator("at_steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if steps[0] < 1 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"must be increasing steps >= 1 (got {steps})")
        return steps


class DeepSpeedConfig(Section):
    """DeepSpeed settings, used when train.backend is deepspeed. Each network gets its own
    engine, built from the same JSON file; batch size, accumulation, clipping and precision
    in it may be "auto" and are then filled from data/train."""

    config: str | None = None
    """DeepSpeed JSON config (configs/deepspeed/zero{1,2,3}.json); null: the file `accelerate
    launch` was given (deepspeed_config_file), else ZeRO stage 2 with nothing else set."""
    stage: Literal[1, 2, 3] | None = None
    """Override the file's zero_optimization.stage."""
    offload_optimizer: Literal["none", "cpu"] | None = None
    """Keep optimizer state (and, stage 3, its update) in CPU memory (ZeRO-2/3 only);
    null: as the file (or accelerate's offload_optimizer_device) says."""
