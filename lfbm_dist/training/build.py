"""From a Config to the objects training and evaluation use: model, optimizer and its learning-rate
schedule, data feeds and evaluation data, and the batch layout of a (possibly resized) run. The
only place that turns Config sections into the plain values models/ and data/ take."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..config import Config, ConfigError
from ..data.errors import DataError
from ..data.eval_reader import EvalData
from ..data.feeds import MemoryFeed, ShardFeed
from ..data.index import ShardInfo, expand_shard_specs
from ..data.memory import load_memory_dataset, split_indices
from ..data.plan import Layout
from ..data.reader import count_samples
from ..data.stream import DecodeOptions, StreamOptions
from ..data.urls import IOOptions, local_path
from ..models import GENERATOR_SPECS, LFBM, EBMPrior, FlowPrior, GaussianPrior, build_generator


class ModelTooLarge(ConfigError):
    """A config whose model would not fit in this machine's memory: refused before allocating it."""


def check_fits(cfg: Config, copies: int = 1) -> int:
    """The model's parameter count, computed on the meta device (no memory, no compute); one line if
    `copies` float32 copies of it (weights alone: 1; training with Adam and the averages: more) would
    not fit in the memory this machine has available. Names the biggest part's size settings."""
    import psutil

    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # the real build draws the same numbers
        model = _assemble(cfg)
    parts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children() if m is not None}
    total = sum(parts.values())
    need, have = total * 4 * copies, psutil.virtual_memory().available
    if need > have:
        g, p, i = cfg.generator, cfg.prior, cfg.inference
        settings = {"generator": f"generator.ngf={g.ngf}, generator.nz={g.nz}",
                    "prior": f"prior.flow_hidden={p.flow_hidden}, prior.flow_steps={p.flow_steps}",
                    "encoder": f"inference.encoder_ndf={i.encoder_ndf}"}  # fmt: skip
        biggest = max(parts, key=parts.get)
        raise ModelTooLarge(
            f"the model needs {need / 2**30:.1f} GiB ({total:,} parameters, {copies} float32 cop"
            f"{'y' if copies == 1 else 'ies'}), more than the {have / 2**30:.1f} GiB this machine has free: "
            f"its {biggest} has {parts[biggest]:,} ({settings.get(biggest, biggest)}); check those settings"
        )
    return total


def build_model(cfg: Config) -> LFBM:
    """The model of a config (refused in one line first if it would not fit in memory: check_fits)."""
    check_fits(cfg)
    return _assemble(cfg)


def _assemble(cfg: Config) -> LFBM:
    g, p = cfg.generator, cfg.prior
    generator = build_generator(g.arch, nz=g.nz, ngf=g.ngf or None, image_channels=g.image_channels)
    priors = {
        "flow": lambda: FlowPrior(g.nz, num_steps=p.flow_steps, hidden=p.flow_hidden),
        "gaussian": lambda: GaussianPrior(g.nz),
        "ebm": lambda: EBMPrior(
            g.nz, hidden=p.ebm_hidden, langevin_steps=p.ebm_langevin_steps, langevin_step_size=p.ebm_langevin_step_size
        ),
    }
    prior = priors[p.kind]()  # before the encoder: adding an encoder must not change the prior's initial draw
    encoder = None
    if cfg.inference.kind == "vae":
        from ..models.encoder import IAFEncoder

        i = cfg.inference
        encoder = IAFEncoder(
            cfg.data.resolution,
            g.image_channels,
            g.nz,
            ndf=i.encoder_ndf,
            iaf_steps=i.iaf_steps,
            iaf_hidden=i.iaf_hidden,
        )
    return LFBM(generator, prior, sigma=cfg.langevin.sigma, encoder=encoder)


def build_optimizer(cfg: Config, model: LFBM) -> torch.optim.Adam:
    """One Adam, two parameter groups (generator β, prior α) ≡ the paper's two Adams."""
    o = cfg.optim
    groups = [{"params": list(model.generator.parameters()), "lr": o.lr_generator, "name": "generator"}]
    prior_params = list(model.prior.parameters())
    if prior_params:
        groups.append({"params": prior_params, "lr": o.lr_prior, "name": "prior"})
    if model.encoder is not None:
        groups.append({"params": list(model.encoder.parameters()), "lr": o.lr_encoder, "name": "encoder"})
    return torch.optim.Adam(groups, betas=(o.beta1, o.beta2))


def lr_scale(images_seen: int, decay: float, decay_every_kimg: float) -> float:
    """Exponential decay as a pure function of progress (world-size independent, exact on resume)."""
    if decay_every_kimg <= 0:
        return 1.0
    return decay ** math.floor(images_seen / (decay_every_kimg * 1000.0))


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------- batch layout


@dataclass(frozen=True)
class BatchLayout:
    global_batch: int
    batch_per_gpu: int
    accumulation_steps: int
    note: str = ""  # set when the layout was adapted to another world size


