"""The evaluation suite behind `lfbm-evaluate` and FID during training: FID, reconstruction MSE,
supervised inpainting, anomaly detection (AUPRC) and the aggregated-posterior diagnostic, on any
number of ranks (every call is collective through the engine's collectives)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..collectives import SINGLE_PROCESS, Collectives
from ..config import Config, ConfigError
from ..data import eval_reader
from ..data.memory import to_model_range
from ..inference import EAGER, ChainRunner
from ..metrics import fid as fidlib
from ..progress import Progress
from .build import eval_data

METRICS = ("fid", "recon", "inpaint", "anomaly", "aggpost", "recovery", "digits")
# The inpainting grid's columns, one test image a row: what the chain saw, its first completion, the truth.
# lfbm-evaluate draws it with this many columns and `lfbm-repro summary` cuts it back into them.
INPAINT_COLUMNS = ("masked input", "completion", "original")
GRID_ROWS = 8


def tensorboard_tags(cfg: Config, metrics: list[str]) -> dict[str, str]:
    """TensorBoard tag prefix per metric: the settings that produced the number."""
    e, lv = cfg.eval, cfg.langevin
    return {
        "fid": f"eval/fid_n{e.fid_num_samples}_seed{e.seed}",
        "recon": f"eval/recon_steps{lv.test_num_steps}_n{e.recon_samples}_seed{e.seed}",
        "inpaint": f"eval/inpaint_{e.inpaint_mask}_steps{lv.test_num_steps}_c{e.inpaint_completions}_seed{e.seed}",
        "anomaly": f"eval/anomaly_{e.anomaly_protocol}_steps{lv.test_num_steps}_seed{e.seed}",
        "aggpost": f"eval/aggpost_steps{lv.num_steps}_seed{e.seed}",
        "recovery": f"eval/recovery_{cfg.data.occlusion}_steps{lv.test_num_steps}",
        "digits": f"eval/digits_n{e.fid_num_samples}_seed{e.seed}",
    }


@dataclass
class Suite:
    model: torch.nn.Module
    cfg: Config
    device: torch.device
    comm: Collectives = SINGLE_PROCESS
    show_progress: bool = False
    chain: ChainRunner = EAGER  # how test-time chains run (the fast path's compiled chain)
    images: dict = field(default_factory=dict)  # eval image grids for TensorBoard
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = eval_data(self.cfg)
        self.inception = None
        self.reference = None

    def bar(self, total: int, desc: str) -> Progress:
        return Progress(total, desc, enabled=self.show_progress and self.comm.is_main)

    def count(self, split: str, limit: int) -> int:
        return eval_reader.count(self.data, split, limit)

    def raw(self, split: str, limit: int):
        """This rank's share of a split as EvalBatch (uint8 images, indices, labels, keys)."""
        c = self.comm
        return eval_reader.iter_uint8(self.data, split, limit, c.rank, c.world_size, self.cfg.eval.fid_batch)

    def batches(self, split: str, limit: int, with_labels: bool = False):
        """(x in [−1, 1] on the device, global indices[, labels]) of this rank's share of a split."""
        for b in self.raw(split, limit):
            x = to_model_range(b.images).to(self.device)
            yield (x, b.indices, b.labels) if with_labels else (x, b.indices)

    # ------------------------------------------------------------------ FID
    def fid_reference(self) -> None:
        """The FID network and the training images' statistics (cached under their settings)."""
        e, c = self.cfg.eval, self.comm
        settings = self._reference_settings()

        def compute():
            with self.bar(self.count("train", e.fid_ref_samples), "FID reference statistics") as p:
                batches = (b.images for b in self.raw("train", e.fid_ref_samples))
                return fidlib.image_stats(batches, self.inception, c, p)

        mu, sigma, n_ref, cache = fidlib.reference_stats(settings, Path(e.cache_dir), compute, c)
        self.reference = (mu, sigma)
        self.results.update(
            {
                "fid_network": self.inception.name,
                "fid_image_resolution": self.cfg.data.resolution,
                "fid_ref_images": n_ref,
                "fid_ref_cache": cache,
            }
        )

    def _reference_settings(self) -> dict:
        """The reference statistics' cache key (loads the FID network once)."""
        from ..metrics.inception import load_inception

        if self.inception is None:
            self.inception = load_inception(self.cfg.eval.inception).to(self.device)
        return {
            "data": eval_reader.identity(self.data, "train"),
            "resolution": self.cfg.data.resolution,
            "channels": self.cfg.generator.image_channels,
            "ref_samples": self.cfg.eval.fid_ref_samples,
            "network": self.inception.name,
        }

    def estimate(self, metrics: list[str], extra_fids: int = 0) -> tuple[float, str]:
        """(seconds, one line): this evaluation's work, timed on one batch of each kind here."""
        from ..metrics.sampling import infer, sample_images
        from . import workload

        e, lv = self.cfg.eval, self.cfg.langevin
        work = workload.count(self.cfg, metrics, self.count, extra_fids)
        uses_inception = work.inception_images > 0
        if uses_inception and not fidlib.is_cached(self._reference_settings(), Path(e.cache_dir)):
            work.inception_images += self.count("train", e.fid_ref_samples)
        x = next(iter(self.batches(e.split, min(e.fid_batch, work.chain_images))))[0] if work.chain_steps else None

        def chains(n, steps):  # n images (the split's first batch, repeated if it holds fewer)
            xs = x.repeat(-(-n // len(x)), 1, 1, 1)[:n]
            infer(self.model, xs, list(range(n)), e.seed, steps, lv.step_size)

        def samples(n, _steps):
            with torch.no_grad():
                return sample_images(self.model, list(range(n)), e.seed, self.device)

        def inception(n, _steps):
            with torch.no_grad():
                self.inception(fidlib.to_uint8(samples(n, 1)))

        rates = workload.calibrate(
            work, self.device, e.fid_batch, chains, samples, inception if uses_inception else None
        )
        if uses_inception:  # the Inception batch also drew its images: count the network alone
            rates = workload.Rates(rates.chain_step, rates.sample, max(rates.inception_image - rates.sample, 0.0))
        flops = workload.generator_forward_flops(self.model.generator, self.model.nz)
        return workload.describe(work, rates, self.comm.world_size, flops)

    def fid(self) -> None:
        from ..metrics.sampling import sample_images

        e = self.cfg.eval
        with self.bar(e.fid_num_samples, "FID samples + Inception features") as p:
            stats = fidlib.generated_stats(
                lambda idx: sample_images(self.model, idx, e.seed, self.device),
                self.inception,
                e.fid_num_samples,
                e.fid_batch,
                self.device,
                self.comm,
                p,
            )
        self.results["fid"] = fidlib.frechet_distance(*stats.mu_sigma(), *self.reference)
        self.results["fid_num_samples"] = e.fid_num_samples
        self.images["samples"] = sample_images(self.model, list(range(64)), e.seed, self.device)

    # ------------------------------------------------------------------ inference-based metrics
    def recon(self) -> None:
        from ..metrics.reconstruction import reconstruction_mse

        e, lv = self.cfg.eval, self.cfg.langevin
        with self.bar(self.count(e.split, e.recon_samples), f"reconstruction ({lv.test_num_steps} steps)") as p:
            self.results.update(
                reconstruction_mse(
                    self.model,
                    self.batches(e.split, e.recon_samples),
                    e.seed,
                    lv.test_num_steps,
                    lv.step_size,
                    self.comm,
                    p,
                    chain=self.chain,
                )
            )

    def inpaint(self) -> None:
        from ..metrics.inpainting import inpainting_metrics

        e, lv = self.cfg.eval, self.cfg.langevin
        by_fid = e.inpaint_quality == "fid"
        completed, first, grid = fidlib.FeatureStats(), [], []

        def on_completed(c, x, mask, done):
            if c == 0 and by_fid:
                completed.update(self.inception(fidlib.to_uint8(done)))
            elif c == 0:
                first.append(done.cpu())
            if c == 0 and not grid:  # the first batch: rows of masked input | completion | original
                n = min(GRID_ROWS, len(x))
                grid.append(torch.stack([x[:n] * mask[:n], done[:n], x[:n]], dim=1).flatten(0, 1).cpu())

        desc = f"inpainting ({e.inpaint_completions} × {lv.test_num_steps} steps)"
        with self.bar(self.count(e.split, e.inpaint_samples), desc) as p:
            self.results.update(
                inpainting_metrics(
                    self.model,
                    self.batches(e.split, e.inpaint_samples),
                    e.seed,
                    lv.test_num_steps,
                    lv.step_size,
                    e.inpaint_completions,
                    e.inpaint_mask,
                    on_completed,
                    self.comm,
                    p,
                    chain=self.chain,
                )
            )
        if by_fid:
            completed.all_reduce(self.comm)
            self.results["inpaint_fid"] = fidlib.frechet_distance(*completed.mu_sigma(), *self.reference)
        else:  # the completed test images against as many training digits
            done = self.comm.all_gather_cat(torch.cat(first), dim=0)
            quality = self._digit_quality(done, len(done))
            self.results["inpaint_digit_fd"] = quality["digit_fd"]
            self.results["inpaint_recognisable"] = quality["recognisable"]
        if grid:
            self.images["inpainting"] = torch.cat(grid)

    def anomaly(self) -> None:
        from ..metrics import anomaly

        e, lv, heldout = self.cfg.eval, self.cfg.langevin, self.cfg.data.heldout_class
        if heldout < 0:
            raise ConfigError("anomaly: set data.heldout_class (the class left out of training)")
        with self.bar(self.count("test", 0), f"anomaly scores ({lv.test_num_steps} steps)") as p:
            terms = anomaly.collect_terms(
                self.model,
                self.batches("test", 0, with_labels=True),
                heldout,
                e.seed,
                lv.test_num_steps,
                lv.step_size,
                add_noise=e.anomaly_protocol == "noisy-ap",
                progress=p,
                world_size=self.comm.world_size,
                chain=self.chain,
            )
        self.results.update(anomaly.summarize(self.comm.all_gather_cat(terms, dim=1), e.anomaly_protocol))
        self.results.update({"anomaly_heldout_class": heldout, "anomaly_langevin_steps": lv.test_num_steps})

    def aggpost(self) -> None:
        from ..metrics.aggregated_posterior import aggregated_posterior

        e, lv = self.cfg.eval, self.cfg.langevin
        with self.bar(self.count("train", e.recon_samples), "aggregated posterior") as p:
            self.results.update(
                aggregated_posterior(
                    self.model,
                    self.batches("train", e.recon_samples),
                    e.seed,
                    lv.num_steps,
                    lv.step_size,
                    self.comm,
                    p,
                    chain=self.chain,
                )
            )

    def recovery(self) -> None:
        """Learning from occluded data (§4.6, Table 5): the training images, occluded by the very masks
        training used, recovered from their visible pixels; MSE on the hidden pixels, [0, 1] scale."""
        from ..data.masks import make_mask
        from ..metrics.inpainting import inpaint

        d, e, lv = self.cfg.data, self.cfg.eval, self.cfg.langevin
        if d.occlusion == "none":
            raise ConfigError("recovery: the run was trained on whole images (data.occlusion=none)")
        sums = torch.zeros(2, dtype=torch.float64)  # Σ squared error on hidden pixels, Σ hidden pixels
        with self.bar(self.count("train", e.recon_samples), f"recovery ({lv.test_num_steps} steps)") as p:
            for b in self.raw("train", e.recon_samples):
                x = to_model_range(b.images).to(self.device)
                mask = torch.stack([make_mask(d.occlusion, d.resolution, k, d.mask_seed) for k in b.keys]).float()
                mask = mask.to(self.device)
                done = inpaint(self.model, x, mask, b.indices, e.seed, lv.test_num_steps, lv.step_size, 0, self.chain)
                hidden = (1 - mask).expand_as(x)
                sums += torch.stack(
                    [(((done - x) / 2) ** 2 * hidden).sum().double().cpu(), hidden.sum().double().cpu()]
                )
                p.update(len(x) * self.comm.world_size)
        sums = self.comm.all_reduce_sum(sums)
        self.results.update({"recovery_mse": float(sums[0] / sums[1]), "recovery_occlusion": d.occlusion})

    def digits(self) -> None:
        """The digit-classifier proxy of sample quality (MNIST only; metrics/digits.py), with
        eval.fid_num_samples samples against as many training digits."""
        from ..metrics.sampling import sample_images

        n = self.cfg.eval.fid_num_samples
        mine = list(range(self.comm.rank, n, self.comm.world_size))
        samples = torch.cat(
            [
                sample_images(self.model, mine[i : i + 500], self.cfg.eval.seed, self.device).cpu()
                for i in range(0, len(mine), 500)
            ]
        )
        self.results.update(self._digit_quality(self.comm.all_gather_cat(samples, dim=0), n))
        self.results["digits_num_samples"] = n

    def _digit_quality(self, images: torch.Tensor, n_real: int) -> dict:
        """The digit proxy of `images` (every rank's, in [−1, 1]) against n_real training digits."""
        from ..metrics.digits import DigitClassifier, digit_quality

        if self.cfg.data.source != "memory" or self.cfg.data.dataset != "mnist":
            raise ConfigError("digits: the digit proxy is for the packaged MNIST set; use fid for other data")
        real = torch.cat([to_model_range(b.images) for b in self.raw("train", n_real)])
        real = self.comm.all_gather_cat(real, dim=0)
        return digit_quality(DigitClassifier(self.cfg.data.resolution), images.float(), real)


def run_metrics(
    model,
    cfg: Config,
    metrics: list[str],
    device: torch.device,
    comm: Collectives = SINGLE_PROCESS,
    images: dict | None = None,
    show_progress: bool = False,
    chain: ChainRunner = EAGER,
    announce: Callable[[str], None] | None = None,
    extra_fids: int = 0,
) -> dict:
    """Compute `metrics` (collective: every rank calls it). `images`, if given, receives eval image grids;
    `chain`: how the test-time Langevin chains run (FastPath.test_time_runner: compiled, padded batches);
    `announce`, if given, receives the time estimate's line first (with `extra_fids` FIDs to follow)."""
    suite = Suite(model, cfg, device, comm, show_progress, chain=chain)
    if announce is not None:
        announce(suite.estimate(metrics, extra_fids)[1])
    if "fid" in metrics or ("inpaint" in metrics and cfg.eval.inpaint_quality == "fid"):
        suite.fid_reference()
    for name in METRICS:
        if name in metrics:
            getattr(suite, name)()
    if images is not None:
        images.update(suite.images)
    return suite.results
