"""Typed, validated configuration: dataclasses per component, YAML presets, key=value overrides.

    cfg = load_config("configs/celebahq256.yaml", ["langevin.num_steps=40", "train.seed=3"])

Every problem (unknown key, wrong type, impossible value) raises ConfigError with one line
that names the key and the file, before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad configuration; str() is the one-line message shown to the user."""


@dataclass
class GeneratorConfig:
    arch: str = "tiny16"            # a name in models.GENERATOR_SPECS (Tables 7 and 12)
    nz: int = 16                    # latent size d; Table 12 / Table 13: 128 at 256²
    ngf: int = 0                    # base width; 0 = the arch's default
    image_channels: int = 3         # 3 = RGB, 1 = grayscale (MNIST)


@dataclass
class PriorConfig:
    kind: Literal["flow", "gaussian", "ebm"] = "flow"  # LFBM, ABP baseline, LEBM baseline
    flow_steps: int = 10            # Glow steps (paper Fig. 3c: deeper is better)
    flow_hidden: int = 128          # width of each coupling MLP
    ebm_hidden: int = 200           # LEBM energy MLP width
    ebm_langevin_steps: int = 60    # prior Langevin steps for EBM sampling (LEBM default)
    ebm_langevin_step_size: float = 0.4


@dataclass
class LangevinConfig:
    num_steps: int = 20             # K, posterior Langevin steps per training batch
    step_size: float = 0.1          # s in z <- z + s²/2 ∇ + s ε (official convention; ξ = s²/2)
    sigma: float = 0.3              # observation noise std σ of p(x|z) = N(g(z), σ²I)
    add_noise: bool = True          # the s ε term (False = gradient ascent, for debugging)
    test_num_steps: int = 400       # long-run inference for test-time reconstruction (Table 9)


@dataclass
class InferenceConfig:
    kind: Literal["langevin", "vae"] = "langevin"  # LFBM-MCMC, or the LFBM-VAE baseline (encoder + IAF)
    encoder_ndf: int = 64           # VAE encoder base width
    iaf_steps: int = 2              # inverse autoregressive flow steps on top of the Gaussian encoder
    iaf_hidden: int = 256


@dataclass
class OptimConfig:
    lr_generator: float = 3e-4
    lr_prior: float = 3e-4
    lr_encoder: float = 3e-4        # LFBM-VAE baseline only
    beta1: float = 0.5              # Adam β₁ = 0.5 as in the paper's code
    beta2: float = 0.999
    lr_decay: float = 0.998         # exponential decay factor γ ...
    lr_decay_every_kimg: float = 0.0  # ... applied every this many kimg (one epoch); 0 = no decay
    grad_clip: float = 0.0          # max grad norm per network; 0 = off


@dataclass
class DataConfig:
    source: Literal["memory", "shards"] = "memory"
    dataset: str = "lfw"            # memory source: lfw | mnist | digits | synthetic
    shards: list[str] = field(default_factory=list)  # shard source: URLs, brace patterns or index files
    resolution: int = 16            # images are resized to this (must match the generator)
    hflip: bool = True              # random horizontal flip
    num_workers: int = 0            # DataLoader worker processes per rank (shards)
    shuffle_buffer: int = 1000      # samples held by each worker's seeded shuffle buffer
    on_mismatch: Literal["convert", "skip", "error"] = "convert"  # wrong size/mode: fix, skip+count, or stop
    max_corrupt_samples: int = 100  # skipped (logged) unusable samples per worker before the run stops
    allow_pipe: bool = False        # allow `pipe:` shard URLs (they run shell commands)
    occlusion: str = "none"         # train on occluded images: none|center|region:20|saltpepper:50 (§4.6)
    mask_seed: int = 0              # occlusion masks are a function of (mask_seed, sample key)
    max_samples: int = 0            # memory source: keep the first N (0 = all)
    heldout_class: int = -1         # memory source: train without this class (anomaly detection, §4.4)


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    total_kimg: float = 1.0         # training length in thousands of images
    batch_per_gpu: int = 16         # micro-batch on each rank
    accumulation_steps: int = 1
    global_batch: int = 0           # 0 = batch_per_gpu × accumulation_steps × world_size (checked at start)
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = generator passes under autocast
    log_every_kimg: float = 0.1
    snapshot_every_kimg: float = 0.0  # 0 = only at the end
    image_every_kimg: float = 0.0   # image grids to TensorBoard; 0 = only at the end
    keep_snapshots: int = 3
    resume: str = "none"            # none | auto | path to a checkpoint directory
    collective_timeout_min: float = 30.0  # process-group timeout: covers long evaluations between collectives
    max_consecutive_skips: int = 10  # non-finite steps in a row before the run stops


