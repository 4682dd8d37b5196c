"""Typed, validated configuration: one pydantic model per component, YAML presets, key=value overrides.

    cfg = load_config("configs/celebahq256.yaml", ["langevin.num_steps=40", "train.seed=3"])

Every problem (unknown key, wrong type, impossible or non-finite value) raises ConfigError with one
line that names the key and the file (or the command line), before any work starts. pydantic does
the type checks and bounds; this module only turns its errors into those lines and adds the checks
that span sections.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import LfbmError


class ConfigError(LfbmError, ValueError):
    """A bad configuration; str() is the one-line message shown to the user."""

    same_on_every_rank = True  # settings, not data


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    return value


Int = Annotated[int, Strict()]  # YAML ints only (no True, no 2.5)
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Float = Annotated[float, BeforeValidator(_no_bool)]  # ints and "1e-4" (YAML 1.1 reads it as text) allowed
Switch = Literal["auto", "on", "off"]
# Experiment trackers Accelerate drives (train.log_with); training/engine/trackers.py builds them.
Tracker = Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


class GeneratorConfig(Section):
    arch: Str = "tiny16"  # a name in models.GENERATOR_SPECS (Tables 7 and 12, mnist28)
    nz: Int = Field(16, ge=2)  # latent size d; Table 12 / Table 13: 128 at 256²
    ngf: Int = Field(0, ge=0)  # base width; 0 = the arch's default
    image_channels: Literal[1, 3] = 3  # 3 = RGB, 1 = grayscale (MNIST)


class PriorConfig(Section):
    kind: Literal["flow", "gaussian", "ebm"] = "flow"  # LFBM, ABP baseline, LEBM baseline
    flow_steps: Int = Field(10, ge=1)  # Glow steps (paper Fig. 3c: deeper is better)
    flow_hidden: Int = Field(128, ge=1)  # width of each coupling MLP
    ebm_hidden: Int = Field(200, ge=1)  # LEBM energy MLP width
    ebm_langevin_steps: Int = Field(60, ge=1)  # prior Langevin steps for EBM sampling (LEBM default)
    ebm_langevin_step_size: Float = Field(0.4, gt=0)


class LangevinConfig(Section):
    num_steps: Int = Field(20, ge=0)  # K, posterior Langevin steps per training batch
    step_size: Float = Field(0.1, gt=0)  # s in z <- z + s²/2 ∇ + s ε (official convention; ξ = s²/2)
    sigma: Float = Field(0.3, gt=0)  # observation noise std σ of p(x|z) = N(g(z), σ²I)
    add_noise: Bool = True  # the s ε term (False = gradient ascent, for debugging)
    test_num_steps: Int = Field(400, ge=0)  # long-run inference for test-time reconstruction (Table 9)


class InferenceConfig(Section):
    kind: Literal["langevin", "vae"] = "langevin"  # LFBM-MCMC, or the LFBM-VAE baseline (encoder + IAF)
    encoder_ndf: Int = Field(64, ge=1)  # VAE encoder base width
    iaf_steps: Int = Field(2, ge=0)  # inverse autoregressive flow steps on top of the Gaussian encoder
    iaf_hidden: Int = Field(256, ge=1)


class OptimConfig(Section):
    lr_generator: Float = Field(3e-4, gt=0)
    lr_prior: Float = Field(3e-4, gt=0)
    lr_encoder: Float = Field(3e-4, gt=0)  # LFBM-VAE baseline only
    beta1: Float = Field(0.5, ge=0, lt=1)  # Adam β₁ = 0.5 as in the paper's code
    beta2: Float = Field(0.999, ge=0, lt=1)
    lr_decay: Float = Field(0.998, gt=0, le=1)  # exponential decay factor γ ...
    lr_decay_every_kimg: Float = Field(0.0, ge=0)  # ... applied every this many kimg (one epoch); 0 = no decay
    grad_clip: Float = Field(0.0, ge=0)  # max global gradient norm (all networks together); 0 = off


class DataConfig(Section):
    source: Literal["memory", "shards"] = "memory"
    dataset: Literal["lfw", "mnist", "digits", "synthetic"] = "lfw"  # memory source
    shards: list[Str] = Field(default_factory=list)  # shard source: URLs, brace patterns or index files
    resolution: Int = Field(16, ge=1)  # images are resized to this (must match the generator)
    hflip: Bool = True  # random horizontal flip
    num_workers: Int = Field(0, ge=0)  # DataLoader worker processes per rank (shards)
    shuffle_buffer: Int = Field(1000, ge=1)  # samples held by each virtual stream's seeded shuffle buffer
    virtual_streams: Int = Field(0, ge=0)  # fixed stream count of the epoch plan (0 = world size × workers at start)
    on_mismatch: Literal["convert", "skip", "error"] = "convert"  # wrong size/mode: fix, skip+count, or stop
    max_corrupt_samples: Int = Field(100, ge=0)  # skipped (logged) unusable samples per stream before the run stops
    verify_checksums: Bool = True  # check each sample against the index's checksum before decoding
    connect_timeout_s: Float = Field(30.0, gt=0)  # remote shards: connection timeout ...
    read_timeout_s: Float = Field(60.0, gt=0)  # ... and the longest wait for the next bytes of a read
    retries: Int = Field(3, ge=0)  # re-tries of a failed remote open, with exponential backoff
    allow_pipe: Bool = False  # allow `pipe:` shard URLs (they run shell commands)
    occlusion: Str = "none"  # train on occluded images: none|center|region:20|saltpepper:50 (§4.6)
    mask_seed: Int = 0  # occlusion masks are a function of (mask_seed, sample key)
    max_samples: Int = Field(0, ge=0)  # memory source: keep the first N (0 = all)
    heldout_class: Int = -1  # memory source: train without this class (anomaly detection, §4.4)

    @field_validator("shards", mode="before")
    @classmethod
    def _one_shard(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class TrainConfig(Section):
    run_dir: Str = Field("runs/default", min_length=1)
    total_kimg: Float = Field(1.0, gt=0)  # training length in thousands of images
    batch_per_gpu: Int = Field(16, ge=1)  # micro-batch on each rank
    accumulation_steps: Int = Field(1, ge=1)
    global_batch: Int = Field(0, ge=0)  # 0 = batch_per_gpu × accumulation_steps × world_size (checked at start)
    seed: Int = 0
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = generator passes under autocast
    log_every_kimg: Float = Field(0.1, ge=0)
    snapshot_every_kimg: Float = Field(0.0, ge=0)  # 0 = only at the end
    image_every_kimg: Float = Field(0.0, ge=0)  # image grids to TensorBoard; 0 = only at the end
    keep_snapshots: Int = Field(3, ge=1)
    # periodic snapshots are written by a background thread while training goes on (the final one and a
    # stop's are waited for); off: every snapshot blocks the step until it is on disk
    snapshot_async: Bool = True
    snapshot_shard_mb: Float = Field(
        2048.0, gt=0
    )  # largest state file; bigger states are split, ranks write in parallel
    resume: Str = "none"  # none | auto | path to a checkpoint directory
    overwrite: Bool = False  # start afresh in a run directory that holds checkpoints (old ones moved aside)
    collective_timeout_min: Float = Field(
        30.0, gt=0
    )  # process-group timeout: covers long evaluations between collectives
    # once training runs (after hang_warmup_steps steps) the process-group timeout drops to this, so that
    # nothing waits collective_timeout_min on a lost peer; evaluations, the final snapshot and the image
    # grids keep collective_timeout_min
    step_timeout_min: Float = Field(10.0, gt=0)
    # A hung rank named (training/watchdog.py): a rank whose loop made no progress for max(hang_floor_s,
    # hang_step_multiple × its median step time) — armed after hang_warmup_steps steps — names the stuck
    # rank(s) with their stacks in RUN_DIR/hang/ and ends the job; hang_floor_s=0 turns it off
    hang_floor_s: Float = Field(120.0, ge=0)
    hang_step_multiple: Float = Field(20.0, gt=0)
    hang_warmup_steps: Int = Field(2, ge=1)
    # a rank slower than the median of the others by more than this share, in a phase of the step
    # (data, Langevin, learning; per logging interval), is named in a warning
    straggler_share: Float = Field(0.5, gt=0)
    max_consecutive_skips: Int = Field(10, ge=1)  # non-finite steps in a row before the run stops
    # where scalars and image grids go, from rank 0, on the images-seen axis: any of Tracker (extras:
    # pip install -e '.[wandb]' / '.[mlflow]'); a resume continues the same tracker runs
    log_with: list[Tracker] = Field(default_factory=lambda: ["tensorboard"], min_length=1)

    @field_validator("log_with", mode="before")
    @classmethod
    def _one_tracker(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else value
        if isinstance(names, list) and len(set(map(str, names))) != len(names):
            raise ValueError(f"names a tracker twice ({names})")
        return names


class EmaConfig(Section):
    """Weight averaging (training/ema.py): never feeds training; samples, FID, evaluations and exports
    use it. Defaults: StyleGAN2-ADA's half-life (ema_kimg = 10 for its batch of 32) and ramp-up (0.05 of
    the images seen, as EDM's ema_rampup_ratio); EDM2's two power-function profiles for post-hoc EMA."""

    halflife_kimg: Float = Field(10.0, ge=0)  # the EMA's half-life in thousands of images; 0 = no EMA
    rampup: Float = Field(0.05, ge=0)  # the half-life is at most this share of the images seen; 0 = none
    # relative standard deviations of the power-function EMAs kept for post-hoc EMA (EDM2); [] = none
    posthoc_std: list[Float] = Field(default_factory=lambda: [0.05, 0.10])
    posthoc_every_kimg: Float = Field(0.0, ge=0)  # their weight snapshots this often; 0 = with every checkpoint
    posthoc_dtype: Literal["float16", "float32"] = "float16"  # the snapshots' weights (EDM2 keeps float16)

    @field_validator("posthoc_std")
    @classmethod
    def _stds(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < s < 0.2887 for s in value) or len(set(value)) != len(value):
            raise ValueError(f"needs distinct relative standard deviations in (0, 0.2887), got {value}")
        return value


class EvalConfig(Section):
    inception: Str = "auto"  # FID network: auto | torchscript:PATH | fidelity:PATH (torch-fidelity weights)
    fid_num_samples: Int = Field(50000, ge=0)  # generated samples (index-seeded: independent of world size)
    fid_ref_samples: Int = Field(0, ge=0)  # training images for the reference statistics (0 = all)
    fid_batch: Int = Field(100, ge=1)
    fid_every_kimg: Float = Field(0.0, ge=0)  # FID during training (0 = off)
    cache_dir: Str = ".cache/fid_stats"  # reference statistics cache
    split: Literal["train", "test"] = "test"  # split for reconstruction / inpainting / anomaly (falls back to train)
    recon_samples: Int = Field(10000, ge=0)
    inpaint_samples: Int = Field(10000, ge=0)
    inpaint_completions: Int = Field(10, ge=1)  # chains per image from different initialisations (Fig. 2)
    inpaint_mask: Str = "center"  # 40×40 at 64², scaled
    # how the completed images' quality is scored: FID (Inception, the paper's), or the digit proxy
    # (metrics/digits.py; packaged MNIST only) where the Inception reference is too costly for the budget
    inpaint_quality: Literal["fid", "digits"] = "fid"
    anomaly_protocol: Literal["official", "noisy-ap"] = "official"  # metrics/anomaly.py
    seed: Int = 0


class PerfConfig(Section):
    """GPU fast path of the Langevin-dominated iteration (docs/PERFORMANCE.md says what each is worth).
    `auto` means on for CUDA devices and off on CPU, and where a switch cannot work `auto` leaves it
    off; a failed compilation falls back to eager (one line); `channels_last: on` under DeepSpeed is
    refused. On CUDA the defaults are the measured fastest: bf16 (train.precision), channels-last,
    cuDNN autotuning, one Langevin step compiled and each chain replayed as one CUDA graph around it,
    and the chains of all micro-batches of a step run as one large batch."""

    channels_last: Switch = "auto"  # NHWC generator weights + images (tensor cores)
    cudnn_benchmark: Switch = "auto"  # cuDNN autotuning (shapes are static per run)
    compile: Switch = "auto"  # torch.compile the Langevin step of every chain (training, test time, inpainting)
    # The compiled unit is ONE Langevin step, reused by every step of every chain (compile time does
    # not grow with K). auto = default (Inductor's kernels; the chain captured as one CUDA graph, below).
    # reduce-overhead / max-autotune record a CUDA graph per step themselves (CUDA-graph trees).
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "auto"
    # On CUDA, with a mode that records no graphs itself: capture each chain (all K calls of the
    # compiled step) as ONE CUDA graph — one replay per chain, no host round trip between steps.
    cuda_graphs: Switch = "auto"
    # Chains run this many at a time (Langevin is per-sample: learning keeps batch_per_gpu). 0 = auto:
    # on CUDA all micro-batches of a step at once, capped by free memory; on CPU one micro-batch.
    chain_batch: Int = Field(0, ge=0)
    # Where compiled graphs are kept across processes (lfbm_dist/training/compile_cache.py): auto =
    # $TORCHINDUCTOR_CACHE_DIR if set, else RUN_DIR/compile_cache; off = torch's per-machine default; or a path.
    compile_cache: str = Field("auto", min_length=1)
    # Reproducible kernels (torch.use_deterministic_algorithms, cuDNN deterministic, no autotuning, a
    # fixed cuBLAS workspace): a resumed CUDA run then repeats the uninterrupted one; slower.
    deterministic: bool = False

    @model_validator(mode="before")
    @classmethod
    def _removed_settings(cls, data: Any) -> Any:
        """Settings of the whole-chain graphs, gone with them: the compiled unit is one step. Run
        directories written before say `chain_graph: whole` and `graph_steps: N` (the same run: both
        dropped, the math is the same); `chain_graph: step` is refused in one line."""
        if isinstance(data, dict) and ("chain_graph" in data or "graph_steps" in data):
            data = dict(data)
            data.pop("graph_steps", None)
            if data.pop("chain_graph", "whole") != "whole":
                raise ValueError(
                    "perf.chain_graph was removed: every chain runs the one compiled Langevin step "
                    "(perf.compile); delete the setting"
                )
        return data

    @field_validator("channels_last", "cudnn_benchmark", "compile", "cuda_graphs", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        return ("on" if value else "off") if isinstance(value, bool) else value  # YAML 1.1 reads on/off as booleans


class Config(Section):
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    prior: PriorConfig = Field(default_factory=PriorConfig)
    langevin: LangevinConfig = Field(default_factory=LangevinConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ema: EmaConfig = Field(default_factory=EmaConfig)
    perf: PerfConfig = Field(default_factory=PerfConfig)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, dict):  # `prior: ebm`, `inference: vae`
            data = {
                k: ({"kind": v} if k in ("prior", "inference") and isinstance(v, str) else v) for k, v in data.items()
            }
        return data

    @model_validator(mode="after")
    def _across_sections(self) -> Config:
        from .data.masks import MaskSpecError, parse_mask_spec
        from .models.generator import GENERATOR_SPECS

        g, d, t = self.generator, self.data, self.train
        _need(g.arch in GENERATOR_SPECS, "generator.arch", f"must be one of {sorted(GENERATOR_SPECS)}, got {g.arch!r}")
        _need(g.nz % 2 == 0, "generator.nz", f"must be an even integer >= 2 (coupling splits z in halves), got {g.nz}")
        resolution = GENERATOR_SPECS[g.arch].resolution()
        _need(
            d.resolution == resolution,
            "data.resolution",
            f"must equal generator '{g.arch}' output {resolution}, got {d.resolution}",
        )
        try:
            parse_mask_spec(d.occlusion)
        except MaskSpecError as exc:
            raise ValueError(f"data.occlusion: {exc}") from None
        _need(
            d.allow_pipe or not any(s.startswith("pipe:") for s in d.shards),
            "data.shards",
            "has a pipe: URL (runs a shell command); set data.allow_pipe=true to allow it",
        )
        _need(
            d.source != "shards" or len(d.shards) > 0,
            "data.shards",
            "must name at least one shard when data.source is 'shards'",
        )
        per_rank = t.batch_per_gpu * t.accumulation_steps
        _need(
            t.global_batch % per_rank == 0,
            "train.global_batch",
            f"must be a multiple of batch_per_gpu × accumulation_steps = {per_rank} (or 0 = auto), "
            f"got {t.global_batch}",
        )
        _need(
            self.inference.kind != "vae" or d.occlusion == "none",
            "inference.kind",
            "vae cannot learn from occluded data (the encoder needs whole images, §4.6); use langevin",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _need(cond: bool, key: str, what: str) -> None:
    if not cond:
        raise ValueError(f"{key} {what}")


# ----------------------------------------------------------------------------- errors as one line

_PHRASES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "string_too_short": "must not be empty",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _section_fields(loc: tuple) -> list[str]:
    model: Any = Config
    for part in loc[:-1]:
        model = model.model_fields[part].annotation
    return sorted(model.model_fields)


def _one_line(exc: ValidationError, source: str) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if isinstance(p, str))
    key, kind, got = ".".join(loc), err["type"], err.get("input")
    if kind == "extra_forbidden":
        return ConfigError(f"{source}: unknown key '{key}' (valid: {', '.join(_section_fields(loc))})")
    if kind == "value_error":  # our cross-section checks and _no_bool: the message carries the key
        msg = str(err["ctx"]["error"])
        return ConfigError(f"{source}: {msg if not key else f'{key} {msg}, got {got!r}'}")
    if kind == "literal_error":
        return ConfigError(f"{source}: {key} must be one of [{err['ctx']['expected']}], got {got!r}")
    if kind in _BOUNDS:
        bound = next(iter(err["ctx"].values()))
        return ConfigError(f"{source}: {key} must be {_BOUNDS[kind]} {bound}, got {got!r}")
    return ConfigError(f"{source}: {key} {_PHRASES.get(kind, err['msg'])}, got {got!r}")


# ----------------------------------------------------------------------------- loading


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"command line: override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _merge(base: dict, keys: list[str], value: Any) -> None:
    if keys[-1] in ("prior", "inference") and len(keys) == 1 and isinstance(value, str):
        keys = [*keys, "kind"]  # `prior=ebm` sets the kind, keeping the section's other keys
    for k in keys[:-1]:
        section = base.get(k)
        if section is None:
            section = base[k] = {}
        elif isinstance(section, str) and k in ("prior", "inference"):
            section = base[k] = {"kind": section}
        elif not isinstance(section, dict):
            raise ConfigError(f"command line: '{'.'.join(keys)}' goes inside '{k}', which is not a section")
        base = section
    base[keys[-1]] = value


def load_config(path: str | Any | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- key=value overrides, validated; errors name the file or the command line."""
    from pathlib import Path

    data: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
        try:
            Config.model_validate(data)
        except ValidationError as exc:
            if exc.errors()[0]["loc"]:  # a bad key or value in the file itself; checks across sections wait
                raise _one_line(exc, source) from None
    from_command_line = set()
    for text in overrides:
        keys, value = _parse_override(text)
        _merge(data, keys, value)
        from_command_line.add(tuple(keys))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        loc = tuple(p for p in exc.errors()[0]["loc"] if isinstance(p, str))
        by_override = any(loc[: len(k)] == k or k[: len(loc)] == loc for k in from_command_line) and loc
        where = (
            "command line"
            if by_override or path is None
            else (f"{source} (+ command-line overrides)" if overrides else source)
        )
        raise _one_line(exc, where) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