def launched_world_size() -> int:
    """The world size the launcher set up (torchrun, accelerate launch and Slurm/submitit all export it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_batch_layout(cfg: Config, world_size: int, saved_global_batch: int | None = None) -> BatchLayout:
    """The global batch is the user's choice (train.global_batch, a resumed run's own, or
    batch_per_gpu × accumulation × world size); batch_per_gpu and accumulation_steps adapt to the
    world size so that it stays the same, keeping batch_per_gpu as large as configured at most."""
    t = cfg.train
    configured = t.batch_per_gpu * t.accumulation_steps * world_size
    target = saved_global_batch or t.global_batch or configured
    if saved_global_batch and t.global_batch and t.global_batch != saved_global_batch:
        raise ConfigError(
            f"train.global_batch={t.global_batch}, but the run being resumed trains with "
            f"{saved_global_batch} (its learning-rate schedule is in kimg of that batch)"
        )
    if target == configured:
        return BatchLayout(target, t.batch_per_gpu, t.accumulation_steps)
    if target % world_size:
        raise ConfigError(
            f"global batch {target} cannot be split over {world_size} rank(s); world sizes that work: "
            f"{', '.join(str(w) for w in range(1, 65) if target % w == 0)}"
        )
    per_rank = target // world_size
    for micro in range(min(t.batch_per_gpu, per_rank), 0, -1):
        if per_rank % micro == 0:
            note = (
                f"global batch {target} on {world_size} rank(s): batch_per_gpu {micro} × accumulation "
                f"{per_rank // micro} (configured {t.batch_per_gpu} × {t.accumulation_steps})"
            )
            return BatchLayout(target, micro, per_rank // micro, note)
    raise AssertionError("unreachable: micro = 1 always divides")


# ---------------------------------------------------------------------------------- data


def io_options(cfg: Config) -> IOOptions:
    d = cfg.data
    return IOOptions(d.connect_timeout_s, d.read_timeout_s, d.retries, allow_pipe=d.allow_pipe)


def resolve_shards(cfg: Config) -> list[ShardInfo]:
    """Expand specs, fail early on missing local shards, count samples where no index says."""
    opts = io_options(cfg)
    shards = expand_shard_specs(cfg.data.shards, opts)
    for shard in shards:
        path = local_path(shard.url)
        if path is not None and not path.is_file():
            raise DataError(f"shard not found: {shard.url}")
    if any(s.samples is None for s in shards):
        from ..progress import Progress

        counted = []
        desc = "counting samples (an index.json from lfbm-shards avoids this)"
        with Progress(len(shards), desc, unit="shard") as bar:
            for s in shards:
                counted.append(ShardInfo(s.url, count_samples(s.url, opts)))
                bar.update(1)
        shards = counted
    return shards


def memory_training_set(cfg: Config) -> tuple[torch.Tensor, list[int]]:
    d = cfg.data
    images, labels = load_memory_dataset(
        d.dataset, d.resolution, cfg.generator.image_channels, d.max_samples, seed=cfg.train.seed
    )
    return images, split_indices(labels, "train", d.heldout_class, cfg.train.seed)


def build_feed(cfg: Config, rank: int, layout: Layout, batch: BatchLayout, device: torch.device, streams: int):
    d, t = cfg.data, cfg.train
    if d.source == "memory":
        images, rows = memory_training_set(cfg)
        return MemoryFeed(
            images,
            rows,
            seed=t.seed,
            rank=rank,
            layout=layout,
            batch_per_gpu=batch.batch_per_gpu,
            device=device,
            hflip=d.hflip,
            occlusion=d.occlusion,
            mask_seed=d.mask_seed,
        )
    decode = DecodeOptions(
        d.resolution, cfg.generator.image_channels, d.hflip, d.on_mismatch, d.occlusion, d.mask_seed, d.verify_checksums
    )
    options = StreamOptions(decode, io_options(cfg), d.shuffle_buffer, d.max_corrupt_samples)
    return ShardFeed(
        resolve_shards(cfg),
        options,
        seed=t.seed,
        global_batch=batch.global_batch,
        streams=streams,
        rank=rank,
        layout=layout,
        device=device,
    )


def default_streams(cfg: Config, layout: Layout) -> int:
    """A new run's virtual-stream count: data.virtual_streams, or ranks × accumulation × workers."""
    return cfg.data.virtual_streams or layout.world_size * layout.accumulation_steps * max(1, layout.workers)


def eval_data(cfg: Config) -> EvalData:
    d = cfg.data
    return EvalData(
        resolution=d.resolution,
        channels=cfg.generator.image_channels,
        memory=d.dataset if d.source == "memory" else None,
        shard_specs=tuple(d.shards),
        max_samples=d.max_samples,
        heldout_class=d.heldout_class,
        seed=cfg.train.seed,
        io=io_options(cfg),
        verify=d.verify_checksums,
    )


def kimg_due(prev_images: int, images: int, every_kimg: float) -> bool:
    if every_kimg <= 0:
        return False
    every = every_kimg * 1000.0
    return math.floor(images / every) > math.floor(prev_images / every)


def batch_statistics_warning(cfg: Config, world_size: int, accumulation_steps: int) -> str | None:
    """BatchNorm generators (mnist28) see per-micro-batch statistics: splitting changes the training."""
    if GENERATOR_SPECS[cfg.generator.arch].batch_norm and world_size * accumulation_steps > 1:
        return (
            f"generator '{cfg.generator.arch}' uses BatchNorm: its batch statistics are per micro-batch, so "
            f"{world_size} rank(s) × {accumulation_steps} accumulation does not train like one batch"
        )
    return None