@dataclass
class EvalConfig:
    inception: str = "auto"         # FID network: auto | torchscript:PATH | fidelity:PATH (torch-fidelity weights)
    fid_num_samples: int = 50000    # generated samples (index-seeded: independent of world size)
    fid_ref_samples: int = 0        # training images for the reference statistics (0 = all)
    fid_batch: int = 100
    fid_every_kimg: float = 0.0     # FID during training (0 = off)
    cache_dir: str = ".cache/fid_stats"  # reference statistics cache
    split: str = "test"             # split for reconstruction / inpainting / anomaly (falls back to train)
    recon_samples: int = 10000
    inpaint_samples: int = 10000
    inpaint_completions: int = 10   # chains per image from different initialisations (Fig. 2)
    inpaint_mask: str = "center"    # 40×40 at 64², scaled
    anomaly_protocol: Literal["official", "noisy-ap"] = "official"  # metrics/anomaly.py: official = noise-free chains, PR-curve area
    seed: int = 0


@dataclass
class PerfConfig:
    """GPU fast path of the Langevin-dominated iteration (docs/PERFORMANCE.md says what each is worth).
    `auto` means on for CUDA devices and off on CPU, and where a switch cannot work `auto` leaves it
    off; a failed compilation falls back to eager; `channels_last: on` under DeepSpeed is refused."""
    channels_last: Literal["auto", "on", "off"] = "auto"    # NHWC generator weights + images (tensor cores)
    cudnn_benchmark: Literal["auto", "on", "off"] = "auto"  # cuDNN autotuning (shapes are static per run)
    compile: Literal["auto", "on", "off"] = "off"           # torch.compile the Langevin log-posterior (fwd + bwd)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # reduce-overhead = CUDA graphs


@dataclass
class Config:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    langevin: LangevinConfig = field(default_factory=LangevinConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- loading


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check `value` against a field annotation, allowing int -> float only."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(typing.get_args(annotation)):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if value not in typing.get_args(annotation):
            raise ConfigError(f"{source}: {key} must be one of {list(typing.get_args(annotation))}, got {value!r}")
        return value
    if origin in (list,):
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {type(value).__name__}")
        return [_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key} has an unsupported type {annotation}")


def _merge(obj: Any, data: dict[str, Any], prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{dotted}' (valid: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if key in ("prior", "inference") and isinstance(value, str):  # shorthand `prior: ebm`, `inference: vae`
                value = {"kind": value}
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a mapping, got {value!r}")
            _merge(current, value, f"{dotted}.", source)
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted, source))


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"command line: override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- key=value overrides, then validate()."""
    cfg = Config()
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
        _merge(cfg, data, "", source)
    for text in overrides:
        keys, value = _parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(cfg, nested, "", "command line")
    validate(cfg, f"{source} (+ command-line overrides)" if overrides else source)
    return cfg


