"""Table 4 probe: the official test's BatchNorm mode, beside ours. Prints JSON; not a test.

The authors' `train_mnist.py --mode test` never calls `netG.eval()` before scoring, so its
generator normalises every test batch (100 shuffled test digits) by that batch's own statistics,
during the 400 inference steps and for the final score. Our evaluation uses the running
statistics (`model.eval()`): an image's score must not depend on which other images share its
batch. This script scores one finished run both ways, with the same chains, so that
docs/REPRODUCTION.md can say how much of the gap to the paper this choice explains. It reports a
diagnostic beside the paper's definition; it does not replace our protocol.

    python experiments/probe_anomaly_batchnorm.py runs/repro/table4_anomaly/cpu/heldout_class-4_prior-flow_seed-0
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

from lfbm_dist.data import eval_reader
from lfbm_dist.data.memory import to_model_range
from lfbm_dist.export import load_for_inference
from lfbm_dist.metrics import anomaly
from lfbm_dist.metrics.sampling import infer
from lfbm_dist.seeding import Tag
from lfbm_dist.training.build import eval_data


def batch_statistics_generator(model):
    """A copy whose BatchNorm layers normalise by the current batch (train mode) and keep their
    running statistics unchanged (momentum 0), as the official test does in effect."""
    probe = copy.deepcopy(model)
    for m in probe.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
            m.momentum = 0.0
    return probe


def score(model, batches, heldout: int, seed: int, steps: int, step_size: float) -> torch.Tensor:
    rows = []
    for i, (x, indices, labels) in enumerate(batches):
        z = infer(model, x, indices, seed, steps, step_size, tag=Tag.ANOMALY, add_noise=False)
        recon, prior = anomaly.score_terms(model, x, z)
        rows.append(torch.stack([recon, prior, (labels == heldout).double()]))
        print(f"batch {i + 1}", file=sys.stderr, flush=True)
    return torch.cat(rows, dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a finished Table 4 point (its newest checkpoint is scored)")
    ap.add_argument("--shuffle-seed", type=int, default=0, help="order of the test digits into batches")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, cfg, images_seen = load_for_inference(run=args.run_dir)
    data = eval_data(cfg)
    rows = list(eval_reader.iter_uint8(data, "test", 0, 0, 1, 10**9))
    images = torch.cat([to_model_range(b.images) for b in rows])
    indices = [i for b in rows for i in b.indices]
    labels = torch.cat([torch.as_tensor(b.labels) for b in rows])
    # The official loader shuffles the test split (normal and held-out digits mixed) into batches of 100.
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.shuffle_seed)).tolist()
    batch = cfg.eval.fid_batch

    def batches():
        for s in range(0, len(order), batch):
            sel = order[s : s + batch]
            yield images[sel], [indices[j] for j in sel], labels[sel]

    lv, heldout, seed = cfg.langevin, cfg.data.heldout_class, cfg.eval.seed
    out = {"run_dir": args.run_dir, "images_seen": images_seen, "test_images": len(order), "batch": batch}
    for name, net in (("running_statistics", model), ("batch_statistics", batch_statistics_generator(model))):
        terms = score(net, batches(), heldout, seed, lv.test_num_steps, lv.step_size)
        s = anomaly.summarize(terms, "official")
        out[name] = {
            k: s[k]
            for k in (
                "auprc",
                "anomaly_auprc_recon_term_only",
                "anomaly_auprc_prior_term_only",
                "anomaly_recon_term_std",
                "anomaly_prior_term_std",
                "anomaly_chance_auprc",
            )
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
