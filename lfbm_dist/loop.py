"""Algorithm 1 as one training loop: infer z by posterior Langevin, then one Adam step on
the prior α and the generator β (one optimizer, two parameter groups).

Progress is counted in images (kimg), so schedules do not change with world size:
    global_batch == batch_per_gpu × accumulation_steps × world_size   (checked once, at start)
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import yaml

from . import checkpoint, faults
from .config import Config
from .engine import Engine
from .factory import build_model, build_optimizer, count_parameters
from .feeds import build_feed
from .inference import langevin_posterior
from .models import EBMPrior
from .seeding import per_sample_normal

_LANGEVIN_STREAM = 0       # seeding stream of the posterior chain start + noise
_PRIOR_CHAIN_STREAM = 2    # seeding stream of the EBM prior chains (LEBM baseline)
_SAMPLE_SEED = 12345       # fixed latents for the prior-sample grids


class NonFiniteError(RuntimeError):
    pass


def _kimg_due(prev_images: int, images: int, every_kimg: float) -> bool:
    if every_kimg <= 0:
        return False
    every = every_kimg * 1000.0
    return math.floor(images / every) > math.floor(prev_images / every)


def training_loop(cfg: Config) -> dict:
    """Train per cfg; returns the final trainer state. Launch: see lfbm_dist/train.py."""
    # ---------------------------------------------------------------- setup
    engine = Engine(cfg)
    t, lv = cfg.train, cfg.langevin
    global_batch = t.batch_per_gpu * t.accumulation_steps * engine.world_size
    if t.global_batch and t.global_batch != global_batch:
        raise ValueError(f"train.global_batch={t.global_batch} != batch_per_gpu × accumulation_steps × "
                         f"world_size = {t.batch_per_gpu} × {t.accumulation_steps} × {engine.world_size}")
    run_dir = Path(t.run_dir)
    if engine.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    wrapped, optimizer = engine.prepare(model, optimizer)
    plain = engine.unwrap(wrapped)  # Langevin, sampling, export; `wrapped` only for the learning step
    feed = build_feed(cfg, engine.rank, engine.world_size, engine.device)

    state = {"step": 0, "images_seen": 0, "skipped_steps": 0, "best": {}}
    resume_from = checkpoint.resolve_resume(cfg)
    if resume_from is not None:
        saved, data_state = checkpoint.load(engine, resume_from, cfg)
        state.update(saved)
        feed.load_state_dict(data_state)
        if engine.is_main:
            print(f"resumed from {resume_from} at kimg {state['images_seen'] / 1000:.3f}", flush=True)

    total_images = int(round(t.total_kimg * 1000))
    from .observe import Observer

    observer = Observer(t.run_dir, engine.is_main, total_images, state["images_seen"])
    if engine.is_main:
        print(f"lfbm_dist: {engine.world_size} rank(s) on {engine.device} ({engine.backend_name}), "
              f"global batch {global_batch}, "
              f"generator {count_parameters(plain.generator):,} + prior {count_parameters(plain.prior):,} "
              f"parameters, run dir {run_dir}; fast path: {engine.fast.describe()}", flush=True)
    # Statistics accumulate on the device and are read once per logging tick (no per-step sync).
    tick_sums: dict[str, torch.Tensor] = {}
    tick_count = 0
    fixed_x = None
    consecutive_skips = 0

    # ---------------------------------------------------------------- loop
    while state["images_seen"] < total_images:
        step, images_seen = state["step"], state["images_seen"]
        scale = checkpoint.lr_scale(images_seen, cfg.optim.lr_decay, cfg.optim.lr_decay_every_kimg)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * scale

        # -- phase 1: posterior inference for every micro-batch (plain module: no collectives)
        micro_batches = []
        for micro in range(t.accumulation_steps):
            batch = feed.micro_batch(images_seen, step, micro)
            batch.x = engine.fast.images(batch.x)  # the generator's memory format (channels-last on GPU)
            if fixed_x is None:
                fixed_x = batch.x[:8].clone()
            if plain.encoder is not None:  # LFBM-VAE: amortised inference; "z" carries the ε of q(z|x)
                eps = per_sample_normal(t.seed, step, batch.positions, (cfg.generator.nz,), _LANGEVIN_STREAM)
                micro_batches.append((batch, eps.to(engine.device, non_blocking=True), {}))
                continue
            chains = per_sample_normal(t.seed, step, batch.positions, (lv.num_steps + 1, cfg.generator.nz),
                                       _LANGEVIN_STREAM).to(engine.device, non_blocking=True)
            z, lstats = langevin_posterior(
                plain.generator, plain.prior, batch.x, num_steps=lv.num_steps, step_size=lv.step_size,
                sigma=lv.sigma, mask=batch.mask, z_init=chains[:, 0], noise=chains[:, 1:],
                add_noise=lv.add_noise, autocast_dtype=engine.autocast_dtype,
                log_posterior_fn=engine.fast.log_posterior, return_stats=True)
            if step in faults.NAN_STEPS:  # test hook: inject a non-finite latent
                z[0, 0] = float("nan")
            micro_batches.append((batch, z, lstats))

        # -- phase 2: non-finite guard on the latents, one decision for all ranks
        # Host–device sync + one tiny all-reduce per step: the step must be skipped on every rank or none.
        finite = engine.all_ranks_true(all(bool(torch.isfinite(z).all()) for _, z, _ in micro_batches))

        # -- phase 3: learning step through the wrapped module; one Adam step on α and β
        if finite:
            for batch, z, lstats in micro_batches:
                prior_noise = None
                if isinstance(plain.prior, EBMPrior):
                    prior_noise = per_sample_normal(t.seed, step, batch.positions,
                                                    (plain.prior.langevin_steps + 1, cfg.generator.nz),
                                                    _PRIOR_CHAIN_STREAM).to(engine.device, non_blocking=True)
                with engine.accumulate(wrapped):
                    loss, stats = wrapped(batch.x, z, mask=batch.mask, autocast_dtype=engine.autocast_dtype,
                                          prior_chain_noise=prior_noise)
                    engine.backward(loss)  # scaled by 1/accumulation_steps inside
                stats.update(lstats)
                for key, value in stats.items():
                    tick_sums[key] = tick_sums.get(key, 0.0) + value.float()
                tick_count += 1
            # DDP: gradients are all-reduced, so every rank takes the same decision (host sync).
            # DeepSpeed keeps gradients in its own partitions and has already stepped in backward.
            grads = [p.grad for p in plain.parameters() if p.grad is not None]
            finite = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
            if finite and cfg.optim.grad_clip > 0 and not engine.uses_deepspeed:
                for group in optimizer.param_groups:
                    torch.nn.utils.clip_grad_norm_(group["params"], cfg.optim.grad_clip)
            if finite:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if finite:
            consecutive_skips = 0
        else:
            state["skipped_steps"] += 1
            consecutive_skips += 1
            if engine.is_main:
                print(f"warning: non-finite latents or gradients at step {step}: step skipped "
                      f"({consecutive_skips} in a row)", flush=True)
            if consecutive_skips >= t.max_consecutive_skips:
                raise NonFiniteError(f"{consecutive_skips} consecutive non-finite steps at step {step}; stopping "
                                     "(lower the learning rates or the Langevin step size)")
        state["step"] = step + 1
        state["images_seen"] = images_seen + global_batch

        faults.after_step()

        # ---------------------------------------------------------------- maintenance
        prev, now = images_seen, state["images_seen"]
        done = now >= total_images
        if _kimg_due(prev, now, t.log_every_kimg) or done:
            keys = sorted(tick_sums)
            values = {}
            if keys:  # empty only if every step of the tick was skipped
                means = engine.reduce_mean(torch.stack([tick_sums[k] / tick_count for k in keys]))
                values = dict(zip(keys, means.tolist()))  # host sync: once per logging tick
            values["images_per_sec"] = observer.images_per_sec(now)  # all ranks together (images_seen is global)
            for group in optimizer.param_groups:
                values[f"lr/{group.get('name', 'group')}"] = group["lr"]
            values["skipped_steps"] = float(state["skipped_steps"])
            values["data/corrupt_skipped"] = float(feed.corrupt_skipped)  # this rank's count (rank 0 logs)
            observer.scalars(values, now)
            observer.status(state["step"], now, values)
            tick_sums, tick_count = {}, 0
        if _kimg_due(prev, now, cfg.eval.fid_every_kimg):
            from .evaluate import run_metrics  # collective: every rank generates its share of samples

            with _eval_mode(plain):  # BatchNorm generators: running statistics, and none updated
                fid = run_metrics(plain, cfg, ["fid"], engine.device)["fid"]
            best = state["best"].get("fid")
            if best is None or fid < best:
                state["best"]["fid"], state["best"]["fid_kimg"] = fid, now / 1000
            observer.scalars({"eval/fid": fid, "eval/fid_best": state["best"]["fid"]}, now)
            if engine.is_main:
                print(f"FID {fid:.3f} at kimg {now / 1000:.3f} (best {state['best']['fid']:.3f})", flush=True)
        if _kimg_due(prev, now, t.image_every_kimg) or done:
            with _eval_mode(plain):
                _log_images(observer, plain, fixed_x, cfg, engine, now)
        if _kimg_due(prev, now, t.snapshot_every_kimg) or done:
            checkpoint.save(engine, plain, cfg, dict(state), keep=t.keep_snapshots,
                            data_state=feed.state_dict())

    observer.close()
    if engine.is_main:
        (run_dir / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        print(f"done: {state['step']} steps, {state['images_seen']} images, "
              f"{state['skipped_steps']} skipped; TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}",
              flush=True)
    engine.end()
    return state


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """Evaluation passes (samples, FID) use BatchNorm running statistics and must not update them."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _log_images(observer, plain, fixed_x, cfg: Config, engine: Engine, images_seen: int) -> None:
    """Prior samples and reconstructions of a fixed batch (index-seeded chains: comparable over time)."""
    if not engine.is_main or fixed_x is None:
        return
    from .metrics.sampling import infer, sample_images

    observer.image_grid("samples/prior", sample_images(plain, list(range(32)), _SAMPLE_SEED, engine.device),
                        images_seen)
    z = infer(plain, fixed_x, list(range(len(fixed_x))), _SAMPLE_SEED, cfg.langevin.num_steps,
              cfg.langevin.step_size, tag="tb-recon")
    with torch.no_grad():
        recon = plain.generator(z)
    observer.image_grid("reconstructions", torch.cat([fixed_x, recon]), images_seen)