def validate(cfg: Config, source: str = "config") -> None:
    """Impossible values fail here, naming key and file."""
    from .models.generator import GENERATOR_SPECS  # local: keep config import-light

    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{source}: {key} {what}")

    g, pr, lv, op, d, t = cfg.generator, cfg.prior, cfg.langevin, cfg.optim, cfg.data, cfg.train
    need(g.arch in GENERATOR_SPECS, "generator.arch", f"must be one of {sorted(GENERATOR_SPECS)}, got {g.arch!r}")
    need(g.nz >= 2 and g.nz % 2 == 0, "generator.nz", f"must be an even integer >= 2 (coupling splits z in halves), got {g.nz}")
    need(g.ngf >= 0, "generator.ngf", f"must be >= 0, got {g.ngf}")
    need(g.image_channels in (1, 3), "generator.image_channels", f"must be 1 or 3, got {g.image_channels}")
    need(pr.flow_steps >= 1, "prior.flow_steps", f"must be >= 1, got {pr.flow_steps}")
    need(pr.flow_hidden >= 1, "prior.flow_hidden", f"must be >= 1, got {pr.flow_hidden}")
    need(pr.ebm_hidden >= 1, "prior.ebm_hidden", f"must be >= 1, got {pr.ebm_hidden}")
    need(pr.ebm_langevin_steps >= 1, "prior.ebm_langevin_steps", f"must be >= 1, got {pr.ebm_langevin_steps}")
    need(pr.ebm_langevin_step_size > 0, "prior.ebm_langevin_step_size", f"must be > 0, got {pr.ebm_langevin_step_size}")
    need(lv.num_steps >= 0, "langevin.num_steps", f"must be >= 0, got {lv.num_steps}")
    need(lv.test_num_steps >= 0, "langevin.test_num_steps", f"must be >= 0, got {lv.test_num_steps}")
    need(lv.step_size > 0 and math.isfinite(lv.step_size), "langevin.step_size", f"must be > 0, got {lv.step_size}")
    need(lv.sigma > 0 and math.isfinite(lv.sigma), "langevin.sigma", f"must be > 0, got {lv.sigma}")
    for key in ("lr_generator", "lr_prior", "lr_encoder"):
        need(getattr(op, key) > 0, f"optim.{key}", f"must be > 0, got {getattr(op, key)}")
    need(0 <= op.beta1 < 1, "optim.beta1", f"must be in [0, 1), got {op.beta1}")
    need(0 <= op.beta2 < 1, "optim.beta2", f"must be in [0, 1), got {op.beta2}")
    need(0 < op.lr_decay <= 1, "optim.lr_decay", f"must be in (0, 1], got {op.lr_decay}")
    need(op.lr_decay_every_kimg >= 0, "optim.lr_decay_every_kimg", f"must be >= 0, got {op.lr_decay_every_kimg}")
    need(op.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {op.grad_clip}")
    resolution = GENERATOR_SPECS[g.arch].resolution()
    need(d.resolution == resolution, "data.resolution", f"must equal generator '{g.arch}' output {resolution}, got {d.resolution}")
    need(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    need(d.max_samples >= 0, "data.max_samples", f"must be >= 0, got {d.max_samples}")
    need(d.shuffle_buffer >= 1, "data.shuffle_buffer", f"must be >= 1, got {d.shuffle_buffer}")
    need(d.max_corrupt_samples >= 0, "data.max_corrupt_samples", f"must be >= 0, got {d.max_corrupt_samples}")
    from .data.masks import MaskSpecError, parse_mask_spec

    try:
        parse_mask_spec(d.occlusion)
    except MaskSpecError as exc:
        raise ConfigError(f"{source}: data.occlusion: {exc}") from None
    need(d.allow_pipe or not any(s.startswith("pipe:") for s in d.shards), "data.shards",
         "has a pipe: URL (runs a shell command); set data.allow_pipe=true to allow it")
    need(d.source != "shards" or len(d.shards) > 0, "data.shards", "must name at least one shard when data.source is 'shards'")
    need(t.total_kimg > 0, "train.total_kimg", f"must be > 0, got {t.total_kimg}")
    need(t.batch_per_gpu >= 1, "train.batch_per_gpu", f"must be >= 1, got {t.batch_per_gpu}")
    need(t.accumulation_steps >= 1, "train.accumulation_steps", f"must be >= 1, got {t.accumulation_steps}")
    per_rank = t.batch_per_gpu * t.accumulation_steps
    need(t.global_batch >= 0 and t.global_batch % per_rank == 0, "train.global_batch",
         f"must be a multiple of batch_per_gpu × accumulation_steps = {per_rank} (or 0 = auto), got {t.global_batch}")
    for key in ("log_every_kimg", "snapshot_every_kimg", "image_every_kimg"):
        need(getattr(t, key) >= 0, f"train.{key}", f"must be >= 0, got {getattr(t, key)}")
    need(t.keep_snapshots >= 1, "train.keep_snapshots", f"must be >= 1, got {t.keep_snapshots}")
    need(t.collective_timeout_min > 0, "train.collective_timeout_min", f"must be > 0, got {t.collective_timeout_min}")
    need(t.max_consecutive_skips >= 1, "train.max_consecutive_skips", f"must be >= 1, got {t.max_consecutive_skips}")
    need(bool(t.run_dir), "train.run_dir", "must not be empty")
    inf = cfg.inference
    need(inf.encoder_ndf >= 1 and inf.iaf_hidden >= 1 and inf.iaf_steps >= 0, "inference",
         "encoder_ndf and iaf_hidden must be >= 1 and iaf_steps >= 0")
    need(inf.kind != "vae" or cfg.data.occlusion == "none", "inference.kind",
         "vae cannot learn from occluded data (the encoder needs whole images, §4.6); use langevin")
    e = cfg.eval
    for key in ("fid_num_samples", "fid_ref_samples", "recon_samples", "inpaint_samples"):
        need(getattr(e, key) >= 0, f"eval.{key}", f"must be >= 0, got {getattr(e, key)}")
    need(e.fid_batch >= 1, "eval.fid_batch", f"must be >= 1, got {e.fid_batch}")
    need(e.inpaint_completions >= 1, "eval.inpaint_completions", f"must be >= 1, got {e.inpaint_completions}")
    need(e.fid_every_kimg >= 0, "eval.fid_every_kimg", f"must be >= 0, got {e.fid_every_kimg}")
    need(e.split in ("train", "test"), "eval.split", f"must be train or test, got {e.split!r}")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
